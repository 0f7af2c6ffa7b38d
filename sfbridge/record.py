"""``sfbridge record``: write what the stream shows to a video file (H.264 via PyAV).

Frames are placed by their stream frame number, so frames the daemon dropped for this client
show as held frames rather than a time-compressed video; a scene reset continues the timeline.

Everything a user can get wrong (the path, the container, the numbers, a paused or odd-sized
stream) is checked up front or turned into a :class:`RecordError` with one line that says what
to change. Ctrl-C stops the recording and still finalises the file, so it stays playable.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from sfbridge.client import Client, DaemonUnavailable, Frame

log = logging.getLogger("sfbridge.record")

CRF_RANGE = (0, 51)  # libx264's quality scale
CONTAINERS = ".mp4, .mkv, .mov or .avi"  # extensions whose muxer takes H.264 (checked for real below)


class RecordError(Exception):
    """A recording that cannot start or go on; the message says what to change."""


@dataclass
class RecordResult:
    frames: int  # frames written
    slots: int  # frame slots of the timeline (frames plus held gaps)
    interrupted: bool  # stopped by Ctrl-C; the file is finalised anyway


def check_settings(seconds: float, crf: int, wait: float) -> None:
    if not math.isfinite(seconds) or seconds <= 0:
        raise RecordError(f"--seconds must be a positive number, got {seconds}")
    if not CRF_RANGE[0] <= crf <= CRF_RANGE[1]:
        raise RecordError(f"--crf must be in {CRF_RANGE[0]}..{CRF_RANGE[1]} (lower is better), got {crf}")
    if not math.isfinite(wait) or wait <= 0:
        raise RecordError(f"--wait must be a positive number of seconds, got {wait}")


def check_output(output: str | Path) -> Path:
    """The output path can be written and its container takes H.264; raises RecordError otherwise.

    Opening a PyAV container for writing creates no file until the first packet, so the
    container and codec are probed on the real path without leaving anything behind.
    """
    path = Path(output)
    if not path.suffix:
        raise RecordError(f"{output}: no file extension, so no container format; use {CONTAINERS}")
    parent = path.parent
    if not parent.is_dir():
        raise RecordError(f"{output}: directory {str(parent)!r} does not exist")
    if path.is_dir():
        raise RecordError(f"{output} is a directory; give a file name such as {path / 'out.mp4'}")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RecordError(f"{output}: not writable")
    try:
        container = av.open(str(path), mode="w")
    except ValueError:
        raise RecordError(f"{output}: unknown container {path.suffix!r}; use {CONTAINERS}") from None
    try:
        container.add_stream("libx264", rate=16)
    except ValueError:
        raise RecordError(f"{output}: the {path.suffix!r} container cannot hold H.264; use {CONTAINERS}") from None
    finally:
        container.close()
    return path


@contextlib.contextmanager
def _sigint_sticky() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered: an interrupt that lands inside a
    callback Python cannot raise from (a C library's, a finaliser's: "Exception ignored in ...") would
    otherwise be lost and the recording would run on to ``--seconds``. The frame loop checks the flag."""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        yield pressed  # SIG_IGN: started in the background by a shell, which means "Ctrl-C is not for you"
        return

    def on_sigint(signum: int, frame: Any) -> None:
        pressed.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ignore Ctrl-C while the file is finalised: a second press must not leave half a file."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def record(output: str | Path, seconds: float, control: str | None = None, frames: str | None = None,
           fmt: str = "rgb24", crf: int = 18, wait: float = 15.0, timeout: float = 2.0,
           server_key: str | None = None, client_key: str | None = None) -> RecordResult:
    """Record ``seconds`` of stream time.

    ``wait``: seconds without a frame before giving up; ``timeout``: seconds per control request;
    ``server_key`` / ``client_key``: CURVE key files, as for :class:`~sfbridge.client.Client`.
    Raises :class:`RecordError` (bad settings, paused or odd-sized stream) or ``DaemonUnavailable``.
    """
    check_settings(seconds, crf, wait)
    path = check_output(output)
    with Client(control=control, frames=frames, timeout=timeout, retries=1, server_key=server_key,
                client_key=client_key) as client:
        status = client.status()
        width, height = int(status.get("width", 0)), int(status.get("height", 0))
        if width % 2 or height % 2:
            raise RecordError(f"the stream is {width}x{height}; H.264 (yuv420p) needs an even width and height "
                              "(restart `sfbridge serve` with an even --width/--height)")
        fps = float(status.get("fps", 16.0))
        if status.get("paused"):
            log.warning("the stream is paused: waiting up to %g s for `sfbridge resume`", wait)
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=round(fps))
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            result, problem = RecordResult(frames=0, slots=0, interrupted=False), None
            try:
                with _sigint_sticky() as pressed:
                    _encode(client, container, stream, fmt, max(1, round(seconds * fps)), wait, result, pressed)
            except KeyboardInterrupt:
                result.interrupted = True
            except DaemonUnavailable as exc:
                problem = _why_no_frames(client, exc, wait)
            finally:
                with _sigint_deferred():
                    for packet in stream.encode():
                        container.mux(packet)
    log.debug("recorded %d frames (%d frame slots) to %s", result.frames, result.slots, path)
    if problem is not None:
        kept = f"; kept {result.frames} frames in {path}" if result.frames else ""
        raise RecordError(f"{problem}{kept}")
    return result


def _encode(client: Client, container: Any, stream: Any, fmt: str, n_target: int, wait: float,
            result: RecordResult, interrupted: threading.Event) -> None:
    """Encode stream frames until ``n_target`` frame slots are filled, counting them in ``result`` as they
    go, so an interrupted recording still knows what it wrote. ``interrupted``: a Ctrl-C whose exception
    was swallowed somewhere still stops the loop at the next frame."""
    last_pts = -1
    base: tuple[str, int] | None = None  # (stream, first frame number) of the current scene
    offset = 0
    for frame in client.subscribe(format=fmt, latest_only=False, timeout=wait):
        if interrupted.is_set():
            raise KeyboardInterrupt
        assert isinstance(frame, Frame)
        h = frame.header
        if (h["w"], h["h"]) != (stream.width, stream.height):
            raise RecordError(f"frame size changed from {stream.width}x{stream.height} to {h['w']}x{h['h']}")
        if base is None or base[0] != h["stream"]:
            offset = last_pts + 1
            base = (h["stream"], h["frame"])
        pts = offset + h["frame"] - base[1]
        if pts <= last_pts:
            continue
        vf = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        vf.pts = pts
        for packet in stream.encode(vf):
            container.mux(packet)
        last_pts = pts
        result.frames, result.slots = result.frames + 1, pts + 1
        if pts + 1 >= n_target:
            return


def _why_no_frames(client: Client, exc: DaemonUnavailable, wait: float) -> str:
    """No frame for ``wait`` seconds: a paused stream is the usual reason, so ask the daemon."""
    try:
        paused = bool(client.status().get("paused"))
    except DaemonUnavailable:
        raise exc from None
    if paused:
        return f"no frames within {wait:g} s: the stream is paused (run `sfbridge resume`)"
    raise exc
