"""benchmarks/bench_input_latency.py --quick runs end to end (testsrc and tiny daemons on real sockets, a 16 fps
sender) and its numbers hold together: every output frame that names an input frame came after its capture,
and testsrc (which keeps up) shows an input frame about 2 blocks after capture (docs/PROTOCOL.md "Latency")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_input_latency")


def test_quick_run(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "latency.json"
    assert bench.main(["--quick", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "med/target" in out and "testsrc" in out and "tiny" in out
    lat = json.loads(out_json.read_text())["latency"]
    for model, r in lat.items():
        assert r["frames_measured"] >= 5 and 0 < r["median_ms"] <= r["p90_ms"], (model, r)
        assert r["target_ms"] == pytest.approx(2 * r["block_period_ms"] + r["encode_ms"])
    t = lat["testsrc"]
    assert t["encode_ms"] == 0 and 1.0 <= t["median_blocks"] <= 2.6, t  # keeps up: ~2 blocks
    assert lat["tiny"]["encode_ms"] > 0
