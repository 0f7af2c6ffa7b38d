"""Conditioning math (weighted mixes, slerp, blend paths) and how tiny / testsrc apply steering with it (issue 10).

Generator-level tests feed explicit ``Steering`` sequences, the way the engine does at block boundaries.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sfbridge.generators import conditioning as cond
from sfbridge.generators.base import Steering
from sfbridge.generators.testsrc import TestSource, prompt_colors
from sfbridge.generators.tiny import TinyGenerator


def rows(seed: int, shape: tuple[int, ...] = (1, 6, 16)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def row_norms(x: torch.Tensor) -> torch.Tensor:
    return x.double().norm(dim=-1)


# -- the math ------------------------------------------------------------------------------------------
def test_slerp_keeps_the_norm_and_its_endpoints() -> None:
    a, b = rows(1), rows(2)
    b_same = b / b.norm(dim=-1, keepdim=True) * a.norm(dim=-1, keepdim=True)  # equal row norms
    for t in (0.1, 0.5, 0.9):
        torch.testing.assert_close(row_norms(cond.slerp(a, b_same, t)), row_norms(a), atol=1e-5, rtol=0)
        want = (1 - t) * row_norms(a) + t * row_norms(b)  # unequal norms: the norm moves linearly
        torch.testing.assert_close(row_norms(cond.slerp(a, b, t)), want, atol=1e-5, rtol=0)
        lin = (1 - t) * a + t * b_same
        assert (row_norms(lin) < row_norms(a) - 1e-3).all()  # what slerp avoids: a linear mix shrinks
    assert cond.slerp(a, b, 0.0) is a and cond.slerp(a, b, 1.0) is b
    a[0, 2] = 0  # a zero (padding) row falls back to the linear mix
    torch.testing.assert_close(cond.slerp(a, b, 0.25)[0, 2], 0.25 * b[0, 2])
    half = cond.slerp(a.bfloat16(), b.bfloat16(), 0.5)  # computed in fp32, returned in the input dtype
    assert half.dtype == torch.bfloat16 and half.isfinite().all()


def test_linear_mix_normalises_weights_and_rescales_rows() -> None:
    a, b, c = rows(1), 3 * rows(2), rows(3)
    m = cond.mix([a, b, c], [2, 1, 1])
    torch.testing.assert_close(m, cond.mix([a, b, c], [0.5, 0.25, 0.25]))  # only the ratios count
    want = 0.5 * row_norms(a) + 0.25 * row_norms(b) + 0.25 * row_norms(c)
    torch.testing.assert_close(row_norms(m), want, atol=1e-5, rtol=0)
    direction = 0.5 * a + 0.25 * b + 0.25 * c  # same direction as the plain weighted mean
    cos = torch.nn.functional.cosine_similarity(m, direction, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    short = cond.mix([a, b[:, :4]], [1, 1])  # another length: zero rows appended, padding rows stay zero
    assert short.shape == a.shape
    torch.testing.assert_close(row_norms(short[:, 4:]), row_norms(0.5 * a[:, 4:]), atol=1e-5, rtol=0)


def test_weights_one_zero_are_the_single_prompt_exactly() -> None:
    a, b = rows(1), rows(2)
    for mode in ("linear", "slerp"):
        assert torch.equal(cond.mix([a, b], [1, 0], mode), a)
        assert torch.equal(cond.mix([a, b], [0, 2.5], mode), b)
    seen: list[str] = []

    def encode(text: str) -> torch.Tensor:
        seen.append(text)
        return rows(len(text))

    assert torch.equal(cond.mix_weighted([("abc", 1.0), ("de", 0.0)], "slerp", encode), rows(3))
    assert seen == ["abc"]  # a zero-weight prompt is never encoded


def test_slerp_mix_is_slerp_at_w2_over_the_sum() -> None:
    a, b = rows(1), rows(2)
    torch.testing.assert_close(cond.mix([a, b], [3, 1], "slerp"), cond.slerp(a, b, 0.25))


@pytest.mark.parametrize("items,weights,mode", [
    (2, [1, 1, 1], "linear"), (3, [1, 1, 1], "slerp"), (2, [0, 0], "linear"), (2, [1, -1], "linear"),
    (2, [1, float("nan")], "linear"), (2, [1, 1], "cubic")])
def test_bad_mixes_raise(items: int, weights: list[float], mode: str) -> None:
    with pytest.raises(ValueError):
        cond.mix([rows(i) for i in range(items)], weights, mode)


@pytest.mark.parametrize("interp", ["linear", "slerp"])
@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_blend_path_moves_monotonically_first_block_already_moved(interp: str, kind: str) -> None:
    src, dst = rows(4), rows(5)
    if kind == "numpy":
        src, dst = src.numpy()[0], dst.numpy()[0]
    n = 4
    path = cond.blend_path(src, dst, n, interp)
    assert len(path) == n

    def dist(x: object) -> float:
        return float(np.linalg.norm(np.asarray(x, dtype=np.float64) - np.asarray(dst, dtype=np.float64)))

    d = [dist(src)] + [dist(x) for x in path]
    assert all(d[i + 1] < d[i] for i in range(n)), d  # strictly closer every block, the first one included
    assert d[-1] == 0.0 and path[-1] is dst


def test_blend_alpha_and_identity() -> None:
    s = Steering(prompt="b", transition="blend", blend_blocks=4, prev_prompt="a", since_block=10)
    assert [cond.blend_alpha(s, b) for b in (10, 11, 13, 20)] == [0.25, 0.5, 1.0, 1.0]
    only_cond = dataclasses.replace(s, prev_prompt=None, prev_cond=((("a", 1.0),), "linear"))
    assert cond.blend_alpha(only_cond, 10) == 0.25 and cond.source_key(only_cond) == ((("a", 1.0),), "linear")
    assert cond.blend_identity(dataclasses.replace(s, transition="cut")) is None
    assert cond.blend_identity(s) != cond.blend_identity(dataclasses.replace(s, prompts=(("b", 1), ("c", 1))))
    assert cond.blend_identity(s) == cond.blend_identity(dataclasses.replace(s, seed=5, state_id=9))


# -- generators ----------------------------------------------------------------------------------------
RED_BLUE = (("a red desert", 0.7), ("a blue ocean", 0.3))


def tiny() -> TinyGenerator:
    return TinyGenerator(width=64, height=32, window=7, sink=1, decoder="preview", overlap=False, seed=5)


def change(s: Steering, block: int, **fields: object) -> Steering:
    """A prompt change landing at ``block`` as the engine hands it over (new state, since_block, prev_cond)."""
    return dataclasses.replace(s, state_id=s.state_id + 1, since_block=block, prev_prompt=s.prompt,
                               prev_cond=s.cond_key(), **fields)


def script() -> list[Steering]:
    """Eight blocks: a weighted cut, a slerp blend with re-cache, a seed change during it, a linear blend."""
    s0 = Steering(prompt="a red desert", seed=5)
    s1 = change(s0, 1, prompts=RED_BLUE, mix="linear", prompt="red (0.70) + blue (0.30)")
    s2 = change(s1, 3, prompts=(), prompt="a green forest", transition="blend", blend_blocks=3, interp="slerp",
                recache=True)
    s3 = dataclasses.replace(s2, seed=6, state_id=s2.state_id + 1)
    s4 = change(s3, 6, prompt="a pink sky", transition="blend", blend_blocks=2, recache=False, interp="linear")
    return [s0, s1, s1, s2, s3, s3, s4, s4]


def test_same_seed_and_steering_give_identical_frames() -> None:
    for make in (tiny, lambda: TestSource(width=96, height=64)):
        runs = []
        for _ in range(2):
            g = make()
            g.reset(script()[0])
            runs.append([g.next_block(s) for s in script()])
            g.close()
        a, b = runs
        assert all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b, strict=True))
        assert not np.array_equal(a[2].frames[:1], a[5].frames[:1])


def test_tiny_applies_weighted_blend_and_recache_at_their_blocks() -> None:
    g = tiny()
    g.reset(script()[0])
    conds, recached = [], []
    for s in script():
        recached.append(g.next_block(s).info["recached_frames"])
        conds.append(g.pipe.prompt_embeds.clone())
    assert recached == [0, 0, 0, 6, 0, 0, 0, 0]  # once, at the first blend block (window 7, sink 1)
    red, blue, green = (g._embeds(p) for p in ("a red desert", "a blue ocean", "a green forest"))
    torch.testing.assert_close(conds[1], cond.mix([red, blue], [0.7, 0.3]))
    path = cond.blend_path(conds[2], green, 3, "slerp")
    for got, want in zip(conds[3:6], path, strict=True):  # the seed change mid-blend keeps the blend going
        torch.testing.assert_close(got, want)
    d = [float((c - green).norm()) for c in conds[2:6]]
    assert d[0] > d[1] > d[2] > d[3] == 0.0


def test_tiny_weighted_one_zero_equals_the_single_prompt_bitwise() -> None:
    frames = []
    for prompts in ((), (("a blue ocean", 1.0), ("a red desert", 0.0))):
        g = tiny()
        s0 = Steering(prompt="a red desert", seed=5)
        s1 = change(s0, 1, prompt="a blue ocean", prompts=prompts)
        g.reset(s0)
        frames.append([g.next_block(s).frames for s in (s0, s1, s1)])
    assert all(np.array_equal(x, y) for x, y in zip(*frames, strict=True))


def test_recache_changes_what_follows() -> None:
    """Latents, not pixels: the random tiny model barely listens to its text (8e-5 here), below uint8 steps."""
    out, latents = [], []
    for recache in (False, True):
        g = tiny()
        s0 = Steering(prompt="a red desert", seed=5)
        s1 = change(s0, 3, prompt="a green forest", recache=recache)
        g.reset(s0)
        out.append([g.next_block(s) for s in (s0, s0, s0, s1, s1)][3:])
        latents.append(g.pipe.latents.read(9, 6))  # the landing block and the one after it
    assert [b.info["recached_frames"] for b in out[1]] == [6, 0] and out[0][0].info["recached_frames"] == 0
    assert not torch.equal(latents[0][:, :3], latents[1][:, :3])  # the landing block sees the new K/V


def test_testsrc_colours_follow_the_weighted_list_and_interp() -> None:
    src = TestSource(width=96, height=64)
    red, blue = prompt_colors("a red desert"), prompt_colors("a blue ocean")
    single = Steering(prompt="a red desert")
    assert np.array_equal(src._colors(single.cond_key()), red)  # a single prompt: the colours as before
    weighted = Steering(prompt="mix", prompts=RED_BLUE)
    np.testing.assert_allclose(src._colors(weighted.cond_key()), cond.mix([red, blue], [0.7, 0.3]), rtol=1e-6)
    slerped = Steering(prompt="mix", prompts=RED_BLUE, mix="slerp")
    np.testing.assert_allclose(src._colors(slerped.cond_key()), cond.slerp(red, blue, 0.3), rtol=1e-6)
    # a slerp blend over 2 blocks from red: half-way on the arc, then blue
    src.reset(single)
    src.next_block(single)
    s1 = change(single, 1, prompt="a blue ocean", transition="blend", blend_blocks=2, interp="slerp")
    assert src.next_block(s1).info["blend_alpha"] == 0.5
    np.testing.assert_allclose(src._last_colors, np.clip(cond.slerp(red, blue, 0.5), 0, 255), rtol=1e-6)
    src.next_block(s1)
    assert np.array_equal(src._last_colors, blue)
