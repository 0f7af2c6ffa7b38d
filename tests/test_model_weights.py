"""Checkpoint loading: official .pt layouts, safetensors, FSDP keys, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sfbridge.model.config import ModelConfig
from sfbridge.model.golden import load_meta
from sfbridge.model.weights import WeightsError, load_model

GOLDEN = Path(__file__).resolve().parents[1] / "tests/data/golden"


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return ModelConfig.from_golden_metadata(load_meta(GOLDEN))


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "generator.safetensors"))


def _check_equal(model: torch.nn.Module, sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> None:
    own = model.state_dict()
    assert len(own) == len(sd)
    for k, v in sd.items():
        assert torch.equal(own[k.removeprefix("model.")], v.to(dtype)), k


@pytest.mark.parametrize("layout", ["generator_ema", "generator", "model", "bare", "fsdp", "safetensors"])
def test_load_layouts(tmp_path: Path, cfg: ModelConfig, sd: dict, layout: str) -> None:
    if layout == "safetensors":
        path = tmp_path / "g.safetensors"
        save_file(sd, str(path))
    else:
        path = tmp_path / "g.pt"
        inner = sd
        if layout == "fsdp":
            inner = {k.replace("model.", "model._fsdp_wrapped_module.", 1): v for k, v in sd.items()}
        obj = inner if layout in ("bare", "fsdp") else {layout: inner, "critic": {"x": torch.zeros(1)}}
        if layout == "generator":
            obj = {"generator": inner}
        torch.save(obj, path)
    _check_equal(load_model(path, cfg), sd)


def test_ema_preferred_over_generator(tmp_path: Path, cfg: ModelConfig, sd: dict) -> None:
    other = {k: torch.zeros_like(v) for k, v in sd.items()}
    torch.save({"generator": other, "generator_ema": sd}, tmp_path / "g.pt")
    _check_equal(load_model(tmp_path / "g.pt", cfg), sd)


def test_dtype_cast(tmp_path: Path, cfg: ModelConfig, sd: dict) -> None:
    torch.save({"generator_ema": sd}, tmp_path / "g.pt")
    m = load_model(tmp_path / "g.pt", cfg, dtype=torch.bfloat16)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    _check_equal(m, sd, torch.bfloat16)


def _expect(path: Path, cfg: ModelConfig, *fragments: str) -> None:
    with pytest.raises(WeightsError) as e:
        load_model(path, cfg)
    msg = str(e.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg


def test_bad_files(tmp_path: Path, cfg: ModelConfig, sd: dict) -> None:
    good = tmp_path / "good.pt"
    torch.save({"generator_ema": sd}, good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "trunc.pt", cfg, "damaged torch checkpoint", "truncated")
    (tmp_path / "rand.pt").write_bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(0))
                                       .to(torch.uint8).numpy().tobytes())
    _expect(tmp_path / "rand.pt", cfg, "not a readable")
    (tmp_path / "rand.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    _expect(tmp_path / "rand.safetensors", cfg, "not a readable safetensors")
    _expect(tmp_path / "missing_file.pt", cfg, "file not found")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    _expect(tmp_path / "list.pt", cfg, "expected a dict")


def test_mismatched_keys_and_shapes(tmp_path: Path, cfg: ModelConfig, sd: dict) -> None:
    missing = dict(sd)
    del missing["model.blocks.1.ffn.0.bias"]
    torch.save({"generator_ema": missing}, tmp_path / "missing.pt")
    _expect(tmp_path / "missing.pt", cfg, "1 missing keys", "blocks.1.ffn.0.bias")
    extra = dict(sd, **{"model.blocks.9.extra": torch.zeros(3)})
    torch.save({"generator_ema": extra}, tmp_path / "extra.pt")
    _expect(tmp_path / "extra.pt", cfg, "unexpected", "blocks.9.extra")
    shape = dict(sd, **{"model.head.head.weight": torch.zeros(3, 64)})
    save_file(shape, str(tmp_path / "shape.safetensors"))
    _expect(tmp_path / "shape.safetensors", cfg, "head.head.weight", "expected (64, 64), got (3, 64)")
    # a checkpoint for another config (e.g. wrong head count / dim) is rejected by shape
    _expect(GOLDEN / "generator.safetensors", ModelConfig(dim=96, num_heads=2, num_layers=2, ffn_dim=128,
                                                          text_dim=32, text_len=16), "shape mismatches")
