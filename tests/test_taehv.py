"""TAEHV decoder with random weights in the taew2_1 key layout: streaming under any chunking
equals one-shot decoding, equals an independent parallel reference, frame counts, strict load."""

import pytest
import torch
import torch.nn.functional as F
from sfbridge.model.files import ModelFileError
from sfbridge.model.taehv import MemBlock, StreamingTAEHV, TAEHVConfig, TAEHVDecoder, frames_to_uint8

# small widths keep the test fast; the layout (and so the key set) is the real one
CFG = TAEHVConfig(n_f=(32, 16, 8, 8))


def _random_state_dict(cfg: TAEHVConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    m = TAEHVDecoder(cfg)
    sd = {k: torch.randn_like(v) * 0.2 for k, v in m.state_dict().items()}
    # taew2_1.pth also carries the encoder; a few keys in its layout must be ignored on load
    sd["encoder.0.weight"] = torch.randn(64, 3, 3, 3)
    sd["encoder.2.conv.weight"] = torch.randn(64, 128, 1, 1)
    return sd


@pytest.fixture(scope="module")
def taehv() -> TAEHVDecoder:
    return TAEHVDecoder.from_state_dict(_random_state_dict(CFG), dtype=torch.float32)


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, 7, 16, 4, 6, generator=torch.Generator().manual_seed(1))


def _reference_parallel(model: TAEHVDecoder, x: torch.Tensor) -> torch.Tensor:
    """The published parallel decode: memory = the MemBlock input shifted one step in time, trim 3."""
    N, T = x.shape[:2]
    h = x.reshape(N * T, *x.shape[2:])
    for layer in model.decoder:
        if isinstance(layer, MemBlock):
            hs = h.reshape(N, -1, *h.shape[1:])
            mem = F.pad(hs, (0, 0, 0, 0, 0, 0, 1, 0))[:, : hs.shape[1]].reshape(h.shape)
            h = layer(h, mem)
        else:
            h = layer(h)
    return h.reshape(N, -1, *h.shape[1:]).clamp(0, 1)[:, model.frames_to_trim :]


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
