"""Seeded noise stream: drawn on the CPU (same stream on any device), handed to the device without a sync.

A seed must give the same video on CPU, CUDA or anything else, so draws come from a CPU
``torch.Generator`` in float32, in a fixed order (per block: the initial noise, then one draw per
re-noise). Drawing on the host and copying with a plain ``.to(device)`` blocks the host until the
device catches up; here draws are made ahead (``prefetch``, called while the device still runs the
previous block) into pinned host buffers (when CUDA is available) and copied ``non_blocking``. The
CUDA caching host allocator does not reuse a pinned buffer before its copy has completed, so a
buffer is simply dropped after its copy.

Reseeding discards the draws made ahead (they belong to the old seed): the order of draws a seed
produces never depends on prefetching.
"""

from __future__ import annotations

from collections import deque

import torch


class NoiseStream:
    """FIFO of device tensors of ``shape`` (model dtype), each one draw of the CPU generator."""

    def __init__(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, seed: int = 0) -> None:
        self.shape, self.device, self.dtype = tuple(shape), torch.device(device), dtype
        self.generator = torch.Generator(device="cpu")
        self.pin = torch.cuda.is_available() and self.device.type != "cpu"
        self._ready: deque[torch.Tensor] = deque()
        self.seed(seed)

    def seed(self, seed: int) -> None:
        """Restart the stream from ``seed``; draws made ahead are dropped."""
        self.generator.manual_seed(int(seed))
        self._ready.clear()

    def _draw(self) -> torch.Tensor:
        host = torch.empty(self.shape, dtype=torch.float32, pin_memory=self.pin)
        torch.randn(self.shape, generator=self.generator, dtype=torch.float32, out=host)
        if self.device.type == "cpu":
            return host.to(self.dtype)
        return host.to(self.device, non_blocking=True).to(self.dtype)

    def prefetch(self, count: int) -> None:
        """Make sure ``count`` draws are waiting on the device (their copies are queued, not awaited)."""
        while len(self._ready) < count:
            self._ready.append(self._draw())

    def take(self) -> torch.Tensor:
        """The next draw of the stream (made now if none is waiting)."""
        return self._ready.popleft() if self._ready else self._draw()

    @property
    def waiting(self) -> int:
        return len(self._ready)
