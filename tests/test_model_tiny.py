"""The ``tiny`` generator driven directly (no sockets)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sfbridge.generators import create_generator
from sfbridge.generators.base import GeneratorError, Steering
from sfbridge.generators.tiny import TinyGenerator, text_embedding


@pytest.fixture(scope="module")
def gen() -> TinyGenerator:
    return TinyGenerator(width=128, height=64, window=6, sink=1)


def blocks(g: TinyGenerator, s: Steering, n: int) -> list[np.ndarray]:
    return [g.next_block(s).frames for _ in range(n)]


def test_block_sizes_and_layout(gen: TinyGenerator) -> None:
    s = Steering(prompt="a red fox", seed=3)
    gen.reset(s)
    out = [gen.next_block(s) for _ in range(3)]
    assert [b.frames.shape for b in out] == [(9, 64, 128, 3), (12, 64, 128, 3), (12, 64, 128, 3)]
    assert [b.index for b in out] == [0, 1, 2] and [b.first_frame for b in out] == [0, 9, 21]
    assert all(b.frames.dtype == np.uint8 and b.frames.flags.c_contiguous for b in out)
    assert out[1].frames.std() > 1  # not a flat image
    assert gen.describe()["model"] == "tiny" and gen.supports_steps()


def test_deterministic_reset_seed_prompt(gen: TinyGenerator) -> None:
    s = Steering(prompt="a red fox", seed=3)
    gen.reset(s)
    a = blocks(gen, s, 2)
    gen.reset(s)
    b = blocks(gen, s, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # reset reproduces block 0
    gen.reset(dataclasses.replace(s, prompt="a blue whale"))
    c = blocks(gen, dataclasses.replace(s, prompt="a blue whale"), 1)
    assert not np.array_equal(a[0], c[0])  # prompt changes output
    gen.reset(s)
    blocks(gen, s, 1)
    d = gen.next_block(dataclasses.replace(s, seed=4)).frames  # seed change from the next block
    assert not np.array_equal(a[1], d)


def test_blend_and_steps(gen: TinyGenerator) -> None:
    s = Steering(prompt="a red fox", seed=3)
    gen.reset(s)
    blocks(gen, s, 1)
    cut = dataclasses.replace(s, prompt="a blue whale", prev_prompt="a red fox", since_block=1)
    blend = dataclasses.replace(cut, transition="blend", blend_blocks=4)
    x_cut = gen.next_block(cut).frames
    gen.reset(s)
    blocks(gen, s, 1)
    b = gen.next_block(blend)
    assert b.info["blend_alpha"] == 0.25 and not np.array_equal(x_cut, b.frames)
    two = gen.next_block(dataclasses.replace(s, denoising_steps=(1000.0, 500.0)))
    assert two.info["steps"] == [1000.0, 500.0] and two.frames.shape[0] == 12
    with pytest.raises(GeneratorError):
        gen.next_block(dataclasses.replace(s, denoising_steps=(500.0, 1000.0)))
    gen.reset(s)


def test_text_stand_in() -> None:
    a = text_embedding("hello", 8, 4)
    assert a.shape == (1, 8, 4) and (a[0, 6:] == 0).all() and (a[0, :6] != 0).any()
    assert (text_embedding("hello", 8, 4) == a).all() and not (text_embedding("hellO", 8, 4) == a).all()


def test_options_validated_and_registered() -> None:
    with pytest.raises(GeneratorError):
        TinyGenerator(width=100)
    with pytest.raises(GeneratorError):
        TinyGenerator(window=3, sink=1)
    g = create_generator("tiny", width=64, height=32, seed=1, window=6, sink=0, steps=[1000, 500])
    assert g.next_block(Steering()).frames.shape == (9, 32, 64, 3)


def test_blend_during_blend_starts_from_the_last_conditioning(gen: TinyGenerator) -> None:
    import torch

    from sfbridge.steering import SteeringBox

    box = SteeringBox(Steering(prompt="A", state_id=1))
    snap = box.take()
    gen.reset(snap.steering)
    gen.next_block(snap.steering)
    emb = {p: gen._embeds(p) for p in "ABC"}
    box.submit("prompt", dict(prompt="B", transition="blend", blend_blocks=4))
    for _ in range(2):
        gen.next_block(box.take().steering)
    on_screen = gen._last_embeds.clone()
    assert torch.allclose(on_screen, 0.5 * emb["B"] + 0.5 * emb["A"])
    box.submit("prompt", dict(prompt="C", transition="blend", blend_blocks=4))
    gen.next_block(box.take().steering)
    assert torch.allclose(gen._last_embeds, 0.25 * emb["C"] + 0.75 * on_screen)
    gen.reset(snap.steering)
