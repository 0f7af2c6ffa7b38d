"""Self-attention KV cache as a ring buffer (global or rolling window with attention sink), cross cache.

Mirrors the cache semantics of ``pipeline/causal_inference.py:_initialize_kv_cache`` and
``wan/modules/causal_model.py:CausalWanSelfAttention.forward``, without their eviction copy.

Official rule (token units, a call writing ``n`` tokens at absolute ``[s, e = s + n)``, capacity
``C``, sink ``K = sink_frames * tokens_per_frame``, indices ``g`` = absolute end of the last write,
``l`` = slot past the last valid entry): evict only in rolling mode, only when the call extends the
stream (``e > g``, the first call of a block) and only when ``n + l > C``: ``evict = n + l - C``,
slots ``[K, K+keep)`` get ``[K+evict, K+evict+keep)`` (``keep = l - evict - K``), the sink never
moves; ``l' = l + (e - g) - evict``; the call writes ``[l' - n, l')`` and attends ``[0, l')``.
Later denoising calls and the context pass of a block have ``e == g`` and rewrite its slots.
So after every call the cache holds exactly: the first ``sink_frames`` frames of the stream plus
the newest ``l'/tpf - sink_frames`` frames, in chronological order.

Here the same SET of frames is kept, but each frame has a fixed home: absolute frame ``a`` lives
in frame slot ``a`` if ``a < sink_frames``, else ``sink_frames + (a - sink_frames) mod R`` with
``R = capacity_frames - sink_frames``. Writing a new block overwrites exactly the frames the
official rule evicts, so nothing is ever moved. Attention does not depend on the order of the
keys (no mask; each key carries its own RoPE position), so the outputs equal the official ones
up to float summation order. :meth:`KVCache.ordered` maps the slots back to the official order
(golden comparison of layer-0 K/V). ``g``/``l`` are still tracked with the official formulas
(``trace``), as Python ints: reading them never syncs a device.

Shapes: while the cache fills, a call attends the prefix ``[0, l')`` (one shape per fill length);
once ``l' == C`` every call attends the whole buffer: static shapes, so a compiled layer never
recompiles. Slot indices of a call live on the device (cached per slot pattern, built from device
ops), so writing them (``index_copy_`` inside the layer) needs no host->device copy.

Worked example (golden set A ``rolling_sink``: 12 tokens/frame, window 7 frames, sink 1, blocks
of 3): blocks 0 and 1 fill frame slots 0-5; block 2 (frames 6-8) goes to slots 6, 1, 2, replacing
frames 1-2 (the official rule drops them too); the cache holds frames {0, 3..8}; ``ordered`` gives
slots 0, 3, 4, 5, 6, 1, 2 = frames 0, 3, 4, 5, 6, 7, 8 as the official buffer.

KV re-cache (``StreamPipeline.recache``) needs the clean latents of the window's frames: a
:class:`LatentRing` keeps them with the same frame -> slot mapping, and :meth:`KVCache.recache_groups`
says which frames to re-run, grouped by the block that made them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


class CacheFullError(RuntimeError):
    """The global (non-rolling) cache cannot hold the next block; use a rolling window."""


@dataclass
class CacheView:
    """What one model call needs per layer: the attended K/V (views of the buffers) and the write slots.

    ``slots`` [n] long on the device: positions inside ``k[i]``/``v[i]`` that receive this call's tokens.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    slots: torch.Tensor


class KVCache:
    """Per-layer k, v ``[B, C, heads, head_dim]`` (separate tensors); keys are stored AFTER RoPE."""

    def __init__(self, num_layers: int, batch: int, capacity_frames: int, tokens_per_frame: int,
                 num_heads: int, head_dim: int, rolling: bool, sink_frames: int = 0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        assert rolling or sink_frames == 0, "sink frames need a rolling window"
        assert sink_frames < capacity_frames, f"sink {sink_frames} >= capacity {capacity_frames} frames"
        self.tokens_per_frame = tokens_per_frame
        self.capacity_frames = capacity_frames
        self.capacity = capacity_frames * tokens_per_frame  # C (tokens)
        self.rolling = rolling
        self.sink_frames = sink_frames
        self.sink_tokens = sink_frames * tokens_per_frame  # K
        self.device = torch.device(device)
        shape = (batch, self.capacity, num_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._tok = torch.arange(self.capacity, device=device).view(capacity_frames, tokens_per_frame)
        self._frames = torch.arange(capacity_frames, device=device)
        self._slot_index: dict[tuple[int, ...], torch.Tensor] = {}
        self._frame_index: dict[tuple[int, ...], torch.Tensor] = {}
        self.trace: list[dict[str, int]] | None = None  # set to [] to record every call
        self.reset()

    def reset(self) -> None:
        """Forget everything (indices only; stale slots are never read). RoPE positions restart at 0."""
        self.global_end = 0
        self.local_end = 0
        self.frame_base = 0  # absolute frame that has RoPE frame position 0 (moves on rebase)
        self._last: CacheView | None = None

    # -- geometry (absolute frame <-> slot) ------------------------------------------------
    def frame_slot(self, frame: int) -> int:
        """Home slot (in frames) of absolute frame ``frame``."""
        S = self.sink_frames
        return frame if frame < S else S + (frame - S) % (self.capacity_frames - S)

    def window_frames(self) -> list[int]:
        """Absolute frames the cache holds now, chronological (= the official physical order)."""
        end, valid = self.global_end // self.tokens_per_frame, self.local_end // self.tokens_per_frame
        if valid == end:
            return list(range(end))
        S = self.sink_frames
        return list(range(S)) + list(range(end - (valid - S), end))

    def rope_positions(self, frames: list[int]) -> list[int]:
        """RoPE frame positions of absolute frames (what their keys were rotated with)."""
        return [a - self.frame_base for a in frames]

    def slots(self, first_frame: int, count: int) -> torch.Tensor:
        """Token slot indices [count * tpf] on the device of absolute frames [first, first+count).

        Cached per slot pattern; built by device-side concatenation, never from host data.
        """
        key = tuple(self.frame_slot(a) for a in range(first_frame, first_frame + count))
        idx = self._slot_index.get(key)
        if idx is None:
            idx = torch.cat([self._tok[s] for s in key])
            self._slot_index[key] = idx
        return idx

    def frame_slots(self, first_frame: int, count: int) -> torch.Tensor:
        """Frame slot indices [count] on the device of absolute frames [first, first+count) (latent ring)."""
        key = tuple(self.frame_slot(a) for a in range(first_frame, first_frame + count))
        idx = self._frame_index.get(key)
        if idx is None:
            idx = torch.cat([self._frames[s:s + 1] for s in key])
            self._frame_index[key] = idx
        return idx

    def recache_groups(self, frames_per_block: int) -> list[tuple[int, int]]:
        """Non-sink frames of the window as (first frame, count) runs, one per block that wrote them,
        oldest first: what a KV re-cache re-runs (the oldest run can be a block's tail, when the window
        is not a multiple of the block or the sink cuts into block 0)."""
        groups: list[tuple[int, int]] = []
        for a in self.window_frames():
            if a < self.sink_frames:
                continue
            if groups and a // frames_per_block == groups[-1][0] // frames_per_block:
                groups[-1] = (groups[-1][0], groups[-1][1] + 1)
            else:
                groups.append((a, 1))
        return groups

    # -- one model call -----------------------------------------------------------------------
    def begin(self, current_start: int, num_new: int) -> CacheView:
        """Bookkeeping of one model call writing tokens [current_start, current_start + num_new)."""
        g, l, C = self.global_end, self.local_end, self.capacity
        tpf = self.tokens_per_frame
        assert current_start % tpf == 0 and num_new % tpf == 0, f"call [{current_start}, +{num_new}) not in frames"
        current_end = current_start + num_new
        evict = num_new + l - C if self.rolling and current_end > g and num_new + l > C else 0
        assert l - evict - self.sink_tokens >= 0 or not evict, f"window too small (l {l}, evict {evict})"
        new_l = l + (current_end - g) - evict
        if new_l > C:
            raise CacheFullError(
                f"KV cache full: needs {new_l} tokens, capacity {C} ({C // tpf} frames); "
                "use a rolling window (local_attn_size) or a larger global_cache_frames")
        assert new_l - num_new >= 0, f"call [{current_start}, {current_end}) is before the cache start"
        if self.trace is not None:
            self.trace.append(dict(current_start=current_start, global_end_before=g, local_end_before=l,
                                   global_end_after=current_end, local_end_after=new_l))
        self.global_end, self.local_end = current_end, new_l
        slots = self.slots(current_start // tpf, num_new // tpf)
        if new_l < C:  # filling: valid slots are the prefix [0, l')
            view = CacheView([k[:, :new_l] for k in self.k], [v[:, :new_l] for v in self.v], slots)
        else:
            view = CacheView(self.k, self.v, slots)
        self._last = view
        return view

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Eager helper: store the last call's roped keys and values [B, n, heads, head_dim] of one layer."""
        assert self._last is not None, "begin() first"
        self._last.k[layer].index_copy_(1, self._last.slots, k)
        self._last.v[layer].index_copy_(1, self._last.slots, v)

    def ordered(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Valid K/V of one layer in the official physical order (sink, then chronological)."""
        frames = self.window_frames()
        if not frames:
            return self.k[layer][:, :0], self.v[layer][:, :0]
        idx = torch.cat([self._tok[self.frame_slot(a)] for a in frames])
        return self.k[layer].index_select(1, idx), self.v[layer].index_select(1, idx)

    def rebase(self, delta_frames: int, rotate_: Callable[[torch.Tensor, int], None]) -> None:
        """Shift RoPE positions by -delta: every cached key rotated in place, ``frame_base += delta``.

        ``rotate_(k, d)`` rotates keys in place by d frame positions (:meth:`RopeTable.rotate_frames_`).
        The whole buffer is rotated (stale slots too, they are never read): fixed shapes, no bookkeeping.
        """
        for k in self.k:
            rotate_(k, -delta_frames)
        self.frame_base += delta_frames

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k) + sum(t.nbytes for t in self.v)


class LatentRing:
    """Clean latents ``[B, capacity_frames, C, h, w]`` of the frames the KV cache holds, at the same frame slots.

    Written by every context pass (the block's clean x0, exactly what that pass fed the model, in the model
    dtype); read by a KV re-cache. Stale slots are never read, so ``KVCache.reset`` needs no counterpart.
    At 480x832 with window 21 it is 21 x 16 x 60 x 104 values (4 MB in bf16).
    """

    def __init__(self, kv: KVCache, batch: int, channels: int, h: int, w: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.kv = kv
        self.x = torch.zeros(batch, kv.capacity_frames, channels, h, w, dtype=dtype, device=device)

    def write(self, first_frame: int, x0: torch.Tensor) -> None:
        """Latents [B, F, C, h, w] of absolute frames [first_frame, first_frame + F) (device index, no sync)."""
        self.x.index_copy_(1, self.kv.frame_slots(first_frame, x0.shape[1]), x0.to(self.x.dtype))

    def read(self, first_frame: int, count: int) -> torch.Tensor:
        """Latents [B, count, C, h, w] of absolute frames [first_frame, first_frame + count)."""
        return self.x.index_select(1, self.kv.frame_slots(first_frame, count))

    def nbytes(self) -> int:
        return self.x.nbytes


class CrossAttnCache:
    """Text keys/values, one ``[B, text_len, heads, head_dim]`` tensor per layer, filled on a prompt change.

    Reset it alone when the prompt changes: the self-attention cache (the video so far) stays.
    The buffers are static (filled with ``copy_``), so compiled layers see the same tensors.
    """

    def __init__(self, num_layers: int, batch: int, text_len: int, num_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch, text_len, num_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.is_init = False

    def reset(self) -> None:
        self.is_init = False

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k) + sum(t.nbytes for t in self.v)
