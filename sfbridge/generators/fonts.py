"""Text for the test pattern in any script: a chain of fonts with per-glyph fallback, never tofu.

Prompts are typed by people in their own language ("une forêt enneigée", "日本の城"), and
testsrc burns them into the frame so a game developer sees that the prompt arrived intact.
Pillow's built-in font covers ASCII only and draws an empty box (tofu) for everything else, so
we look for real fonts once: a list of well-known paths on Linux, macOS and Windows, then
fontconfig's sorted fallback list (one ``fc-match`` call) where it exists, and Pillow's built-in
font last. Each character is drawn with the first font that has a glyph for it. A font "has"
a glyph when the character does not render like the font's own missing-glyph box (``.notdef``),
which needs no cmap parser. A character no font covers is drawn as a visible ``?``, never a box.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import unicodedata
from functools import lru_cache

from PIL import ImageDraw, ImageFont

log = logging.getLogger("sfbridge.model.testsrc")

# Wide-coverage Latin/Greek/Cyrillic faces first, CJK faces after them: the first font that
# covers a character draws it, so Latin text keeps one consistent face.
KNOWN_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian/Ubuntu fonts-dejavu-core
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",  # Fedora
    "/usr/share/fonts/TTF/DejaVuSans.ttf",  # Arch
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",  # Debian fonts-droid-fallback
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",  # macOS
    "/Library/Fonts/Arial Unicode.ttf",
    "/System/Library/Fonts/Hiragino Sans GB.ttc",
    "/System/Library/Fonts/AppleSDGothicNeo.ttc",
    "C:/Windows/Fonts/segoeui.ttf",
    "C:/Windows/Fonts/arial.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/msgothic.ttc",
    "C:/Windows/Fonts/malgun.ttf",
)
MAX_FC_FONTS = 16  # fontconfig fallbacks kept; they are only opened when earlier fonts miss a glyph
NOTDEF_PROBE = "\uffff"  # a Unicode noncharacter: no font maps it, so it renders as .notdef
MISSING = "?"


def _fc_fonts() -> list[str]:
    """Fontconfig's fallback order for sans-serif (regular faces only); empty without fontconfig."""
    exe = shutil.which("fc-match")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-s", "-f", "%{file}\n", "sans-serif"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("fc-match failed: %s", exc)
        return []
    skip = ("bold", "italic", "oblique")
    files = [f for f in out.splitlines() if f.lower().endswith((".ttf", ".otf", ".ttc"))
             and not any(s in os.path.basename(f).lower() for s in skip)]
    return files[:MAX_FC_FONTS]


@lru_cache(maxsize=1)
def font_paths() -> tuple[str, ...]:
    """Every candidate font file on this machine, in fallback order (searched once per process)."""
    seen: dict[str, None] = {}
    for path in (*KNOWN_FONTS, *_fc_fonts()):
        real = os.path.realpath(path)
        if real not in seen and os.path.isfile(real):
            seen[real] = None
    log.info("testsrc text fonts, in fallback order: %s, then Pillow's built-in font",
             ", ".join(seen) or "none found")
    return tuple(seen)


def _builtin(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


class FontChain:
    """Fonts of one pixel size, opened lazily in fallback order; draws text glyph by glyph.

    ``paths`` defaults to :func:`font_paths`; pass ``()`` to get Pillow's built-in font only.
    """

    def __init__(self, size: int, paths: tuple[str, ...] | None = None) -> None:
        self.size = size
        self.paths = font_paths() if paths is None else tuple(paths)
        self._fonts: list = []  # opened so far, in order; None marks a file that failed to open
        self._builtin = _builtin(size)
        self._notdef: dict[int, tuple] = {}
        self._choice: dict[str, int | None] = {}  # char -> index into fonts(), None: no font has it
        self._missing_logged = False
        self._lock = threading.RLock()  # chains are shared between generators (lru_cache) and threads

    def _font(self, i: int):
        """The i-th font of the chain (files first, built-in last), or None if it cannot be opened."""
        if i == len(self.paths):
            return self._builtin
        with self._lock:
            while len(self._fonts) <= i:
                path = self.paths[len(self._fonts)]
                try:
                    self._fonts.append(ImageFont.truetype(path, self.size))
                except OSError as exc:
                    log.warning("cannot open font %s: %s", path, exc)
                    self._fonts.append(None)
            return self._fonts[i]

    def _covers(self, i: int, ch: str) -> bool:
        font = self._font(i)
        if font is None:
            return False
        if i not in self._notdef:
            m = font.getmask(NOTDEF_PROBE)
            self._notdef[i] = (m.size, bytes(m))
        m = font.getmask(ch)
        return (m.size, bytes(m)) != self._notdef[i]

    def font_for(self, ch: str) -> int | None:
        """Index of the first font with a glyph for ``ch``; None if no font has one."""
        if ch in self._choice:
            return self._choice[ch]
        with self._lock:
            self._choice[ch] = next((i for i in range(len(self.paths) + 1) if self._covers(i, ch)), None)
            if self._choice[ch] is None and not self._missing_logged:
                log.warning("testsrc: no installed font has a glyph for %r (U+%04X); drawing %r instead. "
                            "Install e.g. fonts-dejavu-core / fonts-droid-fallback for wider coverage",
                            ch, ord(ch), MISSING)
                self._missing_logged = True
        return self._choice[ch]

    def runs(self, text: str) -> list[tuple[object, str]]:
        """Split ``text`` into (font, substring) runs; uncovered characters become ``?``."""
        out: list[tuple[object, str]] = []
        cur: int | None = None
        for ch in text:
            cat = unicodedata.category(ch)
            if cat in ("Cc", "Cf"):  # controls and invisible format characters: nothing to draw
                continue
            if ch == " " or (cat.startswith("M") and out):  # spaces and combining marks join the run
                idx = cur if cur is not None else (self.font_for(" ") or 0)
            else:
                idx = self.font_for(ch)
                if idx is None:
                    idx, ch = self.font_for(MISSING) or 0, MISSING
            if out and idx == cur:
                out[-1] = (out[-1][0], out[-1][1] + ch)
            else:
                out.append((self._font(idx), ch))
                cur = idx
        return out

    def ascent(self) -> int:
        """Ascent of the face that draws Latin text: the shared baseline of all runs."""
        font = self._font(self.font_for("A") or 0)
        return font.getmetrics()[0] if isinstance(font, ImageFont.FreeTypeFont) else 0

    def length(self, text: str) -> float:
        """Advance width of ``text`` in pixels as :meth:`draw` lays it out."""
        return sum(font.getlength(run) for font, run in self.runs(text))

    def draw(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: tuple) -> None:
        """Draw ``text`` with its top at ``xy``; runs from different fonts share one baseline."""
        x, top = xy
        baseline = top + self.ascent()
        for font, run in self.runs(text):
            if isinstance(font, ImageFont.FreeTypeFont):
                draw.text((x, baseline), run, fill=fill, font=font, anchor="ls")
            else:  # bitmap font: no anchors
                draw.text((x, top), run, fill=fill, font=font)
            x += font.getlength(run)

    def fit(self, text: str, max_width: float) -> str:
        """``text`` cut (with "...") so that it is at most ``max_width`` pixels wide."""
        if self.length(text) <= max_width:
            return text
        while text and self.length(text + "...") > max_width:
            text = text[:-1]
        return text + "..." if text else ""


@lru_cache(maxsize=8)
def chain(size: int) -> FontChain:
    """The shared font chain of one size (fonts are searched and logged once per size)."""
    return FontChain(size)
