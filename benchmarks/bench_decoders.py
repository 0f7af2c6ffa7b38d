"""Per-block streaming decode time: Wan2.1 VAE vs TAEHV, random weights at the real widths.

A block is `--frames` latent frames (3 = Self Forcing's num_frame_per_block). The first block of
a stream is special (1 + 4(F-1) frames), so it is pushed once as warm-up and the timed blocks are
the steady state (4F frames each). Examples:

    python benchmarks/bench_decoders.py                                   # CPU, 16x16 latents
    python benchmarks/bench_decoders.py --device cuda --height 480 --width 832 --dtype bf16
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from sfbridge.model.taehv import StreamingTAEHV, TAEHVConfig, TAEHVDecoder
from sfbridge.model.vae import StreamingVAEDecoder, VAEConfig, WanVAEDecoder

log = logging.getLogger("sfbridge.bench")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_stream(push, reset, latents: torch.Tensor, blocks: int, device: torch.device) -> list[float]:
    """ms per block of steady-state pushes (after one warm-up first block)."""
    reset()
    push(latents)  # first block: warm-up, different frame count
    _sync(device)
    out = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        push(latents)
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    ap.add_argument("--height", type=int, default=128, help="output pixels (latent = /8)")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--frames", type=int, default=3, help="latent frames per block")
    ap.add_argument("--blocks", type=int, default=3, help="timed blocks")
    ap.add_argument("--vae-frames-per-call", type=int, default=1, help="0 = whole block per call")
    ap.add_argument("--vae-dim", type=int, default=96, help="96 = real Wan2.1 VAE width")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    vae = WanVAEDecoder(VAEConfig(dim=args.vae_dim)).to(device, dtype).eval()
    taehv = TAEHVDecoder(TAEHVConfig()).to(device, dtype).eval()
    lat = torch.randn(1, args.frames, 16, args.height // 8, args.width // 8, device=device, dtype=dtype)

    vae_stream = StreamingVAEDecoder(vae, args.vae_frames_per_call or None)
    tae_stream = StreamingTAEHV(taehv)
    results = {}
    for name, s in (("wan_vae", vae_stream), ("taehv", tae_stream)):
        ms = time_stream(s.push, s.reset, lat, args.blocks, device)
        results[name] = statistics.median(ms)
        mem = f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else ""
        log.info(
            "%-8s %8.1f ms/block (median of %d; %s)%s",
            name,
            results[name],
            len(ms),
            " ".join(f"{m:.0f}" for m in ms),
            mem,
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
    px = 4 * args.frames
    log.info(
        "device %s %s, latents %dx%d -> %dx%d, %d latent frames (%d pixel frames) per block",
        device,
        args.dtype,
        args.height // 8,
        args.width // 8,
        args.height,
        args.width,
        args.frames,
        px,
    )
    log.info(
        "ratio wan_vae / taehv = %.1fx; per pixel frame: vae %.1f ms, taehv %.1f ms",
        results["wan_vae"] / results["taehv"],
        results["wan_vae"] / px,
        results["taehv"] / px,
    )


if __name__ == "__main__":
    main()
