"""Python client: ``Client.subscribe()`` for frames, ``set_prompt()`` and friends for steering.

Control requests follow the ZeroMQ guide's Lazy Pirate: send on a DEALER, poll with a timeout,
on timeout close the socket (LINGER 0), open a new one and retry; after the last retry raise
:class:`DaemonUnavailable`. Frames come from a SUB socket; with ``latest_only`` the client
drains everything waiting and yields only the newest frame, which is how a game wants a live
background (never CONFLATE: it breaks multipart messages).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from sfbridge.encoders import decode_jpeg
from sfbridge.endpoints import check_distinct, resolve_endpoint
from sfbridge.input_frames import (
    DEFAULT_INPUT_FPS,
    DEFAULT_STRENGTH,
    check_client_id,
    check_fps,
    default_client_id,
    input_args,
    input_message,
)
from sfbridge.protocol import EVENT_TOPIC, FRAME_FORMATS, MAX_SEED, PROTOCOL_VERSION, pack, unpack
from sfbridge.security import ClientKeys, client_keys
from sfbridge.steering_args import PromptEntry, check_state_id, prompt_args, schedule_args, steps_args

log = logging.getLogger("sfbridge.client")

REQUEST_TIMEOUT_S = 2.0
REQUEST_RETRIES = 3
# Input PUB socket: at most 2 frames wait per connection; past that libzmq drops new ones instead of
# blocking the game's send call. LINGER lets a frame sent just before close() still leave.
INPUT_SNDHWM = 2
INPUT_LINGER_MS = 250


class SfbridgeError(Exception):
    """Base class of client errors."""


class DaemonUnavailable(SfbridgeError):
    """No reply from the daemon after all retries (not running, wrong endpoint, or hung)."""


class RequestError(SfbridgeError):
    """The daemon answered with an error reply; ``code`` is from docs/PROTOCOL.md 2.4."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Frame:
    """A received frame: ``image`` is [H, W, 3] uint8 RGB; ``header`` the protocol header map."""

    image: np.ndarray
    header: dict[str, Any]
    payload: bytes = field(repr=False, default=b"")

    def __getattr__(self, name: str) -> Any:  # frame.seq, frame.block, frame.state, ...
        try:
            return self.__dict__["header"][name]
        except KeyError:
            raise AttributeError(name) from None


def reply_result(reply: Any, rid: int) -> dict | None:
    """``result`` of a reply to request ``rid``; None for a stale reply (to an earlier, timed-out
    request) that the caller skips; raises :class:`RequestError` for an error reply."""
    if not isinstance(reply, dict) or reply.get("id") not in (rid, None):
        return None
    if reply.get("v") != PROTOCOL_VERSION:
        log.warning("daemon speaks protocol %r, client %d", reply.get("v"), PROTOCOL_VERSION)
    if reply.get("ok"):
        return reply.get("result") or {}
    err = reply.get("error") or {}
    raise RequestError(str(err.get("code", "internal")), str(err.get("message", "")))


def unavailable(endpoint: str, retries: int, timeout: float, keys: ClientKeys | None = None) -> DaemonUnavailable:
    hint = "is `sfbridge serve` running?"
    if keys is not None:  # a refused CURVE handshake looks exactly like no daemon: say what to check
        hint += (" With CURVE: is this client's public key in the daemon's --curve-allow DIR, and --server-key "
                 "the daemon's NAME.key?")
    else:
        hint += " A daemon with CURVE answers only clients given --server-key and --client-key."
    return DaemonUnavailable(f"no reply from sfbridge daemon at {endpoint} after {retries} tries of "
                             f"{timeout:.1f} s ({hint})")


class FrameKey:
    """Drops repeated frames (last-value re-sends): same ``stream`` and ``seq`` at or below the last one."""

    def __init__(self) -> None:
        self.last: tuple[Any, int] | None = None

    def is_new(self, header: dict) -> bool:
        key = (header.get("stream"), header.get("seq", -1))
        if self.last is not None and key[0] == self.last[0] and key[1] <= self.last[1]:
            return False
        self.last = key
        return True


def client_endpoints(control: str | None, frames: str | None) -> tuple[str, str]:
    """Endpoints for a client: arguments win, then ``SFBRIDGE_CONTROL`` / ``SFBRIDGE_FRAMES``, then the
    defaults, so a script run next to the CLI steers the same daemon. Raises ValueError naming a bad one.

    The two must differ when both come from the same place (arguments, or environment and defaults);
    a client given only ``control`` is not refused over a frames endpoint it may never use.
    """
    c = resolve_endpoint("control", control)
    f = resolve_endpoint("frames", frames)
    if (control is None) == (frames is None):
        check_distinct(c, f)
    return c[0], f[0]


def request_body(op: str, rid: int, args: dict[str, Any]) -> bytes:
    """Pack a request; a value msgpack cannot carry (an int past 64 bits, say) is a ValueError, not an
    OverflowError from deep inside msgpack."""
    if "seed" in args:
        check_seed(args["seed"])
    try:
        return pack({"op": op, "id": rid, **args})
    except (OverflowError, TypeError, ValueError) as exc:
        raise ValueError(f"request {op!r} cannot be encoded: {exc}") from None


def input_endpoint(value: str | None) -> str:
    """The input endpoint (argument, ``$SFBRIDGE_INPUT``, default), checked by the same rule as the others."""
    return resolve_endpoint("input", value)[0]


def check_seed(seed: int) -> int:
    """Seeds are in the protocol's range 0..2^63-1 (docs/PROTOCOL.md); checked before sending."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED} (2^63-1), got {seed!r}")
    return seed


def send_now(sock: zmq.Socket, body: bytes) -> bool:
    """Queue a request without blocking; False when the DEALER has no pipe left.

    That happens after a refused handshake (an unknown CURVE key, a NULL client at a CURVE daemon):
    libzmq drops the connection for good and a blocking send would wait forever. A daemon that is
    merely absent leaves the pipe in place (the request waits in it), so this is only the refusal.
    """
    try:
        sock.send(body, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


def no_frames_hint(keys: ClientKeys | None) -> str:
    return " (with CURVE: is this client's key admitted by the daemon?)" if keys is not None else ""


def secure(sock: zmq.Socket, keys: ClientKeys | None) -> None:
    """CURVE on ``sock`` when keys are set (before connect); else NULL, as a loopback daemon expects."""
    if keys is not None:
        keys.apply(sock)


def decode_frame(fmt: str, header: dict, payload: bytes) -> np.ndarray:
    if fmt == "jpeg":
        return decode_jpeg(payload)
    if fmt == "rgb24":
        w, h = header["w"], header["h"]
        if len(payload) != w * h * 3:
            raise SfbridgeError(f"rgb24 payload is {len(payload)} bytes, expected {w}x{h}x3")
        return np.frombuffer(payload, dtype=np.uint8).reshape(h, w, 3)
    raise SfbridgeError(f"unknown frame format {fmt!r}")


class ClientBase:
    """What :class:`Client` and :class:`sfbridge.aio.AsyncClient` set up alike: endpoints, CURVE keys, the
    input endpoint and client id, the retry policy and request ids; and how a dead control socket is dropped."""

    def __init__(self, control: str | None, frames: str | None, timeout: float, retries: int, input: str | None,
                 client_id: str | None, server_key: str | os.PathLike | None,
                 client_key: str | os.PathLike | None) -> None:
        self.control_endpoint, self.frames_endpoint = client_endpoints(control, frames)
        self.keys = client_keys(server_key, client_key)
        # An explicit input endpoint is checked now; $SFBRIDGE_INPUT / the default only when the first frame
        # is sent, so a client that never sends frames is not refused over a setting it does not use.
        self.input_endpoint: str | None = input_endpoint(input) if input is not None else None
        self.client_id = check_client_id(client_id) if client_id is not None else default_client_id()
        self._input_seq = itertools.count(0)
        self.timeout, self.retries = timeout, retries
        self._ids = itertools.count(1)
        self._sock: zmq.Socket | None = None  # the control DEALER, made on first use
        # One routing id for every socket this client opens: the daemon knows a retry on a new socket
        # for the same request (docs/PROTOCOL.md "Retries"). A leading zero byte is reserved by libzmq.
        self.routing_id = b"sfb" + os.urandom(13)

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


class Client(ClientBase):
    """Synchronous client. Not thread-safe: use one per thread (they are cheap).

    ``control`` / ``frames`` / ``input`` default to ``$SFBRIDGE_CONTROL`` / ``$SFBRIDGE_FRAMES`` /
    ``$SFBRIDGE_INPUT``, then to tcp://127.0.0.1:5555 / :5556 / :5557; a malformed endpoint raises
    ValueError here, not at the first request. ``client_id`` names this client's input frames
    (default: unique per process and client).

    ``server_key`` / ``client_key``: for a daemon with CurveZMQ, its public ``NAME.key`` file and this
    client's ``NAME.key_secret`` (default ``$SFBRIDGE_SERVER_KEY`` / ``$SFBRIDGE_CLIENT_KEY``; neither: NULL).
    A missing, unreadable or wrong file raises ValueError (:class:`sfbridge.security.AccessError`) here.
    """

    def __init__(self, control: str | None = None, frames: str | None = None,
                 timeout: float = REQUEST_TIMEOUT_S, retries: int = REQUEST_RETRIES,
                 context: zmq.Context | None = None, *, input: str | None = None,
                 client_id: str | None = None, server_key: str | os.PathLike | None = None,
                 client_key: str | os.PathLike | None = None) -> None:
        super().__init__(control, frames, timeout, retries, input, client_id, server_key, client_key)
        self._input_sock: zmq.Socket | None = None
        self.ctx = context or zmq.Context.instance()

    # --- control ---------------------------------------------------------------------------------

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, self.routing_id)
            secure(sock, self.keys)
            sock.connect(self.control_endpoint)
            self._sock = sock
        return self._sock

    def request(self, op: str, **args: Any) -> dict:
        """Send one request, return its ``result``; raises RequestError or DaemonUnavailable."""
        rid = next(self._ids)
        body = request_body(op, rid, args)
        for attempt in range(1, self.retries + 1):
            sock = self._socket()
            if not send_now(sock, body):
                log.info("daemon at %s refused the handshake (attempt %d/%d)", self.control_endpoint, attempt,
                         self.retries)
                self._drop_socket()
                continue
            deadline_ms = int(self.timeout * 1000)
            while sock.poll(deadline_ms, zmq.POLLIN):
                result = reply_result(unpack(sock.recv()), rid)
                if result is not None:
                    return result
            log.info("no reply to %r from %s (attempt %d/%d)", op, self.control_endpoint, attempt, self.retries)
            self._drop_socket()
        raise unavailable(self.control_endpoint, self.retries, self.timeout, self.keys)

    def ping(self) -> dict:
        return self.request("ping")

    def status(self) -> dict:
        return self.request("status")

    def set_prompt(self, text: str | None = None, transition: str = "cut", blend_blocks: int | None = None, *,
                   prompts: Iterable[PromptEntry] | None = None, interp: str | None = None, mix: str | None = None,
                   recache: bool = False, at_block: int | None = None, at_pts: float | None = None) -> dict:
        """Change the prompt -> ``{state_id, applies_at_block, scheduled}`` (docs/PROTOCOL.md 2.2).

        ``text`` or ``prompts`` (a weighted list: ``[("a red desert", 0.7), ("a blue ocean", 0.3)]`` or
        ``{"text", "weight"}`` maps), combined by ``mix`` (``linear``; ``slerp`` for exactly 2).
        ``transition``: ``cut`` or ``blend`` over ``blend_blocks`` (daemon default 4; ignored for a cut)
        along ``interp`` (``linear`` or ``slerp``). ``recache``: rebuild the attention cache of the
        window under the new prompt where it lands. ``at_block`` / ``at_pts``: land at that block of the
        scene (or scene time in seconds) instead of the next one. Bad arguments raise ValueError.
        """
        return self.request("prompt", **prompt_args(text, transition, blend_blocks, prompts=prompts, interp=interp,
                                                     mix=mix, recache=recache, at_block=at_block, at_pts=at_pts))

    def set_seed(self, seed: int, at_block: int | None = None, at_pts: float | None = None) -> dict:
        return self.request("seed", seed=check_seed(seed), **schedule_args(at_block, at_pts))

    def set_steps(self, steps: Iterable[int], at_block: int | None = None, at_pts: float | None = None) -> dict:
        return self.request("steps", **steps_args(steps, at_block, at_pts))

    def cancel(self, state_id: int) -> dict:
        """Drop a scheduled change before it lands -> ``{cancelled: state_id}``; RequestError ``not_found``
        when it is unknown or has already landed."""
        return self.request("cancel", state_id=check_state_id(state_id))

    def pause(self) -> dict:
        return self.request("pause")

    def resume(self) -> dict:
        return self.request("resume")

    def reset(self, prompt: str | None = None, seed: int | None = None) -> dict:
        args: dict[str, Any] = {}
        if prompt is not None:
            args["prompt"] = prompt
        if seed is not None:
            args["seed"] = seed
        return self.request("reset", **args)

    def set_input(self, mode: str, strength: float = DEFAULT_STRENGTH, motion_adaptive: bool = False,
                  at_block: int | None = None, at_pts: float | None = None) -> dict:
        """Switch video-to-video on (``v2v``) or off -> ``{state_id, applies_at_block, scheduled}``.

        ``strength`` 0..1 is how far the input is noised before the remaining steps run (1.0 = plain
        text-to-video); ``motion_adaptive`` lowers it while the input moves a lot (docs/PROTOCOL.md).
        """
        return self.request("input", **input_args(mode, strength, motion_adaptive, at_block, at_pts))

    # --- input frames ----------------------------------------------------------------------------

    def _input_socket(self) -> zmq.Socket:
        if self._input_sock is None:
            self.input_endpoint = self.input_endpoint or input_endpoint(None)
            sock = self.ctx.socket(zmq.PUB)
            sock.setsockopt(zmq.LINGER, INPUT_LINGER_MS)
            sock.setsockopt(zmq.SNDHWM, INPUT_SNDHWM)
            secure(sock, self.keys)  # CURVE like every other socket of this client
            sock.connect(self.input_endpoint)
            self._input_sock = sock
        return self._input_sock

    def send_frame(self, image: np.ndarray | bytes, *, t_cap: float | None = None, client: str | None = None,
                   seq: int | None = None) -> dict[str, Any]:
        """Send one input frame to the daemon's input socket; returns the header that went out.

        ``image``: an RGB array ``[H, W, 3]`` uint8 (sent as ``rgb24``) or JPEG bytes (sent as is), any
        size up to 4096 per side (the daemon scales and centre-crops it to the model's size).
        ``t_cap``: capture time, default now (``time.time()``); frame headers echo it in ``input`` so
        the round trip can be measured. ``client`` / ``seq``: default this client's id and a counter.

        Never blocks: the PUB socket (connected on first use) drops frames while the daemon is slow,
        absent or not yet connected, so the first frame or two after start may not arrive.
        """
        header, payload = input_message(image, client=self.client_id if client is None else client,
                                        seq=next(self._input_seq) if seq is None else seq, t_cap=t_cap)
        self._input_socket().send_multipart([pack(header), payload], flags=zmq.NOBLOCK, copy=False)
        return header

    def stream_frames(self, frames: Iterable[np.ndarray | bytes], fps: float = DEFAULT_INPUT_FPS) -> int:
        """Send every frame of ``frames`` at ``fps`` (default 16, the model's rate), blocking until the
        iterable ends; returns how many were sent. A slow iterable is not waited for twice: when a
        frame comes late, the next one is due a period after it. Run it in its own thread (with its own
        Client) next to a game loop."""
        period = 1.0 / check_fps(fps)
        due = time.monotonic()
        sent = 0
        for image in frames:
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
            else:
                due = now
            self.send_frame(image)
            sent += 1
            due += period
        return sent

    # --- stream ----------------------------------------------------------------------------------

    def subscribe(self, format: str = "jpeg", latest_only: bool = True, events: bool = False,
                  timeout: float | None = None, decode: bool = True) -> Iterator[Frame | dict]:
        """Yield :class:`Frame` objects (and event dicts when ``events``) until the caller stops.

        ``timeout``: seconds without any message before raising :class:`DaemonUnavailable`
        (None waits forever). Frames with a ``seq`` at or below the last one yielded (the
        daemon's last-value re-sends) are skipped.
        """
        if format not in FRAME_FORMATS:
            raise ValueError(f"format must be one of {FRAME_FORMATS}, got {format!r}")
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 4)
        sock.setsockopt(zmq.RCVBUF, 1 << 16)
        sock.setsockopt(zmq.SUBSCRIBE, format.encode())
        if events:
            sock.setsockopt(zmq.SUBSCRIBE, EVENT_TOPIC.encode())
        secure(sock, self.keys)
        sock.connect(self.frames_endpoint)
        seen = FrameKey()
        wait_ms = None if timeout is None else int(timeout * 1000)
        try:
            while True:
                if not sock.poll(wait_ms, zmq.POLLIN):
                    raise DaemonUnavailable(f"no frames from {self.frames_endpoint} within {timeout} s"
                                            f"{no_frames_hint(self.keys)}")
                msgs = [sock.recv_multipart()]
                if latest_only:
                    while True:
                        try:
                            msgs.append(sock.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                    # keep every event, but only the newest frame
                    frames = [m for m in msgs if m[0] != EVENT_TOPIC.encode()]
                    msgs = [m for m in msgs if m[0] == EVENT_TOPIC.encode()] + frames[-1:]
                for topic, header_raw, payload in (m[:3] for m in msgs if len(m) >= 3):
                    header = unpack(header_raw)
                    if topic == EVENT_TOPIC.encode():
                        if events:
                            yield header
                        continue
                    if not seen.is_new(header):
                        continue
                    image = decode_frame(header["format"], header, payload) if decode else np.empty(0)
                    yield Frame(image=image, header=header, payload=payload)
        finally:
            sock.close(linger=0)

    def close(self) -> None:
        self._drop_socket()
        if self._input_sock is not None:
            self._input_sock.close()
            self._input_sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
