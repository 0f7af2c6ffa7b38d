"""CPU benchmark of the tiny model: per-block time and cache bytes at block 10 vs block 500.

Shows that endless rolling-window generation neither slows down nor grows memory
(targets: time ratio 1.00 +- 0.05, bytes exactly equal). Runs in well under 2 minutes:

    python benchmarks/bench_model_cpu.py [--blocks 500] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sfbridge.model.config import StreamConfig
from sfbridge.model.pipeline import StreamPipeline
from sfbridge.model.weights import random_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=500)
    ap.add_argument("--window", type=int, default=9)
    ap.add_argument("--sink", type=int, default=0)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default); 1 = stable timings")
    ap.add_argument("--samples", type=int, default=50, help="blocks timed at each point (median)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from sfbridge.generators.tiny import TINY_CONFIG, text_embedding

    cfg = StreamConfig(latent_h=a.height // 8, latent_w=a.width // 8, local_attn_size=a.window, sink_size=a.sink)
    pipe = StreamPipeline(random_model(TINY_CONFIG, seed=0), cfg, seed=0)
    pipe.set_prompt_embeds(text_embedding("a benchmark", TINY_CONFIG.text_len, TINY_CONFIG.text_dim))

    def measure() -> tuple[float, int]:
        times = []
        for _ in range(a.samples):
            t0 = time.perf_counter()
            pipe.next_block()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3, pipe.kv.nbytes() + pipe.cross.nbytes()

    early_at = 10
    while pipe.block_index < early_at:
        pipe.next_block()
    early_ms, early_bytes = measure()
    while pipe.block_index < a.blocks:
        pipe.next_block()
    late_at = pipe.block_index
    late_ms, late_bytes = measure()
    print(f"tiny model {a.width}x{a.height} (latent {cfg.latent_h}x{cfg.latent_w}), window {a.window} frames, "
          f"sink {a.sink}, {pipe.num_steps} steps + context pass, {torch.get_num_threads()} threads")
    print(f"block {early_at:4d}: {early_ms:7.2f} ms/block (median of {a.samples}), cache {early_bytes} bytes")
    print(f"block {late_at:4d}: {late_ms:7.2f} ms/block (median of {a.samples}), cache {late_bytes} bytes")
    ratio = late_ms / early_ms
    print(f"time ratio {ratio:.3f} (target 1.00 +- 0.05), bytes equal: {late_bytes == early_bytes}")
    return 0 if late_bytes == early_bytes else 1


if __name__ == "__main__":
    raise SystemExit(main())
