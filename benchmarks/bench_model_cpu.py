"""CPU benchmark of the tiny model, with the counters that prove the GPU path before a GPU run.

Prints, for the tiny config on CPU:
- eager vs compiled blocks/s (ratio) and the recompiles after warm-up (target 0);
- serial vs overlapped blocks/s (ratio), from benchmarks/bench_overlap.py when it is there;
- blocking host<->device copies per steady-state block (target 0), counted with the pipeline on
  the meta device standing in for the GPU (model/budget.py);
- the per-block time and cache bytes at block 10 vs block 500 (targets: ratio 1.00 +- 0.05,
  bytes exactly equal);
- a meta-device count at the real config (480x832, 1.3B) for each preset: TFLOP, kernels and
  non-matmul GB per steady-state block, and the GPU memory sum (~1-2 minutes; --no-meta skips).

    python benchmarks/bench_model_cpu.py [--blocks 500] [--threads 1] [--json out.json]
    python benchmarks/bench_model_cpu.py --quick     # seconds: what tests/test_model_bench.py runs
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from sfbridge.model import budget, presets
from sfbridge.model.config import ModelConfig, StreamConfig
from sfbridge.model.pipeline import StreamPipeline
from sfbridge.model.weights import random_model

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=500, help="late point of the block-10-vs-late comparison")
    ap.add_argument("--window", type=int, default=9)
    ap.add_argument("--sink", type=int, default=0)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default); 1 = stable timings")
    ap.add_argument("--samples", type=int, default=50, help="blocks timed at each point (median)")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled run")
    ap.add_argument("--no-meta", action="store_true", help="skip the real-config meta-device count per preset")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: 64x32, 14 blocks, 3 samples, compile backend 'eager', no real-config count")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.blocks, a.samples, a.width, a.height, a.window = min(a.blocks, 14), min(a.samples, 3), 64, 32, 6
        a.compile_backend, a.no_meta = "eager", True
    return a


def tiny_pipeline(a: argparse.Namespace, compile: Any = None) -> StreamPipeline:
    """The tiny generator's DiT on a rolling window, prompt set; compiled with backend ``compile`` if given."""
    from sfbridge.generators.tiny import TINY_CONFIG, text_embedding

    cfg = StreamConfig(latent_h=a.height // 8, latent_w=a.width // 8, local_attn_size=a.window, sink_size=a.sink)
    kw: dict[str, Any] = {}
    if compile is not None:
        if "compile" not in inspect.signature(StreamPipeline).parameters:
            raise RuntimeError("this StreamPipeline has no compile option")
        kw = dict(compile=True, compile_backend=compile)
    pipe = StreamPipeline(random_model(TINY_CONFIG, seed=0), cfg, seed=0, **kw)
    pipe.set_prompt_embeds(text_embedding("a benchmark", TINY_CONFIG.text_len, TINY_CONFIG.text_dim))
    return pipe


def fill_blocks(pipe: StreamPipeline) -> int:
    """Blocks until the window is full and the next block evicts (the steady state)."""
    return -(-pipe.cfg.cache_frames() // pipe.cfg.num_frame_per_block) + 1


def _median_ms(pipe: StreamPipeline, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        pipe.next_block()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def counting_backend(inner: str) -> Any:
    """model/counters.py's CountingBackend around ``inner`` (counts every graph compiled), else ``inner``."""
    try:
        from sfbridge.model.counters import CountingBackend
    except ImportError:
        return inner
    return CountingBackend(inner)


def compile_count(backend: Any) -> int:
    """Graphs compiled so far: the counting backend's own count, else dynamo's graph counter."""
    if hasattr(backend, "compiles"):
        return int(backend.compiles)
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def eager_vs_compiled(a: argparse.Namespace) -> dict[str, Any]:
    """Blocks/s eager and compiled in the steady state, and compiles during warm-up vs after it."""
    eager = tiny_pipeline(a)
    for _ in range(fill_blocks(eager)):
        eager.next_block()
    eager_ms = _median_ms(eager, a.samples)
    try:
        torch._dynamo.reset()
        backend = counting_backend(a.compile_backend)
        before = compile_count(backend)
        comp = tiny_pipeline(a, compile=backend)
        t0 = time.perf_counter()
        for _ in range(fill_blocks(comp)):
            comp.next_block()
        warmup_s = time.perf_counter() - t0
        warm = compile_count(backend)
        compiled_ms = _median_ms(comp, a.samples)
        comp.set_steps((1000, 500, 250))  # a step change and a prompt change must not recompile either
        comp.set_prompt_embeds(comp.prompt_embeds * 0.5)
        comp.next_block()
        after = compile_count(backend) - warm
    except Exception as e:  # noqa: BLE001 - reported, the other numbers still count
        return dict(eager_ms=eager_ms, compiled_error=f"{type(e).__name__}: {e}")
    return dict(eager_ms=eager_ms, compiled_ms=compiled_ms, compiled_over_eager=eager_ms / compiled_ms,
                compiles_during_warmup=warm - before, recompiles_after_warmup=after, warmup_s=warmup_s,
                backend=a.compile_backend)


def serial_vs_overlapped(a: argparse.Namespace) -> dict[str, Any]:
    """Delegates to benchmarks/bench_overlap.py (the overlapped decode's own benchmark) when present."""
    path = HERE / "bench_overlap.py"
    if not path.is_file():
        return dict(overlap_error="benchmarks/bench_overlap.py is not there yet")
    spec = importlib.util.spec_from_file_location("bench_overlap", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_overlap"] = mod
    spec.loader.exec_module(mod)
    fn = getattr(mod, "measure", None)
    if fn is None:
        return dict(overlap_error="bench_overlap.py has no measure() function")
    return dict(fn(quick=a.quick))


def blocking_copies(a: argparse.Namespace) -> dict[str, Any]:
    """Host<->device copies of one steady-state tiny block with the meta device as the 'GPU'."""
    from sfbridge.generators.tiny import TINY_CONFIG

    cfg = StreamConfig(latent_h=a.height // 8, latent_w=a.width // 8, local_attn_size=a.window, sink_size=a.sink)
    pipe = budget.meta_pipeline(TINY_CONFIG, cfg, torch.float32)
    try:  # the compile agent's counter (model/counters.py), beside model/budget.py's own count
        from sfbridge.model.counters import TransferCounter
    except ImportError:
        TransferCounter = None  # noqa: N806
    transfers = TransferCounter() if TransferCounter else None
    work = budget.count_dit_block(pipe, tuple(cfg.denoising_step_list), also=transfers)
    res = dict(host_copies_per_block=work.h2d_copies, blocking_copies_per_block=work.blocking_copies,
               kernels_per_block=work.kernels)
    if transfers is not None:
        res.update(counters_blocking=transfers.blocking, counters_syncs=transfers.syncs,
                   counters_non_blocking=transfers.non_blocking)
    return res


def late_vs_early(a: argparse.Namespace) -> dict[str, Any]:
    """Per-block time and cache bytes at block 10 and at block ``--blocks`` (endless = no growth)."""
    pipe = tiny_pipeline(a)
    while pipe.block_index < 10:
        pipe.next_block()
    early_ms, early_bytes = _median_ms(pipe, a.samples), pipe.kv.nbytes() + pipe.cross.nbytes()
    while pipe.block_index < a.blocks:
        pipe.next_block()
    late_at = pipe.block_index
    late_ms, late_bytes = _median_ms(pipe, a.samples), pipe.kv.nbytes() + pipe.cross.nbytes()
    return dict(early_block=10, early_ms=early_ms, late_block=late_at, late_ms=late_ms,
                time_ratio=late_ms / early_ms, bytes_equal=late_bytes == early_bytes, cache_bytes=late_bytes)


def meta_presets(text_encoder_on_gpu: bool = False) -> dict[str, Any]:
    """Per preset at the real config: work of one steady-state block and the GPU memory sum."""
    out = {}
    for p in presets.PRESETS.values():
        b = budget.preset_budget(p, ModelConfig(), text_encoder_on_gpu=text_encoder_on_gpu)
        out[p.name] = dict(dit=b.dit.row(), decode=b.decode.row(), memory=b.memory, memory_total=b.memory_total,
                           top_bytes=b.dit.top_bytes)
    return out


def print_memory(rows: dict[str, Any]) -> None:
    """`sfbridge doctor`-style table: one line per memory item, one column per preset (GB)."""
    names = list(rows)
    items = list(next(iter(rows.values()))["memory"])
    print(f"{'GPU memory (GB)':24}" + "".join(f"{n:>10}" for n in names))
    for item in items:
        print(f"{item:24}" + "".join(f"{rows[n]['memory'][item] / 1e9:10.2f}" for n in names))
    print(f"{'total':24}" + "".join(f"{rows[n]['memory_total'] / 1e9:10.2f}" for n in names))
    fits = [n for n in names if rows[n]["memory_total"] < 22e9]  # 24 GB card minus context and allocator slack
    print(f"fits a 24 GB card (< 22 GB counted): {', '.join(fits) or 'none'}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"tiny model {a.width}x{a.height}, window {a.window} frames, sink {a.sink}, "
          f"{torch.get_num_threads()} threads")
    res: dict[str, Any] = {"args": {k: str(v) for k, v in vars(a).items()}}
    res["compile"] = c = eager_vs_compiled(a)
    if "compiled_error" in c:
        print(f"eager {1e3 / c['eager_ms']:.1f} blocks/s; compiled: {c['compiled_error']}")
    else:
        print(f"eager {1e3 / c['eager_ms']:.1f} blocks/s, compiled ({c['backend']}) {1e3 / c['compiled_ms']:.1f} "
              f"blocks/s, ratio {c['compiled_over_eager']:.2f}; compiles while the window fills "
              f"{c['compiles_during_warmup']} ({c['warmup_s']:.1f} s), recompiles after warm-up "
              f"{c['recompiles_after_warmup']} (target 0)")
    res["overlap"] = o = serial_vs_overlapped(a)
    print(f"serial vs overlapped: {o.get('overlap_error') or json.dumps(o)}")
    res["copies"] = cp = blocking_copies(a)
    print(f"host<->device copies per steady-state block {cp['host_copies_per_block']}, blocking "
          f"{cp['blocking_copies_per_block']} (target 0), kernels {cp['kernels_per_block']}"
          + (f"; model/counters.py: blocking {cp['counters_blocking']}, scalar reads "
             f"{cp['counters_syncs']} (target 0 and 0)" if "counters_blocking" in cp else ""))
    res["endless"] = e = late_vs_early(a)
    print(f"block {e['early_block']:4d}: {e['early_ms']:7.2f} ms/block, block {e['late_block']:4d}: "
          f"{e['late_ms']:7.2f} ms/block (median of {a.samples}); time ratio {e['time_ratio']:.3f} "
          f"(target 1.00 +- 0.05), bytes equal: {e['bytes_equal']}")
    if not a.no_meta:
        t0 = time.perf_counter()
        res["presets"] = rows = meta_presets()
        took = time.perf_counter() - t0
        print(f"real config 480x832, bf16, per steady-state block (meta-device count, {took:.0f} s):")
        print(f"{'preset':9} {'window':>7} {'steps':>5} {'decoder':>7} {'DiT TFLOP':>9} {'attn %':>6} "
              f"{'kernels':>7} {'non-mm GB':>9} {'dec TFLOP':>9} {'dec GB':>7}")
        for name, r in rows.items():
            p, d, v = presets.get(name), r["dit"], r["decode"]
            print(f"{name:9} {f'{p.window}+{p.sink}':>7} {len(p.steps):5} {p.decoder:>7} {d['tflop']:9.1f} "
                  f"{100 * d['attention_share']:6.0f} {d['kernels']:7} {d['non_matmul_gb']:9.0f} {v['tflop']:9.1f} "
                  f"{v['non_matmul_gb']:7.1f}")
        print_memory(rows)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str))
    return 0 if e["bytes_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
