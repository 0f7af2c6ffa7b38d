"""Parity with the official Self-Forcing code (golden vectors), and nothing hard-coded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sfbridge.model import golden
from sfbridge.model.config import ModelConfig, StreamConfig
from sfbridge.model.kv_cache import KVCache
from sfbridge.model.pipeline import StreamPipeline
from sfbridge.model.scheduler import FlowMatchScheduler
from sfbridge.model.weights import random_model

REPO = Path(__file__).resolve().parents[1]
SETS = [p for p in (REPO / "tests/data/golden", REPO.parent / "shared/golden") if (p / "metadata.json").exists()]


@pytest.fixture(scope="module", params=SETS, ids=[str(p) for p in SETS])
def golden_dir(request: pytest.FixtureRequest) -> Path:
    return request.param


def test_golden_tool_all_items(golden_dir: Path) -> None:
    items = golden.check(golden_dir)
    bad = [(i.name, i.max_abs) for i in items if not i.ok]
    assert not bad, bad
    meta = golden.load_meta(golden_dir)
    assert len(items) == 2 + 5 * len(meta["scenarios"]) + 2  # + vae.decode_full, vae.encode


def test_golden_cli_exit_status(golden_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert golden.main([str(golden_dir)]) == 0
    assert "within atol=0.0001" in capsys.readouterr().out
    assert golden.main([str(golden_dir), "--atol", "0", "--rtol", "0", "--dtype", "bfloat16"]) == 1


def test_cache_trace_replay(golden_dir: Path) -> None:
    """Replay g/l before/after of every official call against KVCache alone."""
    meta = golden.load_meta(golden_dir)
    for name in meta["scenarios"]:
        cfg = StreamConfig.from_golden_metadata(meta, name)
        tpf = cfg.tokens_per_frame()
        kv = KVCache(1, 1, cfg.cache_frames(), tpf, 1, 2, rolling=cfg.local_attn_size != -1,
                     sink_frames=cfg.sink_size)
        n = cfg.num_frame_per_block * tpf
        for t in meta["scenarios"][name]["trace"]:
            assert (kv.global_end, kv.local_end) == (t["global_end_before"], t["local_end_before"]), (name, t)
            kv.begin(t["current_start"], n)
            assert (kv.global_end, kv.local_end) == (t["global_end_after"], t["local_end_after"]), (name, t)


def test_scheduler_tables(golden_dir: Path) -> None:
    meta = golden.load_meta(golden_dir)
    inp = load_file(str(golden_dir / "inputs.safetensors"))
    s = FlowMatchScheduler(meta["timestep_shift"])
    torch.testing.assert_close(s.sigmas, inp["scheduler_sigmas"], atol=0, rtol=0)
    torch.testing.assert_close(s.timesteps, inp["scheduler_timesteps"], atol=0, rtol=0)
    torch.testing.assert_close(s.warp(inp["denoising_step_list_raw"].tolist()), inp["denoising_step_list"])


def test_warp_default_list() -> None:
    got = FlowMatchScheduler(5.0).warp([1000, 750, 500, 250])
    torch.testing.assert_close(got, torch.tensor([1000.0, 937.5, 833.3333, 625.0]))


def test_rolling_sink_eviction_keeps_sink() -> None:
    """Sink slots never move; evicted tokens are the oldest non-sink ones."""
    kv = KVCache(1, 1, capacity_frames=7, tokens_per_frame=1, num_heads=1, head_dim=2, rolling=True,
                 sink_frames=1)
    for block in range(4):
        for call in range(3):  # 3 calls per block: only the first evicts
            kv.begin(block * 3, 3)
            kv.write(0, torch.full((1, 3, 1, 2), float(10 * block + call)), torch.zeros(1, 3, 1, 2))
    k, _ = kv.ordered(0)
    # frames: sink = block 0, then the newest 6 frames (blocks 2 and 3), block 1 evicted
    assert k[0, :, 0, 0].tolist() == [2.0, 22, 22, 22, 32, 32, 32]
    assert kv.window_frames() == [0, 6, 7, 8, 9, 10, 11]
    # ring: block 3 (frames 9-11) took the home slots of the evicted frames 3-5, nothing moved
    assert kv.k[0][0, :, 0, 0].tolist() == [2.0, 22, 22, 32, 32, 32, 22]


def synthetic_meta(base: dict, **changes: object) -> dict:
    meta = json.loads(json.dumps(base))
    meta["model_config"].update(changes.pop("model_config", {}))
    meta.update(changes)
    return meta


@pytest.mark.parametrize("heads,dim,hw,F,steps,window,sink", [
    (4, 96, [4, 10], 2, [1000, 500], 5, 1),
    (3, 48, [8, 6], 1, [1000, 750, 500], 4, 2),
])
def test_sizes_come_from_metadata(heads: int, dim: int, hw: list[int], F: int, steps: list[int],
                                  window: int, sink: int) -> None:
    """A modified golden-like metadata builds the model and runs the pipeline with its sizes."""
    base = golden.load_meta(SETS[0])
    meta = synthetic_meta(base, model_config=dict(num_heads=heads, dim=dim, text_len=7, text_dim=24),
                          latent_hw=hw, num_frame_per_block=F, denoising_step_list_raw=steps,
                          num_latent_frames=4 * F, num_blocks=4)
    meta["scenarios"] = {"r": dict(local_attn_size=window, sink_size=sink, kv_cache_size_tokens=0)}
    mcfg = ModelConfig.from_golden_metadata(meta)
    assert (mcfg.num_heads, mcfg.dim, mcfg.head_dim) == (heads, dim, dim // heads)
    cfg = StreamConfig.from_golden_metadata(meta, "r")
    pipe = StreamPipeline(random_model(mcfg, seed=1), cfg)
    assert pipe.tokens_per_frame == (hw[0] // 2) * (hw[1] // 2)
    assert pipe.num_steps == len(steps)
    pipe.set_prompt_embeds(torch.randn(1, 5, 24))
    for _ in range(meta["num_blocks"]):
        out = pipe.next_block()
        assert out.shape == (1, F, 16, *hw) and torch.isfinite(out).all()
    assert len(pipe.kv.k) == mcfg.num_layers
    assert pipe.kv.k[0].shape == (1, window * pipe.tokens_per_frame, heads, dim // heads)
    assert pipe.kv.local_end == window * pipe.tokens_per_frame
