"""Wan2.1 VAE decoder: golden parity (official full and chunked cached decode), exact streaming
under any chunking, strict loading from .pth and .safetensors with errors naming file and key."""

import pytest
import torch
from safetensors.torch import save_file
from sfbridge.model.vae import (
    LATENT_MEAN,
    FeatureCache,
    StreamingVAEDecoder,
    VAEConfig,
    WanVAEDecoder,
    to_uint8_rgb,
)
from vae_golden import META, VAE_FILE, assert_file_error, golden_vae_config, golden_vae_state_dict


@pytest.fixture(scope="module")
def vae() -> WanVAEDecoder:
    return WanVAEDecoder.from_file(VAE_FILE, golden_vae_config())


def _stream(vae, latents, chunk, per_call=1):
    dec = StreamingVAEDecoder(vae, latent_frames_per_call=per_call)
    return torch.cat([dec.push(latents[:, i : i + chunk]) for i in range(0, latents.shape[1], chunk)], dim=1)


def test_config_inferred_from_state_dict_matches_metadata(vae):
    sd = golden_vae_state_dict()
    cfg = VAEConfig.from_state_dict(sd)
    assert cfg.dim == META["vae_config"]["dim"] and cfg.z_dim == META["vae_config"]["z_dim"]
    assert vae.num_cache_slots == META["vae"]["num_decoder_causal_convs"]


def test_full_decode_matches_golden(vae, vae_io):
    out = vae.decode(vae_io["latents"])
    assert out.shape == vae_io["pixels_full"].shape
    torch.testing.assert_close(out, vae_io["pixels_full"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out, vae_io["pixels_stream_cached"], atol=1e-4, rtol=1e-4)


def test_streaming_with_golden_chunking_equals_full(vae, vae_io):
    chunk = META["vae_config"]["decode_chunk_latent_frames"]
    full = vae.decode(vae_io["latents"])
    out = _stream(vae, vae_io["latents"], chunk)
    assert (out - full).abs().max() <= 1e-5
    torch.testing.assert_close(out, vae_io["pixels_stream_cached"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 2, 4, 7])
def test_streaming_any_chunking_equals_full(vae, vae_io, chunk):
    full = vae.decode(vae_io["latents"])
    assert (_stream(vae, vae_io["latents"], chunk) - full).abs().max() <= 1e-5


def test_whole_block_per_call_is_close(vae, vae_io):
    # processing a block in one call is the same math; only float rounding differs
    full = vae.decode(vae_io["latents"])
    assert (_stream(vae, vae_io["latents"], 3, per_call=None) - full).abs().max() <= 1e-5


def test_frame_counts_and_reset(vae, vae_io):
    lat = vae_io["latents"]
    dec = StreamingVAEDecoder(vae)
    assert dec.push(lat[:, :1]).shape[1] == 1  # first latent frame -> 1 pixel frame
    assert dec.push(lat[:, 1:3]).shape[1] == 8  # later frames -> 4 each
    assert len(dec.cache) == vae.num_cache_slots
    dec.reset()
    again = dec.push(lat[:, :3])
    assert again.shape[1] == 9
    torch.testing.assert_close(again, vae.decode(lat[:, :3]), atol=0, rtol=0)


def test_demo_zero_cache_is_a_different_decode(vae, vae_io):
    # the golden demo path (zero-initialised cache) is an approximation we do not reproduce
    assert (vae.decode(vae_io["latents"]) - vae_io["pixels_demo_zero_cache"]).abs().max() > 0.1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(vae_io, dtype):
    v = WanVAEDecoder.from_file(VAE_FILE, dtype=dtype)
    out = v.decode(vae_io["latents"])
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    assert (out.float() - vae_io["pixels_full"]).abs().mean() < 0.05


def test_uint8_mapping():
    px = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 1, 1, 6).expand(1, 2, 3, 1, 6)
    u8 = to_uint8_rgb(px)
    assert u8.shape == (2, 1, 6, 3) and u8.dtype == torch.uint8
    assert u8[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 255]  # round(127.5) = 128 (round half even)


def test_load_from_pth_with_encoder_keys(tmp_path, vae_io):
    # the real Wan2.1_VAE.pth is a plain torch state dict holding encoder.*/conv1.* too
    sd = golden_vae_state_dict()
    assert any(k.startswith("encoder.") for k in sd)
    torch.save(sd, tmp_path / "Wan2.1_VAE.pth")
    v = WanVAEDecoder.from_file(tmp_path / "Wan2.1_VAE.pth")
    torch.testing.assert_close(v.decode(vae_io["latents"]), vae_io["pixels_full"], atol=1e-4, rtol=1e-4)


def _assert_error(path, *needles):
    assert_file_error(lambda: WanVAEDecoder.from_file(path), str(path), *needles)


def test_missing_key_is_named(tmp_path):
    sd = golden_vae_state_dict()
    del sd["decoder.middle.1.proj.weight"]
    save_file(sd, str(tmp_path / "vae.safetensors"))
    _assert_error(tmp_path / "vae.safetensors", "decoder.middle.1.proj.weight", "missing")


def test_wrong_shape_is_named(tmp_path):
    sd = golden_vae_state_dict()
    sd["decoder.upsamples.3.time_conv.bias"] = torch.zeros(7)
    torch.save(sd, tmp_path / "vae.pth")
    _assert_error(tmp_path / "vae.pth", "decoder.upsamples.3.time_conv.bias", "shape")


def test_unexpected_key_is_named(tmp_path):
    sd = golden_vae_state_dict()
    sd["decoder.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "vae.pth")
    _assert_error(tmp_path / "vae.pth", "decoder.extra.weight", "unexpected")


def test_wrong_file_is_named(tmp_path):
    (tmp_path / "vae.pth").write_bytes(b"not a checkpoint")
    _assert_error(tmp_path / "vae.pth", "not a readable torch checkpoint")
    torch.save({"generator_ema": {"model.x": torch.zeros(1)}}, tmp_path / "gen.pth")
    _assert_error(tmp_path / "gen.pth")
    _assert_error(tmp_path / "absent.pth", "not found")


def test_causal_conv_cache_object():
    from sfbridge.model.vae import CausalConv3d

    conv = CausalConv3d(2, 3, 3, padding=1)
    conv.slot = 0
    x = torch.randn(1, 2, 5, 4, 4)
    cache = FeatureCache()
    y = torch.cat([conv(x[:, :, :2], cache), conv(x[:, :, 2:3], cache), conv(x[:, :, 3:], cache)], dim=2)
    torch.testing.assert_close(y, conv(x), atol=1e-6, rtol=1e-6)
    assert cache.get(0).shape[2] == 2
    cache.reset()
    assert cache.get(0) is None and len(LATENT_MEAN) == 16
