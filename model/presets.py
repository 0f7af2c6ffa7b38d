"""Speed presets (`--preset quality|balanced|fast`) and FP8 linear layers.

A preset is a named set of the four knobs that decide the work per block: the rolling window
(attention is ~70 % of the DiT work at window 21 and grows linearly with it), the decoder (the
Wan VAE costs ~25x TAEHV), the number of denoising steps (each one is a full DiT pass) and FP8
linear layers (halve the matmul time on sm89+). Pure data plus small functions: the CLI and the
self-forcing generator resolve a preset with :func:`resolve`, explicit options win.
The expected work and memory of each preset are counted by :mod:`.budget` and documented
in docs/SELF_FORCING.md ("Presets").
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

FP8_MIN_CAPABILITY = (8, 9)  # Ada (RTX 40xx, L4, L40) and Hopper have FP8 tensor cores
FP8_INSTALL_HINT = "pip install torchao"
# Linear layers that stay in bf16/fp16 under FP8: only the 30 transformer blocks are converted.
# The time embedding/projection and the head set the scale of every modulation and of the output;
# the text embedding runs once per prompt, so FP8 would buy nothing there.
FP8_MODULE_PREFIX = "blocks."


@dataclass(frozen=True)
class Preset:
    """Window/sink in latent frames, decoder name, raw denoising steps, FP8 mode ('off', 'auto', 'on').

    fp8 'auto' = FP8 where the GPU supports it, bf16 elsewhere (logged); 'on' = refuse to start
    without FP8 support.
    """

    name: str
    window: int
    sink: int
    decoder: str
    steps: tuple[float, ...]
    fp8: str
    purpose: str

    def options(self) -> dict[str, Any]:
        """Generator options of this preset (``window``, ``sink``, ``decoder``, ``steps``, ``fp8``)."""
        d = asdict(self)
        d.pop("name"), d.pop("purpose")
        d["steps"] = list(self.steps)
        return d


PRESETS: dict[str, Preset] = {
    p.name: p for p in (
        # What the official model was trained/evaluated with: the full 21-frame context and the exact VAE.
        Preset("quality", window=21, sink=3, decoder="vae", steps=(1000, 750, 500, 250), fp8="off",
               purpose="official 21-frame context, exact Wan VAE, 4 steps (H100-class GPU)"),
        # Half the attention work, the approximate decoder; same 4-step schedule.
        Preset("balanced", window=12, sink=3, decoder="taehv", steps=(1000, 750, 500, 250), fp8="off",
               purpose="window 12 (sink 3 + 6 recent + the block), TAEHV, 4 steps"),
        # The 24 GB card preset: smallest window that still sees the previous block, 3 steps, FP8 matmuls.
        Preset("fast", window=9, sink=3, decoder="taehv", steps=(1000, 500, 250), fp8="auto",
               purpose="window 9 (sink 3 + previous block + the block), TAEHV, 3 steps, FP8 on sm89+"),
    )
}
DEFAULT_PRESET = "quality"  # = the generator's own defaults (window 21, sink 3, vae, 4 steps)


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}, choose from {sorted(PRESETS)}")
    return PRESETS[name]


def resolve(name: str | None, **explicit: Any) -> dict[str, Any]:
    """Options of preset ``name`` with every explicit (not None) option on top; None = no preset."""
    opts = get(name).options() if name else {}
    opts.update({k: v for k, v in explicit.items() if v is not None})
    return opts


# -- FP8 -----------------------------------------------------------------------------------


class FP8Unavailable(RuntimeError):
    """FP8 linear layers were asked for where they cannot run; the message says why."""


def fp8_problems(device: torch.device | str) -> list[str]:
    """Why FP8 linear layers cannot run on ``device`` (empty list = they can)."""
    device = torch.device(device)
    problems = []
    if device.type != "cuda":
        problems.append(f"FP8 linear layers need a CUDA GPU of compute capability "
                        f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}+ (Ada/Hopper); the device is {device}")
    elif not torch.cuda.is_available():
        problems.append(f"FP8 linear layers need CUDA; torch {torch.__version__} sees no GPU")
    else:
        cc = torch.cuda.get_device_capability(device)
        if cc < FP8_MIN_CAPABILITY:
            problems.append(f"FP8 linear layers need compute capability {FP8_MIN_CAPABILITY[0]}."
                            f"{FP8_MIN_CAPABILITY[1]}+ (Ada/Hopper); {torch.cuda.get_device_name(device)} "
                            f"is {cc[0]}.{cc[1]}")
    try:
        import torchao.quantization  # noqa: F401
    except ImportError as e:
        problems.append(f"FP8 linear layers need torchao, which is not importable ({e}): {FP8_INSTALL_HINT}")
    return problems


def fp8_filter(module: torch.nn.Module, fqn: str) -> bool:
    """Which modules FP8 converts: the nn.Linear layers inside the transformer blocks, nothing else."""
    return isinstance(module, torch.nn.Linear) and fqn.startswith(FP8_MODULE_PREFIX)


def apply_fp8(model: torch.nn.Module, mode: str | bool, device: torch.device | str) -> bool:
    """Convert the block linears to FP8 (dynamic per-row activation + weight scales) per ``mode``.

    ``mode``: 'off'/False does nothing; 'auto' converts where supported and logs why not
    elsewhere; 'on'/True raises :class:`FP8Unavailable` naming every reason. Returns whether
    the model now runs FP8 matmuls.
    """
    mode = {True: "on", False: "off"}.get(mode, mode)  # type: ignore[call-overload]
    if mode not in ("off", "auto", "on"):
        raise ValueError(f"fp8 must be 'off', 'auto' or 'on', got {mode!r}")
    if mode == "off":
        return False
    problems = fp8_problems(device)
    if problems:
        if mode == "on":
            raise FP8Unavailable("; ".join(problems))
        log.info("FP8 off: %s", "; ".join(problems))
        return False
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=fp8_filter)
    n = sum(1 for fqn, m in model.named_modules() if fp8_filter(m, fqn))
    log.info("FP8 linear layers: %d converted (time embedding, text embedding and head stay in %s)", n,
             next(model.parameters()).dtype)
    return True
