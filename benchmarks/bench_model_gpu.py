"""GPU benchmark of the full 1.3B causal DiT with random weights (no download).

Reports ms per block (denoising steps + context pass), FPS (12 frames / block time), peak
memory, for global vs rolling cache, fp16/bf16 and SDPA vs flash-attn; then the streaming decode
per block (Wan VAE and TAEHV, random weights, 3 latent frames -> 12 uint8 frames on the host) and
the end-to-end block time (DiT on the rolling cache + decode), which is what `sfbridge serve
--model self-forcing` pays per block:

    python benchmarks/bench_model_gpu.py                    # 480x832, all combinations
    python benchmarks/bench_model_gpu.py --dtype bf16 --cache rolling --attn sdpa
    python benchmarks/bench_model_gpu.py --decoders taehv --no-e2e
    python benchmarks/bench_model_gpu.py --tiny --device cpu --blocks 3   # dry run on CPU

Exits with status 2 and a message when CUDA is requested but not available.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
from sfbridge.model.attention import flash_available, select_backend
from sfbridge.model.config import ModelConfig, StreamConfig
from sfbridge.model.pipeline import StreamPipeline
from sfbridge.model.taehv import TAEHVConfig, TAEHVDecoder
from sfbridge.model.vae import VAEConfig, WanVAEDecoder
from sfbridge.model.weights import random_model

from sfbridge.generators.streaming import FrameDecoder, TAEHVFrames, VAEFrames

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config (dry run of the script logic)")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp16"])
    ap.add_argument("--cache", nargs="+", choices=["global", "rolling"], default=["global", "rolling"])
    ap.add_argument("--attn", nargs="+", default=["sdpa", "flash"], help="attention backends to time")
    ap.add_argument("--window", type=int, default=21, help="rolling window in latent frames (serve's default)")
    ap.add_argument("--sink", type=int, default=3)
    ap.add_argument("--steps", type=int, nargs="+", default=[1000, 750, 500, 250])
    ap.add_argument("--blocks", type=int, default=7, help="blocks timed per configuration")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed blocks first (default: until the window is full, plus one evicting block)")
    ap.add_argument("--decoders", nargs="*", choices=["vae", "taehv"], default=["vae", "taehv"],
                    help="decoders to time per block (none: skip)")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end DiT + decode timing")
    a = ap.parse_args(argv)
    if a.height % 16 or a.width % 16:
        ap.error("height and width must be multiples of 16")
    if a.warmup is None:  # the steady state serve reaches after ~7 blocks at window 21
        a.warmup = -(-a.window // 3) + 1
    return a


def bench_one(model: torch.nn.Module, a: argparse.Namespace, cache: str, device: torch.device) -> dict:
    F = 3
    total = a.warmup + a.blocks
    cfg = StreamConfig(latent_h=a.height // 8, latent_w=a.width // 8,
                       local_attn_size=a.window if cache == "rolling" else -1,
                       sink_size=a.sink if cache == "rolling" else 0,
                       global_cache_frames=max(21, total * F), denoising_step_list=tuple(a.steps))
    pipe = StreamPipeline(model, cfg)
    mcfg = model.cfg
    pipe.set_prompt_embeds(torch.randn(1, mcfg.text_len, mcfg.text_dim, device=device))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(total):
        t0 = time.perf_counter()
        pipe.next_block()
        if cuda:
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    ms = 1e3 * sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    out = dict(ms=ms, fps=12 / (ms / 1e3), peak_gib=peak, cache_gib=(pipe.kv.nbytes() + pipe.cross.nbytes()) / 2**30)
    del pipe
    return out


def make_decoder(name: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> FrameDecoder:
    """Seeded random decoder (timing only); tiny = small widths for the CPU dry run."""
    torch.manual_seed(0)
    if name == "vae":
        vae = WanVAEDecoder(VAEConfig(dim=2, num_res_blocks=1) if tiny else VAEConfig())
        return VAEFrames(vae.to(device=device, dtype=dtype).eval().requires_grad_(False))
    taehv = TAEHVDecoder(TAEHVConfig(n_f=(8, 8, 8, 8)) if tiny else TAEHVConfig())
    return TAEHVFrames(taehv.to(device=device, dtype=dtype).eval().requires_grad_(False))


def _timed(fn, n: int, warmup: int, device: torch.device) -> float:  # noqa: ANN001
    """Mean ms of ``fn()`` over n calls after ``warmup`` calls (synchronised on CUDA)."""
    times = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * sum(times) / len(times)


def bench_decode(name: str, a: argparse.Namespace, dtype: torch.dtype, device: torch.device) -> float:
    """ms per later block (3 latent frames -> 12 frames); the first (9-frame) push is warm-up."""
    dec = make_decoder(name, a.tiny, device, dtype)
    latents = torch.randn(1, 3, 16, a.height // 8, a.width // 8, device=device, dtype=dtype)
    return _timed(lambda: dec.push(latents), a.blocks, max(1, a.warmup), device)


def bench_e2e(model: torch.nn.Module, name: str, a: argparse.Namespace, device: torch.device,
              dtype: torch.dtype) -> float:
    """ms per block of DiT (rolling cache, as served) + streaming decode to host uint8 frames."""
    cfg = StreamConfig(latent_h=a.height // 8, latent_w=a.width // 8, local_attn_size=a.window, sink_size=a.sink,
                       denoising_step_list=tuple(a.steps))
    pipe = StreamPipeline(model, cfg)
    pipe.set_prompt_embeds(torch.randn(1, model.cfg.text_len, model.cfg.text_dim, device=device))
    dec = make_decoder(name, a.tiny, device, dtype)
    return _timed(lambda: dec.push(pipe.next_block()), a.blocks, max(1, a.warmup), device)


def bench_decoders(model: torch.nn.Module, dt: str, a: argparse.Namespace, device: torch.device) -> None:
    dtype = DTYPES[dt]
    for name in a.decoders:
        ms = bench_decode(name, a, dtype, device)
        line = f"{dt:5} decode {name:5} {ms:9.1f} ms/block {12 / (ms / 1e3):7.2f} FPS"
        if not a.no_e2e:
            for backend in ("flash", "sdpa"):  # what the daemon's attn_backend "auto" would pick
                try:
                    model.attn_backend = select_backend(backend, device, dtype)
                    break
                except RuntimeError:
                    continue
            e2e = bench_e2e(model, name, a, device, dtype)
            line += f" | end-to-end (DiT rolling {a.window}/{a.sink} + decode) {e2e:9.1f} ms/block " \
                    f"{12 / (e2e / 1e3):7.2f} FPS"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_model_gpu: CUDA is not available (use --tiny --device cpu for a dry run)", file=sys.stderr)
        return 2
    mcfg = (ModelConfig(dim=64, num_heads=2, num_layers=2, ffn_dim=128, text_dim=32, text_len=16)
            if a.tiny else ModelConfig())
    if a.tiny:
        a.height, a.width = min(a.height, 64), min(a.width, 96)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, {'tiny' if a.tiny else '1.3B'} model, {a.height}x{a.width}, "
          f"{len(a.steps)} steps + context pass, window {a.window} sink {a.sink}, warm-up {a.warmup} blocks, "
          f"flash-attn available: {flash_available()}")
    print(f"{'dtype':5} {'cache':8} {'attn':5} {'ms/block':>9} {'FPS':>7} {'peak GiB':>9} {'cache GiB':>9}")
    for dt in a.dtype:
        dtype = DTYPES[dt]
        model = random_model(mcfg, seed=0, dtype=dtype, device=device)
        for attn, cache in itertools.product(a.attn, a.cache):
            try:
                model.attn_backend = select_backend(attn, device, dtype)
            except RuntimeError as e:
                print(f"{dt:5} {cache:8} {attn:5} skipped: {e}")
                continue
            r = bench_one(model, a, cache, device)
            print(f"{dt:5} {cache:8} {attn:5} {r['ms']:9.1f} {r['fps']:7.2f} {r['peak_gib']:9.2f} "
                  f"{r['cache_gib']:9.3f}", flush=True)
        bench_decoders(model, dt, a, device)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
