"""``sfbridge doctor``: table, JSON, exit status, on this machine and with a tiny valid model dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_self_forcing_generator import build_tiny_model_dir

from sfbridge import cli

FILES = ("self_forcing_dmd.pt", "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth", "umt5-xxl")


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = cli.main(["doctor", *args])
    return rc, capsys.readouterr().out


@pytest.fixture(autouse=True)
def _empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU report")
def test_nothing_here(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = doctor(capsys, "--model-dir", str(tmp_path / "empty"))
    assert rc == 1
    assert "FAIL  cuda" in out and "missing: cuda: CUDA not available" in out
    for name in ("generator", "text_encoder", "vae", "tokenizer"):
        assert f"FAIL  file:{name}" in out and f"missing: file:{name}" in out
    assert all(f in out for f in FILES) and "docs/MODELS.md" in out and "--model testsrc" in out
    assert "opt   file:taehv" in out  # optional: listed, not required
    rc, out = doctor(capsys, "--model-dir", str(tmp_path / "empty"), "--json")
    data = json.loads(out)
    assert rc == 1 and data["ready"] is False and {c["name"] for c in data["checks"]} >= {"cuda", "file:vae"}


def test_tiny_model_dir_files_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_tiny_model_dir(tmp_path / "m")
    rc, out = doctor(capsys, "--model-dir", str(tmp_path / "m"))
    for name in ("generator", "text_encoder", "vae", "tokenizer"):
        assert f"ok    file:{name}" in out
    assert rc == (0 if torch.cuda.is_available() else 1)
    assert "missing: file:" not in out


def test_registered_without_importing_torch() -> None:
    code = ("import sys; import sfbridge.doctor, sfbridge.cli as c; "
            "assert 'doctor' in c._EXTRA_COMMANDS; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_m_cli(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "sfbridge.cli", "doctor", "--json", "--model-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode in (0, 1) and "checks" in json.loads(r.stdout)


def test_corrupt_optional_file_is_not_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An absent taehv is fine ("opt"); a present but unreadable one is reported, not shown as ok."""
    build_tiny_model_dir(tmp_path / "m")
    (tmp_path / "m" / "taew2_1.pth").write_bytes(b"not a checkpoint")
    rc, out = doctor(capsys, "--model-dir", str(tmp_path / "m"))
    assert "warn  file:taehv" in out and "ok    file:taehv" not in out
    assert rc == (0 if torch.cuda.is_available() else 1)  # optional: never decides readiness
    if not torch.cuda.is_available():
        assert "note: file:taehv" in out and "unknown header" in out
