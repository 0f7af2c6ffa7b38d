"""``sfbridge serve``: wires generator, engine, control and publisher threads together.

Threads (vLLM v1 engine-core layout): the engine owns the generator; the control thread owns the
ROUTER; the publisher owns the XPUB and the encoders. They share only queues and the
:class:`SteeringBox`. Shutdown goes through state: a signal sets ``stopping``; a second signal
forces the exit.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from sfbridge import __version__, values
from sfbridge.control import ControlServer
from sfbridge.encoders import make_encoders
from sfbridge.engine import Engine, EngineStats
from sfbridge.generators import Generator, GeneratorError, Steering, create_generator
from sfbridge.input import InputServer
from sfbridge.prepare import PrepareQueue
from sfbridge.protocol import (
    DEFAULT_CONTROL,
    DEFAULT_FRAMES,
    DEFAULT_INPUT,
    FRAME_FORMATS,
    PROTOCOL_VERSION,
    Cancel,
    Input,
    Ping,
    Prompt,
    ProtocolError,
    Request,
    Reset,
    Resume,
    Seed,
    Status,
    Steps,
    make_event,
)
from sfbridge.protocol import Pause as PauseReq
from sfbridge.publisher import Publisher
from sfbridge.security import ServerAccess
from sfbridge.steering import Change, SteeringBox

log = logging.getLogger("sfbridge.daemon")

DEFAULT_PROMPT = "a beautiful landscape with mountains and a lake, cinematic lighting"
EXIT_THREAD_DIED = 4  # serve's exit code when a daemon thread died (the CLI's 1-3 mean other things)
WATCH_PERIOD_S = 0.2  # how often serve checks that every daemon thread still runs
DEATH_NOTICE_S = 1.0  # how long a dying daemon waits for its `error` event to leave
ZAP_THREAD = "sfbridge-zap"  # the CURVE authenticator's thread (sfbridge/security.py), watched like ours


@dataclass
class DaemonConfig:
    model: str = "testsrc"
    control: str = DEFAULT_CONTROL
    frames: str = DEFAULT_FRAMES
    # SUB, bound: game frames in (sfbridge/input.py, docs/PROTOCOL.md "Input frames"). None: DEFAULT_INPUT, and
    # if that is taken (a second daemon) the daemon runs without input, with a warning; a given one must bind.
    input: str | None = None
    prompt: str = DEFAULT_PROMPT
    seed: int = 0
    jpeg_quality: int = 85
    pace: str = "native"  # "native" (16 fps or the production rate) or "off"
    sndhwm: int = 4  # messages queued per subscriber before frames are dropped
    max_ahead: int = 1  # blocks the engine may generate ahead of the publisher
    model_options: dict[str, Any] = field(default_factory=dict)  # width, height, model-dir, dtype...
    curve_secret: str | None = None  # the daemon's NAME.key_secret: CurveZMQ on every socket (sfbridge/security.py)
    curve_allow: str | None = None  # directory of the client NAME.key files admitted
    insecure: bool = False  # allow a non-loopback bind without CURVE (warned in the log and `status`)

    def __post_init__(self) -> None:
        """Every value through its validator (sfbridge/values.py), as on the wire and the command line: a
        daemon started from Python gets a ValueError naming the field, not a dead thread later."""
        checks = {"model": values.model, "prompt": values.prompt, "seed": values.seed, "pace": values.pace,
                  "jpeg_quality": values.jpeg_quality, "sndhwm": values.sndhwm,
                  "max_ahead": lambda v, n: values.integer(v, n, 1, 64)}
        for name, check in checks.items():
            try:
                setattr(self, name, check(getattr(self, name), name))
            except values.InvalidValue as exc:
                raise values.InvalidValue(name, f"DaemonConfig.{name}: {exc}") from None
        option_checks = {"seed": values.seed, "block_delay": values.block_delay}
        for name, check in option_checks.items():
            if self.model_options.get(name) is not None:
                try:
                    check(self.model_options[name], name)
                except values.InvalidValue as exc:
                    raise values.InvalidValue(name, f"DaemonConfig.model_options[{name!r}]: {exc}") from None


def build_generator(model: str, options: dict[str, Any]) -> tuple[Generator, list[str]]:
    """Create the generator; ``auto`` prefers the real model and falls back to the test pattern."""
    if model != "auto":
        return create_generator(model, **options), []
    try:
        return create_generator("self-forcing", **options), []
    except GeneratorError as exc:
        warning = f"{exc}; serving the test pattern instead"
        log.warning("--model auto: %s", warning)
        banner = "self-forcing unavailable: run `sfbridge doctor`"  # the full reason: log and status
        return create_generator("testsrc", warnings=[warning], banner=banner, **options), [warning]


class Daemon:
    def __init__(self, config: DaemonConfig, generator: Generator | None = None) -> None:
        self.config = config
        # Access first: a refused bind or a bad key file fails before any model is loaded.
        endpoints = {"control": config.control, "frames": config.frames, "input": config.input or DEFAULT_INPUT}
        self.access = ServerAccess.configure(endpoints,
                                             config.curve_secret, config.curve_allow, config.insecure)
        self.warnings: list[str] = list(self.access.warnings)
        if generator is None:
            generator, built = build_generator(config.model, config.model_options)
            self.warnings += built
        self.generator = generator
        # Generators are engine-thread-only: read their static facts once, here, for `status`.
        self.description = generator.describe()
        self.takes_input = generator.supports_input()
        self.started = time.time()
        self.box = SteeringBox(Steering(prompt=config.prompt, seed=config.seed, state_id=1), fps=generator.fps)
        self.outbox: queue.Queue = queue.Queue()
        self.events: queue.Queue = queue.Queue()
        self.ctx = zmq.Context()
        self.access.start(self.ctx)  # the ZAP handler exists before any socket can take a handshake
        self.engine_stats = EngineStats()
        self.publisher = Publisher(self.ctx, config.frames, self.box, self.outbox, self.events,
                                   self.engine_stats, make_encoders(config.jpeg_quality), fps=generator.fps,
                                   pace=config.pace, sndhwm=config.sndhwm, notify_engine=lambda: self.engine.notify(),
                                   state_info=self.state_info, access=self.access,
                                   transport_info=lambda: self.control.counters())
        self.engine = Engine(generator, self.box, self.outbox, self.events, max_ahead=config.max_ahead,
                             stats=self.engine_stats, on_output=self.publisher.wake,
                             on_due=lambda c: self.preparer.submit(c.texts, c.state_id, settle=False))
        self.control = ControlServer(self.ctx, config.control, self.handle, access=self.access)
        # Game frames in (issue 12): the engine takes one block of them per block in v2v mode.
        self.input = self._open_input()
        self.engine.take_input = self.input.take if self.input is not None else None
        self.stopped = threading.Event()
        self.failures: dict[str, BaseException] = {}  # thread name -> what killed it (see dead_thread)
        # Text encoding off the engine and control threads, bounded: see sfbridge/prepare.py.
        self.preparer = PrepareQueue(self._recording("sfbridge-prepare", generator.prepare),
                                     self._recording("sfbridge-prepare", self.box.wants_encoding))

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Daemon:
        self.publisher.start()
        self.control.start()
        if self.input is not None:
            self.input.start()
        self.engine.start()
        log.info("serving %s %dx%d: control %s, frames %s", self.generator.name, self.generator.width,
                 self.generator.height, self.control.endpoint, self.publisher.endpoint)
        return self

    # --- watching the threads ------------------------------------------------------------------------
    # A thread that dies must take the daemon down (issue 11): a daemon without its publisher answers
    # `ping` but sends no frame, one without its control thread streams but cannot be steered.

    def threads(self) -> list[threading.Thread]:
        """Every thread the daemon cannot run without. The decode worker (overlapped generators) is not
        here: its failures come back through each block's future and restart the scene (engine.py)."""
        inp = [self.input.thread] if self.input is not None else []  # game frames in: dead means no v2v
        return [self.engine.thread, self.control.thread, self.publisher.thread, self.preparer.thread, *inp]

    def _recording(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, noting what it raises past the thread's own handlers (a BaseException) as ``name``'s death."""
        def call(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception:
                raise
            except BaseException as exc:
                self.failures.setdefault(name, exc)
                raise
        return call

    def failure(self, name: str) -> BaseException | None:
        """What killed thread ``name``, when it is known (engine, control and publisher note their own)."""
        owner = {self.engine.thread.name: self.engine, self.control.thread.name: self.control,
                 self.publisher.thread.name: self.publisher,
                 **({self.input.thread.name: self.input} if self.input is not None else {})}.get(name)
        return self.failures.get(name) or getattr(owner, "failure", None)

    def dead_thread(self) -> str | None:
        """The name of a daemon thread that ended although nobody stopped the daemon, else None."""
        if self.stopped.is_set() or self.box.stopping:
            return None
        dead = next((t.name for t in self.threads() if t.ident is not None and not t.is_alive()), None)
        return dead or (None if self.access.alive() else ZAP_THREAD)

    def die(self, name: str) -> int:
        """Report the dead thread ``name`` (log, and an `error` event while the publisher can still send it),
        stop, and return EXIT_THREAD_DIED: the daemon never runs on as a zombie."""
        exc = self.failure(name)
        what = f"{type(exc).__name__}: {exc}" if exc is not None else "ended without an exception"
        log.error("thread %s died (%s): stopping the daemon, exit code %d", name, what, EXIT_THREAD_DIED)
        if self.publisher.thread.is_alive():
            self._emit(make_event("error", code="internal", thread=name,
                                  message=f"daemon thread {name} died ({what[:200]}); the daemon exits"))
            deadline = time.monotonic() + DEATH_NOTICE_S
            while not self.events.empty() and time.monotonic() < deadline and self.publisher.thread.is_alive():
                time.sleep(0.01)
            time.sleep(0.05)  # taken from the queue is not yet sent: one publisher loop turn
        self.stop()
        return EXIT_THREAD_DIED

    def wait(self, stop: threading.Event) -> int:
        """Serve until ``stop`` is set (-> 0) or a thread dies (-> EXIT_THREAD_DIED); the daemon is stopped."""
        while not stop.wait(WATCH_PERIOD_S):
            dead = self.dead_thread()
            if dead is not None:
                return self.die(dead)
        self.stop()
        return 0

    def stop(self, timeout: float = 5.0) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        log.info("shutting down")
        self.box.stop()
        self.engine.thread.join(timeout)
        self.control.stop()
        self.publisher.stop()
        self.control.thread.join(timeout)
        self.publisher.thread.join(timeout)
        self.preparer.stop()
        if self.input is not None:
            self.input.stop()
            self.input.thread.join(timeout)
        self.access.stop()
        t0 = time.monotonic()
        self.ctx.term()  # waits for the publisher's linger: the `stopping` event leaves before we exit
        log.info("stopped (sockets flushed in %.3f s)", time.monotonic() - t0)

    # --- requests (called from the control thread) -------------------------------------------------

    def handle(self, req: Request) -> dict:
        if isinstance(req, Ping):
            return {"pong": True, "time": time.time()}
        if isinstance(req, Status):
            return self.status()
        if isinstance(req, Prompt):
            fields = {"prompt": req.text, "prompts": req.prompts, "mix": req.mix, "interp": req.interp,
                      "recache": req.recache, "transition": req.transition, "blend_blocks": req.blend_blocks}
            accepted = self.box.submit("prompt", fields, req.schedule, texts=req.texts())
            if not accepted[0].scheduled:  # scheduled ones are encoded when due (the engine's on_due)
                self.preparer.submit(accepted[0].texts, accepted[0].state_id)
            return self._accepted(*accepted)
        if isinstance(req, Seed):
            return self._accepted(*self.box.submit("seed", {"seed": req.seed}, req.schedule))
        if isinstance(req, Steps):
            if not self.generator.supports_steps():
                raise ProtocolError("not_supported", f"model {self.generator.name!r} has no denoising steps")
            steps = tuple(float(s) for s in req.steps)
            return self._accepted(*self.box.submit("steps", {"denoising_steps": steps}, req.schedule))
        if isinstance(req, Cancel):
            change = self.box.cancel(req.state_id)
            self._emit(make_event("cancelled", state_id=change.state_id, change=change.kind, reason="cancel"))
            return {"cancelled": change.state_id}
        if isinstance(req, PauseReq):
            with self.publisher.gate:  # no frame publish starts after this block: the reply names the last
                self.box.set_paused(True)
                last_seq = self.publisher.last_seq
            return {"paused": True, "last_seq": last_seq}
        if isinstance(req, Resume):
            self.box.set_paused(False)
            return {"paused": False}
        if isinstance(req, Input):
            if req.mode == "v2v" and not self.takes_input:
                raise ProtocolError("not_supported", f"model {self.generator.name!r} takes no input frames")
            fields = {"input_mode": req.mode, "input_strength": req.strength, "input_motion": req.motion_adaptive}
            return self._accepted(*self.box.submit("input", fields, req.schedule))
        if isinstance(req, Reset):
            if req.prompt is not None:
                self.preparer.submit((req.prompt,), None, settle=False)
            state_id, stream, dropped = self.box.reset(req.prompt, req.seed)
            for change in dropped:
                self._emit(make_event("cancelled", state_id=change.state_id, change=change.kind, reason="reset"))
            return {"state_id": state_id, "stream": stream}
        raise ProtocolError("unknown_op", f"unhandled request {type(req).__name__}")  # pragma: no cover

    def _accepted(self, change: Change, older: Change | None) -> dict:
        if older is not None:  # decided now: both would land on the same block (SteeringBox.submit)
            self._emit(make_event("superseded", state_id=older.state_id, change=older.kind, by=change.state_id,
                                  block=change.at_block))
        return {"state_id": change.state_id, "applies_at_block": change.at_block, "scheduled": change.scheduled}

    def _emit(self, event: dict) -> None:
        """An event from the control thread (cancel, reset); the publisher sends it with the engine's."""
        self.events.put(event)
        self.publisher.wake()

    def state_info(self) -> dict:
        """Where the stream stands: sent as a `state` event to every new event subscriber."""
        s = self.box.peek()
        return {"stream": self.box.stream, "model": self.generator.name, "width": self.generator.width,
                "height": self.generator.height, "fps": self.generator.fps, "prompt": s.prompt,
                "prompts": [{"text": t, "weight": w} for t, w in s.weighted()], "mix": s.mix, "seed": s.seed,
                "state_id": s.state_id, "block": self.box.next_block, "paused": self.box.paused}

    def _open_input(self) -> InputServer | None:
        endpoint = self.config.input or DEFAULT_INPUT
        try:
            return InputServer(self.ctx, endpoint, self.generator.width, self.generator.height, self._emit,
                               bind=self.access.bind)
        except zmq.ZMQError as exc:
            if self.config.input is not None or exc.errno != zmq.EADDRINUSE:
                raise
            warning = f"input endpoint {endpoint} is in use (another daemon?): no input frames; pass --input"
            log.warning("%s", warning)
            self.warnings.append(warning)
            return None

    def input_status(self) -> dict:
        """Input mode of the pending state and the input socket's per-client stats (docs/PROTOCOL.md 5)."""
        s = self.box.peek()
        live = self.input.snapshot() if self.input is not None else {"endpoint": None, "clients": {}}
        return {"mode": s.input_mode, "strength": s.input_strength, "motion_adaptive": s.input_motion,
                "supported": self.takes_input, **live}

    def status(self) -> dict:
        desc = self.description
        steps = self.box.peek().denoising_steps
        return {
            **desc,
            **self.state_info(),
            "protocol": PROTOCOL_VERSION,
            "version": __version__,
            "steps": list(steps) if steps else None,
            "scheduled": [{"state_id": c.state_id, "change": c.kind, "at_block": c.at_block}
                          for c in self.box.scheduled()],
            "uptime": time.time() - self.started,
            "formats": list(FRAME_FORMATS),
            "jpeg_quality": self.config.jpeg_quality,
            "pace": self.config.pace,
            "warnings": list(dict.fromkeys([*self.warnings, *desc.get("warnings", []), *self.engine.oom.warnings])),
            "stats": self.publisher.snapshot(),
            "pid": os.getpid(),
            "input": self.input_status(),
            "security": self.access.snapshot(),
        }


# A second SIGINT/SIGTERM forces the exit (a user pressing Ctrl-C again), unless it came this soon after the
# first: then it is one request delivered twice, to the process and to its process group.
SECOND_SIGNAL_AFTER_S = 0.5


def serve(config: DaemonConfig, generator: Generator | None = None) -> int:
    """Run the daemon until SIGINT/SIGTERM (-> 0) or until one of its threads dies (-> EXIT_THREAD_DIED)."""
    daemon = Daemon(config, generator).start()
    stop = threading.Event()
    first_at: float | None = None  # when the first stop signal came

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal first_at
        now = time.monotonic()
        if first_at is not None and now - first_at >= SECOND_SIGNAL_AFTER_S:
            log.warning("second signal: forcing exit")
            os._exit(130)
        if first_at is not None:  # one request delivered twice (timeout(1), process-group kills signal the group)
            log.info("signal %d again within %.1f s: already stopping", signum, SECOND_SIGNAL_AFTER_S)
            return
        first_at = now
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return daemon.wait(stop)
