"""Publisher thread: owns the XPUB socket and the encoders; paces frames out of the engine's blocks.

Why XPUB: it tells us which topics have subscribers, so we only encode formats somebody wants,
and lets a late joiner get the last frame at once (ZeroMQ guide, "last value cache").
Why a small SNDHWM and SNDBUF: a subscriber that stops reading must lose frames, not make the
daemon queue seconds of video for it (environment notes: default HWMs let a slow client lag by
2.2 s). The engine is never touched from here except through ``notify``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import zmq

from sfbridge import transport
from sfbridge.engine import BlockOut, EngineStats
from sfbridge.protocol import EVENT_TOPIC, FRAME_FORMATS, frame_header, make_event, pack
from sfbridge.security import ServerAccess
from sfbridge.steering import SteeringBox
from sfbridge.subscriptions import Subscriptions

log = logging.getLogger("sfbridge.io.publisher")

STATS_PERIOD_S = 1.0
SNDBUF_BYTES = 1 << 16
STOP_FLUSH_S = 2.0  # how long shutdown waits for the `stopping` event to reach every subscriber
EVENT_WAIT_S = 0.05  # how long one batch of events may wait for room in a slow event subscriber's queue


def formats_for(subscriptions: dict) -> list[str]:
    """Frame formats matched by at least one live subscription prefix (str or bytes keys)."""
    prefixes = [p if isinstance(p, bytes) else p.encode() for p, c in subscriptions.items() if c > 0]
    return [f for f in FRAME_FORMATS if any(f.encode().startswith(p) for p in prefixes)]


@dataclass
class PublisherStats:
    frames_published: int = 0
    dropped_blocks: int = 0


class Publisher:
    def __init__(self, ctx: zmq.Context, endpoint: str, box: SteeringBox, outbox: queue.Queue,
                 events: queue.Queue, engine_stats: EngineStats, encoders: dict, fps: float,
                 pace: str = "native", sndhwm: int = 4, notify_engine: Callable[[], None] = lambda: None,
                 state_info: Callable[[], dict] = dict, access: ServerAccess | None = None,
                 transport_info: Callable[[], dict] = dict) -> None:
        self.box, self.outbox, self.events = box, outbox, events
        self.engine_stats = engine_stats
        self.encoders = encoders
        self.fps = fps
        self.pace = pace
        self.notify_engine = notify_engine
        self.state_info = state_info  # -> keys of the `state` event (docs/PROTOCOL.md 3.2)
        self.transport_info = transport_info  # -> the control socket's counters for stats.transport
        self.stats = PublisherStats()
        self.stop_event = threading.Event()
        self._last: tuple[np.ndarray, dict] | None = None  # last raw frame and its header
        self._enc_time: dict[str, list[float]] = defaultdict(list)
        self._published_times: list[float] = []
        # `pause` is exact: the control thread sets the pause flag under this lock, and every frame is
        # sent under it after checking the flag, so no publish starts once the pause reply is sent.
        self.gate = threading.Lock()
        self.last_seq: int | None = None  # seq of the last frame published (all formats sent)
        transport.prepare_process()  # the daemon's first socket: raise the open-file limit before any
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, sndhwm)
        self.sock.setsockopt(zmq.SNDBUF, SNDBUF_BYTES)
        self.sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscription: we count them
        # Manual: libzmq applies a subscription only when we do (Subscriptions.on_message), so an invalid
        # or surplus topic never reaches its matching trie.
        self.sock.setsockopt(zmq.XPUB_MANUAL, 1)
        transport.harden(self.sock, transport.STREAM_MAX_FRAME_BYTES)
        self.subs = Subscriptions(self.sock, self._on_new_topic)
        self.endpoint = (access or ServerAccess()).bind(self.sock, endpoint)  # CURVE when on, ipc file 0600
        self.last_rates = self._rates()  # refreshed by the publisher thread each period; read by `status`
        # A self-pipe the engine writes one byte to per block: the poll below wakes at once instead
        # of on its next timeout (worth ~5 ms per block with --pace off).
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.thread = threading.Thread(target=self._run_safe, name="sfbridge-publisher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake()

    def wake(self) -> None:
        """Thread-safe: make the publisher loop look at its queues now."""
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # pipe full (it wakes anyway) or closed at shutdown

    # --- subscriptions ---------------------------------------------------------------------------

    def wanted_formats(self) -> list[str]:
        return formats_for(self.subs.counts)

    def _on_new_topic(self, topic: bytes) -> None:
        """A connection subscribed to a topic: a late joiner gets the last frame and the `state` event, once
        per loop turn however many subscriptions arrived (Subscriptions._resend_due)."""
        self._resend_last(topic)
        if EVENT_TOPIC.encode().startswith(topic):  # late joiner: tell it where the stream stands
            self._send_event(make_event("state", **self.state_info()))

    def _read_subscriptions(self) -> None:
        if self.subs.read_batch():
            for fmt in set(self._enc_time) - set(self.wanted_formats()):  # nobody reads it: no stale timing
                del self._enc_time[fmt]

    def _resend_last(self, prefix: bytes) -> None:
        if self._last is None:
            return
        frame, header = self._last
        for fmt in FRAME_FORMATS:
            if fmt.encode().startswith(prefix):
                self._send_frame(fmt, self._encode(fmt, frame), dict(header))

    # --- sending ---------------------------------------------------------------------------------

    def _encode(self, fmt: str, frame: np.ndarray) -> bytes:
        t0 = time.perf_counter()
        payload = self.encoders[fmt].encode(frame)
        times = self._enc_time[fmt]
        times.append(time.perf_counter() - t0)
        del times[:-64]
        return payload

    def _send_frame(self, fmt: str, payload: bytes, header: dict) -> None:
        header["format"] = fmt
        header["t_pub"] = time.time()
        self.sock.send_multipart([fmt.encode(), pack(header), payload], copy=False)

    def _send_event(self, event: dict) -> None:
        self.sock.send_multipart([EVENT_TOPIC.encode(), pack(event), b""])

    def _publish(self, blk: BlockOut, i: int) -> bool:
        """Send frame ``i`` of ``blk`` in every wanted format; False (nothing sent) if paused meanwhile."""
        frame = blk.frames[i]
        h, w = frame.shape[:2]
        source = blk.sources[i] if blk.sources is not None and i < len(blk.sources) else None
        header = frame_header(stream=blk.stream, seq=blk.first_seq + i, block=blk.block, idx=i,
                              frame=blk.first_frame + i, fps=self.fps, width=w, height=h, fmt="",
                              state=blk.state, t_gen=blk.t_gen, input_mode=blk.input_mode, source=source)
        payloads = {fmt: self._encode(fmt, frame) for fmt in self.wanted_formats()}  # slow part: outside the gate
        with self.gate:
            if self.box.paused:
                return False
            for fmt, payload in payloads.items():
                self._send_frame(fmt, payload, dict(header))
            self.last_seq = header["seq"]
        self._last = (frame, header)
        self._published_times.append(time.monotonic())
        self.stats.frames_published += 1
        return True

    # --- loop ------------------------------------------------------------------------------------

    def _interval(self, blk: BlockOut) -> float:
        if self.pace == "off":
            return 0.0
        # Native rate when the generator keeps up; otherwise spread the block over the time the
        # generator took to make it, so motion stays even instead of stop-and-burst.
        return max(1.0 / self.fps, blk.gen_s / max(1, len(blk.frames)))

    def _run_safe(self) -> None:
        try:
            self._run()
        except Exception as exc:  # the daemon's watch (daemon.py) reports it and exits non-zero
            self.failure = exc
            log.exception("publisher thread died")
        finally:
            deadline = time.monotonic() + STOP_FLUSH_S
            self._wait_delivered(deadline, "the frames queued")  # first those: see _wait_delivered
            self._send_stopping(deadline)
            left = self._wait_delivered(deadline, "the `stopping` event")
            # Linger: close() must not discard the `stopping` event still queued in libzmq's pipes.
            self.sock.close(linger=max(100, int(left * 1000)))
            self.subs.stop()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _send_stopping(self, deadline: float) -> None:
        """Queue `stopping` for every event subscriber: with XPUB_NODROP a full pipe (a subscriber
        still holding frames) makes the send wait for room instead of silently dropping the event;
        a subscriber that never reads gets it dropped at ``deadline``."""
        body = [EVENT_TOPIC.encode(), pack(make_event("stopping")), b""]
        try:
            self.sock.setsockopt(zmq.XPUB_NODROP, 1)
            sent = self._send_waiting(body, deadline)
            self.sock.setsockopt(zmq.XPUB_NODROP, 0)
            if sent:
                log.info("stopping event sent to %d connection(s)", len(self.subs.peers.peers))
                return
            self.sock.send_multipart(body)
            log.warning("a subscriber is not reading: it may miss the `stopping` event")
        except zmq.ZMQError:
            log.exception("could not send the `stopping` event")

    def _wait_delivered(self, deadline: float, what: str) -> float:
        """Wait until every event subscriber's kernel has acknowledged all we sent, at most until
        ``deadline``; returns the seconds left.

        Why, before `stopping` and after it: libzmq takes a connection whose queue is full (a subscriber
        behind on frames) out of the set a message is matched against, until the socket has processed
        that the queue has room again; XPUB_NODROP only checks the connections still in the set, so
        `stopping` sent at that moment is "sent" and silently skips that subscriber. And linger only
        empties the queues: what a connection's I/O engine holds but has not written yet dies with the
        context. Measured with a subscriber 1 s behind across the SIGTERM: it missed `stopping` 4 times
        in 4 without these waits. An empty kernel send queue, seen 3 times 10 ms apart, also means the
        engine has nothing left to write; each look also has the socket process its queue-has-room
        notices (reading ZMQ_EVENTS does), so the drained connections are matched again."""
        self.subs.peers.poll_events()  # forget connections that have gone
        event = EVENT_TOPIC.encode()
        fds = [p.fd for p in self.subs.peers.peers.values() if any(event.startswith(t) for t in p.topics)]
        clear = 0
        while fds and clear < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
            self.sock.getsockopt(zmq.EVENTS)
            clear = clear + 1 if not any(transport.unsent_bytes(fd) for fd in fds) else 0
        if fds and clear < 3:
            log.warning("%d event subscriber(s) did not take %s within %.1f s of shutdown",
                        sum(transport.unsent_bytes(fd) > 0 for fd in fds), what, STOP_FLUSH_S)
        return max(0.0, deadline - time.monotonic())

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.subs.peers.monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        blk: BlockOut | None = None
        pos = 0
        next_due = time.monotonic()
        next_stats = time.monotonic() + STATS_PERIOD_S
        while not self.stop_event.is_set():
            now = time.monotonic()
            if blk is not None and blk.ready() and pos < len(blk.frames):
                timeout_ms = max(0.0, (next_due - now) * 1000)
            elif self.outbox.qsize() and (blk is None or blk.ready()):  # done with this block, the next waits
                timeout_ms = 0.0  # (its wake-up may have been read while this block was still publishing)
            else:  # idle or decoding: the engine wakes us through the pipe when it has output
                timeout_ms = 50.0
            timeout_ms = min(timeout_ms, 50.0, max(0.0, (next_stats - now) * 1000))
            ready = dict(poller.poll(timeout_ms))
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            self._read_subscriptions()  # bounded per turn: a flood cannot hold the frames back
            self._send_events()
            if blk is not None and blk.stream != self.box.stream:  # reset: drop the old scene
                self.stats.dropped_blocks += 1
                blk = None
            if blk is not None and blk.failed():  # its decode failed: the engine reported it, restarts the scene
                blk = None
            if blk is None or pos >= len(blk.frames):
                blk = self._next_block()
                pos = 0
                if blk is not None:
                    next_due = max(next_due, time.monotonic() - self._interval(blk))
            now = time.monotonic()
            if self.box.paused:  # hold the remaining frames; resume continues from here
                next_due = now
            elif (blk is not None and pos < len(blk.frames) and now >= next_due and blk.ready()
                  and self._publish(blk, pos)):
                pos += 1
                next_due += self._interval(blk)
                if next_due < now - 0.25:  # we fell far behind (stall): do not burst to catch up
                    next_due = now
            if now >= next_stats:
                next_stats = now + STATS_PERIOD_S
                self.last_rates = self._rates()
                self._send_event(make_event("stats", **self.snapshot()))

    def _send_events(self) -> None:
        """Send the queued events without dropping them at the send HWM.

        A prompt flood ends in a burst of up to hundreds of `superseded`/`applied` events at one block,
        far beyond the 4-message HWM that makes slow subscribers lose frames; every state_id's event
        must still arrive. So events are sent with XPUB_NODROP (a full event subscriber's queue makes the
        send wait for room), for at most EVENT_WAIT_S per batch; after that, lossy as before, so a
        subscriber that stopped reading cannot stall the frames of everybody else for long.
        """
        deadline = time.monotonic() + EVENT_WAIT_S
        lossy = False
        try:
            while True:
                try:
                    event = self.events.get_nowait()
                except queue.Empty:
                    return
                body = [EVENT_TOPIC.encode(), pack(event), b""]
                if not lossy:
                    self.sock.setsockopt(zmq.XPUB_NODROP, 1)
                    lossy = not self._send_waiting(body, deadline)
                    self.sock.setsockopt(zmq.XPUB_NODROP, 0)
                if lossy:
                    self.sock.send_multipart(body)
        finally:
            if lossy:
                log.debug("an event subscriber is not reading: events may be lost")

    def _send_waiting(self, body: list[bytes], deadline: float) -> bool:
        while True:
            try:
                self.sock.send_multipart(body, flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.0005)

    def _next_block(self) -> BlockOut | None:
        while True:
            try:
                blk = self.outbox.get_nowait()
            except queue.Empty:
                return None
            # The engine queues a block's events (`started`, `applied`) before the block: send them
            # before any of its frames, even if they arrived after this loop's first drain.
            self._send_events()
            self.notify_engine()
            if blk.stream == self.box.stream:
                return blk
            self.stats.dropped_blocks += 1

    def snapshot(self) -> dict:
        """The stats map (docs/PROTOCOL.md 3.3), from any thread: rates of the last period, counters live."""
        es = self.engine_stats
        subscribers = self.subs.subscribers  # replaced, never mutated, by the publisher thread
        wanted = formats_for(subscribers)
        rates = {**self.last_rates,
                 "encode_ms": {f: ms for f, ms in self.last_rates["encode_ms"].items() if f in wanted}}
        return {**rates, "subscribers": subscribers, "queue_blocks": self.outbox.qsize(),
                "frames_total": es.frames_total, "frames_published": self.stats.frames_published,
                "dropped_blocks": self.stats.dropped_blocks, "errors": es.errors,
                "transport": {**self.subs.counters(), **self.transport_info()}}

    def _rates(self) -> dict:
        """Rates over the last period (publisher thread: it trims the window of publish times)."""
        now = time.monotonic()
        self._published_times = [t for t in self._published_times if now - t <= STATS_PERIOD_S]
        es = self.engine_stats
        return {
            "fps_out": len(self._published_times) / STATS_PERIOD_S,
            "fps_gen": round(es.fps_gen, 3),
            "block_ms": round(es.block_ms, 3),
            "encode_ms": {f: round(1000 * sum(t) / len(t), 3) for f, t in self._enc_time.items() if t},
        }
