"""TAEHV decoder and encoder with random weights in the taew2_1 key layout: streaming under any
chunking equals one-shot, equals an independent parallel reference, frame counts, strict load
of the whole file (encoder + decoder)."""

import pytest
import torch
import torch.nn.functional as F
from sfbridge.model.files import ModelFileError
from sfbridge.model.taehv import MemBlock, StreamingTAEHV, TAEHVConfig, TAEHVDecoder, frames_to_uint8
from sfbridge.model.taehv_encoder import (
    StreamingTAEHVEncoder,
    TAEHVEncoder,
    TAEHVEncoderConfig,
    TPool,
    load_taehv,
)

# small widths keep the test fast; the layout (and so the key set) is the real one
CFG = TAEHVConfig(n_f=(32, 16, 8, 8))
ENC_CFG = TAEHVEncoderConfig(n_f=8)


def _random_state_dict(cfg: TAEHVConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    # taew2_1.pth carries both halves; a decoder-only load skips the encoder's keys
    own = {**TAEHVDecoder(cfg).state_dict(), **TAEHVEncoder(ENC_CFG).state_dict()}
    return {k: torch.randn_like(v) * 0.2 for k, v in own.items()}


@pytest.fixture(scope="module")
def taehv() -> TAEHVDecoder:
    return TAEHVDecoder.from_state_dict(_random_state_dict(CFG), dtype=torch.float32)


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, 7, 16, 4, 6, generator=torch.Generator().manual_seed(1))


def _reference_layers(layers: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The published parallel pass of [N, T, ...] (decoder and encoder alike): each MemBlock's memory
    is its input shifted one step in time (zeros at t=0), independent of the model's streaming code."""
    N, T = x.shape[:2]
    h = x.reshape(N * T, *x.shape[2:])
    for layer in layers:
        if isinstance(layer, MemBlock):
            hs = h.reshape(N, -1, *h.shape[1:])
            mem = F.pad(hs, (0, 0, 0, 0, 0, 0, 1, 0))[:, : hs.shape[1]].reshape(h.shape)
            h = layer(h, mem)
        else:
            h = layer(h)
    return h.reshape(N, -1, *h.shape[1:])


def _reference_parallel(model: TAEHVDecoder, x: torch.Tensor) -> torch.Tensor:
    """The published parallel decode: the shifted-memory pass, clamp, trim 3."""
    return _reference_layers(model.decoder, x).clamp(0, 1)[:, model.frames_to_trim :]


def test_config_from_state_dict():
    cfg = TAEHVConfig.from_state_dict(_random_state_dict(CFG))
    assert cfg == CFG
    assert TAEHVDecoder(cfg).t_upscale == 4 and TAEHVDecoder(cfg).frames_to_trim == 3


def test_one_shot_matches_reference(taehv, latents):
    out = taehv.decode(latents)
    assert out.shape == (1, 4 * 7 - 3, 3, 32, 48)
    torch.testing.assert_close(out, _reference_parallel(taehv, latents), atol=1e-5, rtol=1e-5)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("chunk", [1, 2, 3, 4])
def test_streaming_equals_one_shot(taehv, latents, chunk):
    full = taehv.decode(latents)
    dec = StreamingTAEHV(taehv)
    parts = [dec.push(latents[:, i : i + chunk]) for i in range(0, latents.shape[1], chunk)]
    assert parts[0].shape[1] == 4 * min(chunk, 7) - 3  # first block trims 3 frames
    assert all(p.shape[1] == 4 * min(chunk, 7 - i * chunk) for i, p in enumerate(parts) if i > 0)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    dec.reset()
    torch.testing.assert_close(dec.push(latents[:, :3]), taehv.decode(latents[:, :3]), atol=0, rtol=0)


def test_batch_of_two(taehv, latents):
    two = torch.cat([latents, latents.flip(1)])
    out = taehv.decode(two)
    torch.testing.assert_close(out[1:], taehv.decode(latents.flip(1)), atol=1e-5, rtol=1e-5)


def test_fp16_runs(latents):
    m = TAEHVDecoder.from_state_dict(_random_state_dict(CFG), dtype=torch.float16)
    assert m.decode(latents).dtype == torch.float16


def test_uint8():
    u8 = frames_to_uint8(torch.tensor([0.0, 0.5, 1.0, 2.0]).view(1, 1, 1, 1, 4).expand(1, 2, 3, 1, 4))
    assert u8.shape == (2, 1, 4, 3) and u8[0, 0, :, 0].tolist() == [0, 128, 255, 255]


def test_load_pth_and_errors(tmp_path, latents):
    sd = _random_state_dict(CFG)
    torch.save(sd, tmp_path / "taew2_1.pth")
    m = TAEHVDecoder.from_file(tmp_path / "taew2_1.pth", dtype=torch.float32)
    ref = TAEHVDecoder.from_state_dict(sd, dtype=torch.float32)
    torch.testing.assert_close(m.decode(latents), ref.decode(latents), atol=0, rtol=0)

    bad = dict(sd)
    del bad["decoder.9.conv.2.weight"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelFileError, match=r"bad\.pth.*decoder\.9\.conv\.2\.weight"):
        TAEHVDecoder.from_file(tmp_path / "bad.pth")
    bad = dict(sd, **{"decoder.4.conv.0.bias": torch.zeros(3)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelFileError, match=r"decoder\.4\.conv\.0\.bias.*shape"):
        TAEHVDecoder.from_file(tmp_path / "bad.pth")
    bad = dict(sd, **{"extra.weight": torch.zeros(3)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelFileError, match="unexpected key 'extra.weight'"):
        TAEHVDecoder.from_file(tmp_path / "bad.pth")
    with pytest.raises(ModelFileError, match="not a TAEHV"):
        TAEHVDecoder.from_state_dict({"decoder.1.weight": torch.zeros(1)}, source="x.pth")


# -- encoder ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> TAEHVEncoder:
    return TAEHVEncoder.from_state_dict(_random_state_dict(CFG), dtype=torch.float32)


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    """21 frames (1 + 4*5) in [-1, 1]."""
    g = torch.Generator().manual_seed(2)
    drift = 0.1 * torch.randn(1, 21, 3, 32, 48, generator=g).cumsum(1)
    return ((torch.rand(1, 1, 3, 32, 48, generator=g) + drift) * 2 - 1).clamp(-1, 1)


def _reference_encode(model: TAEHVEncoder, frames01: torch.Tensor) -> torch.Tensor:
    """The published parallel encode of [N, 4k, 3, H, W] in [0, 1]: zero memory at t=0, TPool groups."""
    return _reference_layers(model.encoder, frames01)


def test_encoder_config_from_state_dict():
    sd = _random_state_dict(CFG)
    cfg = TAEHVEncoderConfig.from_state_dict(sd)
    assert cfg == ENC_CFG and cfg.time_strides == (2, 2, 1)
    m = TAEHVEncoder(cfg)
    assert m.t_downscale == 4 and m.frames_to_pad == 3
    assert [i for i, layer in enumerate(m.encoder) if isinstance(layer, TPool)] == [2, 7, 12]
    # the real width: 64 channels throughout, 16 latent channels (taew2_1)
    assert TAEHVEncoder().encoder[17].weight.shape == (16, 64, 3, 3)


def test_encoder_matches_reference_with_wan_alignment(encoder, clip):
    out = encoder.encode(clip)
    assert out.shape == (1, 6, 16, 4, 6)
    x01 = (clip + 1) / 2
    padded = torch.cat([x01[:, :1].expand(-1, 3, -1, -1, -1), x01], dim=1)  # 3 copies of frame 0 in front
    torch.testing.assert_close(out, _reference_encode(encoder, padded), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sizes", [[9, 12], [1, 4, 4, 4, 4, 4], [5, 8, 8], [3, 3, 3, 3, 3, 3, 3], [2, 7, 1, 11], [21]])
def test_encoder_streaming_equals_one_shot(encoder, clip, sizes):
    full = encoder.encode(clip)
    s = StreamingTAEHVEncoder(encoder)
    out, i = [], 0
    for n in sizes:
        out.append(s.push(clip[:, i : i + n]))
        i += n
    # random weights make latents of ~1e3; the chunkings differ only by float32 rounding (0 in float64)
    tol = 1e-6 * float(full.abs().max())
    torch.testing.assert_close(torch.cat(out, 1), full, atol=tol, rtol=1e-5)
    s.reset()
    assert s.push(clip[:, :9]).shape[1] == 3 and s.push(clip[:, 9:21]).shape[1] == 3  # 9 -> 3, 12 -> 3
    s.reset()
    torch.testing.assert_close(s.push(clip[:, :9]), encoder.encode(clip[:, :9]), atol=0, rtol=0)


def test_encoder_causal_uint8_and_batch(encoder, clip):
    other = clip.clone()
    other[:, 13] = -other[:, 13]  # latent 4 covers frames 13-16
    a, b = encoder.encode(clip), encoder.encode(other)
    assert (a[:, :4] - b[:, :4]).abs().max() == 0 and (a[:, 4:] - b[:, 4:]).abs().max() > 1e-4
    tol = 1e-6 * float(a.abs().max())  # float32 rounding at the random weights' latent scale (~1e3)
    u8 = ((clip[:, :9] + 1) * 127.5).round().to(torch.uint8)
    torch.testing.assert_close(encoder.encode(u8), encoder.encode(u8.float() / 127.5 - 1), atol=tol, rtol=1e-5)
    two = torch.cat([clip[:, :9], clip[:, 12:21]])
    torch.testing.assert_close(encoder.encode(two)[1:], encoder.encode(clip[:, 12:21]), atol=tol, rtol=1e-5)


def test_encoder_roundtrip_frame_counts(taehv, encoder, clip):
    # encode -> decode keeps the Wan framing: 21 frames -> 6 latents -> 21 frames
    assert taehv.decode(encoder.encode(clip)).shape == (1, 21, 3, 32, 48)


def test_whole_file_load_is_strict(tmp_path, clip):
    sd = _random_state_dict(CFG)
    torch.save(sd, tmp_path / "taew2_1.pth")
    dec, enc = load_taehv(tmp_path / "taew2_1.pth", dtype=torch.float32)
    assert len(dec.state_dict()) + len(enc.state_dict()) == len(sd)
    ref = TAEHVEncoder.from_state_dict(sd, dtype=torch.float32)
    torch.testing.assert_close(enc.encode(clip), ref.encode(clip), atol=0, rtol=0)
    assert load_taehv(tmp_path / "taew2_1.pth", encoder=False)[1] is None

    def err(bad: dict, pattern: str) -> None:
        torch.save(bad, tmp_path / "bad.pth")
        with pytest.raises(ModelFileError, match=pattern):
            load_taehv(tmp_path / "bad.pth")

    err({k: v for k, v in sd.items() if k != "encoder.9.conv.2.weight"}, r"bad\.pth.*encoder\.9\.conv\.2\.weight")
    err({**sd, "encoder.4.conv.0.bias": torch.zeros(3)}, r"encoder\.4\.conv\.0\.bias.*shape")
    err({**sd, "encoder.99.weight": torch.zeros(3)}, "unexpected key 'encoder.99.weight'")
    err({k: v for k, v in sd.items() if not k.startswith("encoder.")}, "not a TAEHV state dict with an encoder")
