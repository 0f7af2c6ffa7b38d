"""``sfbridge record``: write what the stream shows to a video file (H.264 via PyAV).

Frames are placed by their stream frame number, so frames the daemon dropped for this client
show as held frames rather than a time-compressed video; a scene reset continues the timeline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av

from sfbridge.client import Client, Frame

log = logging.getLogger("sfbridge.record")


def record(output: str | Path, seconds: float, control: str, frames: str, fmt: str = "rgb24", crf: int = 18,
           no_frame_timeout: float = 15.0) -> int:
    """Record ``seconds`` of stream time; returns the number of frames written."""
    client = Client(control=control, frames=frames)
    fps = float(client.status().get("fps", 16.0))
    n_target = max(1, round(seconds * fps))
    written = 0
    last_pts = -1
    base: tuple[str, int] | None = None  # (stream, first frame number) of the current scene
    offset = 0
    with av.open(str(output), mode="w") as container:
        stream = None
        for frame in client.subscribe(format=fmt, latest_only=False, timeout=no_frame_timeout):
            assert isinstance(frame, Frame)
            h = frame.header
            if base is None or base[0] != h["stream"]:
                offset = last_pts + 1
                base = (h["stream"], h["frame"])
            pts = offset + h["frame"] - base[1]
            if pts <= last_pts:
                continue
            if stream is None:
                stream = container.add_stream("libx264", rate=round(fps))
                stream.width, stream.height = h["w"], h["h"]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": "veryfast"}
            vf = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
            vf.pts = pts
            for packet in stream.encode(vf):
                container.mux(packet)
            last_pts = pts
            written += 1
            if pts + 1 >= n_target:
                break
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    client.close()
    log.info("recorded %d frames (%d frame slots) to %s", written, last_pts + 1, output)
    return written
