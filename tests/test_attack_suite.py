"""The attack suite (benchmarks/attack_*.py, soak.py) in its bounded --quick form, against a real serve.

Each test runs one script's ``main`` (a few seconds to half a minute) and asserts the invariants the
issue asks of the full run: no lost reply, no applies_at_block violation, no crash, and a well-behaved
subscriber that keeps receiving frames while the daemon is attacked.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
GAP_S = 1.5  # "kept receiving": at 16 fps a frame comes every 62.5 ms; allow for a loaded 2-core machine


def bench(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def run(name: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert bench(name).main(["--quick", "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_control_fuzz_every_request_answered_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run("attack_control_fuzz", tmp_path)
    assert len(capsys.readouterr().out.strip().splitlines()) == 1  # one line of figures
    assert r["requests"] >= 5000 and r["replies"] == r["requests"], r
    assert (r["lost"], r["extra"], r["mismatched_id"], r["malformed_replies"]) == (0, 0, 0, 0), r
    assert r["internal"] == 0 and r["crashes"] == 0 and r["responsive_after"], r
    assert r["oversize_answered"] == 0, "a body past the 1 MiB socket limit is dropped without a reply"
    assert r["fps_mean"] > 4 and r["max_gap_s"] < GAP_S, r


@pytest.mark.slow
def test_transport_attacks_hurt_nobody_else(tmp_path: Path) -> None:
    r = run("attack_transport", tmp_path)
    for name, res in r.items():
        assert "error" not in res, (name, res)
        assert not res["crashed"], (name, res)
        if name != "stopping":
            assert res["max_gap_s"] < GAP_S, (name, res)
    assert r["topic_flood"]["status_kb"] < 64, r["topic_flood"]  # topics per peer are bounded
    assert r["huge_sub"]["status_kb_during"] < 64 and r["huge_sub"]["status_kb_after"] < 64, r["huge_sub"]
    assert r["huge_sub"]["rss_after_mb"] - r["huge_sub"]["rss_before_mb"] < 50, r["huge_sub"]
    assert r["big_frame"]["accepted_mib"] < 64, r["big_frame"]  # the daemon hangs up on an oversize frame
    assert r["multipart"]["rss_after_mb"] - r["multipart"]["rss_before_mb"] < 15, r["multipart"]
    assert r["log_amp"]["bytes_per_request"] < 500, r["log_amp"]
    assert r["pipelined"]["silent_loss"] == 0, r["pipelined"]  # every reply delivered or counted in stats
    assert r["ghosts"]["ghosts"] == 0, r["ghosts"]
    assert r["garbage"]["open_after_wait"] == 0, r["garbage"]
    assert r["idle"]["new_client_ping_ms"] is not None, r["idle"]
    assert r["subs200"]["jpeg_after"] == 1 and r["subs200"]["fps_each"] > 4, r["subs200"]
    assert r["stopping"]["got_stopping"] == r["stopping"]["subscribers"], r["stopping"]
    assert r["stopping"]["exit_code"] == 0, r["stopping"]


@pytest.mark.slow
def test_soak_keeps_every_promise(tmp_path: Path) -> None:
    runs = run("soak", tmp_path)["runs"]
    assert [r["model"] for r in runs] == ["testsrc", "tiny"]
    for r in runs:
        assert r["frames"] >= (2000 if r["model"] == "testsrc" else 100), r
        assert r["changes"] > 20 and r["resets"] >= 1, r
        assert r["lost_replies"] == 0 and r["violations"] == 0, r
        assert not r["crashed"] and r["exit_code"] == 0, r
