"""KV re-cache in the model (issue 10): the re-cached K/V equal a from-scratch rebuild, nothing else moves.

The rebuild is independent of ``StreamPipeline.recache``: the clean latents are the ones ``next_block`` returned
(collected by the test, not read from the latent ring), the keys are rotated by the float64 reference RoPE at
``frame - frame_base`` (negative after a rebase), the text K/V come from a fresh cross cache, and every group runs
through the model's ordinary forward on a fresh global cache that holds the sink K/V, then the groups in order.
"""

from __future__ import annotations

import pytest
import torch
from sfbridge.model.config import ModelConfig, StreamConfig
from sfbridge.model.kv_cache import CrossAttnCache, KVCache
from sfbridge.model.pipeline import StreamPipeline
from sfbridge.model.rope import RoPE
from sfbridge.model.weights import random_model

TINY = ModelConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, text_len=32)
H, W = 4, 6  # latent; 6 tokens per frame


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return random_model(TINY, seed=11)


def embeds(seed: int, n: int = 7) -> torch.Tensor:
    return torch.randn(1, n, TINY.text_dim, generator=torch.Generator().manual_seed(seed))


def rollout(model: torch.nn.Module, blocks: int, **kw: object) -> tuple[StreamPipeline, dict[int, torch.Tensor]]:
    """A pipeline after ``blocks`` blocks and the clean latents of every frame it made (absolute frame -> latent)."""
    cfg = StreamConfig(**{**dict(latent_h=H, latent_w=W, local_attn_size=7, sink_size=1), **kw})
    p = StreamPipeline(model, cfg, seed=3)
    p.set_prompt_embeds(embeds(1))
    latents: dict[int, torch.Tensor] = {}
    for _ in range(blocks):
        start = p.block_index * cfg.num_frame_per_block
        x0 = p.next_block()
        for j in range(x0.shape[1]):
            latents[start + j] = x0[:, j:j + 1]
    return p, latents


def rebuild(p: StreamPipeline, latents: dict[int, torch.Tensor], groups: list[tuple[int, int]],
            text: torch.Tensor) -> dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """From-scratch K/V of the groups' frames: absolute frame -> (k per layer, v per layer), each [B, tpf, h, d]."""
    model, kv, tpf = p.model, p.kv, p.tokens_per_frame
    S = kv.sink_frames
    frames = S + sum(c for _, c in groups)
    ref = KVCache(TINY.num_layers, 1, frames, tpf, TINY.num_heads, TINY.head_dim, rolling=False)
    cross = CrossAttnCache(TINY.num_layers, 1, TINY.text_len, TINY.num_heads, TINY.head_dim)
    model.fill_cross(text, cross)
    if S:  # the sink as it is in the stream's cache (old K/V, old positions)
        view = ref.begin(0, S * tpf)
        for i in range(TINY.num_layers):
            ref.k[i][:, :S * tpf] = torch.cat([kv.k[i][:, s * tpf:(s + 1) * tpf] for s in range(S)], 1)
            ref.v[i][:, :S * tpf] = torch.cat([kv.v[i][:, s * tpf:(s + 1) * tpf] for s in range(S)], 1)
    rope, out, at = RoPE(TINY.head_dim), {}, S
    with torch.no_grad():
        for first, count in groups:
            x = torch.cat([latents[a] for a in range(first, first + count)], 1)
            view = ref.begin(at * tpf, count * tpf)
            model(x, p.t_feat_ctx, rope.freqs(first - kv.frame_base, count, H // 2, W // 2), view, cross)
            for j in range(count):
                rows = slice((at + j) * tpf, (at + j + 1) * tpf)
                out[first + j] = ([k[:, rows] for k in ref.k], [v[:, rows] for v in ref.v])
            at += count
    return out


def frame_rows(p: StreamPipeline, frame: int) -> slice:
    s = p.kv.frame_slot(frame) * p.tokens_per_frame
    return slice(s, s + p.tokens_per_frame)


CASES = {  # name: (blocks run before the re-cache, StreamConfig overrides)
    "window7_sink1": (4, {}),  # the golden set's rolling window, ring wrapped
    "window6_sink0": (4, dict(local_attn_size=6, sink_size=0)),
    "window8_sink1_partial": (4, dict(local_attn_size=8)),  # oldest group is a block's tail
    "window7_sink1_filling": (1, {}),  # sink cuts into block 0; slots past the window are stale
    "window7_sink1_rebased": (5, dict(rope_rebase_frames=6)),  # negative RoPE positions in the window
    "global": (3, dict(local_attn_size=-1, sink_size=0, global_cache_frames=12)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_recache_equals_rebuild_and_touches_only_the_window(model: torch.nn.Module, case: str) -> None:
    blocks, kw = CASES[case]
    p, latents = rollout(model, blocks, **kw)
    kv = p.kv
    if case.endswith("rebased"):
        assert kv.frame_base > 0 and min(kv.rope_positions(kv.window_frames())) < 0
    before_k = [k.clone() for k in kv.k]
    before_v = [v.clone() for v in kv.v]
    indices = (kv.global_end, kv.local_end, kv.frame_base, kv.window_frames(), p.block_index)
    positions = kv.rope_positions(kv.window_frames())
    new = embeds(2, n=9)
    p.set_prompt_embeds(new)
    groups = p.recache()

    window = kv.window_frames()
    redone = [a for first, count in groups for a in range(first, first + count)]
    assert redone == [a for a in window if a >= kv.sink_frames] and redone  # all non-sink frames, in order
    assert all(len({a // 3 for a in range(f, f + c)}) == 1 for f, c in groups)  # one block per group
    assert (kv.global_end, kv.local_end, kv.frame_base, kv.window_frames(), p.block_index) == indices
    assert kv.rope_positions(kv.window_frames()) == positions
    want = rebuild(p, latents, groups, new)
    redone_slots = set()
    for a in redone:
        rows = frame_rows(p, a)
        redone_slots.add(kv.frame_slot(a))
        for i in range(TINY.num_layers):
            torch.testing.assert_close(kv.k[i][:, rows], want[a][0][i], atol=1e-5, rtol=0)
            torch.testing.assert_close(kv.v[i][:, rows], want[a][1][i], atol=1e-5, rtol=0)
            if i == 0:  # layer 0 sees only the latent and its position: same K as before (positions kept)
                torch.testing.assert_close(kv.k[i][:, rows], before_k[i][:, rows], atol=1e-5, rtol=0)
            else:  # deeper layers saw the new text
                assert not torch.allclose(kv.k[i][:, rows], before_k[i][:, rows], atol=1e-4), (case, a, i)
    for slot in range(kv.capacity_frames):  # sink and slots outside the window: bit for bit as before
        if slot in redone_slots:
            continue
        rows = slice(slot * p.tokens_per_frame, (slot + 1) * p.tokens_per_frame)
        for i in range(TINY.num_layers):
            assert torch.equal(kv.k[i][:, rows], before_k[i][:, rows]), (case, slot)
            assert torch.equal(kv.v[i][:, rows], before_v[i][:, rows]), (case, slot)
    assert p.next_block().isfinite().all()  # the stream goes on from the re-cached window


def test_recache_under_the_same_prompt_reproduces_the_cache(model: torch.nn.Module) -> None:
    """Before anything was evicted the rollout IS a block-by-block build, so re-caching with the unchanged
    text must give back the K/V it had: checks positions (negative ones after two rebases) and the sink."""
    p, _ = rollout(model, 5, local_attn_size=-1, sink_size=0, global_cache_frames=15, rope_rebase_frames=6)
    assert p.kv.frame_base == 12 and p.kv.rope_positions([0]) == [-12]
    before = [k.clone() for k in p.kv.k] + [v.clone() for v in p.kv.v]
    p.cross.reset()
    p.recache()
    for old, now in zip(before, p.kv.k + p.kv.v, strict=True):
        torch.testing.assert_close(now, old, atol=1e-5, rtol=0)
    q, _ = rollout(model, 2, local_attn_size=6, sink_size=2)  # the sink cuts block 0: frame 2 is a group
    before = [k.clone() for k in q.kv.k]
    assert q.recache() == [(2, 1), (3, 3)]
    for old, now in zip(before, q.kv.k, strict=True):
        torch.testing.assert_close(now, old, atol=1e-5, rtol=0)


def test_latent_ring_holds_the_window(model: torch.nn.Module) -> None:
    p, latents = rollout(model, 6, local_attn_size=8, sink_size=2)
    for a in p.kv.window_frames():
        assert torch.equal(p.latents.read(a, 1), latents[a]), a
    assert p.latents.nbytes() == 8 * 16 * H * W * 4
