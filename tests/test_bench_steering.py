"""benchmarks/bench_steering.py runs its quick mode end to end (tiny on CPU, a testsrc daemon on real sockets),
and its meta-device re-cache count agrees with the matmul + attention formula."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark
from sfbridge.model.config import ModelConfig

TINY = ModelConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, text_len=32)


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_steering")


def test_quick_run(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "steering.json"
    assert bench.main(["--quick", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "recache/block" in out and "testsrc daemon" in out
    res = json.loads(out_json.read_text())
    for r in res["recache_cost"]:  # window 9 / sink 0 and window 12 / sink 3: 9 non-sink frames each
        assert r["recached_frames"] == 9 and r["recache_ms"] > 0 and r["block_with_recache_ms"] > r["recache_ms"]
    policy = res["blend_recache_policy"]
    assert min(policy["none_ms"], policy["start_ms"], policy["every_ms"]) > 0
    lat = res["latency"]["testsrc"]
    assert set(lat) == set(bench.MODES)
    for mode, r in lat.items():  # the first frame of the new state is from the block the reply announced
        assert r["blocks"] == r["applies_after_blocks"] >= 1, (mode, r)
        assert r["ms"] > 0


def test_meta_recache_matches_the_formula(bench) -> None:
    r = bench.meta_recache(7, 1, mcfg=TINY, latent=(4, 6))
    assert r["recached_frames"] == 6 and r["groups"] == 2
    # + patch embedding and time MLP; no head (a re-cache only needs K/V)
    assert r["formula_tflop"] <= r["recache_tflop"] <= 1.15 * r["formula_tflop"]
    assert 0 < r["recache_over_block"] < 1  # two context passes vs 4 denoising + 1 context pass
