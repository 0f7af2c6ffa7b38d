"""Load Self Forcing generator checkpoints (official ``.pt`` or ``.safetensors``) strictly.

Mirrors the loading in the official ``inference.py`` / ``demo.py``
(``torch.load(ckpt)['generator_ema' or 'generator']`` then ``load_state_dict`` on the
``WanDiffusionWrapper`` whose only submodule is ``model``), made robust: FSDP key segments are
removed, every problem raises :class:`WeightsError` naming the file and the first bad keys.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from tqdm import tqdm

from .causal_wan import CausalWanModel
from .config import ModelConfig
from .files import ModelFileError, read_state_dict

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("generator_ema", "generator", "model")  # preference order of official dicts
PROGRESS_MIN_BYTES = 64 << 20  # show a progress bar only for real checkpoints
FSDP_SEGMENT = "_fsdp_wrapped_module."


# One error type for every model file problem (files.py reads all of them); the old name stays.
WeightsError = ModelFileError


def normalize_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop every ``_fsdp_wrapped_module.`` segment and the wrapper's leading ``model.``."""
    out = {}
    for k, v in sd.items():
        k = k.replace(FSDP_SEGMENT, "")
        out[k.removeprefix("model.")] = v
    return out


def check_state_dict(sd: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> None:
    """Raise WeightsError on missing / unexpected keys or wrong shapes (first few named)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(sd[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, first {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, first {unexpected[:3]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches, first {shapes[:3]}")
    if problems:
        raise WeightsError(f"{source}: checkpoint does not match the model config: " + "; ".join(problems))


def load_model(path: str | os.PathLike, cfg: ModelConfig | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu", attn_backend: str = "auto") -> CausalWanModel:
    """Build CausalWanModel(cfg) without initialising weights and fill it from ``path``."""
    cfg = cfg or ModelConfig()
    with torch.device("meta"):
        model = CausalWanModel(cfg, attn_backend=attn_backend)
    sd = normalize_keys(read_state_dict(path, WRAPPER_KEYS))
    check_state_dict(sd, model, str(path))
    total = sum(v.nbytes for v in sd.values())
    items = tqdm(sd.items(), total=len(sd), desc=f"loading {Path(path).name}", unit="tensor",
                 disable=total < PROGRESS_MIN_BYTES)
    sd = {k: v.to(device=device, dtype=dtype) for k, v in items}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def random_model(cfg: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", attn_backend: str = "auto",
                 std: float = 0.05) -> CausalWanModel:
    """Seeded random weights (tiny generator, benchmarks): small normal weights, unit norms.

    Why not the torch defaults: they make activations explode through 30 layers in fp16.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        model = CausalWanModel(cfg, attn_backend=attn_backend)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("norm_q.weight") or k.endswith("norm_k.weight") or k.endswith("norm3.weight"):
            t = torch.ones(v.shape, device=device)
        elif k.endswith("bias"):
            t = torch.zeros(v.shape, device=device)
        else:
            t = torch.randn(v.shape, generator=g, device=device) * std
        sd[k] = t.to(dtype=dtype)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval().requires_grad_(False)
