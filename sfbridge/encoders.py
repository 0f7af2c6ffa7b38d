"""Frame encoders, one per stream topic. They run in the publisher thread, never in the engine.

JPEG uses simplejpeg (libjpeg-turbo): measured 0.8 ms per 832x480 frame at q85 with 4:2:0
chroma subsampling and the fast DCT, 54 KB, against ~1.0 ms for Pillow (environment notes).
4:2:0 halves the size of simplejpeg's default 4:4:4 at no visible cost for video, and every
client decoder (Unity LoadImage, Godot load_jpg_from_buffer) reads baseline 4:2:0.
"""

from __future__ import annotations

import numpy as np
import simplejpeg


class JpegEncoder:
    fmt = "jpeg"

    def __init__(self, quality: int = 85) -> None:
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        self.quality = quality

    def encode(self, frame: np.ndarray) -> bytes:
        return simplejpeg.encode_jpeg(frame, quality=self.quality, colorspace="RGB",
                                      colorsubsampling="420", fastdct=True)


class Rgb24Encoder:
    fmt = "rgb24"

    def encode(self, frame: np.ndarray) -> memoryview:
        # Zero-copy: the frame is C-contiguous [H, W, 3] uint8, exactly the wire layout.
        return memoryview(np.ascontiguousarray(frame)).cast("B")


def make_encoders(jpeg_quality: int = 85) -> dict[str, JpegEncoder | Rgb24Encoder]:
    return {"jpeg": JpegEncoder(jpeg_quality), "rgb24": Rgb24Encoder()}


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> [H, W, 3] uint8 RGB (clients and tests)."""
    return simplejpeg.decode_jpeg(data, colorspace="RGB")
