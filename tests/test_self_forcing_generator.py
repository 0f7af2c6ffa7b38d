"""The ``self-forcing`` generator on CPU with tiny weights saved in the official file layout.

``build_tiny_model_dir`` writes the golden tiny DiT / VAE / UMT5 (tests/data/golden) exactly where
the real downloads go (docs/MODELS.md), so the whole loading path (file resolution, config.json,
``{'generator_ema': ...}`` unwrapping, Wan T5 key mapping, tokenizer folder) runs as with real files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sfbridge.generators import GeneratorError, Steering, create_generator

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
WAN = "Wan2.1-T2V-1.3B"
TINY = dict(device="cpu", dtype="fp32", width=64, height=48, window=6, sink=0)  # latent 6x8 like the goldens


def build_tiny_model_dir(root: Path) -> Path:
    """Golden tiny weights in the official layout under ``root``; returns ``root``."""
    from sfbridge.model.t5 import tiny_tokenizer

    meta = json.loads((GOLDEN / "metadata.json").read_text())
    wan = root / WAN
    tok_dir = wan / "google" / "umt5-xxl"
    tok_dir.mkdir(parents=True)
    torch.save({"generator_ema": load_file(str(GOLDEN / "generator.safetensors"))}, root / "self_forcing_dmd.pt")
    (wan / "config.json").write_text(json.dumps({"_class_name": "WanModel", **meta["model_config"]}))
    torch.save(load_file(str(GOLDEN / "vae.safetensors")), wan / "Wan2.1_VAE.pth")
    torch.save(load_file(str(GOLDEN / "t5_encoder.safetensors")), wan / "models_t5_umt5-xxl-enc-bf16.pth")
    (tok_dir / "spiece.model").write_bytes(tiny_tokenizer(meta["t5_config"]["vocab"]).sp_model_proto)
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def gen(model_dir: Path):  # noqa: ANN201
    g = create_generator("self-forcing", model_dir=str(model_dir), **TINY)
    yield g
    g.close()


def run(g, s: Steering, n: int) -> list[np.ndarray]:  # noqa: ANN001
    return [g.next_block(s).frames for _ in range(n)]


def test_blocks_shapes_info_describe(gen) -> None:  # noqa: ANN001
    s = Steering(prompt="a red fox", seed=3)
    gen.reset(s)
    out = [gen.next_block(s) for _ in range(3)]
    assert [b.frames.shape for b in out] == [(9, 48, 64, 3), (12, 48, 64, 3), (12, 48, 64, 3)]
    assert [b.first_frame for b in out] == [0, 9, 21] and all(b.frames.dtype == np.uint8 for b in out)
    assert out[1].frames.std() > 1
    assert {"dit_ms", "decode_ms", "total_ms"} <= set(out[0].info)
    d = gen.describe()
    assert (d["model"], d["dtype"], d["decoder"], d["window_frames"], d["sink_frames"], d["device"]) == (
        "self-forcing", "fp32", "vae", 6, 0, "cpu")
    assert gen.supports_steps() and gen.mcfg.text_dim == 32 and gen.mcfg.text_len == 16  # read from config.json


def test_reset_prompt_seed_blend_steps(gen) -> None:  # noqa: ANN001
    s = Steering(prompt="a red fox", seed=3)
    gen.reset(s)
    a = run(gen, s, 2)
    gen.reset(s)
    b = run(gen, s, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # reset reproduces the scene
    calls = gen.text.encoder_calls
    gen.reset(s)
    run(gen, s, 1)
    assert gen.text.encoder_calls == calls  # LRU: a repeated prompt is not encoded again
    other = dataclasses.replace(s, prompt="a blue whale", prev_prompt="a red fox", since_block=1)
    cut = gen.next_block(other).frames
    assert not np.array_equal(cut, a[1])  # prompt change applies at the next block
    gen.reset(s)
    run(gen, s, 1)
    blend = gen.next_block(dataclasses.replace(other, transition="blend", blend_blocks=4))
    assert blend.info["blend_alpha"] == 0.25 and not np.array_equal(blend.frames, cut)
    gen.reset(s)
    run(gen, s, 1)
    assert not np.array_equal(gen.next_block(dataclasses.replace(s, seed=4)).frames, a[1])
    two = gen.next_block(dataclasses.replace(s, denoising_steps=(1000.0, 500.0)))
    assert two.info["steps"] == [1000.0, 500.0]


def test_missing_file_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    build_tiny_model_dir(tmp_path / "m")
    (tmp_path / "m" / WAN / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(GeneratorError) as e:
        create_generator("self-forcing", model_dir=str(tmp_path / "m"), **TINY)
    msg = str(e.value)
    assert "Wan2.1_VAE.pth" in msg and "generator" not in msg.split("missing model files:")[1].split(";")[0]
    assert "docs/MODELS.md" in msg and "--model testsrc" in msg and "--model tiny" in msg
    with pytest.raises(GeneratorError, match="taew2_1.pth"):
        create_generator("self-forcing", model_dir=str(tmp_path / "m"), decoder="taehv", **TINY)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_no_cuda_without_explicit_device(model_dir: Path) -> None:
    opts = {k: v for k, v in TINY.items() if k != "device"}
    with pytest.raises(GeneratorError, match="self-forcing needs a CUDA GPU") as e:
        create_generator("self-forcing", model_dir=str(model_dir), **opts)
    assert "--model testsrc" in str(e.value) and "missing" not in str(e.value)


def test_bad_options(model_dir: Path) -> None:
    for bad in (dict(width=50), dict(decoder="jpeg"), dict(dtype="int8"), dict(window=4, sink=2), dict(window=-1)):
        with pytest.raises(GeneratorError):
            create_generator("self-forcing", model_dir=str(model_dir), **{**TINY, **bad})


def test_wan_config_json(tmp_path: Path) -> None:
    from sfbridge.generators.self_forcing import model_config_from_json

    p = tmp_path / "config.json"
    p.write_text(json.dumps({"_class_name": "WanModel", "dim": 1536, "num_heads": 12, "num_layers": 30,
                             "ffn_dim": 8960, "in_dim": 16, "out_dim": 16, "text_len": 512, "freq_dim": 256,
                             "eps": 1e-06, "model_type": "t2v"}))
    c = model_config_from_json(p)
    assert (c.dim, c.num_layers, c.text_dim) == (1536, 30, 4096)
    p.write_text(json.dumps({"model_type": "i2v"}))
    with pytest.raises(GeneratorError, match="t2v"):
        model_config_from_json(p)


def test_gpu_bench_decoders_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/bench_model_gpu.py decode + end-to-end rows, CPU dry mode (tiny widths)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_model_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_model_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_model_gpu"] = mod
    spec.loader.exec_module(mod)
    assert mod.parse_args([]).decoders == ["vae", "taehv"]
    assert mod.main(["--tiny", "--device", "cpu", "--blocks", "1", "--warmup", "0", "--dtype", "fp32",
                     "--cache", "rolling", "--attn", "sdpa", "--window", "6"]) == 0
    out = capsys.readouterr().out
    assert "fp32  decode vae" in out and "fp32  decode taehv" in out and out.count("end-to-end") == 2


def test_prepare_encodes_ahead_so_the_block_does_not(gen) -> None:  # noqa: ANN001
    import threading

    s = Steering(prompt="a prompt never seen before", seed=1)
    worker = threading.Thread(target=gen.prepare, args=(s.prompt,))
    worker.start()
    worker.join()
    calls = gen.text.encoder_calls
    gen.reset(s)
    gen.next_block(s)
    assert gen.text.encoder_calls == calls  # the block found the prepared embedding
