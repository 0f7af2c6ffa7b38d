"""3-axis rotary position embedding of Wan2.1 (frame, row, column), computed in float64.

Mirrors ``wan/modules/model.py:rope_params`` and ``wan/modules/causal_model.py:causal_rope_apply``.
The official code precomputes a complex128 table of 1024 positions per axis; every entry is
``polar(1, pos * inv_freq)``, a single float64 multiply, so computing the same product on the
fly for the positions we need is bit-identical and has no 1024-frame limit by itself. The
pipeline still caps frame positions and *rebases* (see ``rotate_frames``) so angles stay small.
"""

from __future__ import annotations

import torch


def _inv_freq(sub_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Per-axis frequencies 1/theta^(2j/sub_dim), normalised by the axis' OWN real size."""
    return 1.0 / torch.pow(theta, torch.arange(0, sub_dim, 2, device="cpu").to(torch.float64).div(sub_dim))


def _polar(pos: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    angles = torch.outer(pos.to(device="cpu", dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(angles), angles)


class RoPE:
    """Complex frequencies for head_dim d: frame d-4(d//6), row 2(d//6), column 2(d//6) real dims."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        assert head_dim % 2 == 0, f"head_dim {head_dim} must be even"
        d = head_dim
        self.head_dim = d
        self.inv_t = _inv_freq(d - 4 * (d // 6), theta)  # [c_t]
        self.inv_h = _inv_freq(2 * (d // 6), theta)  # [c_h]
        self.inv_w = _inv_freq(2 * (d // 6), theta)
        self.c_t = self.inv_t.numel()
        self._last: tuple[tuple, torch.Tensor] | None = None  # 5 calls per block share one table


    def freqs(self, start_frame: int, F: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Complex128 rotations for F frames of h x w tokens starting at start_frame: [1, F*h*w, 1, d/2]."""
        key = (start_frame, F, h, w, str(device))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        ft = _polar(torch.arange(start_frame, start_frame + F), self.inv_t)  # [F, c_t]
        fh = _polar(torch.arange(h), self.inv_h)  # [h, c_h]
        fw = _polar(torch.arange(w), self.inv_w)  # [w, c_w]
        f = torch.cat([
            ft.view(F, 1, 1, -1).expand(F, h, w, -1),
            fh.view(1, h, 1, -1).expand(F, h, w, -1),
            fw.view(1, 1, w, -1).expand(F, h, w, -1),
        ], dim=-1)
        f = f.reshape(1, F * h * w, 1, -1).to(device)
        self._last = (key, f)
        return f

    @staticmethod
    def apply(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        """Rotate consecutive real pairs of x [B, L, heads, head_dim] in float64, cast back."""
        B, L, H, D = x.shape
        assert freqs.shape[1] == L and freqs.shape[-1] == D // 2, (
            f"x {tuple(x.shape)} vs freqs {tuple(freqs.shape)}")
        xc = torch.view_as_complex(x.to(torch.float64).reshape(B, L, H, D // 2, 2))
        return torch.view_as_real(xc * freqs).flatten(3).to(x.dtype)

    def rotate_frames(self, k: torch.Tensor, delta_frames: int) -> torch.Tensor:
        """Move already-rotated keys [..., head_dim] by delta_frames frame positions (float64).

        Used for rebasing: a key at frame s becomes a key at s + delta_frames. Only the frame
        pairs change; row/column pairs are untouched.
        """
        D = k.shape[-1]
        assert D == self.head_dim, f"k {tuple(k.shape)} vs head_dim {self.head_dim}"
        rot = _polar(torch.tensor([delta_frames]), self.inv_t)[0].to(k.device)  # [c_t]
        kc = torch.view_as_complex(k.to(torch.float64).reshape(*k.shape[:-1], D // 2, 2))
        kc[..., : self.c_t] *= rot
        return torch.view_as_real(kc).flatten(-2).to(k.dtype)
