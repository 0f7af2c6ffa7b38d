"""Wan2.1 VAE encoder: golden parity (official WanVAEWrapper.encode_to_latent), streaming under any
chunking equals one-shot, the scene framing (9 -> 3, 12 -> 3), causality, uint8 input, strict
whole-file loading with errors naming file and key, and the tiny random encoder for CPU tests."""

import pytest
import torch
from safetensors.torch import save_file
from sfbridge.model.files import ModelFileError
from sfbridge.model.vae import VAEConfig, WanVAEDecoder
from sfbridge.model.vae_encoder import (
    StreamingVAEEncoder,
    WanVAEEncoder,
    load_wan_vae,
    uint8_hwc_to_frames,
)
from vae_golden import GOLDEN, META, VAE_FILE, assert_file_error, golden_vae_config, golden_vae_state_dict


@pytest.fixture(scope="module")
def enc() -> WanVAEEncoder:
    return WanVAEEncoder.from_file(VAE_FILE, golden_vae_config())


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    """21 frames (1 + 4*5) at the golden set's pixel size, smooth enough to look like video."""
    _, _, _, H, W = META["vae"]["shapes"]["encode_pixels_in"]
    g = torch.Generator().manual_seed(3)
    base = torch.rand(1, 1, 3, H, W, generator=g) * 2 - 1
    drift = 0.1 * torch.randn(1, 21, 3, H, W, generator=g).cumsum(1)
    return (base + drift).clamp(-1, 1)


def _stream(enc, x, sizes, per_call=4):
    s = StreamingVAEEncoder(enc, per_call)
    out, i = [], 0
    for n in sizes:
        out.append(s.push(x[:, i : i + n]))
        i += n
    assert i == x.shape[1]
    return torch.cat(out, dim=1), [o.shape[1] for o in out]


def test_config_from_encoder_keys_matches_metadata():
    sd = golden_vae_state_dict()
    want = golden_vae_config()
    assert VAEConfig.from_state_dict(sd) == want
    enc_only = {k: v for k, v in sd.items() if k.startswith(("encoder.", "conv1."))}
    assert VAEConfig.from_state_dict(enc_only) == want


def test_golden_encode(enc, vae_io):
    px = vae_io["encode_pixels_in"].permute(0, 2, 1, 3, 4)  # golden is [B, 3, T, H, W]
    out = enc.encode(px)
    assert out.shape == vae_io["encode_latents_out"].shape
    torch.testing.assert_close(out, vae_io["encode_latents_out"], atol=1e-4, rtol=1e-4)
    # a whole block per call is the same math
    torch.testing.assert_close(enc.encode(px, None), vae_io["encode_latents_out"], atol=1e-4, rtol=1e-4)


def test_golden_through_strict_whole_file_load(vae_io):
    dec, enc = load_wan_vae(VAE_FILE)
    px = vae_io["encode_pixels_in"].permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(enc.encode(px), vae_io["encode_latents_out"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dec.decode(vae_io["latents"]), vae_io["pixels_full"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sizes", [[9, 12], [1, 4, 4, 4, 4, 4], [5, 8, 8], [3, 3, 3, 3, 3, 3, 3], [2, 7, 1, 11], [21]])
def test_streaming_any_chunking_equals_one_shot(enc, clip, sizes):
    full = enc.encode(clip)
    assert full.shape[1] == 6
    out, counts = _stream(enc, clip, sizes)
    assert (out - full).abs().max() == 0  # the official 1, 4, 4, ... loop whatever the push sizes
    assert sum(counts) == 6


@pytest.mark.parametrize("sizes", [[9, 12], [5, 16]])
def test_whole_block_per_call_is_close(enc, clip, sizes):
    full = enc.encode(clip)
    out, _ = _stream(enc, clip, sizes, per_call=None)
    assert (out - full).abs().max() <= 1e-5


def test_scene_framing_pending_and_reset(enc, clip):
    s = StreamingVAEEncoder(enc)
    assert s.push(clip[:, :9]).shape[1] == 3  # first block of a scene: 9 frames -> 3 latents
    assert s.push(clip[:, 9:21]).shape[1] == 3  # later blocks: 12 -> 3
    s.reset()
    a = s.push(clip[:, :3])  # 1 latent (frame 0), frames 1-2 wait
    assert a.shape[1] == 1 and s.pending is not None and s.pending.shape[1] == 2
    b = s.push(clip[:, 3:4])
    assert b.shape == (1, 0, 16, *a.shape[-2:])  # nothing complete yet
    c = s.push(clip[:, 4:5])
    assert c.shape[1] == 1 and s.pending is None
    torch.testing.assert_close(torch.cat([a, c], 1), enc.encode(clip[:, :5]), atol=0, rtol=0)


def test_causal(enc, clip):
    # changing frame 13 (latent 4 = frames 13-16) leaves latents 0-3 untouched
    other = clip.clone()
    other[:, 13] = -other[:, 13]
    a, b = enc.encode(clip), enc.encode(other)
    assert (a[:, :4] - b[:, :4]).abs().max() == 0
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3


def test_uint8_input_and_hwc_helper(enc):
    _, _, _, H, W = META["vae"]["shapes"]["encode_pixels_in"]
    u8 = torch.randint(0, 256, (1, 5, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    frames = uint8_hwc_to_frames(u8)
    assert frames.shape == (1, 5, 3, H, W) and uint8_hwc_to_frames(u8[0]).shape == frames.shape
    as_float = frames.float() / 127.5 - 1
    torch.testing.assert_close(enc.encode(frames), enc.encode(as_float), atol=0, rtol=0)


def test_batch_of_two(enc, clip):
    two = torch.cat([clip[:, :9], clip[:, 9:18]])
    out = enc.encode(two)
    torch.testing.assert_close(out[1:], enc.encode(clip[:, 9:18]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(vae_io, dtype):
    e = WanVAEEncoder.from_file(VAE_FILE, dtype=dtype)
    out = e.encode(vae_io["encode_pixels_in"].permute(0, 2, 1, 3, 4))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    assert (out.float() - vae_io["encode_latents_out"]).abs().mean() < 0.05


def test_whole_file_load_from_pth_is_strict(tmp_path):
    sd = golden_vae_state_dict()
    torch.save(sd, tmp_path / "Wan2.1_VAE.pth")
    dec, enc = load_wan_vae(tmp_path / "Wan2.1_VAE.pth")
    assert isinstance(dec, WanVAEDecoder) and isinstance(enc, WanVAEEncoder)
    n_keys = len(dec.state_dict()) + len(enc.state_dict())
    assert n_keys == len(sd) == 194  # every tensor of the file is used by one of the halves

    def err(bad: dict, *needles: str, encoder: bool = True) -> None:
        torch.save(bad, tmp_path / "bad.pth")
        assert_file_error(lambda: load_wan_vae(tmp_path / "bad.pth", encoder=encoder), "bad.pth", *needles)

    err({k: v for k, v in sd.items() if k != "encoder.middle.1.proj.weight"}, "encoder.middle.1.proj.weight", "missing")
    err({**sd, "encoder.extra.weight": torch.zeros(1)}, "encoder.extra.weight", "unexpected")
    err({**sd, "conv1.bias": torch.zeros(7)}, "conv1.bias", "shape")
    err({**sd, "other.weight": torch.zeros(1)}, "other.weight", "unexpected")
    decoder_only = {k: v for k, v in sd.items() if not k.startswith(("encoder.", "conv1."))}
    err(decoder_only, "no encoder keys")
    # decoder-only use still works on such a file, and skips a broken encoder
    torch.save(decoder_only, tmp_path / "dec.pth")
    assert load_wan_vae(tmp_path / "dec.pth", encoder=False)[1] is None
    WanVAEDecoder.from_file(tmp_path / "dec.pth")
    with pytest.raises(ModelFileError, match="not a Wan2.1 VAE state dict with an encoder"):
        WanVAEEncoder.from_file(tmp_path / "dec.pth")


def test_encoder_only_load_skips_decoder(tmp_path, vae_io):
    sd = golden_vae_state_dict()
    save_file({k: v for k, v in sd.items() if not k.startswith("decoder.")}, str(tmp_path / "e.safetensors"))
    e = WanVAEEncoder.from_file(tmp_path / "e.safetensors")
    torch.testing.assert_close(
        e.encode(vae_io["encode_pixels_in"].permute(0, 2, 1, 3, 4)), vae_io["encode_latents_out"], atol=1e-4, rtol=1e-4
    )


def test_tiny_random_encoder_streams():
    from sfbridge.generators.tiny import TINY_VAE, random_vae_encoder

    enc = random_vae_encoder()
    assert enc.cfg == TINY_VAE
    again = random_vae_encoder()
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), again.state_dict().values(), strict=True))
    s = StreamingVAEEncoder(enc)
    x = torch.randint(0, 256, (1, 21, 3, 96, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = torch.cat([s.push(x[:, :9]), s.push(x[:, 9:])], dim=1)
    assert out.shape == (1, 6, 16, 12, 20) and torch.isfinite(out).all()
    torch.testing.assert_close(out, enc.encode(x), atol=0, rtol=0)


def test_encoder_flop_count_per_block():
    # benchmarks/bench_decoders.py counts one steady-state block (12 pixel frames) on the meta device
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_decoders", GOLDEN.parents[2] / "benchmarks/bench_decoders.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    vae, tae = bench.count_encoder_block("vae"), bench.count_encoder_block("taehv")  # 480x832
    # lower bound of the VAE: its full-resolution stage alone (conv1 + 2 residual blocks of two 96x96 3x3x3
    # convs) is 2 * 12 frames * 480*832 px * (3 + 4*96) * 96 * 27 FLOP ~ 9.6 TFLOP
    assert vae.flops > 2 * 12 * 480 * 832 * (3 + 4 * 96) * 96 * 27
    assert 10 * tae.flops < vae.flops and tae.flops > 0
    quarter = bench.count_encoder_block("taehv", 240, 416)
    assert abs(tae.flops / quarter.flops - 4) < 0.1  # convolutions scale with the pixel count
