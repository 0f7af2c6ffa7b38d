"""``testsrc``: a deterministic, GPU-free moving test pattern with the real model's block structure.

Game developers build their integration against this on a laptop, so it shows everything a
client wants to verify at a glance: the current prompt (wrapped), a frame counter, the block
index, the seed and the steering state. Its colours are derived from the prompt text, so a
prompt change is visible even from across the room, and a ``blend`` transition fades the
colours over the blend blocks just like the model blends text conditioning.

Content is a pure function of (prompt, seed, frame number, steering), never of wall time, so
tests can compare frames bit-exactly.
"""

from __future__ import annotations

import colorsys
import hashlib
import logging
import time
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sfbridge.generators.base import (
    BLOCK_FRAMES,
    FIRST_BLOCK_FRAMES,
    NATIVE_FPS,
    Block,
    Generator,
    GeneratorError,
    Steering,
    blend_identity,
)

log = logging.getLogger("sfbridge.model.testsrc")


def prompt_colors(prompt: str) -> np.ndarray:
    """Two RGB colours ``[2, 3]`` float32 in 0..255 derived from the prompt's SHA-256."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    hue = digest[0] / 255.0
    hue2 = (hue + 0.25 + digest[1] / 1024.0) % 1.0
    a = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    b = colorsys.hsv_to_rgb(hue2, 0.85, 0.55)
    return np.array([a, b], dtype=np.float32) * 255.0


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, max_chars: int, max_lines: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > max_chars and line:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, max_chars - 3)] + "..."
    return lines


class TestSource(Generator):
    """Moving colour bars, a bouncing square and text overlays; see module docstring."""

    __test__ = False  # not a pytest class despite the name
    name = "testsrc"

    def __init__(self, width: int = 832, height: int = 480, fps: float = NATIVE_FPS,
                 block_delay: float = 0.0, warnings: list[str] | None = None) -> None:
        if width < 16 or height < 16 or width > 8192 or height > 8192:
            raise GeneratorError(f"testsrc: resolution {width}x{height} out of range 16..8192")
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.block_delay = float(block_delay)  # simulate a slow model (seconds per block)
        self.warnings = list(warnings or [])
        self._block = 0
        self._frame = 0
        self._blend: tuple | None = None
        self._blend_from: np.ndarray | None = None  # colours a running blend started from
        self._last_colors: np.ndarray | None = None
        self._x = np.linspace(0.0, 1.0, self.width, dtype=np.float32)[None, :]  # [1, W]
        self._y = np.linspace(0.0, 1.0, self.height, dtype=np.float32)[:, None]  # [H, 1]
        self._font_size = max(10, self.height // 24)

    def reset(self, steering: Steering) -> None:
        self._block = 0
        self._frame = 0
        self._blend = self._blend_from = self._last_colors = None

    def describe(self) -> dict:
        return {**super().describe(), "warnings": self.warnings}

    def next_block(self, steering: Steering) -> Block:
        t0 = time.perf_counter()
        n = FIRST_BLOCK_FRAMES if self._block == 0 else BLOCK_FRAMES
        alpha = steering.blend_alpha(self._block)
        blend = blend_identity(steering)
        if blend != self._blend:  # a new blend starts from the colours on screen (see blend_identity)
            self._blend, self._blend_from = blend, self._last_colors
        colors = prompt_colors(steering.prompt)
        if alpha < 1.0 and steering.prev_prompt is not None:
            src = self._blend_from if self._blend_from is not None else prompt_colors(steering.prev_prompt)
            colors = alpha * colors + (1.0 - alpha) * src
        self._last_colors = colors
        frames = np.empty((n, self.height, self.width, 3), dtype=np.uint8)
        for i in range(n):
            frames[i] = self._render(self._frame + i, self._block, i, colors, steering)
        block = Block(frames=frames, index=self._block, first_frame=self._frame,
                      state_id=steering.state_id, info={"blend_alpha": alpha})
        self._block += 1
        self._frame += n
        spent = time.perf_counter() - t0
        if self.block_delay > spent:
            time.sleep(self.block_delay - spent)
        return block

    def _render(self, frame: int, block: int, idx: int, colors: np.ndarray, s: Steering) -> np.ndarray:
        t = frame / self.fps
        # Diagonal bands scrolling right: sin(a x + b y - c t) from 1-D tables by the angle-sum
        # identity (two outer products instead of H*W sines), then a 256-entry colour palette.
        ax, by = 2 * np.pi * 3.0 * self._x, 2 * np.pi * (1.5 * self._y - 0.25 * t)
        wave = np.sin(ax) * np.cos(by) + np.cos(ax) * np.sin(by)  # [H, W] in -1..1
        level = ((wave + 1.0) * 127.5).astype(np.uint8)
        ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
        palette = (colors[0] * ramp + colors[1] * (1 - ramp)).astype(np.uint8)  # [256, 3]
        out = palette[level]  # [H, W, 3]
        # A bouncing square whose path depends on the seed.
        rng_phase = (s.seed * 0.6180339887) % 1.0  # golden-ratio step: nearby seeds differ a lot
        size = max(4, min(self.width, self.height) // 6)
        px = int((0.5 + 0.45 * np.sin(2 * np.pi * (0.13 * t + rng_phase))) * (self.width - size))
        py = int((0.5 + 0.45 * np.sin(2 * np.pi * (0.21 * t + 2 * rng_phase))) * (self.height - size))
        out[py:py + size, px:px + size] = (255.0 - colors[0]).astype(np.uint8)
        # A 16-step progress bar along the bottom: one cell per frame within a second.
        cell = self.width // 16
        bar_h = max(2, self.height // 60)
        out[-bar_h:, : cell * (frame % 16 + 1)] = 255
        self._draw_text(out, frame, block, idx, s)
        return out

    def _draw_text(self, out: np.ndarray, frame: int, block: int, idx: int, s: Steering) -> None:
        fs = self._font_size
        lines = _wrap(s.prompt, max(8, int(self.width / (fs * 0.55))), 3)
        lines.append(f"frame {frame}  block {block}.{idx}  seed {s.seed}  state {s.state_id}")
        for w in self.warnings:  # e.g. why --model auto fell back to the test pattern
            lines.extend(_wrap(f"! {w}", max(8, int(self.width / (fs * 0.55))), 6))
        box_h = min(self.height, (fs + 4) * len(lines) + 8)
        # Draw text on a small dark strip only: cheap even at high resolutions.
        strip = Image.fromarray(out[:box_h]).convert("RGB")
        dark = (np.asarray(strip, dtype=np.uint16) * 2 // 5).astype(np.uint8)
        strip = Image.fromarray(dark)
        draw = ImageDraw.Draw(strip)
        for k, line in enumerate(lines):
            draw.text((6, 4 + k * (fs + 4)), line, fill=(255, 255, 255), font=_font(fs))
        out[:box_h] = np.asarray(strip)


def create(width: int = 832, height: int = 480, block_delay: float = 0.0,
           warnings: list[str] | None = None, **_ignored: object) -> TestSource:
    return TestSource(width=width, height=height, block_delay=block_delay, warnings=warnings)
