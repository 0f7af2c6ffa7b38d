"""Flow-matching scheduler (shift 5, 1000 training steps) and the warped few-step list.

Mirrors ``utils/scheduler.py:FlowMatchScheduler`` (created with sigma_min 0,
extra_one_step True, ``set_timesteps(1000, training=True)``), the step-list warp of
``pipeline/causal_inference.py`` and ``utils/wan_wrapper.py:_convert_flow_pred_to_x0``.

The tables stay float32 tensors on the host (identical to the official ones). The pipeline looks
sigmas up once per step list (:meth:`FlowMatchScheduler.sigma_of`) and runs the per-step math
with Python floats (:func:`x0_from_flow`, :func:`renoise`): no table lookup, argmin or
host->device copy per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MAX_STEPS = 4  # the distilled generator is trained for <= 4 steps


class FlowMatchScheduler:
    """sigma_k = shift*s/(1+(shift-1)*s), s = linspace(1, 0, 1001)[:-1]; timestep = 1000*sigma."""

    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000) -> None:
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        s = torch.linspace(1.0, 0.0, num_train_timesteps + 1)[:-1]  # float32, like official
        self.sigmas = shift * s / (1 + (shift - 1) * s)
        self.timesteps = self.sigmas * num_train_timesteps

    def index(self, t: torch.Tensor) -> torch.Tensor:
        """Index of the nearest table timestep for each entry of t [N]."""
        table = self.timesteps.to(t.device)
        return torch.argmin((table.unsqueeze(0) - t.unsqueeze(1)).abs(), dim=1)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigmas.to(t.device)[self.index(t)]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(1 - sigma) x0 + sigma eps, per frame: x0/noise [B, F, C, H, W], t [B, F] (float32 math)."""
        sigma = self.sigma(t.flatten()).view(*t.shape, 1, 1, 1)
        return ((1 - sigma) * x0 + sigma * noise).type_as(noise)

    def flow_to_x0(self, flow: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 = x_t - sigma(t) * flow, computed in float64 then cast back (official)."""
        sig = self.sigmas.to(device=flow.device, dtype=torch.float64)
        table = self.timesteps.to(device=flow.device, dtype=torch.float64)
        idx = torch.argmin((table.unsqueeze(0) - t.flatten().double().unsqueeze(1)).abs(), dim=1)
        sigma = sig[idx].view(*t.shape, 1, 1, 1)
        return (xt.double() - sigma * flow.double()).to(flow.dtype)

    def sigma_of(self, t: float) -> float:
        """sigma of the nearest table timestep, as a Python float (the exact float32 table value)."""
        idx = int(torch.argmin((self.timesteps.double() - float(t)).abs()))
        return float(self.sigmas[idx])

    def warp(self, raw: Sequence[float]) -> torch.Tensor:
        """Config step list -> timesteps used: cat(timesteps, [0])[1000 - raw] (float32)."""
        table = torch.cat([self.timesteps, torch.tensor([0.0])])
        idx = self.num_train_timesteps - torch.tensor([int(v) for v in raw], dtype=torch.long)
        return table[idx]


def validate_steps(steps: Sequence[float], warp: bool = True, num_train_timesteps: int = 1000) -> list[float]:
    """1..4 strictly decreasing timesteps in (0, 1000]; raw (warped) values must be integers."""
    steps = list(steps)
    if not 1 <= len(steps) <= MAX_STEPS:
        raise ValueError(f"denoising step list must have 1..{MAX_STEPS} entries, got {steps}")
    for v in steps:
        if not isinstance(v, (int, float)) or not 0 < float(v) <= num_train_timesteps:
            raise ValueError(f"denoising steps must be numbers in (0, {num_train_timesteps}], got {steps}")
        if warp and float(v) != int(v):
            raise ValueError(f"raw (warped) denoising steps must be integers, got {steps}")
    if any(a <= b for a, b in zip(steps[:-1], steps[1:], strict=True)):
        raise ValueError(f"denoising steps must be strictly decreasing, got {steps}")
    return [float(v) for v in steps]


def x0_from_flow(flow: torch.Tensor, xt: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 = x_t - sigma * flow in float64, cast back (official); sigma is a host float."""
    return (xt.double() - sigma * flow.double()).to(flow.dtype)


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float, one_minus: float | None = None) -> torch.Tensor:
    """(1 - sigma) x0 + sigma eps in float32 math (like the float32 sigma tensor of the official code).

    ``one_minus`` = :func:`one_minus_f32` (sigma), precomputed by callers that run this per block.
    """
    one_minus = one_minus_f32(sigma) if one_minus is None else one_minus
    return (x0.float() * one_minus + noise.float() * sigma).to(noise.dtype)


def one_minus_f32(sigma: float) -> float:
    """1 - sigma rounded to float32, as the official float32 tensor arithmetic computes it."""
    return float(torch.tensor(1.0) - torch.tensor(sigma, dtype=torch.float32))
