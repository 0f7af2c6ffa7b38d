"""Game frames in, daemon side, without sockets: validate a message, decode it to the model size, keep
the newest frames, and hand the engine one block of them resampled to 16 fps.

Why apart from the socket thread (:mod:`sfbridge.input`): every rule here (what a bad frame is, the
"cover" resize, the 16 fps resampling, the hold-then-fallback rule) is a pure function of its
inputs and a clock, so tests pin each without ZeroMQ. docs/PROTOCOL.md "Input frames" is the contract.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import msgpack
import numpy as np
import simplejpeg
from PIL import Image

from sfbridge.generators.base import NATIVE_FPS, InputBlock

INPUT_FORMATS = ("jpeg", "rgb24")
MAX_SIDE = 4096  # w and h of an input frame: 1..4096
MAX_CLIENT_CHARS = 64
MAX_HEADER_BYTES = 4096
MAX_SEQ = 2**63 - 1
RING_FRAMES = 32  # decoded frames kept (newest wins): 2 s at 16 fps, 0.5 s at the 64/s cap
HOLD_S = 2.0  # no new input for longer than this: the block is text-only (fallback) until input comes back

# Reasons of a `bad_input` error event (docs/PROTOCOL.md "Input frames").
REASONS = ("bad_message", "bad_header", "bad_size", "payload_size", "bad_jpeg", "rate")


class BadInput(Exception):
    """An input message the daemon drops; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str, client: str = "?", seq: int | None = None) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason, self.message, self.client, self.seq = reason, message, client, seq


@dataclass(frozen=True)
class InputHeader:
    format: str
    w: int
    h: int
    t_cap: float
    client: str
    seq: int


def peek_client(raw: bytes) -> tuple[str, int | None]:
    """(client, seq) of a header that may be invalid, for the error event; "?" / None when unreadable."""
    try:
        m = _unpack(raw)
        client = m.get("client") if isinstance(m, dict) else None
        seq = m.get("seq") if isinstance(m, dict) else None
    except Exception:
        return "?", None
    ok_client = isinstance(client, str) and 1 <= len(client) <= MAX_CLIENT_CHARS
    ok_seq = isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_SEQ
    return (client if ok_client else "?"), (seq if ok_seq else None)


def _unpack(raw: bytes) -> object:
    if len(raw) > MAX_HEADER_BYTES:
        raise BadInput("bad_header", f"header is {len(raw)} bytes, max {MAX_HEADER_BYTES}")
    # Limits refuse hostile containers before they are built.
    return msgpack.unpackb(raw, raw=False, max_str_len=MAX_HEADER_BYTES, max_bin_len=0, max_array_len=16,
                           max_map_len=32, max_ext_len=0, strict_map_key=False)


def parse_header(raw: bytes) -> InputHeader:
    """Validate the header frame; raises :class:`BadInput` (bad_header or bad_size)."""
    client, seq = peek_client(raw)
    try:
        m = _unpack(raw)
    except BadInput as e:
        e.client, e.seq = client, seq
        raise
    except Exception as e:
        raise BadInput("bad_header", f"header is not msgpack: {type(e).__name__}", client, seq) from None
    if not isinstance(m, dict):
        raise BadInput("bad_header", f"header must be a map, got {type(m).__name__}", client, seq)

    def need(name: str, ok: bool, what: str) -> None:
        if name not in m or m[name] is None:
            raise BadInput("bad_header", f"header needs field {name!r} ({what})", client, seq)
        if not ok:
            raise BadInput("bad_header", f"header field {name!r} must be {what}, got {m[name]!r:.64}", client, seq)

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    need("format", m.get("format") in INPUT_FORMATS, "jpeg or rgb24")
    need("client", client != "?", f"a string of 1..{MAX_CLIENT_CHARS} chars")
    need("seq", seq is not None, "an int >= 0")
    t_cap = m.get("t_cap")
    need("t_cap", isinstance(t_cap, (int, float)) and not isinstance(t_cap, bool) and math.isfinite(t_cap),
         "a finite number (seconds)")
    need("w", is_int(m.get("w")), "an int")
    need("h", is_int(m.get("h")), "an int")
    w, h = m["w"], m["h"]
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise BadInput("bad_size", f"frame size {w}x{h} is outside 1..{MAX_SIDE}", client, seq)
    return InputHeader(format=m["format"], w=w, h=h, t_cap=float(t_cap), client=client, seq=seq)


def cover_box(w: int, h: int, width: int, height: int) -> tuple[float, float, float, float]:
    """The centred region of a w x h picture that "cover" maps onto width x height: scale by
    max(width / w, height / h) (the picture covers the target, aspect kept), crop the overflow evenly."""
    scale = max(width / w, height / h)
    cw, ch = width / scale, height / scale
    x0, y0 = (w - cw) / 2, (h - ch) / 2
    return (x0, y0, x0 + cw, y0 + ch)


def cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [height, width, 3] by "cover" (see :func:`cover_box`), bilinear."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return np.ascontiguousarray(image)
    out = Image.fromarray(image).resize((width, height), Image.BILINEAR, box=cover_box(w, h, width, height))
    return np.asarray(out)


def check_payload(header: InputHeader, payload: bytes | memoryview) -> None:
    """The checks that need no decode (rgb24 size, the JPEG's own header): run on every message, so a bad
    frame is reported even when a newer one supersedes it before it would be decoded. Raises BadInput."""
    c, s = header.client, header.seq
    if header.format == "rgb24":
        want = header.w * header.h * 3
        if len(payload) != want:
            raise BadInput("payload_size", f"rgb24 {header.w}x{header.h} needs {want} bytes, got {len(payload)}",
                           c, s)
        return
    try:
        jh, jw, _, _ = simplejpeg.decode_jpeg_header(payload)
    except Exception as e:
        raise BadInput("bad_jpeg", f"undecodable JPEG ({len(payload)} bytes): {e}", c, s) from None
    if (jw, jh) != (header.w, header.h):
        raise BadInput("payload_size", f"the JPEG is {jw}x{jh}, the header says {header.w}x{header.h}", c, s)


def decode(header: InputHeader, payload: bytes | memoryview, width: int, height: int) -> np.ndarray:
    """The payload as uint8 [height, width, 3] at the model size; raises :class:`BadInput`."""
    check_payload(header, payload)
    if header.format == "rgb24":
        image = np.frombuffer(payload, dtype=np.uint8).reshape(header.h, header.w, 3)
        return cover(image, width, height)
    try:
        # Decode at the smallest DCT scale that still covers the target (never below it): cheaper for big frames.
        image = simplejpeg.decode_jpeg(payload, colorspace="RGB", min_width=width, min_height=height)
    except Exception as e:
        raise BadInput("bad_jpeg", f"undecodable JPEG ({len(payload)} bytes): {e}", header.client,
                       header.seq) from None
    return cover(image, width, height)


@dataclass
class Entry:
    t: float  # arrival, daemon monotonic clock
    frame: np.ndarray  # [H, W, 3] uint8 at the model size
    source: tuple[str, int, float]  # (client, seq, t_cap)


class InputRing:
    """The newest decoded frames (newest wins: at most RING_FRAMES) and the per-block take.

    Thread-safe: the input thread ``put``s, the engine ``take``s.
    """

    def __init__(self, capacity: int = RING_FRAMES, hold_s: float = HOLD_S, fps: float = NATIVE_FPS) -> None:
        self.hold_s, self.fps = hold_s, fps
        self._ring: deque[Entry] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._last_taken: tuple[str, int, float] | None = None
        self._prev: np.ndarray | None = None  # last frame of the last block taken
        self.fallback_blocks = 0  # blocks of v2v that found no input (text-only)
        self.held_blocks = 0  # blocks that held an older frame (no new input since the last block)

    def put(self, t: float, frame: np.ndarray, source: tuple[str, int, float]) -> None:
        with self._lock:
            self._ring.append(Entry(t, frame, source))

    def clear(self) -> None:
        with self._lock:
            self._ring.clear()
            self._last_taken, self._prev = None, None

    def take(self, n: int, now: float) -> InputBlock | None:
        """The block's ``n`` input frames, resampled to 16 fps; None = text-only fallback.

        Slot i of n stands for the time ``newest - (n - 1 - i) / fps``: it gets the newest frame that had
        arrived by then (a frame repeats when the input is slower than 16 fps, frames are dropped when it
        is faster). Slots older than every frame kept get the oldest kept. Only the client that sent the
        newest frame is used. Hold rule: the newest frame is used for up to ``hold_s`` after it arrived;
        past that the block is text-only until a frame arrives again.
        """
        with self._lock:
            if not self._ring or now - self._ring[-1].t > self.hold_s:
                self.fallback_blocks += 1
                self._prev = None
                return None
            newest = self._ring[-1]
            # the newest client's frames, none older than hold_s before the newest (a gap ends the old run)
            mine = [e for e in self._ring if e.source[0] == newest.source[0] and newest.t - e.t <= self.hold_s]
            times = [e.t for e in mine]
            picks = []
            for i in range(n):
                slot_t = newest.t - (n - 1 - i) / self.fps + 1e-6
                j = int(np.searchsorted(times, slot_t, side="right")) - 1  # newest arrived by slot_t
                picks.append(mine[max(0, j)])
            fresh = self._last_taken != newest.source
            if not fresh:
                self.held_blocks += 1
            block = InputBlock(frames=np.stack([e.frame for e in picks]), sources=[e.source for e in picks],
                               prev=self._prev, fresh=fresh)
            self._last_taken, self._prev = newest.source, picks[-1].frame
            return block
