"""The benchmark scripts parse their options and run their logic on CPU (tiny / quick modes), and the
counters they print hold their targets: no recompiles after warm-up, no blocking copies per block."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark
from sfbridge.model import budget, presets
from sfbridge.model.config import ModelConfig, StreamConfig

TINY = ModelConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, text_len=16)


def test_gpu_bench_args_and_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    gpu = load_benchmark("bench_model_gpu")
    a = gpu.parse_args([])
    assert (a.height, a.width, a.window, a.sink) == (480, 832, 21, 3)  # what serve runs
    with pytest.raises(SystemExit):
        gpu.parse_args(["--height", "100"])
    if not gpu.torch.cuda.is_available():
        assert gpu.main([]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert gpu.main(["--tiny", "--device", "cpu", "--blocks", "1", "--dtype", "fp32", "--cache", "rolling",
                     "--window", "6", "--sink", "1", "--decoders"]) == 0
    out = capsys.readouterr().out
    assert "fp32  rolling  sdpa" in out and "warm-up 3 blocks" in out  # window 6 fills after 2 blocks, +1 evicting


def test_cpu_bench_quick_counters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cpu = load_benchmark("bench_model_cpu")
    out_json = tmp_path / "cpu.json"
    assert cpu.main(["--quick", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "bytes equal: True" in out and "recompiles after warm-up" in out and "blocking" in out
    res = json.loads(out_json.read_text())
    comp = res["compile"]
    assert "compiled_error" not in comp, comp
    assert comp["recompiles_after_warmup"] == 0  # not on later blocks, nor on a step or prompt change
    assert 1 <= comp["compiles_during_warmup"] <= 8  # bounded while the window fills
    assert comp["compiled_over_eager"] > 0
    assert res["copies"]["blocking_copies_per_block"] == 0
    if "counters_blocking" in res["copies"]:  # model/counters.py agrees, and sees no scalar reads either
        assert res["copies"]["counters_blocking"] == 0 and res["copies"]["counters_syncs"] == 0
    assert res["overlap"]["serial_blocks_per_s"] > 0 and res["overlap"]["blocks_ratio"] > 0
    assert res["endless"]["bytes_equal"] is True


def test_meta_count_matches_the_formula() -> None:
    """FLOPs counted on the meta device = matmul + attention formula (the count sees the real code path)."""
    scfg = StreamConfig(latent_h=4, latent_w=6, local_attn_size=6, sink_size=0)
    pipe = budget.meta_pipeline(TINY, scfg, torch.bfloat16)
    work = budget.count_dit_block(pipe, (1000, 750, 500, 250))
    tpf = scfg.tokens_per_frame()
    q = 3 * tpf
    expect = budget.analytic_dit_flops(TINY.dim, TINY.num_layers, TINY.ffn_dim, q, 6 * tpf, TINY.text_len, 5)
    assert expect <= work.flops <= 1.15 * expect  # + patch embedding, time MLP, head (11 % at dim 64)
    assert work.attentions == 5 * TINY.num_layers * 2  # fused SDPA: self + cross per layer and pass
    assert work.kernels > work.matmuls > 0 and work.other_bytes > 0 and work.peak_bytes > 0


def test_preset_resolution_and_budget_order() -> None:
    assert presets.resolve("fast", window=None, decoder="vae")["decoder"] == "vae"  # explicit wins
    assert presets.resolve("fast")["window"] == 9 and presets.resolve(None, window=5) == {"window": 5}
    with pytest.raises(ValueError, match="unknown preset"):
        presets.get("ultra")
    for p in presets.PRESETS.values():  # every preset is a valid stream config
        StreamConfig(local_attn_size=p.window, sink_size=p.sink, denoising_step_list=p.steps)
    q, f = presets.get("quality"), presets.get("fast")
    assert (q.window, q.sink, q.decoder, len(q.steps), q.fp8) == (21, 3, "vae", 4, "off")  # = serve's defaults
    assert f.window < q.window and len(f.steps) < len(q.steps)


def test_fp8_refused_on_cpu_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(presets.FP8Unavailable, match="CUDA GPU of compute capability 8.9.*device is cpu"):
        presets.apply_fp8(model, "on", "cpu")
    assert presets.apply_fp8(model, "auto", "cpu") is False  # auto: bf16 with a log line
    assert presets.apply_fp8(model, "off", "cpu") is False
    monkeypatch.setitem(sys.modules, "torchao", None)  # not installed
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(presets.FP8Unavailable, match="pip install torchao"):
        presets.apply_fp8(model, True, "cpu")


def test_fp8_keeps_time_embedding_and_head_out() -> None:
    from sfbridge.model.weights import random_model

    m = random_model(TINY)
    chosen = [fqn for fqn, mod in m.named_modules() if presets.fp8_filter(mod, fqn)]
    assert len(chosen) == TINY.num_layers * 10  # q,k,v,o self + cross, 2 FFN linears
    assert not any(n.startswith(("time_", "head", "text_")) for n in chosen)


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    gc = load_benchmark("gpu_check")
    rc = gc.main(["--tiny", "--out", str(tmp_path), "--sections", "env", "attention", "eager", "profile", "presets"])
    assert rc == 0
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["eager"]["dit_ms"] > 0 and res["eager"]["recompiles_after_fill"] == 0
    assert res["attention"]["sdpa"]["ms"] > 0
    assert sum(res["profile"]["ms_by_category"].values()) > 0 and res["profile"]["kernels"] > 0
    rows = {k: v for k, v in res["presets"].items() if k != "section_s"}
    assert set(rows) == set(presets.PRESETS)
    assert all("dit_ms" in r and "e2e_serial_ms" in r for r in rows.values()), rows
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| eager, quality |" in md and "preset fast" in md


def test_gpu_check_budget_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gc = load_benchmark("gpu_check")

    def boom(a, st):  # noqa: ANN001, ANN202
        raise RuntimeError("kaputt")

    sections = list(gc.SECTIONS)
    sections[1] = ("attention", boom, 0)
    monkeypatch.setattr(gc, "SECTIONS", tuple(sections))
    assert gc.main(["--tiny", "--out", str(tmp_path), "--budget", "0.5", "--sections", "env", "attention",
                    "eager"]) == 0
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "kaputt" in res["attention"]["error"]  # recorded, and the run went on
    assert "time budget" in res["eager"]["skipped"]
    assert "kaputt" in (tmp_path / "gpu_check.md").read_text()


def test_self_forcing_create_preset_refusals() -> None:
    from sfbridge.generators.base import GeneratorError
    from sfbridge.generators.self_forcing import create

    with pytest.raises(GeneratorError, match="unknown preset 'ultra'"):
        create(preset="ultra")
    # explicit fp8 on a CPU device is refused before any file is read, with the reason
    with pytest.raises(GeneratorError, match="device is cpu"):
        create(preset="fast", fp8="on", device="cpu", model_dir="/nonexistent")
