"""Model file layout: resolution under --model-dir and in the Hugging Face cache layout, header
probes (zip/pickle/safetensors), missing files, and the structured doctor report."""

import pickle

import torch
from safetensors.torch import save_file
from sfbridge.model.files import (
    FILE_SPECS,
    check_files,
    doctor_report,
    probe_file,
    read_state_dict,
    resolve_model_files,
)

SPEC = {s.name: s for s in FILE_SPECS}


def _fake(path, kind="zip"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zip":
        torch.save({"w": torch.zeros(2)}, path)
    elif kind == "dir":
        path.mkdir(parents=True, exist_ok=True)
        (path / "spiece.model").write_bytes(b"\x00")
    elif kind == "safetensors":
        save_file({"w": torch.zeros(2)}, str(path))
    else:
        path.write_bytes(kind)


def test_all_present_in_model_dir(tmp_path):
    for s in FILE_SPECS:
        _fake(tmp_path / s.rel_path, "dir" if s.is_dir else "zip")
    files = resolve_model_files(tmp_path, hf_cache=tmp_path / "nohub")
    assert files.missing == [] and files.complete
    assert files.vae == tmp_path / SPEC["vae"].rel_path
    rows = check_files(tmp_path, hf_cache=tmp_path / "nohub")
    assert all(r["present"] and r["loadable"] and r["ok"] for r in rows), rows


def test_missing_and_optional(tmp_path):
    _fake(tmp_path / SPEC["vae"].rel_path)
    files = resolve_model_files(tmp_path, hf_cache=tmp_path / "nohub")
    assert set(files.missing) == {s.name for s in FILE_SPECS} - {"vae"}
    assert not files.complete
    assert files.paths["generator"] == tmp_path / "self_forcing_dmd.pt"  # where it should go
    rows = {r["name"]: r for r in check_files(tmp_path, hf_cache=tmp_path / "nohub")}
    assert rows["vae"]["ok"] and not rows["generator"]["ok"] and "gdhe17/Self-Forcing" in rows["generator"]["detail"]
    assert rows["taehv"]["ok"] and not rows["taehv"]["present"]  # optional


def test_hf_cache_layout(tmp_path):
    hub = tmp_path / "hub"
    for s in FILE_SPECS:
        if s.hf_repo.startswith("github:"):
            continue
        snap = hub / f"models--{s.hf_repo.replace('/', '--')}" / "snapshots" / "abc123"
        _fake(snap / s.hf_path, "dir" if s.is_dir else "zip")
    files = resolve_model_files(tmp_path / "empty", hf_cache=hub)
    assert files.missing == ["taehv"] and files.complete
    assert "models--Wan-AI--Wan2.1-T2V-1.3B" in str(files.text_encoder)


def test_env_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SFBRIDGE_MODEL_DIR", str(tmp_path))
    assert resolve_model_files(hf_cache=tmp_path / "nohub").model_dir == tmp_path


def test_probe_headers(tmp_path):
    _fake(tmp_path / "a.safetensors", "safetensors")
    assert probe_file(tmp_path / "a.safetensors") == (True, "safetensors, 1 tensors")
    (tmp_path / "legacy.pth").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert probe_file(tmp_path / "legacy.pth")[0]
    _fake(tmp_path / "junk.pth", b"hello world")
    assert not probe_file(tmp_path / "junk.pth")[0]
    _fake(tmp_path / "junk.safetensors", b"\xff" * 16)
    assert not probe_file(tmp_path / "junk.safetensors")[0]


def test_read_state_dict_nested(tmp_path):
    torch.save({"generator_ema": {"model.w": torch.ones(1)}}, tmp_path / "g.pt")
    assert list(read_state_dict(tmp_path / "g.pt", nested_keys=("generator_ema", "generator"))) == ["model.w"]


def test_doctor_report(tmp_path):
    rows = doctor_report(tmp_path, hf_cache=tmp_path / "nohub")
    names = [r["name"] for r in rows]
    assert names[:2] == ["torch", "cuda"] and "flash_attn" in names
    assert all(set(r) == {"name", "ok", "detail"} for r in rows)
    assert {f"file:{s.name}" for s in FILE_SPECS} <= set(names)
    if not torch.cuda.is_available():
        assert rows[1]["ok"] is False
