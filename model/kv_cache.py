"""Self-attention KV cache (global or rolling window with attention sink) and cross-attention cache.

Mirrors ``pipeline/causal_inference.py:_initialize_kv_cache/_initialize_crossattn_cache`` and the
cache logic inside ``wan/modules/causal_model.py:CausalWanSelfAttention.forward``. One object
holds all layers: every layer sees exactly the same index evolution, so the indices are kept
once and the per-call bookkeeping (eviction, slot selection) runs once per model call in
:meth:`KVCache.begin` instead of once per layer.

Indices (token units, Python ints so reading them never syncs a GPU):
- ``global_end``: absolute token position (since the start of the stream) past the last write;
- ``local_end``: slot index past the last valid entry of the physical buffer.

Rule for a call writing ``n`` tokens at absolute ``[s, e = s + n)`` with capacity ``C`` and
``K = sink_frames * tokens_per_frame``:
- Eviction only in rolling mode, only when the call extends the stream (``e > global_end``,
  i.e. the first call of a new block) and only when ``n + local_end > C``:
  ``evict = n + local_end - C``, ``keep = local_end - evict - K``; slots ``[K, K+keep)`` get
  slots ``[K+evict, K+evict+keep)``. The sink slots ``[0, K)`` never move.
- ``local_end' = local_end + (e - global_end) - evict`` (``evict`` = 0 otherwise). Later
  denoising calls and the context pass of the same block have ``e == global_end`` so they
  overwrite the same slots ``[local_end' - n, local_end')``.
- Attention covers ``[max(0, local_end' - A), local_end')`` with ``A`` = capacity.

Worked example (golden set A ``rolling_sink``: 12 tokens/frame, window 7 frames = 84 slots,
sink 1 frame = 12 slots, blocks of 3 frames = 36 tokens):
block 0: l 0 -> 36; block 1: l 36 -> 72; block 2 first call: 36 + 72 > 84, evict 24,
keep 72 - 24 - 12 = 36: slots [12, 48) <- [36, 72) (frames 3-5 move next to the sink, frames
1-2 are dropped), l' = 72 + 36 - 24 = 84, block 2 is written to [48, 84). Its 3 later denoise
calls and the context pass rewrite [48, 84) without evicting. At 480x832 with window 12 and
no sink: block 4 evicts 4680 tokens (frames 0-2) and sees frames 3-14.

Buffers are preallocated and never grow; ``reset()`` only zeroes the indices (like official).
"""

from __future__ import annotations

import torch


class CacheFullError(RuntimeError):
    """The global (non-rolling) cache cannot hold the next block; use a rolling window."""


class KVCache:
    """k, v ``[layers, B, C, heads, head_dim]``; keys are stored AFTER RoPE."""

    def __init__(self, num_layers: int, batch: int, capacity_frames: int, tokens_per_frame: int,
                 num_heads: int, head_dim: int, rolling: bool, sink_frames: int = 0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        assert rolling or sink_frames == 0, "sink frames need a rolling window"
        assert sink_frames < capacity_frames, f"sink {sink_frames} >= capacity {capacity_frames} frames"
        self.tokens_per_frame = tokens_per_frame
        self.capacity = capacity_frames * tokens_per_frame  # C (tokens)
        self.attn_tokens = self.capacity  # A: official max_attention_size (== C at 480x832)
        self.rolling = rolling
        self.sink_tokens = sink_frames * tokens_per_frame  # K
        shape = (num_layers, batch, self.capacity, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.global_end = 0
        self.local_end = 0
        self._slots = (0, 0)
        self.trace: list[dict[str, int]] | None = None  # set to [] to record every call

    def reset(self) -> None:
        """Forget everything (indices only; stale slots are never read)."""
        self.global_end = 0
        self.local_end = 0
        self._slots = (0, 0)

    def begin(self, current_start: int, num_new: int) -> None:
        """Bookkeeping of one model call writing tokens [current_start, current_start + num_new)."""
        g, l, C, K = self.global_end, self.local_end, self.capacity, self.sink_tokens
        current_end = current_start + num_new
        evict = 0
        if self.rolling and current_end > g and num_new + l > C:
            evict = num_new + l - C
            keep = l - evict - K
            assert keep >= 0, f"window too small: keep {keep} (l {l}, evict {evict}, sink {K})"
            for layer in range(self.k.shape[0]):  # per layer: bounded temporary memory
                for buf in (self.k, self.v):
                    buf[layer, :, K:K + keep] = buf[layer, :, K + evict:K + evict + keep].clone()
        new_l = l + (current_end - g) - evict
        if new_l > C:
            raise CacheFullError(
                f"KV cache full: needs {new_l} tokens, capacity {C} ({C // self.tokens_per_frame} frames); "
                "use a rolling window (local_attn_size) or a larger global_cache_frames")
        assert new_l - num_new >= 0, f"call [{current_start}, {current_end}) is before the cache start"
        if self.trace is not None:
            self.trace.append(dict(current_start=current_start, global_end_before=g, local_end_before=l,
                                   global_end_after=current_end, local_end_after=new_l))
        self._slots = (new_l - num_new, new_l)
        self.global_end = current_end
        self.local_end = new_l

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this call's roped keys and values [B, n, heads, head_dim] of one layer."""
        s, e = self._slots
        assert k.shape[1] == e - s, f"k {tuple(k.shape)} does not fit slots [{s}, {e})"
        self.k[layer, :, s:e] = k
        self.v[layer, :, s:e] = v

    def window(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values the current call attends to: slots [max(0, l - A), l)."""
        lo = max(0, self.local_end - self.attn_tokens)
        return self.k[layer, :, lo:self.local_end], self.v[layer, :, lo:self.local_end]

    def valid(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer, :, : self.local_end], self.v[layer, :, : self.local_end]

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class CrossAttnCache:
    """Text keys/values per layer ``[layers, B, text_len, heads, head_dim]``, filled on first use.

    Reset it alone when the prompt changes: the self-attention cache (the video so far) stays.
    """

    def __init__(self, num_layers: int, batch: int, text_len: int, num_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (num_layers, batch, text_len, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.is_init = False

    def reset(self) -> None:
        self.is_init = False

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
