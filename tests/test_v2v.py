"""Video-to-video generation (issue 12): tiny (the real pipeline and the streaming VAE encoder code) and testsrc.

- Strength 1.0 is text-to-video bit for bit (the input is not even encoded).
- Strength < 1: the output depends on the input (different inputs, different frames; the same input on a
  fresh generator with the same seed, the same frames), and differs from text-to-video.
- The step to start from and the motion-adaptive formula of sfbridge/generators/v2v.py, pinned.
- The encoder framing: a scene's first block 9 -> 3 latents, later blocks 12 -> 3, and v2v switched on
  mid-scene (12 frames, fresh encoder) -> 3.
- testsrc: strength 1.0 is the plain pattern, lower strengths show the input under it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sfbridge.generators.base import InputBlock, Steering
from sfbridge.generators.testsrc import TestSource
from sfbridge.generators.tiny import TinyGenerator
from sfbridge.generators.v2v import (
    MOTION_FLOOR,
    MOTION_FULL,
    InputEncoder,
    effective_strength,
    first_step,
    motion,
)

W, H = 64, 48  # tiny: latents 8x6, seconds per test on a loaded 2-core CPU
SW, SH = 160, 96  # testsrc


def inputs(n: int, seed: int, prev: np.ndarray | None = None, w: int = W, h: int = H) -> InputBlock:
    frames = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    return InputBlock(frames=frames, sources=[("t", seed * 100 + i, 0.0) for i in range(n)], prev=prev)


def tiny() -> TinyGenerator:
    return TinyGenerator(width=W, height=H, seed=3, decoder="preview", overlap="off")


def run(gen, steering: Steering, feeds: list[InputBlock | None]) -> list[np.ndarray]:
    gen.reset(steering)
    out = []
    for feed in feeds:
        out.append(gen.next_block(steering, inputs=feed).frames if feed is not None else
                   gen.next_block(steering).frames)
    return out


T2V = Steering(prompt="a red desert", seed=3, state_id=1)


def v2v(strength: float, motion_adaptive: bool = False) -> Steering:
    return dataclasses.replace(T2V, input_mode="v2v", input_strength=strength, input_motion=motion_adaptive)


def feeds(seed: int) -> list[InputBlock]:
    return [inputs(9, seed), inputs(12, seed + 1), inputs(12, seed + 2)]


def test_strength_1_is_text_to_video_bit_for_bit():
    t2v = run(tiny(), T2V, [None, None, None])
    gen = tiny()
    same = run(gen, v2v(1.0), feeds(1))
    assert all(np.array_equal(a, b) for a, b in zip(t2v, same, strict=True))
    assert gen._v2v is None  # never encoded: nothing loaded


def test_output_depends_on_the_input_and_only_on_it():
    a1 = run(tiny(), v2v(0.7), feeds(1))
    a2 = run(tiny(), v2v(0.7), feeds(1))
    b = run(tiny(), v2v(0.7), feeds(50))
    t2v = run(tiny(), T2V, [None, None, None])
    assert all(np.array_equal(x, y) for x, y in zip(a1, a2, strict=True))  # same input twice: same frames
    for x, y, z in zip(a1, b, t2v, strict=True):
        assert not np.array_equal(x, y)  # another input: other frames
        assert not np.array_equal(x, z)  # and not text-to-video
    gen = tiny()
    run(gen, v2v(0.7), feeds(1)[:1])
    info = gen.next_block(v2v(0.7), inputs=inputs(12, 9)).info
    assert info["first_step"] == 3 and info["strength"] == 0.7 and info["encode_ms"] > 0


def test_strength_below_every_sigma_runs_no_step():
    gen = tiny()
    gen.reset(v2v(0.1))
    block = gen.next_block(v2v(0.1), inputs=inputs(9, 4))
    assert block.info["first_step"] == gen.pipe.num_steps
    # The block is the encoded input itself (no denoising step), so its latents equal the encoder's.
    enc = InputEncoder(gen._v2v.stream.__class__(gen._v2v.stream.encoder))
    assert torch.equal(gen.pipe.last_x0[0], enc.encode(inputs(9, 4)))


def test_first_step_and_motion_formula():
    sigmas = [1.0, 0.9375, 0.8333, 0.625]
    assert [first_step(sigmas, s) for s in (1.0, 0.95, 0.9375, 0.7, 0.625, 0.5, 0.0)] == [0, 1, 1, 3, 3, 4, 4]
    still = InputBlock(frames=np.full((12, H, W, 3), 77, np.uint8), sources=[("t", 0, 0.0)] * 12)
    assert motion(still) == 0.0 and effective_strength(v2v(0.8, True), still) == 0.8
    flicker = np.zeros((12, H, W, 3), np.uint8)
    flicker[1::2] = 255  # every frame differs from the last by full scale
    fast = InputBlock(frames=flicker, sources=[("t", 0, 0.0)] * 12)
    assert motion(fast) == 1.0
    assert effective_strength(v2v(0.8, True), fast) == pytest.approx(0.8 * MOTION_FLOOR)
    assert effective_strength(v2v(0.8, False), fast) == 0.8  # off: the strength as given
    half = np.zeros((12, H, W, 3), np.uint8)
    half[1::2] = round(255 * MOTION_FULL / 2)  # half the full-motion difference
    m = motion(InputBlock(frames=half, sources=[("t", 0, 0.0)] * 12))
    assert effective_strength(v2v(0.8, True), InputBlock(frames=half, sources=[])) == pytest.approx(
        0.8 * (1 - (1 - MOTION_FLOOR) * m / MOTION_FULL))
    prev = np.full((H, W, 3), 255, np.uint8)  # the previous block's last frame counts too
    assert motion(InputBlock(frames=still.frames[:1], sources=[], prev=prev)) == pytest.approx((255 - 77) / 255)


def test_encoder_framing_9_then_12_and_a_start_mid_scene():
    gen = tiny()
    enc = gen._make_input_encoder()
    assert enc.encode(inputs(9, 1)).shape == (1, 3, 16, H // 8, W // 8)
    assert enc.encode(inputs(12, 2)).shape[1] == 3
    enc.reset()  # v2v switched on at a later block: 12 frames into a fresh encoder
    late = enc.encode(inputs(12, 3))
    enc.reset()
    assert torch.equal(late, enc.encode(InputBlock(frames=inputs(12, 3).frames[3:], sources=[])))


def test_mode_off_or_no_input_is_text_to_video_and_restarts_the_encoder():
    gen = tiny()
    out = run(gen, v2v(0.7), [inputs(9, 1), None, inputs(12, 2)])
    assert gen._v2v is not None and gen._v2v.started
    t2v = run(tiny(), T2V, [None, None, None])
    assert not np.array_equal(out[0], t2v[0])
    ref = tiny()
    ref.reset(v2v(0.7))
    ref.next_block(v2v(0.7), inputs=inputs(9, 1))
    ref.next_block(T2V)  # mode off for a block: same as no input
    assert np.array_equal(ref.next_block(v2v(0.7), inputs=inputs(12, 2)).frames, out[2])


def test_testsrc_composites_the_input():
    base = run(TestSource(SW, SH), T2V, [None, None])
    full = run(TestSource(SW, SH), v2v(1.0), [inputs(9, 1, w=SW, h=SH), inputs(12, 2, w=SW, h=SH)])
    assert all(np.array_equal(a, b) for a, b in zip(base, full, strict=True))  # strength 1: the pattern only
    src = TestSource(SW, SH)
    src.reset(v2v(0.0))
    feed = inputs(9, 1, w=SW, h=SH)
    out = src.next_block(v2v(0.0), inputs=feed).frames
    body = slice(70, 92)  # below the text strip, above the progress bar
    assert np.array_equal(out[:, body], feed.frames[:, body])  # strength 0: the input itself
    half = run(TestSource(SW, SH), v2v(0.5), [feed])[0]
    expect = (feed.frames[:, body].astype(np.int32) + base[0][:, body]) / 2
    assert np.abs(half[:, body] - expect).max() <= 1.0


def test_self_forcing_loads_its_encoder_on_the_first_v2v_block(tmp_path):
    """The real generator on CPU with the golden tiny files in the official layout: the VAE encoder half of
    Wan2.1_VAE.pth loads only when v2v is first used; strength 1.0 stays text-to-video bit for bit."""
    from sfbridge.model.vae_encoder import StreamingVAEEncoder
    from test_self_forcing_generator import TINY, build_tiny_model_dir

    from sfbridge.generators import create_generator

    model_dir = str(build_tiny_model_dir(tmp_path))
    gens = [create_generator("self-forcing", model_dir=model_dir, **TINY) for _ in range(3)]
    try:
        t2v = run(gens[0], T2V, [None, None])
        assert gens[1]._v2v is None
        same = run(gens[1], v2v(1.0), feeds(1)[:2])
        assert gens[1]._v2v is None and all(np.array_equal(a, b) for a, b in zip(t2v, same, strict=True))
        restyled = run(gens[1], v2v(0.7), feeds(1)[:2])
        assert isinstance(gens[1]._v2v.stream, StreamingVAEEncoder)
        again = run(gens[2], v2v(0.7), feeds(1)[:2])
        other = run(gens[2], v2v(0.7), feeds(60)[:2])
        assert all(np.array_equal(a, b) for a, b in zip(restyled, again, strict=True))
        assert not any(np.array_equal(a, b) for a, b in zip(restyled, other, strict=True))
    finally:
        for g in gens:
            g.close()
