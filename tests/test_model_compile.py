"""Compile-ready, sync-free model path: fp32 RoPE table, ring-buffer KV cache, recompiles, host<->device copies.

Recompile counting uses the cheap ``aot_eager`` backend (same dynamo guards as inductor); one test compiles
with inductor to compare compiled and eager numbers. Numbers printed here are in docs/MODEL.md.
"""

from __future__ import annotations

import logging

import pytest
import torch
from sfbridge.model.config import ModelConfig, StreamConfig
from sfbridge.model.counters import CountingBackend, TransferCounter
from sfbridge.model.kv_cache import CrossAttnCache, KVCache
from sfbridge.model.pipeline import StreamPipeline
from sfbridge.model.rope import RoPE, RopeTable, apply_rope
from sfbridge.model.weights import random_model

log = logging.getLogger(__name__)
TINY = ModelConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, text_len=32)


def embeds(seed: int, n: int = 5) -> torch.Tensor:
    return torch.randn(1, n, TINY.text_dim, generator=torch.Generator().manual_seed(seed))


def make(model: torch.nn.Module, **kw: object) -> StreamPipeline:
    compile_backend = kw.pop("compile_backend", None)
    cfg = StreamConfig(**{**dict(latent_h=4, latent_w=6, local_attn_size=7, sink_size=1), **kw})
    p = StreamPipeline(model, cfg, seed=0, compile=compile_backend is not None,
                       compile_backend=compile_backend or "inductor")
    p.set_prompt_embeds(embeds(1))
    return p


# -- RoPE ----------------------------------------------------------------------------------------
def test_rope_table_equals_float64_reference() -> None:
    ref, tab = RoPE(32), RopeTable(32, 3, 4, frames=8)
    for pos in (0, 5, 20):  # 20 is past the table: it grows
        f = ref.freqs(pos, 3, 3, 4)
        cos, sin = tab.block(pos, 3)
        torch.testing.assert_close(cos.double(), f.real, atol=1e-7, rtol=0)
        torch.testing.assert_close(sin.double(), f.imag, atol=1e-7, rtol=0)
    assert tab.frames >= 23
    cos, _ = tab.positions([0, 1, 7, 3])  # a window's frames (sink + others), not contiguous
    want = torch.cat([ref.freqs(p, 1, 3, 4) for p in (0, 1, 7, 3)], dim=1)
    torch.testing.assert_close(cos.double(), want.real, atol=1e-7, rtol=0)
    # rebasing rotation: fp32 in place == float64 reference, both directions
    k = torch.randn(2, 12, 2, 32)
    for delta in (-6, 4):
        got = k.clone()
        tab.rotate_frames_(got, delta)
        torch.testing.assert_close(got, ref.rotate_frames(k, delta), atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype,ulp", [(torch.float32, 2**-23), (torch.bfloat16, 2**-7), (torch.float16, 2**-10)])
def test_rope_fp32_error_vs_float64(dtype: torch.dtype, ulp: float) -> None:
    """q/k rotation at the real head_dim: fp32 path vs exact float64 rotation of the same (rounded) input."""
    d, h, w, F = 128, 30, 52, 3
    tab, ref = RopeTable(d, h, w, frames=1025), RoPE(d)
    x = torch.randn(1, F * h * w, 2, d, generator=torch.Generator().manual_seed(0)).to(dtype)
    for pos in (0, 1021):  # largest angles at the end of the official 1024-frame range
        exact = RoPE.apply(x.double(), ref.freqs(pos, F, h, w))
        fp32 = (apply_rope(x, tab.block(pos, F)).double() - exact).abs()
        f64 = (RoPE.apply(x, ref.freqs(pos, F, h, w)).double() - exact).abs()
        scale = exact.abs().max().item()
        log.warning("rope %s pos %d: max abs err fp32-table %.3e, float64 %.3e (|y| <= %.2f)", dtype, pos,
                    fp32.max(), f64.max(), scale)
        if dtype == torch.float32:
            assert fp32.max() < 8 * ulp * scale  # a few fp32 ulps
        else:  # the cast to bf16/fp16 dominates: same error as the float64 path
            assert fp32.max() <= 1.01 * f64.max() and f64.max() <= ulp * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rope_fp32_error_on_a_block_output(dtype: torch.dtype) -> None:
    """One tiny-model layer with the fp32 table vs the float64 complex RoPE, same dtype otherwise."""
    model = random_model(TINY, seed=5).to(dtype)
    block, (h, w), F = model.blocks[0], (3, 4), 3
    L, g = F * h * w, torch.Generator().manual_seed(2)
    x = torch.randn(1, L, TINY.dim, generator=g).to(dtype)
    e0 = (0.1 * torch.randn(1, 1, 6, TINY.dim, generator=g)).to(dtype)
    ck, cv = (torch.randn(1, TINY.text_len, 2, 32, generator=g).to(dtype) for _ in range(2))
    outs = []
    for rope in (RopeTable(32, h, w, 64).block(40, F), RoPE(32).freqs(40, F, h, w)):
        kv = KVCache(1, 1, 6, h * w, 2, 32, rolling=True, dtype=dtype)
        view = kv.begin(0, L)
        with torch.no_grad():
            outs.append(block(x, e0, rope, view.k[0], view.v[0], view.slots, ck, cv, "sdpa").double())
    err = (outs[0] - outs[1]).abs().max().item()
    log.warning("layer output %s: max abs diff fp32-table vs float64 RoPE %.3e (|y| <= %.2f)", dtype, err,
                outs[1].abs().max())
    assert err <= {torch.float32: 1e-5, torch.bfloat16: 0.1, torch.float16: 0.01}[dtype]


# -- ring buffer vs the official copy-eviction cache ---------------------------------------------
class CopyEvictionCache:
    """The official rule, literally (reference only): one frame id per token slot, eviction by copy."""

    def __init__(self, capacity: int, sink: int, rolling: bool) -> None:
        self.buf, self.C, self.K, self.rolling = [-1] * capacity, capacity, sink, rolling
        self.g = self.l = 0

    def call(self, start: int, n: int, value: list[int]) -> None:
        end = start + n
        evict = 0
        if self.rolling and end > self.g and n + self.l > self.C:
            evict = n + self.l - self.C
            keep = self.l - evict - self.K
            self.buf[self.K:self.K + keep] = self.buf[self.K + evict:self.K + evict + keep]
        self.l = self.l + (end - self.g) - evict
        self.buf[self.l - n:self.l] = value
        self.g = end


@pytest.mark.parametrize("cap,sink,F,tpf,rolling", [
    (7, 1, 3, 2, True), (6, 0, 3, 1, True), (21, 3, 3, 1, True), (5, 2, 1, 3, True), (9, 2, 2, 1, True),
    (12, 0, 3, 2, False)])
def test_ring_buffer_equals_copy_eviction(cap: int, sink: int, F: int, tpf: int, rolling: bool) -> None:
    ref = CopyEvictionCache(cap * tpf, sink * tpf, rolling)
    kv = KVCache(1, 1, cap, tpf, 1, 1, rolling=rolling, sink_frames=sink)
    n = F * tpf
    for block in range(40 if rolling else cap // F):
        for call in range(3):  # later calls of a block rewrite its slots
            tokens = [1000 * call + block * n + i for i in range(n)]
            ref.call(block * n, n, tokens)
            kv.begin(block * n, n)
            kv.write(0, torch.tensor(tokens, dtype=torch.float32).view(1, n, 1, 1), torch.zeros(1, n, 1, 1))
            assert (kv.global_end, kv.local_end) == (ref.g, ref.l)
            k, _ = kv.ordered(0)
            assert k.flatten().tolist() == ref.buf[:ref.l], (block, call)
            # the attended view holds the same set (ring order), stale slots excluded
            view = kv.begin(block * n, n) if call == 2 else None
            if view is not None:
                assert sorted(view.k[0].flatten().tolist()) == sorted(ref.buf[:ref.l])


# -- recompiles ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return random_model(TINY, seed=0)


def test_zero_recompiles_after_the_window_fills() -> None:
    """Window 7 frames (sink 1), blocks of 3: attended lengths 3, 6, 7 frames -> 3 layer graphs + embed + head."""
    torch._dynamo.reset()
    be = CountingBackend("aot_eager")
    p = make(random_model(TINY, seed=0), compile_backend=be, rope_rebase_frames=12)
    p.next_block()
    assert be.compiles == 3  # embedding, ONE layer graph for both layers, head
    for _ in range(2):
        p.next_block()
    assert be.compiles == 5 and p.kv.local_end == p.kv.capacity
    ring_blocks = 2 * (p.kv.capacity_frames - p.kv.sink_frames)  # 2 full cycles of the 6 ring frames
    for i in range(ring_blocks):
        if i == 2:
            p.set_prompt_embeds(embeds(2, n=9))
        if i == 4:
            p.reseed(7)
        if i == 6:
            p.set_steps([1000, 500])  # fewer steps: same graphs (one graph per pass, not per block)
        if i == 8:
            p.set_steps([999, 700, 400], warp=False)
        p.next_block()
    assert p.frame_base >= 24  # rebased at least twice
    assert be.compiles == 5, be.compiles


def test_recache_runs_eager_and_never_recompiles() -> None:
    """KV re-cache (issue 10) runs its own eager layer loop: no compile for it, none after it, while the
    window fills or is full, and the compiled stream after it equals an eager one with the same re-caches."""
    torch._dynamo.reset()
    be = CountingBackend("aot_eager")
    p = make(random_model(TINY, seed=0), compile_backend=be, rope_rebase_frames=12)
    ref = make(random_model(TINY, seed=0), rope_rebase_frames=12)
    for i in range(9):  # recache at block 1 (filling), 4 (full, rebased at 4), 5 and 8
        before = be.compiles
        for q in (p, ref):
            if i in (1, 4, 5, 8):
                q.set_prompt_embeds(embeds(10 + i, n=3 + i))
                q.recache()
        assert be.compiles == before  # the re-cache itself compiles nothing
        torch.testing.assert_close(p.next_block(), ref.next_block(), atol=1e-5, rtol=1e-5)
        assert be.compiles == [3, 4, 5][min(i, 2)], (i, be.compiles)  # only the fill lengths compile
    assert p.frame_base > 0 and be.compiles == 5, be.compiles


def test_warm_up_compiles_everything_then_starts_clean() -> None:
    torch._dynamo.reset()
    be = CountingBackend("aot_eager")
    p = make(random_model(TINY, seed=0), compile_backend=be)
    assert p.warm_up() == 3 and be.compiles == 5 and p.block_index == 0 and p.kv.local_end == 0
    ref = make(random_model(TINY, seed=0))
    for _ in range(4):  # same stream as a pipeline that never warmed up, and no compile on the way
        torch.testing.assert_close(p.next_block(), ref.next_block(), atol=1e-5, rtol=1e-5)
    assert be.compiles == 5


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_compiled_matches_eager(dtype: torch.dtype, bound: float) -> None:
    """Two copies of the same weights: compilation is a property of the model object (its passes)."""
    torch._dynamo.reset()
    eager = make(random_model(TINY, seed=0).to(dtype), local_attn_size=6, sink_size=0)
    comp = make(random_model(TINY, seed=0).to(dtype), local_attn_size=6, sink_size=0, compile_backend="inductor")
    assert not eager.model.compiled
    a = torch.cat([eager.next_block() for _ in range(4)], 1).double()
    b = torch.cat([comp.next_block() for _ in range(4)], 1).double()
    err = (a - b).abs().max().item()
    log.warning("inductor vs eager %s, 4 blocks: max abs %.3e (|latents| <= %.2f)", dtype, err, a.abs().max())
    assert comp.model.compiled and err <= bound


# -- host <-> device traffic ---------------------------------------------------------------------
def test_no_blocking_copies_or_syncs_per_block_on_meta() -> None:
    """Model and caches on the meta device, noise drawn on the CPU: every CPU->meta copy is counted."""
    model = random_model(TINY, seed=0).to("meta")
    p = make(model, rope_rebase_frames=9)
    p.next_block()
    per_block = []
    for i in range(12):  # fills the window, rebases (blocks 3, 6, ...), prompt/seed/steps changes
        if i == 5:
            p.set_prompt_embeds(embeds(3))
        if i == 7:
            p.reseed(3)
        if i == 9:
            p.set_steps([1000, 500])
        with TransferCounter() as c:
            p.next_block()
        per_block.append(c.summary)
    assert p.frame_base > 0 and p.kv.local_end == p.kv.capacity
    assert all(s["blocking"] == 0 and s["syncs"] == 0 for s in per_block), per_block
    # the only copies: the block's noise draws, non_blocking (one per step, the next block's prefetched)
    # (after the reseed: the draws made ahead with the old seed are dropped, 4 taken now + 4 ahead)
    assert [s["non_blocking"] for s in per_block[:9]] == [4] * 7 + [8, 4], per_block
    assert per_block[-1]["non_blocking"] == 2
    # the counter does see blocking copies and scalar reads when they happen
    with TransferCounter() as c:
        torch.zeros(3).to("meta")
        torch.ones(2).to("meta", non_blocking=True)
        torch.ones(1).item()
    assert (c.blocking, c.non_blocking, c.syncs) == (1, 1, 1)


def test_cross_fill_is_a_separate_step(tiny: torch.nn.Module) -> None:
    p = make(tiny)
    p.next_block()
    before = [t.clone() for t in p.cross.k]
    p.set_prompt_embeds(embeds(9))
    assert not p.cross.is_init
    p.next_block()
    assert p.cross.is_init and not torch.equal(before[0], p.cross.k[0])
    cross = CrossAttnCache(TINY.num_layers, 1, TINY.text_len, TINY.num_heads, TINY.head_dim)
    with pytest.raises(AssertionError, match="fill_cross"):
        tiny(torch.zeros(1, 3, 16, 4, 6), tiny.time_features(500.0), p.rope.block(0, 3), p.kv.begin(0, 18), cross)


def test_golden_parity_through_compiled_passes() -> None:
    """The compiled passes (ring-buffer views and slots as graph inputs) on every golden item, fp32 1e-4."""
    from pathlib import Path

    from sfbridge.model import golden

    torch._dynamo.reset()
    items = golden.check(Path(__file__).resolve().parents[1] / "tests/data/golden", compile="aot_eager")
    assert all(i.ok for i in items), [(i.name, i.max_abs) for i in items if not i.ok]
