"""Work and memory of one steady-state block, counted on the meta device (no weights, no GPU needed).

Why a count and not a formula: the count runs the real code path, so it follows every change to
the model (an extra fp32 upcast, a copy in the cache) and to the presets. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode``; :class:`WorkCounter` counts the kernels an eager GPU
run would launch, the bytes read + written by everything that is not a matmul or attention (the
memory-bound part), host<->device copies (and the blocking ones: no ``non_blocking``, or
``.item()`` of a device tensor; the meta device stands in for the GPU; pinning cannot be seen
without CUDA), and the peak of live activation bytes.

On the meta device SDPA would take its math path (a [heads, Lq, Lk] score matrix); GPUs run a
fused kernel, so :class:`FusedAttention` routes SDPA to the flash-attention op, which has a meta
implementation and a FLOP formula.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from .causal_wan import CausalWanModel
from .config import ModelConfig, StreamConfig
from .pipeline import StreamPipeline
from .presets import Preset
from .taehv import StreamingTAEHV, TAEHVConfig, TAEHVDecoder, frames_to_uint8
from .vae import StreamingVAEDecoder, VAEConfig, WanVAEDecoder, to_uint8_rgb

aten = torch.ops.aten
MATMUL_OPS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
              aten.convolution.default, aten._scaled_mm.default}
ATTENTION_OPS = {aten._scaled_dot_product_flash_attention.default,
                 aten._scaled_dot_product_efficient_attention.default,
                 aten._scaled_dot_product_cudnn_attention.default,
                 aten._scaled_dot_product_flash_attention_for_cpu.default,
                 aten._flash_attention_forward.default, aten._efficient_attention_forward.default}
# In-place scatters (self, dim, index, source): the ring-buffer KV write touches only the indexed rows.
SCATTER_OPS = {aten.index_copy_.default, aten.index_copy.default}
# Ops that launch no kernel on a GPU (metadata only or allocation only).
NO_KERNEL_OPS = {aten._unsafe_view.default, aten.empty.memory_format, aten.empty_strided.default,
                 aten.lift_fresh.default, aten.empty_like.default}


def physical_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches for ``t``: broadcast (stride 0) dimensions are read once."""
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


@dataclass
class OpCounts:
    """What :class:`WorkCounter` counts and :class:`Work` reports: one list, so the two cannot drift apart."""

    kernels: int = 0
    matmuls: int = 0
    attentions: int = 0
    other_bytes: int = 0
    h2d_copies: int = 0
    blocking_copies: int = 0
    peak_bytes: int = 0


@dataclass
class WorkCounter(OpCounts, TorchDispatchMode):
    """Counts kernels, non-matmul bytes, host->device copies and live activation bytes of what runs inside."""

    live_bytes: int = 0
    bytes_by_op: Counter = field(default_factory=Counter)
    _refs: dict[int, list[int]] = field(default_factory=dict)  # storage -> [bytes, live tensors]

    def __post_init__(self) -> None:
        TorchDispatchMode.__init__(self)  # the dataclass __init__ does not call it

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        key = _storage_key(t)
        if key in inputs and key not in self._refs:
            return  # a view of a tensor made before the count (weights, caches)
        entry = self._refs.get(key)
        if entry is None:
            entry = self._refs[key] = [t.untyped_storage().nbytes(), 0]
            self.live_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1
        weakref.finalize(t, self._release, key, entry)

    def _release(self, key: int, entry: list[int]) -> None:
        entry[1] -= 1
        if entry[1] == 0 and self._refs.get(key) is entry:
            del self._refs[key]
            self.live_bytes -= entry[0]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        in_keys = {_storage_key(t) for t in ins}
        for t in outs:
            self._track(t, in_keys)
        if func.is_view or func in NO_KERNEL_OPS:
            return out
        self.kernels += 1
        devices = {t.device.type for t in ins + outs}
        if func is aten._local_scalar_dense.default and devices != {"cpu"}:
            self.blocking_copies += 1  # .item() / float() of a device tensor waits for the device
        elif "cpu" in devices and len(devices) > 1:
            self.h2d_copies += 1
            positional = args[2] if func is aten.copy_.default and len(args) > 2 else False
            self.blocking_copies += not (kwargs or {}).get("non_blocking", positional)
        if func in MATMUL_OPS:
            self.matmuls += 1
        elif func in ATTENTION_OPS:
            self.attentions += 1
        elif func in SCATTER_OPS:  # in place: only the indexed rows move (source read + rows written), not
            n = 2 * physical_bytes(args[3]) + physical_bytes(args[2])  # the whole destination buffer
            self.other_bytes += n
            self.bytes_by_op[str(func.overloadpacket.__name__)] += n
        else:
            fresh = [t for t in outs if _storage_key(t) not in in_keys]  # in-place results were counted as inputs
            n = sum(physical_bytes(t) for t in ins + fresh)
            self.other_bytes += n
            self.bytes_by_op[str(func.overloadpacket.__name__)] += n
        return out


class FusedAttention(TorchFunctionMode):
    """Routes ``F.scaled_dot_product_attention`` to the fused flash op (what a GPU runs) while counting."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not kwargs.get("attn_mask") and len(args) == 3:
            q, k, v = args
            return aten._scaled_dot_product_flash_attention.default(q, k, v)[0]
        return func(*args, **kwargs)


@dataclass
class Work(OpCounts):
    """One counted piece of work (a DiT block, a decode): FLOPs, kernels, non-matmul bytes, peak activations."""

    flops: float = 0.0
    attention_flops: float = 0.0
    top_bytes: list[tuple[str, int]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        share = self.attention_flops / max(self.flops, 1.0)
        return {"tflop": round(self.flops / 1e12, 2), "attention_share": round(share, 3),
                "kernels": self.kernels, "non_matmul_gb": round(self.other_bytes / 1e9, 1),
                "host_copies": self.h2d_copies, "blocking_copies": self.blocking_copies,
                "peak_activation_gib": round(self.peak_bytes / 2**30, 2)}


class count:  # noqa: N801 - used as a context manager, reads like a function
    """``with count() as w: ...`` fills the :class:`Work` ``w`` with what ran inside."""

    def __enter__(self) -> Work:
        self.work = Work()
        self._fused = FusedAttention()
        self._flops = FlopCounterMode(display=False)
        self._ops = WorkCounter()
        self._fused.__enter__()
        self._flops.__enter__()
        self._ops.__enter__()
        return self.work

    def __exit__(self, *exc: Any) -> None:
        self._ops.__exit__(*exc)
        self._flops.__exit__(*exc)
        self._fused.__exit__(*exc)
        w, c = self.work, self._ops
        w.flops = float(self._flops.get_total_flops())
        per_op = self._flops.get_flop_counts().get("Global", {})
        w.attention_flops = float(sum(n for op, n in per_op.items() if "attention" in str(op)))
        for f in fields(OpCounts):
            setattr(w, f.name, getattr(c, f.name))
        w.top_bytes = c.bytes_by_op.most_common(8)


def analytic_dit_flops(dim: int, layers: int, ffn: int, q_tokens: int, kv_tokens: int, text_len: int,
                       passes: int) -> float:
    """Matmul + attention FLOPs of ``passes`` DiT calls (the count must agree; used by the tests).

    Per layer and query token: q,k,v,o (4 dim^2) + cross q,o (2 dim^2) + FFN (2 dim ffn) multiply-adds;
    attention 2 matmuls of q_tokens x kv_tokens x dim (self) and x text_len (cross); text K/V are cached.
    """
    linear = 2 * q_tokens * (6 * dim * dim + 2 * dim * ffn)
    attn = 4 * q_tokens * (kv_tokens + text_len) * dim
    return float(passes * layers * (linear + attn))


# -- the real pipeline, counted ------------------------------------------------------------------

T5_XXL_ENCODER_PARAMS = 5_680_000_000  # UMT5-XXL encoder: 256384 x 4096 embedding + 24 x 193M layers


def meta_pipeline(mcfg: ModelConfig, scfg: StreamConfig, dtype: torch.dtype = torch.bfloat16) -> StreamPipeline:
    """A StreamPipeline whose model, caches and activations live on the meta device (shapes only)."""
    with torch.device("meta"):
        model = CausalWanModel(mcfg, attn_backend="sdpa").to(dtype)
    pipe = StreamPipeline(model, scfg)
    pipe.set_prompt_embeds(torch.zeros(1, mcfg.text_len, mcfg.text_dim, device="meta"))
    return pipe


def count_dit_block(pipe: StreamPipeline, steps: tuple[float, ...], also: Any = None) -> Work:
    """Work of one steady-state block: the window is full and the block evicts (as served after warm-up).

    The fill blocks run with one denoising step: the cache bookkeeping does not depend on the
    step count, and meta ops cost ~1 ms each in Python, so this is 2.5x faster than 4 steps.
    ``also``: another context manager (e.g. a counter) entered around the counted block only.
    """
    F_ = pipe.cfg.num_frame_per_block
    pipe.set_steps((1000,))
    while pipe.block_index * F_ < pipe.cfg.cache_frames():
        pipe.next_block()
    pipe.set_steps(steps)
    with count() as work, (also if also is not None else contextlib.nullcontext()):
        pipe.next_block()
    return work


def _decoder(name: str, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    with torch.device("meta"):
        if name == "vae":
            vae = WanVAEDecoder(VAEConfig()).to(dtype)
            return vae, StreamingVAEDecoder(vae, 1)
        taehv = TAEHVDecoder(TAEHVConfig()).to(dtype)
        return taehv, StreamingTAEHV(taehv)


def count_decode(name: str, scfg: StreamConfig, dtype: torch.dtype = torch.bfloat16) -> tuple[Work, int, int]:
    """(work of one steady-state block decode incl. the uint8 conversion, streaming state bytes, weight bytes)."""
    net, stream = _decoder(name, dtype)
    latents = torch.zeros(1, scfg.num_frame_per_block, 16, scfg.latent_h, scfg.latent_w, device="meta", dtype=dtype)
    stream.push(latents)  # the first block (9 frames) primes the state
    with count() as work:
        px = stream.push(latents)
        (to_uint8_rgb(px) if name == "vae" else frames_to_uint8(px))
    state = stream.cache.frames.values() if name == "vae" else stream.memory.values()
    return work, sum(t.nbytes for t in state), param_bytes(net)


def param_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def fp8_weight_bytes(model: torch.nn.Module) -> int:
    """Weights with the block linears in FP8 (1 byte + one fp32 scale per output row), the rest as is."""
    from .presets import fp8_filter

    total = param_bytes(model)
    for fqn, m in model.named_modules():
        if fp8_filter(m, fqn):
            w = m.weight
            total -= w.numel() * w.element_size() - (w.numel() + 4 * w.shape[0])
    return total


@dataclass
class PresetBudget:
    """Per-block work and GPU memory of one preset at one resolution (bytes unless named otherwise)."""

    preset: str
    dit: Work
    decode: Work
    memory: dict[str, int]

    @property
    def memory_total(self) -> int:
        return sum(self.memory.values())


def preset_budget(preset: Preset, mcfg: ModelConfig | None = None, width: int = 832, height: int = 480,
                  dtype: torch.dtype = torch.bfloat16, text_encoder_on_gpu: bool = False) -> PresetBudget:
    """Count one steady-state block of ``preset`` and sum its GPU memory.

    Memory = DiT weights (FP8 where the preset asks for it) + text encoder (only if on the GPU;
    the generator keeps it on the CPU below 40 GB) + decoder weights + KV cache + cross-attention
    cache + decoder streaming state + the DiT's and the decoder's activation peaks (both: with
    overlapped decode they coexist). The CUDA context and allocator slack are not included.
    """
    mcfg = mcfg or ModelConfig()
    scfg = StreamConfig(latent_h=height // 8, latent_w=width // 8, local_attn_size=preset.window,
                        sink_size=preset.sink, denoising_step_list=preset.steps)
    pipe = meta_pipeline(mcfg, scfg, dtype)
    dit = count_dit_block(pipe, preset.steps)
    dec, dec_state, dec_weights = count_decode(preset.decoder, scfg, dtype)
    esize = torch.empty(0, dtype=dtype).element_size()
    memory = {
        "dit_weights": fp8_weight_bytes(pipe.model) if preset.fp8 != "off" else param_bytes(pipe.model),
        "text_encoder": T5_XXL_ENCODER_PARAMS * esize if text_encoder_on_gpu else 0,
        "decoder_weights": dec_weights,
        "kv_cache": pipe.kv.nbytes(),
        "cross_attn_cache": pipe.cross.nbytes(),
        "decoder_state": dec_state,
        "dit_activation_peak": dit.peak_bytes,
        "decode_activation_peak": dec.peak_bytes,
    }
    return PresetBudget(preset.name, dit, dec, memory)
