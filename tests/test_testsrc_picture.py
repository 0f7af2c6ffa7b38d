"""What the test pattern shows: the fallback banner, prompt text in any script, colours from colour words.

An engine integration test only has pixels, so these pin what a game developer relies on:
`--model auto`'s fallback is one short readable line (the full reason lives in `status`), non-ASCII
prompts are never drawn as empty boxes (tofu), and a colour word in the prompt makes that colour dominate.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from sfbridge.generators import Steering
from sfbridge.generators.fonts import NOTDEF_PROBE, FontChain, font_paths
from sfbridge.generators.testsrc import TestSource, prompt_colors

BANNER = "self-forcing unavailable: run `sfbridge doctor`"
LONG_REASON = ("self-forcing unavailable: missing model files: generator (/root/.cache/sfbridge/x.pt), "
               "text_encoder (/root/.cache/sfbridge/t5.pth); no CUDA GPU; serving the test pattern instead")


def first_frame(g: TestSource, prompt: str, seed: int = 1) -> np.ndarray:
    s = Steering(prompt=prompt, seed=seed, state_id=1)
    g.reset(s)
    return g.next_block(s).frames[0]


class NoText(TestSource):
    """The same pattern with nothing drawn on it: the reference that shows where text went."""

    def _draw_text(self, *args: object) -> None:
        pass


def text_strip_rows(frame: np.ndarray, prompt: str) -> int:
    """Height of the darkened text strip: rows that differ from the same frame without any text."""
    h, w = frame.shape[:2]
    bare = first_frame(NoText(w, h), prompt)
    diff = np.abs(frame.astype(int) - bare.astype(int)).max(axis=(1, 2))
    rows = np.nonzero(diff)[0]
    return int(rows.max()) + 1 if rows.size else 0


def yellow_rows(frame: np.ndarray) -> np.ndarray:
    r, g, b = (frame[..., c].astype(int) for c in range(3))
    return np.nonzero(((r > 180) & (g > 130) & (b < 110)).any(axis=1))[0]


@pytest.mark.parametrize("size", [(832, 480), (320, 192)])
def test_fallback_banner_is_one_full_short_line(size):
    w, h = size
    g = TestSource(w, h, warnings=[LONG_REASON], banner=BANNER)
    plain = TestSource(w, h)
    frame, ref = first_frame(g, "a castle"), first_frame(plain, "a castle")
    text, fonts = g._banner
    assert text == BANNER, f"banner cut at {w}x{h}: {text!r}"
    assert fonts.length(text) <= w - 12
    # The banner adds exactly one line to the strip, drawn in yellow above the prompt.
    added = text_strip_rows(frame, "a castle") - text_strip_rows(ref, "a castle")
    assert 0 < added <= fonts.size + 4 + 1, added
    rows = yellow_rows(frame[: fonts.size + 8])
    assert rows.size > fonts.size // 3, "banner not drawn"
    assert text_strip_rows(frame, "a castle") < 0.3 * h
    assert g.describe()["warnings"] == [LONG_REASON]  # the full reason stays in status


def test_warnings_alone_are_not_drawn():
    assert np.array_equal(first_frame(TestSource(320, 192, warnings=[LONG_REASON]), "x"),
                          first_frame(TestSource(320, 192), "x"))


def test_banner_is_shortened_not_overflowing_on_tiny_frames():
    g = TestSource(96, 64, banner=BANNER)
    text, fonts = g._banner
    assert text.endswith("...") and fonts.length(text) <= 96 - 12
    first_frame(g, "a castle")  # draws without error


def test_auto_fallback_draws_the_short_banner():
    from sfbridge.daemon import build_generator

    g, warnings = build_generator("auto", {"width": 320, "height": 192})
    if not isinstance(g, TestSource):
        pytest.skip("self-forcing is available on this machine: no fallback to test")
    assert g._banner[0] == BANNER
    assert len(warnings) == 1 and "serving the test pattern" in warnings[0]
    assert yellow_rows(first_frame(g, "a castle")[:40]).size > 0


def glyph(font, text: str, size: int = 24) -> np.ndarray:
    img = Image.new("L", (4 * size, 2 * size))
    ImageDraw.Draw(img).text((4, 4), text, fill=255, font=font)
    return np.asarray(img)


def chain_glyph(fonts: FontChain, text: str) -> np.ndarray:
    img = Image.new("L", (4 * fonts.size, 2 * fonts.size))
    fonts.draw(ImageDraw.Draw(img), (4, 4), text, 255)
    return np.asarray(img)


def tofus(fonts: FontChain) -> list[np.ndarray]:
    """The missing-glyph box of every font of the chain and of Pillow's built-in font."""
    faces = [ImageFont.truetype(p, fonts.size) for p in fonts.paths]
    return [glyph(f, NOTDEF_PROBE, fonts.size) for f in [*faces, ImageFont.load_default(size=fonts.size)]]


@pytest.mark.parametrize("paths", [None, ()], ids=["installed-fonts", "builtin-only"])
def test_non_ascii_is_never_tofu(paths):
    fonts = FontChain(24, paths)
    boxes = tofus(fonts)
    question = chain_glyph(fonts, "?")
    for ch in "éüß日本":
        drawn = chain_glyph(fonts, ch)
        assert drawn.any(), f"{ch!r} drew nothing"
        assert not any(np.array_equal(drawn, box) for box in boxes), f"{ch!r} drawn as tofu"
        if paths == ():  # Pillow's built-in font covers ASCII only: visibly '?'
            assert np.array_equal(drawn, question), ch
    assert not np.array_equal(chain_glyph(fonts, "a"), question)  # ASCII is drawn as itself


def test_installed_fonts_draw_real_glyphs():
    fonts = FontChain(24)
    question = chain_glyph(fonts, "?")
    latin = fonts.paths and fonts.font_for("é") is not None
    if not latin:
        pytest.skip("no font with Latin-1 coverage installed (fonts-dejavu-core)")
    for ch in "éüß":
        assert not np.array_equal(chain_glyph(fonts, ch), question), ch
    if fonts.font_for("日") is None:
        pytest.skip(f"no CJK font installed (fonts-droid-fallback); searched {font_paths()}")
    assert not np.array_equal(chain_glyph(fonts, "日"), question)
    assert not np.array_equal(chain_glyph(fonts, "日"), chain_glyph(fonts, "本"))


def test_mixed_runs_share_a_line_and_measure_like_they_draw():
    fonts = FontChain(20)
    text = "café 日本 ok"
    drawn = chain_glyph(fonts, text)
    cols = np.nonzero(drawn.any(axis=0))[0]
    assert cols.max() - cols.min() <= fonts.length(text) + 2
    assert "\u200b" not in "".join(run for _, run in fonts.runs("a\u200bb"))  # invisible format chars dropped


@pytest.mark.parametrize("prompt,check", [
    ("a red desert", lambda r, g, b: r > 1.6 * g and r > 1.6 * b),
    ("a calm blue ocean", lambda r, g, b: b > 1.6 * r and b > 1.3 * g),
    ("a green valley in spring", lambda r, g, b: g > 1.6 * r and g > 1.6 * b),
    ("a yellow field of wheat", lambda r, g, b: r > 1.6 * b and g > 1.6 * b and abs(r - g) < 0.25 * r),
    ("an orange sunset", lambda r, g, b: r > g > 1.6 * b and g > 1.3 * b),
    ("a purple nebula", lambda r, g, b: r > 1.5 * g and b > 1.5 * g),
    ("a white winter landscape", lambda r, g, b: min(r, g, b) > 140 and max(r, g, b) - min(r, g, b) < 25),
    ("a black cave", lambda r, g, b: max(r, g, b) < 50),
    ("A RED CAR, seen from above", lambda r, g, b: r > 1.6 * g and r > 1.6 * b),
])
def test_colour_words_dominate_the_frame(prompt, check):
    frames = TestSource(160, 96).next_block(Steering(prompt=prompt, seed=5, state_id=1)).frames
    r, g, b = frames.reshape(-1, 3).mean(axis=0)
    assert check(r, g, b), f"{prompt!r}: mean RGB {r:.0f} {g:.0f} {b:.0f}"


def test_colour_word_matching_and_hashed_default():
    assert np.array_equal(prompt_colors("a castle"), prompt_colors("a castle"))  # deterministic
    assert not np.array_equal(prompt_colors("a castle"), prompt_colors("the sea"))
    assert np.array_equal(prompt_colors("a redwood forest"), prompt_colors("a redwood forest"))
    red = prompt_colors("a red desert")
    assert not np.array_equal(prompt_colors("a redwood forest")[0], red[0])  # whole words only
    assert np.array_equal(prompt_colors("a red car")[0], red[0])  # same colour, other shade allowed
    two = prompt_colors("a red and blue flag")
    assert two[0].argmax() == 0 and two[1].argmax() == 2


def test_unreadable_font_file_is_skipped(tmp_path):
    bad = tmp_path / "broken.ttf"
    bad.write_bytes(b"not a font")
    fonts = FontChain(16, (str(bad),))
    assert [run for _, run in fonts.runs(" ab é")] == [" ab ?"]  # built-in font, '?' for what it lacks
    assert fonts.length("ab") > 0
