"""``sfbridge view``: a pygame window that shows the live stream and steers it.

Why this exists: a developer wants to see what the daemon produces, how fast and how late, and
to try prompts, before writing a line of game code. The viewer is also the reference for how a
game should consume the stream:

* a receiver thread owns the SUB socket, drains everything waiting and keeps only the newest
  frame (docs/PROTOCOL.md 1.2), so the render loop never blocks on the network and never falls
  behind;
* control requests run in a worker thread with its own :class:`~sfbridge.client.Client`
  (clients are not thread-safe, and a request may wait seconds for a dead daemon), so the UI
  never freezes.

pygame is imported inside :func:`run_viewer` only: the CLI imports this module for every
command to register ``view``, and ``sfbridge status`` must not pay for (or need) pygame.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from sfbridge.client import Client, DaemonUnavailable, FrameKey, RequestError, decode_frame, secure
from sfbridge.protocol import DEFAULT_CONTROL, DEFAULT_FRAMES, EVENT_TOPIC, FRAME_FORMATS, unpack
from sfbridge.security import ClientKeys

log = logging.getLogger("sfbridge.viewer")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNAVAILABLE = 3  # same meaning as in sfbridge.cli: the daemon did not answer

STALL_S = 2.0  # no message for this long: the connection is shown as stalled


# ---------------------------------------------------------------------------------------------
# Receiver thread: newest frame only


@dataclass
class ShownFrame:
    """A decoded frame handed from the receiver to the render loop."""

    image: Any  # numpy [H, W, 3] uint8 RGB
    header: dict[str, Any]
    t_recv: float


class LatestFrameReceiver(threading.Thread):
    """Owns the SUB socket; keeps the newest frame and queues events.

    Decoding happens here, and only for the newest frame of each drain, so a slow render loop
    costs neither decode time nor latency.
    """

    def __init__(self, endpoint: str, fmt: str = "jpeg", context: zmq.Context | None = None,
                 keys: ClientKeys | None = None) -> None:
        super().__init__(name="sfbridge-view-recv", daemon=True)
        self.keys = keys  # CURVE settings (a probe Client's ``keys``), None for NULL
        if fmt not in FRAME_FORMATS:
            raise ValueError(f"format must be one of {FRAME_FORMATS}, got {fmt!r}")
        self.endpoint = endpoint
        self.fmt = fmt
        self.ctx = context or zmq.Context.instance()
        self.events: queue.SimpleQueue[dict] = queue.SimpleQueue()
        self.received = 0  # frames received (including those drained away unshown)
        self.last_message = 0.0  # time.monotonic() of the last message, 0 = none yet
        self._lock = threading.Lock()
        self._latest: ShownFrame | None = None
        self._halt = threading.Event()
        self._seen = FrameKey()

    def take(self) -> ShownFrame | None:
        """The newest frame not taken yet, or None."""
        with self._lock:
            frame, self._latest = self._latest, None
            return frame

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 4)
        sock.setsockopt(zmq.RCVBUF, 1 << 16)
        sock.setsockopt(zmq.SUBSCRIBE, self.fmt.encode())
        sock.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC.encode())
        secure(sock, self.keys)
        sock.connect(self.endpoint)
        try:
            while not self._halt.is_set():
                if not sock.poll(100, zmq.POLLIN):
                    continue
                newest: tuple[dict, bytes] | None = None
                while True:
                    try:
                        msg = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.last_message = time.monotonic()
                    if len(msg) < 3:
                        continue
                    try:
                        header = unpack(msg[1])
                    except Exception:  # noqa: BLE001 - a bad message must not kill the viewer
                        log.warning("undecodable header on topic %r", msg[0][:16])
                        continue
                    if not isinstance(header, dict):
                        continue
                    if msg[0] == EVENT_TOPIC.encode():
                        self.events.put(header)
                        continue
                    if not self._seen.is_new(header):
                        continue  # the daemon's last-value re-send of a frame already seen
                    self.received += 1
                    newest = (header, msg[2])
                if newest is not None:
                    header, payload = newest
                    try:
                        image = decode_frame(str(header.get("format", self.fmt)), header, payload)
                    except Exception as exc:  # noqa: BLE001
                        log.warning("cannot decode frame seq %s: %s", header.get("seq"), exc)
                        continue
                    with self._lock:
                        self._latest = ShownFrame(image=image, header=header, t_recv=time.time())
        finally:
            sock.close(linger=0)


# ---------------------------------------------------------------------------------------------
# Control worker thread


@dataclass
class ControlResult:
    """Outcome of one control request, for the status line."""

    label: str
    result: dict | None = None
    error: str | None = None
    unavailable: bool = False


class ControlWorker(threading.Thread):
    """Runs control requests one by one off the UI thread, with its own Client."""

    def __init__(self, control: str, timeout: float = 2.0, server_key: str | None = None,
                 client_key: str | None = None) -> None:
        super().__init__(name="sfbridge-view-ctl", daemon=True)
        self.control = control
        self.key_files = {"server_key": server_key, "client_key": client_key}
        self.timeout = timeout
        self.jobs: queue.SimpleQueue[tuple[str, Callable[[Client], dict]] | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[ControlResult] = queue.SimpleQueue()

    def submit(self, label: str, fn: Callable[[Client], dict]) -> None:
        self.jobs.put((label, fn))

    def stop(self) -> None:
        self.jobs.put(None)

    def run(self) -> None:
        client = Client(control=self.control, timeout=self.timeout, retries=1, **self.key_files)
        try:
            while (job := self.jobs.get()) is not None:
                label, fn = job
                try:
                    self.results.put(ControlResult(label, result=fn(client)))
                except RequestError as exc:
                    self.results.put(ControlResult(label, error=str(exc)))
                except DaemonUnavailable as exc:
                    self.results.put(ControlResult(label, error=str(exc), unavailable=True))
                except Exception as exc:  # noqa: BLE001 - report, keep the worker alive
                    log.exception("control request %s failed", label)
                    self.results.put(ControlResult(label, error=repr(exc)))
        finally:
            client.close()


# ---------------------------------------------------------------------------------------------
# Viewer state


class RateMeter:
    """Events per second over a sliding window (received / shown fps)."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self.times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self.times.append(now)

    def rate(self, now: float) -> float:
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        return len(self.times) / self.window_s


@dataclass
class ViewerOptions:
    control: str = DEFAULT_CONTROL
    frames: str = DEFAULT_FRAMES
    fmt: str = "jpeg"
    size: tuple[int, int] | None = None
    overlay: bool = True
    screenshot: str | None = None
    screenshot_after: int = 3
    seconds: float | None = None
    timeout: float = 2.0
    type_prompt: str | None = None
    transition: str = "cut"
    wait_frames_s: float = 20.0  # headless modes give up (exit 3) without frames for this long
    server_key: str | None = None  # CURVE key files (else $SFBRIDGE_SERVER_KEY / $SFBRIDGE_CLIENT_KEY)
    client_key: str | None = None
    input_from: str | None = None  # a video file or "camera": sent to the input socket, v2v switched on
    input: str | None = None  # input endpoint (else $SFBRIDGE_INPUT, else the default)
    strength: float = 0.7


@dataclass
class ViewerState:
    """What the overlay shows; updated from frames, events and control replies."""

    model: str = "?"
    prompt: str = ""
    state_id: int | None = None
    block: int | None = None
    seq: int | None = None
    paused: bool = False
    connection: str = "connecting"
    lat_pub_ms: float = 0.0
    lat_gen_ms: float = 0.0
    message: str = ""
    message_t: float = 0.0
    transition: str = "cut"
    typing: bool = False
    text: str = ""
    history: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        log.info("%s", message)
        self.message, self.message_t = message, time.monotonic()


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 832x480, got {text!r}") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise argparse.ArgumentTypeError(f"size {w}x{h} out of range 16..8192")
    return w, h


def fit_rect(src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int, int, int]:
    """Largest rectangle with ``src``'s aspect ratio centred in ``dst`` (letterbox): x, y, w, h."""
    sw, sh = src
    dw, dh = dst
    scale = min(dw / sw, dh / sh)
    w, h = max(1, round(sw * scale)), max(1, round(sh * scale))
    return (dw - w) // 2, (dh - h) // 2, w, h


def run_viewer(opts: ViewerOptions) -> int:
    """Open the window and run until quit, ``--seconds`` or the screenshot is taken; the exit code."""
    # Probe the daemon before opening a window: a clear error beats an empty black window.
    try:
        with Client(control=opts.control, timeout=opts.timeout, retries=1, server_key=opts.server_key,
                    client_key=opts.client_key) as probe:
            keys = probe.keys
            status = probe.status()
    except DaemonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    state = ViewerState(model=str(status.get("model", "?")), prompt=str(status.get("prompt", "")),
                        state_id=status.get("state_id"), paused=bool(status.get("paused", False)),
                        transition=opts.transition)
    frame_size = (int(status.get("width", 832)), int(status.get("height", 480)))
    window_size = opts.size or frame_size

    feeder = None
    if opts.input_from:
        feeder = _start_input(opts, frame_size)
        if feeder is None:
            return EXIT_ERROR

    receiver = LatestFrameReceiver(opts.frames, opts.fmt, keys=keys)
    worker = ControlWorker(opts.control, opts.timeout, opts.server_key, opts.client_key)
    receiver.start()
    worker.start()

    pygame.display.init()
    pygame.font.init()
    if feeder is not None:
        worker.submit("input v2v", lambda c: c.set_input("v2v", strength=opts.strength))
    try:
        return _loop(pygame, opts, state, window_size, receiver, worker)
    finally:
        if feeder is not None:
            feeder.stop()
            worker.submit("input off", lambda c: c.set_input("off"))
        receiver.stop()
        worker.stop()
        if feeder is not None:
            worker.join(timeout=opts.timeout + 0.5)  # let `input off` reach the daemon before exiting
        receiver.join(timeout=1.0)
        pygame.quit()


def _start_input(opts: ViewerOptions, frame_size: tuple[int, int]) -> Any:
    """Open ``--input-from`` and start sending it; None (after one ``error:`` line) when that fails."""
    from sfbridge.input_source import InputFeeder, InputSourceError, frames_from

    try:
        frames = frames_from(opts.input_from or "", frame_size)
        feeder = InputFeeder(frames, opts.input, server_key=opts.server_key, client_key=opts.client_key)
    except (InputSourceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    feeder.start()
    log.info("sending %s to %s at 16 fps (v2v, strength %.2f)", opts.input_from, feeder.client.input_endpoint
             or "the input endpoint", opts.strength)
    return feeder


def _loop(pygame: Any, opts: ViewerOptions, state: ViewerState, window_size: tuple[int, int],
          receiver: LatestFrameReceiver, worker: ControlWorker) -> int:
    screen = pygame.display.set_mode(window_size, pygame.RESIZABLE)
    pygame.display.set_caption("sfbridge view")
    font = pygame.font.Font(None, 20)
    clock = pygame.time.Clock()
    fps_recv, fps_shown = RateMeter(), RateMeter()
    last_received = 0
    frame_surface: Any = None
    shown_header: dict[str, Any] | None = None
    frames_shown = 0
    t_start = time.monotonic()
    t_first_frame: float | None = None
    overlay = opts.overlay
    # --type-prompt test hook: the state id the typed prompt got, once the daemon answered.
    hook_stage = "wait" if opts.type_prompt else "off"
    hook_state_id: int | None = None

    def send_prompt(text: str) -> None:
        transition = state.transition
        worker.submit(f"prompt ({transition})", lambda c: c.set_prompt(text, transition=transition))

    while True:
        now = time.monotonic()
        if opts.seconds is not None and now - t_start >= opts.seconds:
            return EXIT_OK

        # --- input ----------------------------------------------------------------------------
        for ev in pygame.event.get():
            if ev.type == pygame.QUIT:
                return EXIT_OK
            if ev.type == pygame.VIDEORESIZE:
                screen = pygame.display.get_surface()
            elif ev.type == pygame.TEXTINPUT and state.typing:
                state.text += ev.text
            elif ev.type == pygame.KEYDOWN:
                key = ev.key
                if key == pygame.K_TAB:
                    state.transition = "blend" if state.transition == "cut" else "cut"
                    state.note(f"transition: {state.transition}")
                elif state.typing:
                    if key in (pygame.K_RETURN, pygame.K_KP_ENTER):
                        text = state.text.strip()
                        state.typing, state.text = False, ""
                        pygame.key.stop_text_input()
                        if text:
                            send_prompt(text)
                            state.history.append(text)
                    elif key == pygame.K_ESCAPE:
                        state.typing, state.text = False, ""
                        pygame.key.stop_text_input()
                    elif key == pygame.K_BACKSPACE:
                        state.text = state.text[:-1]
                elif key in (pygame.K_RETURN, pygame.K_KP_ENTER, pygame.K_t):
                    state.typing, state.text = True, ""
                    pygame.key.start_text_input()
                elif key == pygame.K_ESCAPE:
                    return EXIT_OK
                elif key == pygame.K_SPACE:
                    if state.paused:
                        worker.submit("resume", lambda c: c.resume())
                    else:
                        worker.submit("pause", lambda c: c.pause())
                elif key == pygame.K_r:
                    worker.submit("reset", lambda c: c.reset())
                elif key == pygame.K_s:
                    seed = random.randrange(2**31)
                    worker.submit(f"seed {seed}", lambda c, seed=seed: c.set_seed(seed))
                elif key in (pygame.K_F1, pygame.K_h):
                    overlay = not overlay

        # --- control replies and events --------------------------------------------------------
        while True:
            try:
                res = worker.results.get_nowait()
            except queue.Empty:
                break
            if res.error:
                state.note(f"{res.label} failed: {res.error}")
            else:
                result = res.result or {}
                if "paused" in result:
                    state.paused = bool(result["paused"])
                state.note(f"{res.label}: " + ", ".join(f"{k}={v}" for k, v in sorted(result.items())))
                if res.label.startswith("prompt") and hook_stage == "sent":
                    hook_state_id = int(result["state_id"])
                    hook_stage = "applied"
        while True:
            try:
                event = receiver.events.get_nowait()
            except queue.Empty:
                break
            _apply_event(state, event)

        # --- newest frame ----------------------------------------------------------------------
        received = receiver.received
        for _ in range(received - last_received):
            fps_recv.tick(now)
        last_received = received
        shown = receiver.take()
        if shown is not None:
            h, w = shown.image.shape[:2]
            frame_surface = pygame.image.frombuffer(shown.image.tobytes(), (w, h), "RGB")
            shown_header = shown.header
            frames_shown += 1
            fps_shown.tick(now)
            wall = time.time()
            hdr = shown.header
            state.lat_pub_ms = 1000.0 * (wall - float(hdr.get("t_pub", wall)))
            state.lat_gen_ms = 1000.0 * (wall - float(hdr.get("t_gen", wall)))
            state.block, state.seq = hdr.get("block"), hdr.get("seq")
            state.state_id = hdr.get("state", state.state_id)
            if t_first_frame is None:
                t_first_frame = now
                log.info("first frame shown: seq %s, %dx%d %s", hdr.get("seq"), w, h, hdr.get("format"))
        if receiver.last_message == 0.0:
            state.connection = "connecting"
        elif now - receiver.last_message > STALL_S:
            state.connection = "paused" if state.paused else f"stalled ({now - receiver.last_message:.0f} s)"
        else:
            state.connection = "paused" if state.paused else "live"

        # --- test hook: type a prompt through the real event queue ------------------------------
        if hook_stage == "wait" and frames_shown >= 1:
            _post_typed_prompt(pygame, opts.type_prompt or "")
            hook_stage = "sent"

        # --- draw ------------------------------------------------------------------------------
        screen.fill((0, 0, 0))
        if frame_surface is not None:
            x, y, w, h = fit_rect(frame_surface.get_size(), screen.get_size())
            if (w, h) == frame_surface.get_size():
                screen.blit(frame_surface, (x, y))
            else:
                screen.blit(pygame.transform.smoothscale(frame_surface, (w, h)), (x, y))
        if overlay:
            _draw_overlay(pygame, screen, font, state, fps_recv.rate(now), fps_shown.rate(now))
        if state.typing:
            _draw_textbox(pygame, screen, font, state)
        pygame.display.flip()

        # --- headless screenshot -----------------------------------------------------------------
        if opts.screenshot and shown is not None and shown_header is not None:
            ready = frames_shown >= opts.screenshot_after
            if hook_stage != "off":
                ready = ready and hook_state_id is not None and int(shown_header.get("state", -1)) >= hook_state_id
            if ready:
                _save_screenshot(pygame, screen, opts.screenshot, shown_header)
                return EXIT_OK
        if (opts.screenshot or opts.type_prompt) and now - (t_first_frame or t_start) > opts.wait_frames_s:
            print(f"error: no (matching) frames from {opts.frames} within {opts.wait_frames_s:.0f} s",
                  file=sys.stderr)
            return EXIT_UNAVAILABLE
        clock.tick(120)


def _apply_event(state: ViewerState, event: dict) -> None:
    etype = event.get("type")
    if etype == "applied":
        state.prompt = str(event.get("prompt", state.prompt))
        state.note(f"applied state {event.get('state_id')} at block {event.get('block')} "
                   f"({event.get('change')}, {event.get('transition')})")
    elif etype == "started":
        state.model = str(event.get("model", state.model))
        state.prompt = str(event.get("prompt", state.prompt))
        state.note(f"scene started: stream {event.get('stream')}")
    elif etype in ("paused", "resumed"):
        state.paused = etype == "paused"
        state.note(f"{etype} at block {event.get('block')}")
    elif etype == "error":
        state.note(f"daemon error {event.get('code')}: {event.get('message')}")
    elif etype == "stopping":
        state.connection = "daemon stopping"
        state.note("daemon is stopping")


def _post_typed_prompt(pygame: Any, text: str) -> None:
    """Feed ``text`` into the prompt box as a user would: Enter, the characters, Enter."""
    def key(k: int, uni: str) -> Any:
        return pygame.event.Event(pygame.KEYDOWN, key=k, mod=0, unicode=uni, scancode=0)

    pygame.event.post(key(pygame.K_RETURN, "\r"))
    for ch in text:
        pygame.event.post(pygame.event.Event(pygame.TEXTINPUT, text=ch))
    pygame.event.post(key(pygame.K_RETURN, "\r"))


def _draw_overlay(pygame: Any, screen: Any, font: Any, s: ViewerState, fps_recv: float, fps_shown: float) -> None:
    prompt = s.prompt if len(s.prompt) <= 70 else s.prompt[:67] + "..."
    lines = [
        f"{s.connection} | model {s.model} | state {s.state_id} | block {s.block} | seq {s.seq}",
        f"fps recv {fps_recv:4.1f} shown {fps_shown:4.1f} | "
        f"latency pub {s.lat_pub_ms:5.1f} ms gen {s.lat_gen_ms:6.1f} ms",
        f"prompt: {prompt}",
        f"transition [Tab]: {s.transition} | Enter: new prompt  Space: pause  R: reset  S: seed  H: overlay",
    ]
    if s.message and time.monotonic() - s.message_t < 5.0:
        lines.append(s.message[:110])
    line_h = font.get_linesize()
    width = max(font.size(line)[0] for line in lines) + 12
    panel = pygame.Surface((min(width, screen.get_width()), line_h * len(lines) + 8), pygame.SRCALPHA)
    panel.fill((0, 0, 0, 150))
    # Bottom left, above the prompt box's row: streams (testsrc included) put their own text at the top.
    top = max(0, screen.get_height() - panel.get_height() - (line_h + 16))
    screen.blit(panel, (0, top))
    for i, line in enumerate(lines):
        screen.blit(font.render(line, True, (255, 255, 255)), (6, top + 4 + i * line_h))


def _draw_textbox(pygame: Any, screen: Any, font: Any, s: ViewerState) -> None:
    line_h = font.get_linesize()
    rect = pygame.Rect(4, screen.get_height() - line_h - 12, screen.get_width() - 8, line_h + 8)
    pygame.draw.rect(screen, (20, 20, 20), rect)
    pygame.draw.rect(screen, (255, 200, 0), rect, 1)
    caret = "_" if int(time.monotonic() * 2) % 2 == 0 else " "
    text = f"prompt ({s.transition}, Enter sends, Esc cancels): {s.text}{caret}"
    img = font.render(text, True, (255, 255, 255))
    # Show the end of a long prompt: that is where the user is typing.
    offset = max(0, img.get_width() - (rect.width - 8))
    screen.blit(img, (rect.x + 4, rect.y + 4), area=pygame.Rect(offset, 0, rect.width - 8, line_h))


def _save_screenshot(pygame: Any, screen: Any, path: str, header: dict[str, Any]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pygame.image.save(screen, str(out))
    meta = {k: (v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in header.items()}
    Path(f"{out}.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    print(f"saved {out} (seq {header.get('seq')}, state {header.get('state')})")


# ---------------------------------------------------------------------------------------------
# CLI


def missing_display() -> str | None:
    """Why no window can open, or None. Without this check pygame falls back to an off-screen driver
    on a headless Linux box and the viewer "runs" invisibly with exit code 0."""
    if sys.platform in ("win32", "darwin") or os.environ.get("SDL_VIDEODRIVER"):
        return None  # no X/Wayland variables there, or the user chose a driver on purpose
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("no display: DISPLAY and WAYLAND_DISPLAY are unset, so no window can open; run it in a desktop "
            "session, set SDL_VIDEODRIVER, or use --screenshot FILE")


def cmd_view(a: argparse.Namespace) -> int:
    problem = missing_display()
    if problem and not a.screenshot:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    if problem:  # a screenshot needs no screen: render into SDL's dummy driver
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    opts = ViewerOptions(control=a.control, frames=a.frames, fmt=a.format, size=a.size,
                         overlay=not a.no_overlay, screenshot=a.screenshot,
                         screenshot_after=max(1, a.screenshot_after), seconds=a.seconds, timeout=a.timeout,
                         type_prompt=a.type_prompt, transition=a.transition, server_key=a.server_key,
                         client_key=a.client_key, input_from=a.input_from, input=a.input, strength=a.strength)
    try:
        return run_viewer(opts)
    except ImportError as exc:
        print(f"error: the viewer needs pygame-ce (pip install pygame-ce): {exc}", file=sys.stderr)
        return EXIT_ERROR


def _strength(text: str) -> float:
    from sfbridge.cli_steering import strength_value

    return strength_value(text)


def add_view_parser(sub: argparse._SubParsersAction) -> None:
    from sfbridge.cli import ENDPOINT_HELP, add_key_options

    p = sub.add_parser("view", help="show the stream in a window and steer it",
                       description="Show the live stream in a pygame window. Keys: Enter/T type a prompt "
                                   "(Enter sends, Esc cancels), Tab cut/blend, Space pause/resume, R reset, "
                                   "S random seed, F1/H overlay, Esc quit.")
    # None: sfbridge.cli resolves $SFBRIDGE_CONTROL / $SFBRIDGE_FRAMES and checks the endpoints after parsing
    p.add_argument("--control", default=None, help=ENDPOINT_HELP["control"])
    p.add_argument("--frames", default=None, help=ENDPOINT_HELP["frames"])
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per control request [%(default)s]")
    add_key_options(p)
    p.add_argument("--format", choices=FRAME_FORMATS, default="jpeg", help="stream format [%(default)s]")
    p.add_argument("--size", type=parse_size, default=None, help="window size WxH (default: frame size)")
    p.add_argument("--no-overlay", action="store_true", help="start without the info overlay")
    p.add_argument("--transition", choices=("cut", "blend"), default="cut", help="initial prompt transition")
    p.add_argument("--screenshot", metavar="FILE", default=None,
                   help="save the window as PNG (and the shown frame's header as FILE.json), then exit")
    p.add_argument("--screenshot-after", type=int, default=3, metavar="N",
                   help="frames to show before the screenshot [%(default)s]")
    p.add_argument("--seconds", type=float, default=None, help="exit after this many seconds")
    p.add_argument("--input-from", metavar="FILE|camera", default=None,
                   help="send a video file (looped) or a camera (camera, camera:N or /dev/videoN; Linux v4l2) to "
                        "the input socket at 16 fps and switch video-to-video on while the window is open")
    p.add_argument("--input", default=None, metavar="ENDPOINT",
                   help="input endpoint for --input-from [$SFBRIDGE_INPUT or tcp://127.0.0.1:5557]")
    p.add_argument("--strength", type=_strength, default=0.7, metavar="S",
                   help="v2v strength 0..1 for --input-from (lower follows the input more) [%(default)s]")
    p.add_argument("--type-prompt", metavar="TEXT", default=None,
                   help="test hook: type TEXT into the prompt box after the first frame (and with "
                        "--screenshot, wait for a frame with its state)")
    p.set_defaults(func=cmd_view)


def _register() -> None:
    """Register into sfbridge.cli, and into ``__main__`` too when run as ``python -m sfbridge.cli``.

    Under ``-m`` the running CLI module is ``__main__``, a different module object from the
    ``sfbridge.cli`` this import finds, so registering only in the latter would lose ``view``.
    """
    from sfbridge.cli import _EXTRA_COMMANDS

    _EXTRA_COMMANDS["view"] = add_view_parser
    extra = getattr(sys.modules.get("__main__"), "_EXTRA_COMMANDS", None)
    if isinstance(extra, dict):
        extra["view"] = add_view_parser


_register()
