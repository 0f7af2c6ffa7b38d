"""Text encoder: a typical 20-token prompt padded to 512 (the official path) vs real tokens only.

Two parts, one run:

1. Wall time on this machine, side by side: a random UMT5 at the real umt5-xxl width (d_model
   4096, d_ff 10240, 64 heads) with fewer layers (default 2 of 24: the full 5.7 B parameters do
   not fit a CPU benchmark), run the way ``TextEncoder`` did before (all 512 positions, padding
   masked, rows zeroed after) and the way it does now (``encode_ids``: the real tokens only).
   Encoder time is linear in the layer count, so the 24-layer figure is printed as an estimate.
2. TFLOP per prompt at the real encoder (24 layers, vocab 256384), counted with
   ``torch.utils.flop_counter`` on the meta device (no weights, no time): 512 vs the real tokens.
   The padding mask only adds elementwise work, which the counter leaves out, as it should.

    python benchmarks/bench_text_encoder.py                 # bf16, 2 layers, 5 repeats
    python benchmarks/bench_text_encoder.py --dtype fp32 --layers 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sfbridge.model.t5 import TEXT_LEN, TextEncoder

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)  # umt5-xxl encoder
EOS, PAD = 1, 0


def umt5_config(vocab_size: int, d_model: int, d_ff: int, num_heads: int, num_layers: int, d_kv: int | None = None):
    from transformers import UMT5Config

    return UMT5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_kv or d_model // num_heads, d_ff=d_ff,
                      num_layers=num_layers, num_heads=num_heads, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                      is_encoder_decoder=False)


def prompt_ids(n_real: int, text_len: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, text_len] ids/mask as the tokenizer gives them: n_real - 1 word pieces, EOS, then padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((1, text_len), PAD, dtype=torch.long)
    ids[0, : n_real - 1] = torch.randint(3, vocab, (n_real - 1,), generator=g)
    ids[0, n_real - 1] = EOS
    return ids, (ids != PAD).long()


def padded_path(enc: TextEncoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What encode_ids did before: every position through the encoder, padding rows zeroed after."""
    with torch.no_grad():
        x = enc.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return x * mask[..., None].to(x.dtype)


def time_paths(enc: TextEncoder, ids: torch.Tensor, mask: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms of both paths, interleaved so load on a shared machine hits both alike; plus their max diff."""
    before, after = padded_path(enc, ids, mask), enc.encode_ids(ids, mask)  # warm-up, and the outputs
    t_before, t_after = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        padded_path(enc, ids, mask)
        t1 = time.perf_counter()
        enc.encode_ids(ids, mask)
        t_before.append(t1 - t0)
        t_after.append(time.perf_counter() - t1)
    return dict(before_ms=1e3 * statistics.median(t_before), after_ms=1e3 * statistics.median(t_after),
                max_diff=float((after.float() - before.float()).abs().max()),
                scale=float(before.float().abs().max()))


def count_tflop(tokens: int, cfg_kw: dict = XXL) -> float:
    """TFLOP of one encoder forward on [1, tokens] at ``cfg_kw``, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(**cfg_kw)).eval()
    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(input_ids=ids)  # no mask: .all() on a meta mask is data-dependent; it adds no matmul work
    return fc.get_total_flops() / 1e12


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20, help="real tokens of the prompt, EOS included [20]")
    ap.add_argument("--text-len", type=int, default=TEXT_LEN, help="padded length before [512]")
    ap.add_argument("--layers", type=int, default=2, help="encoder layers for the timing (real: 24) [2]")
    ap.add_argument("--d-model", type=int, default=XXL["d_model"])
    ap.add_argument("--d-ff", type=int, default=XXL["d_ff"])
    ap.add_argument("--heads", type=int, default=XXL["num_heads"])
    ap.add_argument("--vocab", type=int, default=512, help="timing model vocab (embedding size does not matter)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="bf16 is what the CPU placement runs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--no-flops", action="store_true", help="skip the meta-device count at the real config")
    a = ap.parse_args(argv)
    if not 1 <= a.tokens <= a.text_len:
        ap.error(f"--tokens must be in 1..{a.text_len}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers import UMT5EncoderModel

    cfg = umt5_config(a.vocab, a.d_model, a.d_ff, a.heads, a.layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = UMT5EncoderModel(cfg)
    enc = TextEncoder(model, tokenizer=None, text_len=a.text_len, dtype=DTYPES[a.dtype], cache_size=0)
    ids, mask = prompt_ids(a.tokens, a.text_len, a.vocab)
    print(f"random UMT5 encoder: d_model {a.d_model}, d_ff {a.d_ff}, {a.heads} heads, {a.layers} layer(s) "
          f"(umt5-xxl: 24), {a.dtype}, CPU, {torch.get_num_threads()} threads, median of {a.repeats}")
    r = time_paths(enc, ids, mask, a.repeats)
    per24 = 24 / a.layers
    print(f"before: padded to {a.text_len:3d} tokens  {r['before_ms']:9.1f} ms  (24 layers ~ "
          f"{r['before_ms'] * per24 / 1e3:6.2f} s, estimate)")
    print(f"after:  real tokens only {a.tokens:3d}  {r['after_ms']:9.1f} ms  (24 layers ~ "
          f"{r['after_ms'] * per24 / 1e3:6.2f} s, estimate)")
    print(f"speed-up: {r['before_ms'] / r['after_ms']:.1f}x   max |after - before| on the rows: "
          f"{r['max_diff']:.2e} (outputs up to {r['scale']:.2f}, {a.dtype})")
    if not a.no_flops:
        big, small = count_tflop(a.text_len), count_tflop(a.tokens)
        print(f"umt5-xxl encoder (24 layers, d_model 4096, d_ff 10240, 64 heads), flop_counter on meta: "
              f"{a.text_len} tokens {big:.3f} TFLOP, {a.tokens} tokens {small:.3f} TFLOP, ratio {big / small:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
