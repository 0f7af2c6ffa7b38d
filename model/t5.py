"""UMT5-XXL text encoder (prompt -> [B, text_len, 4096] context), on transformers' UMT5.

Mirrors `wan/modules/t5.py` (`T5Encoder`, `umt5_xxl`), `wan/modules/tokenizers.py`
(`HuggingfaceTokenizer`, clean="whitespace") and `utils/wan_wrapper.py:WanTextEncoder`
(Self-Forcing commit 33593df). The math is transformers' `UMT5EncoderModel` (same as Wan's:
RMS pre-norm, no attention scaling, per-layer relative position bias, gated-GELU(tanh) FFN);
this file only maps the Wan checkpoint keys onto it, tokenizes like the official code, and
zeroes the padding rows (rows >= number of real tokens, EOS included) as WanTextEncoder does.

Only the real tokens are encoded: the official code runs all 512 positions (4.8 TFLOP per prompt
at XXL size) and then zeroes the padding rows, whose keys were masked out of every real token's
attention anyway. T5's relative position bias depends only on query-key offsets, so cutting the
batch to its longest prompt gives the same real rows up to float rounding, for ~20/512 of the work
on a typical prompt (benchmarks/bench_text_encoder.py). The returned context keeps the official
shape [B, text_len, dim] with zero rows, which is what the DiT's cross-attention expects.

Memory: the XXL encoder is 5.7 B params (11.4 GB in bf16). On a 24 GB card either keep it on
the CPU (`device="cpu"`: a prompt costs seconds, once) or run it on the GPU and `offload()` it
afterwards (`offload_after_encode=True`). An LRU cache keyed by the cleaned prompt text makes a
repeated prompt free.
"""

from __future__ import annotations

import html
import io
import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from .files import ModelFileError, load_strict, read_state_dict

log = logging.getLogger("sfbridge.model.t5")

TEXT_LEN = 512  # official seq_len: every prompt is padded/truncated to 512 tokens


def clean_prompt(text: str) -> str:
    """Official clean="whitespace": ftfy.fix_text, html.unescape twice, strip, collapse whitespace."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def load_tokenizer(path: str | os.PathLike):
    """The `google/umt5-xxl` tokenizer folder, local files only (never the hub)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"{path}: tokenizer folder not found")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


# Wan T5Encoder key -> transformers UMT5EncoderModel key (N = layer index)
_BLOCK_MAP = {
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm1.weight": "layer.0.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
}


def wan_t5_to_hf(sd: dict[str, torch.Tensor], source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Rename a `models_t5_umt5-xxl-enc-bf16.pth` state dict to UMT5EncoderModel keys."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = v  # tied, one tensor
        elif k == "norm.weight":
            out["encoder.final_layer_norm.weight"] = v
        elif k.startswith("blocks.") and k.split(".", 2)[2] in _BLOCK_MAP:
            _, n, rest = k.split(".", 2)
            out[f"encoder.block.{n}.{_BLOCK_MAP[rest]}"] = v
        elif k.startswith("pos_embedding."):
            raise ModelFileError(f"{source}: key {k!r}: shared position bias (shared_pos=True) is not UMT5")
        else:
            raise ModelFileError(f"{source}: unexpected key {k!r} for a Wan UMT5 encoder")
    return out


def umt5_config_from_wan(sd: dict[str, torch.Tensor], eps: float = 1e-6, max_dist: int = 128, source: str = ""):
    """UMT5Config from tensor shapes (vocab, dim, heads, ffn, layers); eps/max_dist are not in the file."""
    from transformers import UMT5Config

    for k in ("token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.pos_embedding.embedding.weight"):
        if k not in sd:
            raise ModelFileError(f"{source}: missing key {k!r} (not a Wan UMT5 encoder state dict?)")
    vocab, dim = sd["token_embedding.weight"].shape
    dim_attn = sd["blocks.0.attn.q.weight"].shape[0]
    num_buckets, num_heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    num_layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    return UMT5Config(
        vocab_size=vocab,
        d_model=dim,
        d_kv=dim_attn // num_heads,
        d_ff=sd["blocks.0.ffn.fc1.weight"].shape[0],
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=max_dist,
        layer_norm_epsilon=eps,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",  # GELU tanh approximation, as Wan's T5 GELU
        is_encoder_decoder=False,
    )


def umt5_from_wan_state_dict(
    sd: dict[str, torch.Tensor],
    source: str = "<state dict>",
    eps: float = 1e-6,
    max_dist: int = 128,
    dtype: torch.dtype = torch.bfloat16,
):
    """UMT5EncoderModel holding the Wan weights; built on the meta device so 5.7 B params are not
    initialised randomly first, then the checkpoint tensors are assigned (strict, named errors)."""
    from transformers import UMT5EncoderModel

    cfg = umt5_config_from_wan(sd, eps, max_dist, source)
    hf = {k: v.to(dtype) for k, v in wan_t5_to_hf(sd, source).items()}
    emb = hf["shared.weight"]
    hf["encoder.embed_tokens.weight"] = emb  # keep the tie after the cast
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    load_strict(model, hf, source, assign=True)
    model.encoder.embed_tokens = model.shared
    return model.eval().requires_grad_(False)


_TINY_CORPUS = (
    "a quick brown fox jumps over the lazy dog. a cat sits on a warm mat in the sun. "
    "waves crash over dark rocks at sunset. a red car drives through a rainy neon city at night. "
    "snow falls on a quiet forest. a dragon flies above green mountains and a river."
)


def tiny_tokenizer(vocab_size: int = 64):
    """An in-memory sentencepiece tokenizer with UMT5's special ids (pad 0, eos 1, unk 2), for tests.

    Trained in ~0.02 s; wrapped in transformers' T5Tokenizer the same way the real folder loads.
    (`T5Tokenizer(vocab_file=...)` silently ignores the file in transformers 5, hence `vocab=`.)
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    buf = io.BytesIO()
    lines = [s.strip() for s in _TINY_CORPUS.split(".") if s.strip()] * 10
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    tok = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())], extra_ids=0)
    tok.sp_model_proto = buf.getvalue()  # lets callers save a spiece.model folder
    return tok


class TextEncoder:
    """Prompts -> zero-padded context [B, text_len, dim] for the generator's cross-attention.

        enc = TextEncoder.from_wan_files(t5_pth, tokenizer_dir, device="cuda", offload_after_encode=True)
        ctx = enc.encode(["a cat surfing"])      # [1, 512, 4096], dtype enc.dtype, on enc.out_device

    `device`: where the encoder runs ("cpu" keeps 11 GB off a 24 GB card). `out_device`: where
    embeddings are returned and cached (default: `device`). `cache_size`: LRU entries (0 = off).
    """

    def __init__(
        self,
        model,
        tokenizer,
        text_len: int = TEXT_LEN,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        out_device: str | torch.device | None = None,
        cache_size: int = 32,
        offload_after_encode: bool = False,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.device = torch.device(device)
        self.dtype = dtype
        self.out_device = torch.device(out_device) if out_device is not None else self.device
        self.cache_size = cache_size
        self.offload_after_encode = offload_after_encode
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # encode() may run on a prefetch thread and the engine thread
        self.encoder_calls = 0  # forward passes actually run (the LRU cache skips them)
        self.model.to(device=self.device, dtype=dtype)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    # -- constructors ----------------------------------------------------------------------

    @classmethod
    def from_wan_files(
        cls, t5_path: str | os.PathLike, tokenizer_dir: str | os.PathLike, eps: float = 1e-6, max_dist: int = 128, **kw
    ) -> TextEncoder:
        """`models_t5_umt5-xxl-enc-bf16.pth` (or .safetensors, same keys) + `google/umt5-xxl/`."""
        sd = read_state_dict(t5_path)
        dtype = kw.get("dtype", torch.bfloat16)
        model = umt5_from_wan_state_dict(sd, str(t5_path), eps, max_dist, dtype)
        return cls(model, load_tokenizer(tokenizer_dir), **kw)

    @classmethod
    def from_pretrained_dir(
        cls, text_encoder_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, **kw
    ) -> TextEncoder:
        """A diffusers-format `text_encoder/` folder (config.json + safetensors), local files only."""
        from transformers import UMT5EncoderModel

        model = UMT5EncoderModel.from_pretrained(
            str(text_encoder_dir), local_files_only=True, dtype=kw.get("dtype", torch.bfloat16)
        )
        return cls(model, load_tokenizer(tokenizer_dir), **kw)

    @classmethod
    def tiny_random(
        cls,
        seed: int = 0,
        dim: int = 32,
        text_len: int = 16,
        vocab: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        **kw,
    ) -> TextEncoder:
        """Seeded random tiny UMT5 + in-memory sentencepiece tokenizer (tests, the tiny generator)."""
        from transformers import UMT5Config, UMT5EncoderModel

        cfg = UMT5Config(
            vocab_size=vocab,
            d_model=dim,
            d_kv=dim // num_heads,
            d_ff=dim * 2,
            num_layers=num_layers,
            num_heads=num_heads,
            relative_attention_num_buckets=32,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = UMT5EncoderModel(cfg)
        kw.setdefault("dtype", torch.float32)
        return cls(model, tiny_tokenizer(vocab), text_len=text_len, **kw)

    # -- memory ----------------------------------------------------------------------------

    def offload(self) -> None:
        """Move the encoder to CPU RAM and release its GPU memory (cached prompts stay usable)."""
        self.model.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _onload(self) -> None:
        p = next(self.model.parameters())
        if p.device != self.device:
            self.model.to(self.device)

    # -- encoding --------------------------------------------------------------------------

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> cleaned -> ids, mask [B, text_len] (EOS appended, pad 0, truncated to text_len)."""
        return self._tokenize_cleaned([clean_prompt(p) for p in prompts])

    def _tokenize_cleaned(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Already-cleaned texts -> ids, mask. Cleaning is not idempotent (html.unescape twice per
        pass: "&amp;amp;amp;" -> "&amp;" -> "&"), so it must run exactly once, as in the official code."""
        out = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return out.input_ids, out.attention_mask

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L] right-padded ids/mask -> [B, L, dim]; rows at or after the mask sum are exactly 0.

        The encoder sees only [B, longest real length]: padding to L changes nothing in the real
        rows (see module docstring) and costs ~L / n times the work.
        """
        assert ids.shape == mask.shape and ids.ndim == 2, f"ids {tuple(ids.shape)} / mask {tuple(mask.shape)}"
        B, L = ids.shape
        seq_lens = mask.gt(0).sum(dim=1)
        real = torch.arange(L) < seq_lens[:, None].cpu()  # [B, L]
        assert torch.equal(mask.gt(0).cpu(), real), "mask must be right-padded (real tokens first, then padding)"
        n = max(int(seq_lens.max()), 1)
        self._onload()
        self.encoder_calls += 1
        h = self.model(input_ids=ids[:, :n].to(self.device),
                       attention_mask=mask[:, :n].to(self.device)).last_hidden_state  # [B, n, dim]
        x = h.new_zeros(B, L, h.shape[-1])  # WanTextEncoder: padding rows are zero, not masked later
        x[:, :n] = h.masked_fill(~real[:, :n, None].to(h.device), 0.0)  # shorter prompts of a batch
        if self.offload_after_encode:
            x = x.to(self.out_device)
            self.offload()
        return x

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> [B, text_len, dim] (dtype self.dtype, on out_device); repeated prompts hit the LRU.

        Thread-safe: a prompt can be encoded ahead of time on a worker thread while the generator
        runs; a second caller of the same prompt waits for that result instead of encoding again.
        """
        assert isinstance(prompts, (list, tuple)), f"prompts must be a list of str, got {type(prompts).__name__}"
        with self._lock:
            return self._encode(prompts)

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        keys = [clean_prompt(p) for p in prompts]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        fresh: dict[str, torch.Tensor] = {}
        if todo:
            ids, mask = self._tokenize_cleaned(todo)  # todo holds cleaned keys: clean once only
            out = self.encode_ids(ids, mask).to(self.out_device)
            lens = mask.gt(0).sum(dim=1).tolist()
            # the LRU keeps the real rows only ([n, dim], not [text_len, dim]: ~25x less at 20 tokens)
            fresh = {k: out[i, :n].clone() for i, (k, n) in enumerate(zip(todo, lens, strict=True))}
            log.debug("encoded %d prompt(s), %d from cache", len(todo), len(keys) - len(todo))
        rows = []
        for k in keys:
            e = fresh[k] if k in fresh else self.cache[k]
            if self.cache_size > 0:
                self.cache[k] = e
                self.cache.move_to_end(k)
            rows.append(e)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        x = rows[0].new_zeros(len(rows), self.text_len, rows[0].shape[-1])  # official shape, zero padding rows
        for i, e in enumerate(rows):
            x[i, : len(e)] = e
        return x
