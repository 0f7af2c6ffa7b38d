"""Counters that can fail: compilations of a torch.compile backend, host<->device copies and scalar reads.

- :class:`CountingBackend` wraps a compile backend ("inductor", "aot_eager", "eager" or a callable)
  and counts every graph handed to it, i.e. every (re)compile of the functions compiled with it.
- :class:`TransferCounter` is a ``TorchDispatchMode`` that sees every aten op run eagerly under it
  and counts copies that cross devices (``_to_copy`` / ``copy_``), split into blocking and
  ``non_blocking``, and device->host scalar reads (``_local_scalar_dense``, what ``.item()``,
  ``float(t)`` or ``if t:`` run) plus ops that sync by nature (``nonzero``). On CPU-only machines
  run the pipeline on the ``meta`` device: CPU->meta copies are cross-device copies and get counted
  exactly like CPU->CUDA would, with no real data moved.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


class CountingBackend:
    """A torch.compile backend that counts the graphs it compiles and delegates to ``inner``."""

    def __init__(self, inner: str | Callable[..., Any] = "inductor") -> None:
        if isinstance(inner, str):
            from torch._dynamo.backends.registry import lookup_backend

            inner = lookup_backend(inner)
        self.inner = inner
        self.compiles = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.compiles += 1
        return self.inner(gm, example_inputs)


def _device(x: Any) -> torch.device | None:
    return x.device if isinstance(x, torch.Tensor) else None


class TransferCounter(TorchDispatchMode):
    """Counts ``blocking`` / ``non_blocking`` cross-device copies and ``syncs`` (scalar reads, nonzero).

    ``ops`` keeps a Counter of ``"op src->dst"`` strings for the message of a failing test.
    """

    SYNC_OPS = (aten._local_scalar_dense.default, aten.nonzero.default, aten.is_nonzero.default,
                aten.equal.default)

    def __init__(self) -> None:
        super().__init__()
        self.blocking = 0
        self.non_blocking = 0
        self.syncs = 0
        self.ops: Counter[str] = Counter()

    def _copy(self, name: str, src: torch.device | None, dst: torch.device | None, non_blocking: bool) -> None:
        if src is None or dst is None or src == dst:
            return
        if non_blocking:
            self.non_blocking += 1
        else:
            self.blocking += 1
        self.ops[f"{name} {src}->{dst}{' non_blocking' if non_blocking else ''}"] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.SYNC_OPS:
            self.syncs += 1
            self.ops[str(func)] += 1
        elif func is aten._to_copy.default:
            dst = kwargs.get("device")
            self._copy("_to_copy", _device(args[0]), torch.device(dst) if dst is not None else None,
                       bool(kwargs.get("non_blocking", False)))
        elif func is aten.copy_.default:
            nb = bool(args[2]) if len(args) > 2 else bool(kwargs.get("non_blocking", False))
            self._copy("copy_", _device(args[1]), _device(args[0]), nb)
        return func(*args, **kwargs)

    @property
    def summary(self) -> dict[str, Any]:
        return dict(blocking=self.blocking, non_blocking=self.non_blocking, syncs=self.syncs, ops=dict(self.ops))
