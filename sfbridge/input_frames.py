"""The sending side of input frames (docs/PROTOCOL.md "Input frames"): the message a client sends and the
``input`` request's fields, checked before anything leaves the client.

Shared by :class:`sfbridge.Client`, :class:`sfbridge.aio.AsyncClient` and the CLI, so they agree on one
rule; the daemon checks the same limits again (sfbridge/input_buffer.py) and drops what is wrong.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

import numpy as np
import simplejpeg

from sfbridge.protocol import INPUT_MODES
from sfbridge.steering_args import schedule_args

DEFAULT_INPUT_FPS = 16.0  # the model's rate: frames sent faster are dropped by the daemon's resampling
DEFAULT_STRENGTH = 0.7
MAX_INPUT_FPS = 64.0  # the daemon refuses more than 64 messages per second per client
MAX_SIDE = 4096
MAX_CLIENT_CHARS = 64


def check_client_id(client_id: str) -> str:
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= MAX_CLIENT_CHARS:
        raise ValueError(f"client id must be a string of 1..{MAX_CLIENT_CHARS} chars, got {client_id!r:.80}")
    return client_id


def default_client_id() -> str:
    """``HOST-PID``: tells several senders on one machine apart in error events and frame headers."""
    return check_client_id(f"{socket.gethostname()[:40]}-{os.getpid()}"[:MAX_CLIENT_CHARS])


def check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) \
            or not 0 < fps <= MAX_INPUT_FPS:
        raise ValueError(f"fps must be a number in (0, {MAX_INPUT_FPS:g}], got {fps!r}")
    return float(fps)


def input_args(mode: str, strength: float = DEFAULT_STRENGTH, motion_adaptive: bool = False,
               at_block: int | None = None, at_pts: float | None = None) -> dict[str, Any]:
    """Fields of an ``input`` request (mode, strength, motion_adaptive, schedule); ValueError if invalid."""
    if mode not in INPUT_MODES:
        raise ValueError(f"mode must be one of {', '.join(INPUT_MODES)}, got {mode!r}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be a number in 0..1, got {strength!r}")
    if not isinstance(motion_adaptive, bool):
        raise ValueError(f"motion_adaptive must be True or False, got {motion_adaptive!r}")
    return {"mode": mode, "strength": float(strength), "motion_adaptive": motion_adaptive,
            **schedule_args(at_block, at_pts)}


def input_message(image: np.ndarray | bytes, *, client: str, seq: int, t_cap: float | None = None
                  ) -> tuple[dict[str, Any], bytes | memoryview]:
    """(header, payload) of one input frame: an RGB ``[H, W, 3]`` uint8 array goes as ``rgb24``, bytes as
    ``jpeg`` (its size read from the JPEG). ``t_cap`` defaults to now (``time.time()``)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(bytes(image))
        except Exception as e:
            raise ValueError(f"image bytes are not a JPEG: {e}") from None
        fmt, payload = "jpeg", image
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be [H, W, 3] uint8 RGB, got {image.shape} {image.dtype}")
        h, w = image.shape[:2]
        fmt, payload = "rgb24", image
    else:
        raise ValueError(f"image must be an ndarray or JPEG bytes, got {type(image).__name__}")
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        raise ValueError(f"image is {w}x{h}; each side must be 1..{MAX_SIDE}")
    if fmt == "rgb24":  # after the size check: a view with a zero side cannot be cast
        payload = memoryview(np.ascontiguousarray(image)).cast("B")
    if t_cap is not None and (isinstance(t_cap, bool) or not isinstance(t_cap, (int, float))
                              or not math.isfinite(t_cap)):
        raise ValueError(f"t_cap must be a finite number of seconds, got {t_cap!r}")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError(f"seq must be an int >= 0, got {seq!r}")
    t_cap = time.time() if t_cap is None else t_cap
    if isinstance(t_cap, bool) or not isinstance(t_cap, (int, float)) or not math.isfinite(t_cap):
        raise ValueError(f"t_cap must be a finite number of seconds, got {t_cap!r}")
    header = {"format": fmt, "w": int(w), "h": int(h), "t_cap": float(t_cap), "client": check_client_id(client),
              "seq": seq}
    return header, payload
