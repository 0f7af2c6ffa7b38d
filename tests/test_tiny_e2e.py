"""End to end over real sockets: daemon serving ``self-forcing`` (tiny official-layout files, CPU) and
``tiny`` (DiT -> tiny VAE), a Client receiving decoded frames; ``--model auto`` falling back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import endpoints
from test_self_forcing_generator import TINY, build_tiny_model_dir

from sfbridge.client import Client
from sfbridge.daemon import Daemon, DaemonConfig, build_generator


@pytest.fixture(autouse=True)
def _empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


def frames(client: Client, n: int, fmt: str = "rgb24") -> list:
    out = []
    for f in client.subscribe(format=fmt, latest_only=False, timeout=20.0):
        out.append(f)
        if len(out) == n:
            return out
    return out


def test_daemon_serves_self_forcing(tmp_path: Path) -> None:
    model_dir = build_tiny_model_dir(tmp_path / "m")
    control, frames_ep = endpoints()
    cfg = DaemonConfig(model="self-forcing", control=control, frames=frames_ep, pace="off",
                       model_options={**TINY, "model_dir": str(model_dir)})
    d = Daemon(cfg).start()
    try:
        with Client(control=control, frames=frames_ep, timeout=5.0) as c:
            st = c.status()
            assert (st["model"], st["dtype"], st["decoder"], st["width"], st["height"]) == (
                "self-forcing", "fp32", "vae", 64, 48)
            got = frames(c, 3)
            assert all(f.image.shape == (48, 64, 3) and f.image.dtype.name == "uint8" for f in got)
            assert c.set_prompt("a blue whale")["state_id"] > st["state_id"]
    finally:
        d.stop()


def test_daemon_serves_tiny_through_vae(make_daemon) -> None:  # noqa: ANN001
    d = make_daemon(model="tiny", pace="off")
    with Client(control=d.config.control, frames=d.config.frames, timeout=5.0) as c:
        assert c.status()["decoder"] == "vae"
        f = frames(c, 1)[0]
        assert f.image.shape == (96, 160, 3) and f.image.std() > 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_auto_falls_back_naming_what_is_missing(tmp_path: Path, make_daemon) -> None:  # noqa: ANN001
    gen, warnings = build_generator("auto", {"model_dir": str(tmp_path / "empty"), "width": 160, "height": 96})
    assert gen.name == "testsrc" and len(warnings) == 1
    w = warnings[0]
    for name in ("self_forcing_dmd.pt", "models_t5_umt5-xxl-enc-bf16.pth", "Wan2.1_VAE.pth", "umt5-xxl", "CUDA"):
        assert name in w
    # files present, no GPU: only CUDA is named
    model_dir = build_tiny_model_dir(tmp_path / "m")
    d = make_daemon(model="auto", model_options={"model_dir": str(model_dir)})
    st = d.status()
    assert st["model"] == "testsrc" and any("CUDA" in x and "missing model files" not in x for x in st["warnings"])
