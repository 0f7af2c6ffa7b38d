"""Frames for ``sfbridge view --input-from``: a video file (looped) or a camera, sent to the input socket.

Why it exists: trying video-to-video should not need a game. A file or a webcam stands in for the
engine's render, and the viewer shows what the daemon makes of it. PyAV (already used by
``sfbridge record``) decodes both: files through FFmpeg's demuxers, cameras through ``v4l2`` on
Linux (``avfoundation`` / ``dshow`` elsewhere are not wired up). Frames are scaled here to just
cover the daemon's frame size, so a 4K file costs the socket what an 832x480 one does; the daemon's
own "cover" mapping then only centre-crops.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sfbridge.client import Client

log = logging.getLogger("sfbridge.input")

CAMERA_DEFAULT = "/dev/video0"


class InputSourceError(Exception):
    """The file or camera cannot be opened or decoded; the message says which and why."""


def camera_device(spec: str) -> str | None:
    """``camera`` -> /dev/video0, ``camera:N`` -> /dev/videoN, a /dev/video* path as is; None for a file."""
    if spec == "camera":
        return CAMERA_DEFAULT
    if spec.startswith("camera:") and spec[7:].isdigit():
        return f"/dev/video{spec[7:]}"
    if spec.startswith("/dev/video"):
        return spec
    return None


def cover_size(w: int, h: int, target: tuple[int, int]) -> tuple[int, int]:
    """The smallest size with ``w:h``'s aspect that covers ``target`` (even sides, at least the target's)."""
    tw, th = target
    scale = max(tw / w, th / h)
    return max(tw, round(w * scale / 2) * 2), max(th, round(h * scale / 2) * 2)


def _open(spec: str) -> Any:
    import av

    device = camera_device(spec)
    if device is not None:
        if sys.platform != "linux":
            raise InputSourceError(f"--input-from {spec}: cameras are read through v4l2, which only Linux has; "
                                   "use a video file")
        if not os.path.exists(device):
            raise InputSourceError(f"--input-from {spec}: no camera at {device} (is one plugged in, and is this "
                                   "user in the 'video' group?)")
        try:
            return av.open(device, format="v4l2")
        except (av.FFmpegError, OSError) as exc:
            raise InputSourceError(f"--input-from {spec}: cannot open camera {device}: {exc}") from None
    if not Path(spec).is_file():
        raise InputSourceError(f"--input-from {spec!r}: no such file (give a video file, or 'camera')")
    try:
        container = av.open(spec)
    except (av.FFmpegError, OSError) as exc:
        raise InputSourceError(f"--input-from {spec!r}: not a video PyAV can open: {exc}") from None
    if not container.streams.video:
        container.close()
        raise InputSourceError(f"--input-from {spec!r}: the file has no video stream")
    return container


def frames_from(spec: str, target: tuple[int, int], loop: bool = True) -> Iterator[np.ndarray]:
    """RGB ``[H, W, 3]`` uint8 frames of a file (from the start again at its end when ``loop``) or a camera,
    each scaled to cover ``target`` (w, h). Raises :class:`InputSourceError` at once (not at the first
    ``next``) when the source cannot be opened."""
    container = _open(spec)
    return _decode(container, spec, target, loop and camera_device(spec) is None)


def _decode(container: Any, spec: str, target: tuple[int, int], loop: bool) -> Iterator[np.ndarray]:
    import av

    try:
        while True:
            produced = 0
            try:
                for frame in container.decode(video=0):
                    w, h = cover_size(frame.width, frame.height, target)
                    yield frame.to_ndarray(format="rgb24", width=w, height=h)
                    produced += 1
            except av.FFmpegError as exc:
                raise InputSourceError(f"--input-from {spec!r}: decoding failed: {exc}") from None
            if not loop or produced == 0:
                return
            container.seek(0)
    finally:
        container.close()


class InputFeeder(threading.Thread):
    """Sends a source's frames to the input socket at 16 fps from its own thread and its own Client."""

    def __init__(self, frames: Iterator[np.ndarray], input_endpoint: str | None, fps: float = 16.0,
                 **client_kw: Any) -> None:
        super().__init__(name="sfbridge-view-input", daemon=True)
        # a bad endpoint raises ValueError here, in the caller; client_kw: CURVE key files, as the viewer's
        self.client = Client(input=input_endpoint, **client_kw)
        self.frames, self.fps = frames, fps
        self.sent = 0
        self.error: str | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def _until_stopped(self) -> Iterator[np.ndarray]:
        for image in self.frames:
            if self._halt.is_set():
                return
            yield image
            self.sent += 1

    def run(self) -> None:
        try:
            self.client.stream_frames(self._until_stopped(), fps=self.fps)
        except InputSourceError as exc:
            self.error = str(exc)
            log.error("%s", exc)
        finally:
            self.client.close()
