"""The golden set's Wan VAE files and the strict-load error check, shared by the decoder tests
(test_vae.py) and the encoder tests (test_vae_encoder.py): one place for paths, config and checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sfbridge.model.files import ModelFileError
from sfbridge.model.vae import VAEConfig

GOLDEN = Path(__file__).parent / "data" / "golden"
META = json.loads((GOLDEN / "metadata.json").read_text())
VAE_FILE = GOLDEN / "vae.safetensors"  # the tiny golden VAE: both halves, Wan2.1 key layout
VAE_IO_FILE = GOLDEN / "vae_io.safetensors"  # official decode/encode inputs and outputs


def golden_vae_config() -> VAEConfig:
    return VAEConfig.from_dict(META["vae_config"])


def golden_vae_state_dict() -> dict[str, torch.Tensor]:
    """A fresh copy each call: tests delete and corrupt keys in it."""
    return load_file(str(VAE_FILE))


def assert_file_error(load: Callable[[], object], *needles: str) -> None:
    """`load()` raises ModelFileError whose message holds every needle (the file, the key, the reason)."""
    with pytest.raises(ModelFileError) as e:
        load()
    for n in needles:
        assert n in str(e.value), str(e.value)
