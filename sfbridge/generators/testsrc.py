"""``testsrc``: a deterministic, GPU-free moving test pattern with the real model's block structure.

Game developers build their integration against this on a laptop, so it shows everything a
client wants to verify at a glance: the current prompt (wrapped, in any script), a frame
counter, the block index, the seed and the steering state. Its colours follow the prompt: a
colour word ("a red desert", "a calm blue ocean") makes that colour dominant, so an integration
test in an engine can check from pixels alone that its prompt arrived; other prompts get a
colour hashed from their text, so a prompt change is visible even from across the room. A
weighted prompt list mixes its prompts' colours by weight, and a ``blend`` transition fades the
colours over the blend blocks (``interp`` linear or slerp), with the same math the models use on
text embeddings (:mod:`.conditioning`), so a client sees the effect of every steering field without
a GPU. ``recache`` means nothing here (there is no KV cache) and is ignored.

Video-to-video (``input_mode`` "v2v", issue 12): the game's input frame fills the picture and the
pattern lies over it at an opacity of the block's strength (1.0: only the pattern, like the models'
text-to-video; 0.0: only the input), the status line names the input frame (client#seq). So an engine
integration sees its own render come back, and a test finds it in the output pixels.

Content is a pure function of (prompt, seed, frame number, steering), never of wall time, so
tests can compare frames bit-exactly.
"""

from __future__ import annotations

import colorsys
import hashlib
import logging
import re
import time

import numpy as np
from PIL import Image, ImageDraw

from sfbridge.generators.base import (
    BLOCK_FRAMES,
    FIRST_BLOCK_FRAMES,
    NATIVE_FPS,
    Block,
    Generator,
    GeneratorError,
    InputBlock,
    Steering,
)
from sfbridge.generators.conditioning import blend, blend_alpha, blend_identity, mix_weighted, source_key
from sfbridge.generators.fonts import FontChain, chain
from sfbridge.generators.v2v import effective_strength

log = logging.getLogger("sfbridge.model.testsrc")


# Colour words and the bright colour each stands for (RGB). The pattern mixes this colour with a
# darker shade of itself (or with a second colour word), so the named colour dominates the frame.
COLOR_WORDS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "crimson": (200, 20, 50), "scarlet": (240, 35, 20), "reddish": (210, 60, 50),
    "orange": (245, 140, 20), "amber": (240, 170, 20),
    "yellow": (240, 220, 40), "golden": (235, 185, 40), "gold": (235, 185, 40), "yellowish": (225, 210, 70),
    "green": (40, 190, 60), "emerald": (30, 170, 100), "lime": (140, 230, 40), "greenish": (80, 180, 90),
    "teal": (20, 150, 150), "turquoise": (40, 210, 200), "cyan": (30, 210, 230),
    "blue": (40, 90, 230), "azure": (40, 140, 240), "navy": (25, 35, 130), "bluish": (70, 110, 210),
    "blueish": (70, 110, 210),
    "purple": (140, 50, 200), "violet": (150, 80, 230), "magenta": (220, 40, 200), "purplish": (140, 80, 180),
    "pink": (245, 130, 190), "pinkish": (230, 150, 190),
    "brown": (130, 80, 40),
    "white": (245, 245, 245), "silver": (195, 200, 210),
    "grey": (128, 128, 128), "gray": (128, 128, 128),
    "black": (25, 25, 25),
}


def color_words(prompt: str) -> list[tuple[int, int, int]]:
    """The colours named in ``prompt``, in order of appearance, without repeats."""
    found: list[tuple[int, int, int]] = []
    for word in re.findall(r"[a-z]+", prompt.lower()):
        rgb = COLOR_WORDS.get(word)
        if rgb is not None and rgb not in found:
            found.append(rgb)
    return found


def prompt_colors(prompt: str) -> np.ndarray:
    """Two RGB colours ``[2, 3]`` float32 in 0..255: named by the prompt's colour words, else hashed.

    With one colour word the second colour is a darker shade of it; with two or more, the second
    word names it. The hash still varies the shade, so two prompts with the same colour word differ.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    named = color_words(prompt)
    if named:
        a = np.array(named[0], dtype=np.float32)
        shade = 0.45 + 0.2 * digest[0] / 255.0
        b = np.array(named[1], dtype=np.float32) if len(named) > 1 else a * shade
        return np.stack([a, b])
    hue = digest[0] / 255.0
    hue2 = (hue + 0.25 + digest[1] / 1024.0) % 1.0
    a = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    b = colorsys.hsv_to_rgb(hue2, 0.85, 0.55)
    return np.array([a, b], dtype=np.float32) * 255.0


def _wrap(text: str, fonts: FontChain, max_width: float, max_lines: int) -> list[str]:
    """Greedy word wrap by measured width; words wider than a line (CJK has no spaces) are split."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if fonts.length(candidate) <= max_width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for ch in word:
            if line and fonts.length(line + ch) > max_width:
                lines.append(line)
                line = ""
            line += ch
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = fonts.fit(lines[-1] + " ...", max_width)
    return lines


class TestSource(Generator):
    """Moving colour bars, a bouncing square and text overlays; see module docstring."""

    __test__ = False  # not a pytest class despite the name
    name = "testsrc"

    def __init__(self, width: int = 832, height: int = 480, fps: float = NATIVE_FPS,
                 block_delay: float = 0.0, warnings: list[str] | None = None, banner: str | None = None) -> None:
        if width < 16 or height < 16 or width > 8192 or height > 8192:
            raise GeneratorError(f"testsrc: resolution {width}x{height} out of range 16..8192")
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.block_delay = float(block_delay)  # simulate a slow model (seconds per block)
        self.warnings = list(warnings or [])  # full text: reported in `status`, not drawn
        self._block = 0
        self._frame = 0
        self._blend: tuple | None = None
        self._blend_from: np.ndarray | None = None  # colours a running blend started from
        self._last_colors: np.ndarray | None = None
        self._x = np.linspace(0.0, 1.0, self.width, dtype=np.float32)[None, :]  # [1, W]
        self._y = np.linspace(0.0, 1.0, self.height, dtype=np.float32)[:, None]  # [H, 1]
        self._font_size = max(10, self.height // 24)
        self._fonts = chain(self._font_size)
        self._text_width = self.width - 12  # 6 px margin each side
        self._wrapped: tuple[str, list[str]] = ("", [])  # (prompt, its lines): wrap once per prompt
        self._banner = self._fit_banner(banner) if banner else None

    def _fit_banner(self, text: str) -> tuple[str, FontChain]:
        """One short line (e.g. why ``--model auto`` fell back), shrunk to the frame's width."""
        size = self._font_size
        while size > 8 and chain(size).length(text) > self._text_width:
            size -= 1
        return chain(size).fit(text, self._text_width), chain(size)

    def reset(self, steering: Steering) -> None:
        self._block = 0
        self._frame = 0
        self._blend = self._blend_from = self._last_colors = None

    def describe(self) -> dict:
        return {**super().describe(), "warnings": self.warnings}

    def supports_input(self) -> bool:
        return True

    def next_block(self, steering: Steering, inputs: InputBlock | None = None) -> Block:
        t0 = time.perf_counter()
        n = FIRST_BLOCK_FRAMES if self._block == 0 else BLOCK_FRAMES
        alpha = blend_alpha(steering, self._block)
        running = blend_identity(steering)
        if running != self._blend:  # a new blend starts from the colours on screen (see blend_identity)
            self._blend, self._blend_from = running, self._last_colors
        colors = self._colors(steering.cond_key())
        if alpha < 1.0 and running is not None:
            src = self._blend_from if self._blend_from is not None else self._colors(source_key(steering))
            colors = np.clip(blend(src, colors, alpha, steering.interp), 0.0, 255.0)
        self._last_colors = colors
        v2v = inputs is not None and steering.input_mode == "v2v"
        strength = effective_strength(steering, inputs) if v2v else 1.0
        frames = np.empty((n, self.height, self.width, 3), dtype=np.uint8)
        for i in range(n):
            under = None
            if v2v and i < len(inputs.frames):
                under = (inputs.frames[i], strength, inputs.sources[i])
            frames[i] = self._render(self._frame + i, self._block, i, colors, steering, under)
        info = {"blend_alpha": alpha, **({"strength": strength} if v2v else {})}
        block = Block(frames=frames, index=self._block, first_frame=self._frame,
                      state_id=steering.state_id, info=info)
        self._block += 1
        self._frame += n
        spent = time.perf_counter() - t0
        if self.block_delay > spent:
            time.sleep(self.block_delay - spent)
        return block

    @staticmethod
    def _colors(key: tuple) -> np.ndarray:
        """Colours of a ``Steering.cond_key()``: one prompt's as before, a weighted list mixed like embeddings."""
        pairs, mode = key
        try:
            return np.clip(mix_weighted(pairs, mode, prompt_colors), 0.0, 255.0)
        except ValueError as e:
            raise GeneratorError(f"testsrc: {e}") from e

    def _render(self, frame: int, block: int, idx: int, colors: np.ndarray, s: Steering,
                under: tuple[np.ndarray, float, tuple] | None = None) -> np.ndarray:
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
        label = ""
        if under is not None:  # v2v: the input under the pattern at opacity `strength`
            picture, strength, (client, seq, _) = under
            k = int(round(strength * 256))
            out = ((picture.astype(np.uint16) * (256 - k) + out.astype(np.uint16) * k) >> 8).astype(np.uint8)
            label = f"  input {client}#{seq}"
        # A 16-step progress bar along the bottom: one cell per frame within a second.
        cell = self.width // 16
        bar_h = max(2, self.height // 60)
        out[-bar_h:, : cell * (frame % 16 + 1)] = 255
        self._draw_text(out, frame, block, idx, s, label)
        return out

    def _draw_text(self, out: np.ndarray, frame: int, block: int, idx: int, s: Steering, label: str = "") -> None:
        fonts, white = self._fonts, (255, 255, 255)
        if self._wrapped[0] != s.prompt:
            self._wrapped = (s.prompt, _wrap(s.prompt, fonts, self._text_width, 3))
        rows = [(line, fonts, white) for line in self._wrapped[1]]
        status = f"frame {frame}  block {block}.{idx}  seed {s.seed}  state {s.state_id}{label}"
        rows.append((fonts.fit(status, self._text_width), fonts, white))
        if self._banner is not None:
            rows.insert(0, (self._banner[0], self._banner[1], (255, 210, 60)))
        tops, y = [], 4
        for _, f, _ in rows:
            tops.append(y)
            y += f.size + 4
        box_h = min(self.height, y + 4)
        # Draw text on a small dark strip only: cheap even at high resolutions.
        dark = (out[:box_h].astype(np.uint16) * 2 // 5).astype(np.uint8)
        strip = Image.fromarray(dark)
        draw = ImageDraw.Draw(strip)
        for (line, f, color), top in zip(rows, tops, strict=True):
            f.draw(draw, (6, top), line, color)
        out[:box_h] = np.asarray(strip)


def create(width: int = 832, height: int = 480, block_delay: float = 0.0,
           warnings: list[str] | None = None, banner: str | None = None, **_ignored: object) -> TestSource:
    return TestSource(width=width, height=height, block_delay=block_delay, warnings=warnings, banner=banner)
