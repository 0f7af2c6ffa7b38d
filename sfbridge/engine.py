"""The engine: one thread that owns the generator (the GPU) and never touches a socket.

Loop (vLLM v1 ``run_busy_loop`` in spirit): wait until there is work (not paused, the publisher
is at most ``max_ahead`` blocks behind), take a steering snapshot, generate one block, hand it
to the publisher through ``outbox``. Events go to ``events``; both queues are drained by the
publisher thread, which owns the PUB socket. A failing block becomes an ``error`` event and a
retry after a pause; the daemon never dies of a generator exception.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sfbridge.generators.base import BLOCK_FRAMES, FIRST_BLOCK_FRAMES, Generator, InputBlock, PendingFrames
from sfbridge.oom import OomPolicy, is_oom
from sfbridge.protocol import make_event
from sfbridge.steering import Change, Snapshot, SteeringBox

log = logging.getLogger("sfbridge.engine")

RETRY_DELAY_S = 1.0


@dataclass
class BlockOut:
    """A generated block on its way to the publisher."""

    frames: np.ndarray | PendingFrames  # [N, H, W, 3] uint8, or still decoding (see ready())
    block: int
    first_frame: int
    first_seq: int
    state: int
    stream: str
    t_gen: float  # Unix time the block was ready
    gen_s: float  # seconds the generator spent on it
    input_mode: str = "off"  # the block's Steering.input_mode (frame headers)
    sources: list[tuple[str, int, float]] | None = None  # input frame of each output frame; None: text-only

    def ready(self) -> bool:
        """Whether the frames are on the host; a finished decode is resolved in place (publisher thread)."""
        if isinstance(self.frames, PendingFrames):
            if not self.frames.done() or self.failed():
                return False
            self.frames = self.frames.result()
        return True

    def failed(self) -> bool:
        """The decode failed: the engine has reported it and restarts the scene; drop the block."""
        f = self.frames
        return isinstance(f, PendingFrames) and f.done() and (f.cancelled() or f.exception() is not None)


def applied_event(change: Change, snap: Snapshot) -> dict:
    """The `applied` event of ``change`` (docs/PROTOCOL.md 3.2): the block's steering, and a prompt's transition."""
    s = snap.steering
    extra: dict = {}
    if change.kind == "prompt":  # the winning prompt's own settings (it is the block's prompt)
        extra = {"interp": s.interp, "recache": s.recache, "blend_blocks": s.blend_blocks}
    elif change.kind == "input":
        extra = {"input_mode": s.input_mode, "strength": s.input_strength, "motion_adaptive": s.input_motion}
    return make_event("applied", state_id=change.state_id, change=change.kind, transition=change.transition,
                      block=snap.block, state=s.state_id, prompt=s.prompt,
                      prompts=[{"text": t, "weight": w} for t, w in s.weighted()], mix=s.mix, seed=s.seed,
                      steps=list(s.denoising_steps) if s.denoising_steps else None, **extra)


@dataclass
class EngineStats:
    block_ms: float = 0.0
    fps_gen: float = 0.0
    frames_total: int = 0
    errors: int = 0
    recent: list[tuple[int, float]] = field(default_factory=list)  # (frames, seconds) of recent blocks


class Engine:
    def __init__(self, generator: Generator, box: SteeringBox, outbox: queue.Queue, events: queue.Queue,
                 max_ahead: int = 1, stats: EngineStats | None = None,
                 on_output: Callable[[], None] = lambda: None,
                 on_due: Callable[[Change], None] = lambda change: None) -> None:
        self.generator = generator
        self.box = box
        self.outbox = outbox
        self.events = events
        self.max_ahead = max_ahead
        self.on_output = on_output  # wakes the publisher at once (new block or event)
        self.on_due = on_due  # a scheduled prompt lands at the next block: its text should be encoded now
        self.stats = stats or EngineStats()
        self._seq = 0
        self._was_paused = False
        self._retry_at = 0.0  # monotonic time before which no block starts (after a failed decode)
        self._failed_stream: str | None = None  # scene whose decode failed: one error event per scene
        self.failure: BaseException | None = None  # what killed the thread, if it died (daemon.py watches)
        self.oom = OomPolicy()  # out of GPU memory: free, restart, step down when it repeats (sfbridge/oom.py)
        self._attempts = 0  # blocks started, failed ones included: OomPolicy counts "within a few blocks" in them
        self._decode_oom: tuple[int, BaseException] | None = None  # (block, error) from the decode worker
        self.thread = threading.Thread(target=self.run, name="sfbridge-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def notify(self) -> None:
        """Wake the loop (the publisher calls this when it takes a block from the outbox)."""
        with self.box.cond:
            self.box.cond.notify_all()

    def _can_work(self) -> bool:
        return (not self.box.paused and self.outbox.qsize() < self.max_ahead
                and time.monotonic() >= self._retry_at)

    def run(self) -> None:
        try:
            while True:
                with self.box.cond:
                    while not self.box.stopping and not self._can_work():
                        self._announce_pause()
                        self.box.cond.wait(timeout=0.1)
                    if self.box.stopping:
                        return
                    self._announce_pause()
                    snap = self.box.take()
                if snap.due is not None:
                    self.on_due(snap.due)
                self._step(snap)
        except BaseException as exc:  # last line of defence: the daemon's watch reports it and exits
            self.failure = exc
            log.exception("engine thread died")
        finally:
            try:
                self.generator.close()
            except Exception:
                log.exception("generator close failed")

    def _emit(self, event: dict) -> None:
        self.events.put(event)
        self.on_output()  # the publisher sends it now, not at its next poll timeout

    def _check(self, frames: np.ndarray) -> None:
        """The publisher and every client rely on this: [N, H, W, 3] uint8 at the advertised size."""
        g = self.generator
        if (not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4
                or frames.shape[1:] != (g.height, g.width, 3) or len(frames) == 0):
            raise TypeError(f"generator {g.name!r} returned frames {getattr(frames, 'shape', type(frames))} "
                            f"{getattr(frames, 'dtype', '')}, expected [N, {g.height}, {g.width}, 3] uint8")

    def _announce_pause(self) -> None:
        if self.box.paused != self._was_paused:
            self._was_paused = self.box.paused
            kind = "paused" if self.box.paused else "resumed"
            self._emit(make_event(kind, block=self.box.next_block))
            log.info("%s at block %d", kind, self.box.next_block)

    # Issue 12: the input frames of a block (sfbridge/input.py InputServer.take), set by the daemon; None: no
    # input socket. Taken at the block boundary, only in v2v mode and for generators that take input.
    take_input: Callable[[int], InputBlock | None] | None = None

    def _inputs(self, snap: Snapshot) -> InputBlock | None:
        s = snap.steering
        if s.input_mode != "v2v" or self.take_input is None or not self.generator.supports_input():
            return None
        return self.take_input(FIRST_BLOCK_FRAMES if snap.block == 0 else BLOCK_FRAMES)

    def _step(self, snap: Snapshot) -> None:
        s = snap.steering
        self._attempts += 1
        decode_oom, self._decode_oom = self._decode_oom, None
        if decode_oom is not None:  # an OOM in the decode worker: the hooks run here, on the engine thread
            for event in self.oom.handle(self.generator, self._attempts, decode_oom[0], decode_oom[1]):
                self._emit(event)
        t0 = time.perf_counter()
        try:
            if snap.reset:
                self.generator.reset(s)
                self._emit(make_event("started", stream=snap.stream, model=self.generator.name,
                                           width=self.generator.width, height=self.generator.height,
                                           fps=self.generator.fps, prompt=s.prompt,
                                           prompts=[{"text": t, "weight": w} for t, w in s.weighted()],
                                           mix=s.mix, seed=s.seed, state_id=s.state_id))
                log.info("scene %s started: %r seed %d", snap.stream, s.prompt, s.seed)
                t0 = time.perf_counter()
            inputs = self._inputs(snap)
            # frames may still be decoding: the next block starts now
            out = self.generator.submit_block(s, inputs) if inputs is not None else self.generator.submit_block(s)
            if not isinstance(out.frames, PendingFrames):
                self._check(out.frames)
        except Exception as exc:
            self.stats.errors += 1
            if is_oom(exc):
                for event in self.oom.handle(self.generator, self._attempts, snap.block, exc):
                    self._emit(event)
            else:
                log.exception("generator failed on block %d", snap.block)
                self._emit(make_event("error", code="internal",
                                      message=f"generator failed on block {snap.block}: {exc}"))
            # A failure can leave caches half-written: start a new scene after a pause.
            self.box.give_back(snap)
            with self.box.cond:
                self._dropped(self.box.reset(None, None)[2])
                self.box.cond.wait(timeout=RETRY_DELAY_S)
            return
        gen_s = time.perf_counter() - t0
        n = len(out.frames)
        # Sent now, before any frame of the block is published (the publisher sends queued events
        # before it takes the block): one per accepted change, so every state_id is announced.
        outcomes = [(c.state_id, applied_event(c, snap)) for c in snap.changes]
        outcomes += [(c.state_id, make_event("superseded", state_id=c.state_id, change=c.kind, by=by,
                                             block=snap.block)) for c, by in snap.superseded]
        for _, event in sorted(outcomes, key=lambda o: o[0]):
            self._emit(event)
        blk = BlockOut(frames=out.frames, block=snap.block, first_frame=out.first_frame, first_seq=self._seq,
                       state=s.state_id, stream=snap.stream, t_gen=time.time(), gen_s=gen_s,
                       input_mode=s.input_mode, sources=inputs.sources if inputs is not None else None)
        if isinstance(out.frames, PendingFrames):
            blk.frames = self._checked(out.frames, blk)
        self.outbox.put(blk)  # a pending block is in the outbox at once: max_ahead counts it as today
        self.on_output()
        self._seq += n
        if not isinstance(out.frames, PendingFrames):
            self._account(n, gen_s)

    def _dropped(self, changes: list[Change]) -> None:
        """A reset dropped these scheduled changes of the old scene."""
        for c in changes:
            self._emit(make_event("cancelled", state_id=c.state_id, change=c.kind, reason="reset"))

    def _checked(self, pending: PendingFrames, blk: BlockOut) -> PendingFrames:
        """The frames of ``blk`` once decoded and checked. Runs on the thread that finishes the decode:
        a failure there is reported like one in :meth:`_step` (error event, new scene after a pause)."""
        out = PendingFrames(len(pending))

        def done(decoded: PendingFrames) -> None:  # (no reference to `pending` itself: no cycle)
            try:
                frames = decoded.result()
                self._check(frames)
                if len(frames) != len(decoded):
                    raise TypeError(f"generator {self.generator.name!r} returned {len(frames)} frames, "
                                    f"announced {len(decoded)}")
            except BaseException as exc:  # noqa: BLE001 - any failure, cancellation included, drops the block
                self._decode_failed(blk, exc)
                out.set_exception(exc)
            else:
                # Pipelined, a block costs the longer of its DiT and its decode (they overlap): pacing uses that.
                blk.gen_s, blk.t_gen = max(blk.gen_s, decoded.seconds), time.time()
                self._account(len(frames), blk.gen_s)
                out.set_result(frames)
            self.on_output()

        out.set_running_or_notify_cancel()
        pending.add_done_callback(done)
        return out

    def _decode_failed(self, blk: BlockOut, exc: BaseException) -> None:
        if self.box.stopping or blk.stream == self._failed_stream:
            return  # shutdown cancels decodes; later blocks of a failed scene fail with it
        self._failed_stream = blk.stream
        self.stats.errors += 1
        if is_oom(exc):  # reported with its hooks run by the engine thread, before its next block
            self._decode_oom = (blk.block, exc)
        else:
            log.error("generator failed on block %d: %r", blk.block, exc)
            self._emit(make_event("error", code="internal",
                                  message=f"generator failed on block {blk.block}: {exc}"))
        with self.box.cond:
            if blk.stream == self.box.stream:  # a reset since then already starts a new scene
                self._dropped(self.box.reset(None, None)[2])  # caches may be half-written: a new scene, after a pause
                self._retry_at = time.monotonic() + RETRY_DELAY_S

    def _account(self, n: int, gen_s: float) -> None:
        st = self.stats
        st.block_ms = gen_s * 1000
        st.frames_total += n
        st.recent = (st.recent + [(n, gen_s)])[-8:]
        st.fps_gen = sum(f for f, _ in st.recent) / max(1e-9, sum(t for _, t in st.recent))
