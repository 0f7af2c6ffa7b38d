"""3-axis rotary position embedding of Wan2.1 (frame, row, column): fp32 cos/sin tables on the device.

Mirrors ``wan/modules/model.py:rope_params`` and ``wan/modules/causal_model.py:causal_rope_apply``.
The official code precomputes a complex128 table of 1024 positions per axis and rotates q/k in
float64. That is the largest non-matmul memory traffic of a block on a GPU (float64 upcast of q
and k in every layer) and float64 is slow or absent on consumer GPUs and inside compiled graphs.

Here the angles are still computed in float64 on the host (``pos * inv_freq``, the official
table's rows bit for bit), but only once: :class:`RopeTable` keeps ``cos``/``sin`` in fp32 on
the device, and :func:`apply_rope` rotates consecutive real pairs in fp32 math. The per-block
cos/sin are built from the table by slicing with Python ints OUTSIDE the compiled graph, so the
graph sees two tensors of a fixed shape and nothing about positions (no guard, no recompile).
The float64 complex path (:class:`RoPE`) stays as the reference for tests and error measurement
(numbers in docs/MODEL.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)


def _inv_freq(sub_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Per-axis frequencies 1/theta^(2j/sub_dim), normalised by the axis' OWN real size (float64)."""
    return 1.0 / torch.pow(theta, torch.arange(0, sub_dim, 2, device="cpu").to(torch.float64).div(sub_dim))


def _polar(pos: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    angles = torch.outer(pos.to(device="cpu", dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(angles), angles)


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis for head_dim d: frame (d-4(d//6))/2, row and column (d//6) each."""
    assert head_dim % 2 == 0, f"head_dim {head_dim} must be even"
    d = head_dim
    return (d - 4 * (d // 6)) // 2, d // 6, d // 6


class RoPE:
    """Reference: complex128 frequencies and float64 rotation (the official computation)."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        d = head_dim
        self.head_dim = d
        self.theta = theta
        c_t, c_h, c_w = axis_dims(d)
        self.inv_t = _inv_freq(2 * c_t, theta)  # [c_t]
        self.inv_h = _inv_freq(2 * c_h, theta)  # [c_h]
        self.inv_w = _inv_freq(2 * c_w, theta)
        self.c_t = c_t

    def freqs(self, start_frame: int, F: int, h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Complex128 rotations for F frames of h x w tokens starting at start_frame: [1, F*h*w, 1, d/2]."""
        ft = _polar(torch.arange(start_frame, start_frame + F), self.inv_t)  # [F, c_t]
        fh = _polar(torch.arange(h), self.inv_h)  # [h, c_h]
        fw = _polar(torch.arange(w), self.inv_w)  # [w, c_w]
        f = torch.cat([
            ft.view(F, 1, 1, -1).expand(F, h, w, -1),
            fh.view(1, h, 1, -1).expand(F, h, w, -1),
            fw.view(1, 1, w, -1).expand(F, h, w, -1),
        ], dim=-1)
        return f.reshape(1, F * h * w, 1, -1).to(device)

    @staticmethod
    def apply(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        """Rotate consecutive real pairs of x [B, L, heads, head_dim] in float64, cast back."""
        B, L, H, D = x.shape
        assert freqs.shape[1] == L and freqs.shape[-1] == D // 2, (
            f"x {tuple(x.shape)} vs freqs {tuple(freqs.shape)}")
        xc = torch.view_as_complex(x.to(torch.float64).reshape(B, L, H, D // 2, 2))
        return torch.view_as_real(xc * freqs).flatten(3).to(x.dtype)

    def rotate_frames(self, k: torch.Tensor, delta_frames: int) -> torch.Tensor:
        """Move already-rotated keys [..., head_dim] by delta_frames frame positions (float64)."""
        D = k.shape[-1]
        assert D == self.head_dim, f"k {tuple(k.shape)} vs head_dim {self.head_dim}"
        rot = _polar(torch.tensor([delta_frames]), self.inv_t)[0].to(k.device)  # [c_t]
        kc = torch.view_as_complex(k.to(torch.float64).reshape(*k.shape[:-1], D // 2, 2))
        kc[..., : self.c_t] *= rot
        return torch.view_as_real(kc).flatten(-2).to(k.dtype)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Rotate consecutive real pairs of x [B, L, heads, head_dim] by (cos, sin) [1, L, 1, d/2] in fp32.

    A complex tensor instead of (cos, sin) selects the float64 reference (:meth:`RoPE.apply`).
    """
    if isinstance(rope, torch.Tensor):
        return RoPE.apply(x, rope)
    cos, sin = rope
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, L, H, d/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(x.dtype)


class RopeTable:
    """fp32 cos/sin of every frame position in ``[0, frames)`` and of one frame's h x w grid, on ``device``.

    ``block(pos, F)`` gives the (cos, sin) of F frames starting at RoPE frame position ``pos``;
    ``positions(list)`` those of any frames (KV re-cache of a window); ``rotate_frames`` moves
    cached keys by whole frames (rebasing). All device work, no host->device traffic after the
    table exists; a position past the table grows it (logged; only without rebasing).
    """

    def __init__(self, head_dim: int, h: int, w: int, frames: int = 1024,
                 device: torch.device | str = "cpu", theta: float = 10000.0) -> None:
        self.ref = RoPE(head_dim, theta)
        self.h, self.w, self.device = h, w, torch.device(device)
        fh = _polar(torch.arange(h), self.ref.inv_h)  # [h, c_h]
        fw = _polar(torch.arange(w), self.ref.inv_w)  # [w, c_w]
        grid = torch.cat([fh.view(h, 1, -1).expand(h, w, -1), fw.view(1, w, -1).expand(h, w, -1)], dim=-1)
        grid = grid.reshape(h * w, -1)  # [h*w, c_h + c_w], complex128
        self.grid_cos = grid.real.float().to(self.device)
        self.grid_sin = grid.imag.float().to(self.device)
        self.frames = 0
        self._grow(frames)

    def _grow(self, frames: int) -> None:
        if self.frames:
            log.info("RoPE table grows from %d to %d frame positions (host->device copy)", self.frames, frames)
        f = _polar(torch.arange(frames), self.ref.inv_t)  # [frames, c_t]
        self.frame_cos = f.real.float().to(self.device)
        self.frame_sin = f.imag.float().to(self.device)
        self.frames = frames

    def _frame_rows(self, pos: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert pos >= 0, f"RoPE frame position {pos} < 0"
        if pos + count > self.frames:
            self._grow(max(2 * self.frames, pos + count))
        return self.frame_cos[pos:pos + count], self.frame_sin[pos:pos + count]

    def block(self, pos: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [1, count*h*w, 1, d/2] fp32 for frames at positions pos .. pos+count-1."""
        return self.positions(range(pos, pos + count))

    def positions(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [1, len*h*w, 1, d/2] for frames at the given positions (runs sliced, not gathered)."""
        runs: list[tuple[int, int]] = []
        for p in positions:
            if runs and runs[-1][0] + runs[-1][1] == p:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((p, 1))
        S = self.h * self.w
        out = []
        for grid, which in ((self.grid_cos, 0), (self.grid_sin, 1)):
            parts = []
            for p, n in runs:
                ft = self._frame_rows(p, n)[which]  # [n, c_t]
                parts.append(torch.cat([ft.unsqueeze(1).expand(n, S, -1), grid.unsqueeze(0).expand(n, S, -1)], -1))
            out.append(torch.cat(parts).reshape(1, -1, 1, grid.shape[-1] + ft.shape[-1]))
        return out[0], out[1]

    def rotate_frames_(self, k: torch.Tensor, delta_frames: int) -> None:
        """In place: keys [..., head_dim] (already rotated) move by ``delta_frames`` frame positions (fp32)."""
        c_t = self.ref.c_t
        cos, sin = self._frame_rows(abs(delta_frames), 1)
        cos, sin = cos[0], (sin[0] if delta_frames >= 0 else -sin[0])  # cos(-a) = cos(a), sin(-a) = -sin(a)
        pairs = k.unflatten(-1, (-1, 2))[..., :c_t, :]  # view: the frame pairs only
        a, b = pairs[..., 0].float(), pairs[..., 1].float()
        pairs.copy_(torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).to(k.dtype))
