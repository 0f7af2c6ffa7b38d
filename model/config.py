"""Configuration of the causal Wan2.1 DiT and of the streaming rollout.

Mirrors the constructor defaults of ``wan/modules/causal_model.py:CausalWanModel`` (with the
values of ``Wan2.1-T2V-1.3B/config.json``) and the inference settings of
``configs/self_forcing_dmd.yaml`` / ``pipeline/causal_inference.py`` in the official
Self-Forcing code. Golden vector sets describe their tiny configs in ``metadata.json``;
``from_golden_metadata`` reads every size from there, nothing is hard-coded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of CausalWanModel. Defaults = Wan2.1-T2V-1.3B."""

    dim: int = 1536
    num_heads: int = 12  # head_dim 128: RoPE splits it 44/42/42 real dims (frame/row/col)
    num_layers: int = 30
    ffn_dim: int = 8960
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w): a token is one 2x2 latent patch
    in_dim: int = 16  # latent channels of the Wan2.1 VAE
    out_dim: int = 16
    text_dim: int = 4096  # UMT5-XXL hidden size
    text_len: int = 512  # context is zero-padded to this many tokens and attended UNMASKED
    freq_dim: int = 256  # sinusoidal timestep features (cos half first)
    eps: float = 1e-6  # every norm (LayerNorm and RMSNorm)
    qk_norm: bool = True  # RMSNorm over the full dim of q and k, before the head split
    cross_attn_norm: bool = True  # norm3: the only affine LayerNorm, before cross-attention

    def __post_init__(self) -> None:
        assert self.dim % self.num_heads == 0, f"dim {self.dim} not divisible by heads {self.num_heads}"
        assert self.head_dim % 2 == 0, f"head_dim {self.head_dim} must be even for RoPE"

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_golden_metadata(cls, meta: dict[str, Any]) -> ModelConfig:
        m = meta["model_config"]
        assert m.get("model_type", "t2v") == "t2v", f"only t2v is supported, got {m.get('model_type')}"
        return cls(
            dim=m["dim"], num_heads=m["num_heads"], num_layers=m["num_layers"], ffn_dim=m["ffn_dim"],
            patch_size=tuple(m["patch_size"]), in_dim=m["in_dim"], out_dim=m["out_dim"],
            text_dim=m["text_dim"], text_len=m["text_len"], freq_dim=m["freq_dim"], eps=m["eps"],
            qk_norm=m["qk_norm"], cross_attn_norm=m["cross_attn_norm"],
        )


@dataclass(frozen=True)
class StreamConfig:
    """Block-wise rollout settings. Defaults = official inference at 480x832 (global cache)."""

    latent_h: int = 60  # 480 / 8
    latent_w: int = 104  # 832 / 8
    num_frame_per_block: int = 3  # latent frames denoised together (one "chunk")
    # Rolling window in latent frames, -1 = global cache (official default: never rolls).
    local_attn_size: int = -1
    sink_size: int = 0  # first frames that are never evicted (rolling mode only)
    # Global mode capacity in latent frames. Official allocates 32760 tokens = 21 frames * 1560
    # at 480x832 and crashes past it; a capacity in frames is the same thing at any resolution.
    global_cache_frames: int = 21
    timestep_shift: float = 5.0  # config model_kwargs (the wrapper default would be 8.0)
    denoising_step_list: tuple[float, ...] = (1000, 750, 500, 250)  # raw config values
    warp_denoising_step: bool = True  # map raw values through the shifted scheduler table
    context_noise: float = 0.0  # timestep of the extra cache-update pass on the clean block
    # RoPE frame positions: the official table has 1024 rows. When the next block would pass
    # rope_rebase_frames we rotate the cached keys back and restart positions at 0 (exact up
    # to float rounding; RoPE is relative). None = never rebase (error past max_rope_frames).
    max_rope_frames: int = 1024
    rope_rebase_frames: int | None = 1024
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        F = self.num_frame_per_block
        if self.local_attn_size != -1:
            assert self.local_attn_size >= F + self.sink_size, (
                f"local_attn_size {self.local_attn_size} < num_frame_per_block {F} + sink {self.sink_size}")
        else:
            assert self.sink_size == 0, "sink_size only makes sense with a rolling window"
        if self.rope_rebase_frames is not None:
            assert F <= self.rope_rebase_frames <= self.max_rope_frames, (
                f"rope_rebase_frames {self.rope_rebase_frames} must be in [{F}, {self.max_rope_frames}]")

    def tokens_per_frame(self, patch_size: tuple[int, int, int] = (1, 2, 2)) -> int:
        """Tokens of one latent frame: (H/ph)*(W/pw), 1560 at 480x832."""
        assert self.latent_h % patch_size[1] == 0 and self.latent_w % patch_size[2] == 0, (
            f"latent {self.latent_h}x{self.latent_w} not divisible by patch {patch_size}")
        return (self.latent_h // patch_size[1]) * (self.latent_w // patch_size[2])

    def cache_frames(self) -> int:
        """KV cache capacity in latent frames (window in rolling mode)."""
        return self.local_attn_size if self.local_attn_size != -1 else self.global_cache_frames

    @classmethod
    def from_golden_metadata(cls, meta: dict[str, Any], scenario: str, **overrides: Any) -> StreamConfig:
        sc = meta["scenarios"][scenario]
        h, w = meta["latent_hw"]
        kw: dict[str, Any] = dict(
            latent_h=h, latent_w=w, num_frame_per_block=meta["num_frame_per_block"],
            local_attn_size=sc["local_attn_size"], sink_size=sc["sink_size"],
            global_cache_frames=max(21, meta["num_latent_frames"]),
            timestep_shift=meta["timestep_shift"],
            denoising_step_list=tuple(meta["denoising_step_list_raw"]),
            warp_denoising_step=meta["warp_denoising_step"], context_noise=meta["context_noise"],
        )
        kw.update(overrides)
        return cls(**kw)
