"""Per-block streaming decode and encode time: Wan2.1 VAE vs TAEHV, random weights at the real widths.

A block is `--frames` latent frames (3 = Self Forcing's num_frame_per_block). The first block of
a stream is special (1 + 4(F-1) frames), so it is pushed once as warm-up and the timed blocks are
the steady state (4F frames each). Decoders: F latent frames -> 4F pixel frames. Encoders
(video-to-video input): 4F pixel frames -> F latent frames. Also prints each encoder's TFLOP per
steady-state block counted on the meta device at `--count-height` x `--count-width` (default the
served 480x832; no weights, no GPU needed). Examples:

    python benchmarks/bench_decoders.py                                   # CPU, 16x16 latents
    python benchmarks/bench_decoders.py --device cuda --height 480 --width 832 --dtype bf16
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from sfbridge.model.budget import Work, count
from sfbridge.model.taehv import StreamingTAEHV, TAEHVConfig, TAEHVDecoder
from sfbridge.model.taehv_encoder import StreamingTAEHVEncoder, TAEHVEncoder
from sfbridge.model.vae import StreamingVAEDecoder, VAEConfig, WanVAEDecoder
from sfbridge.model.vae_encoder import StreamingVAEEncoder, WanVAEEncoder

log = logging.getLogger("sfbridge.bench")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_stream(push, reset, block: torch.Tensor, blocks: int, device: torch.device,
                first: torch.Tensor | None = None) -> list[float]:
    """ms per block of steady-state pushes (after one warm-up first block, `first` if given)."""
    reset()
    push(block if first is None else first)  # first block: warm-up, different frame count
    _sync(device)
    out = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        push(block)
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def encoder_stream(name: str, dtype: torch.dtype = torch.float32, vae_dim: int = 96,
                   frames_per_call: int | None = 4) -> StreamingVAEEncoder | StreamingTAEHVEncoder:
    """A streaming encoder with default (random) weights on the current default device."""
    if name == "vae":
        return StreamingVAEEncoder(WanVAEEncoder(VAEConfig(dim=vae_dim)).to(dtype).eval(), frames_per_call)
    return StreamingTAEHVEncoder(TAEHVEncoder().to(dtype).eval())


def count_encoder_block(name: str, height: int = 480, width: int = 832, frames: int = 3,
                        dtype: torch.dtype = torch.bfloat16) -> Work:
    """Work of one steady-state encode (4F pixel frames -> F latents) on the meta device (FLOPs, kernels, peak)."""
    with torch.device("meta"):
        stream = encoder_stream(name, dtype)
    px = torch.zeros(1, 4 * frames, 3, height, width, device="meta", dtype=dtype)
    stream.push(px[:, : 4 * frames - 3])  # a scene's first block (9 frames) primes the state
    with count() as work:
        stream.push(px)
    return work


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
    ap.add_argument("--count-height", type=int, default=480, help="pixel size of the meta-device FLOP count")
    ap.add_argument("--count-width", type=int, default=832)
    ap.add_argument("--no-count", action="store_true", help="skip the meta-device FLOP count")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    vae = WanVAEDecoder(VAEConfig(dim=args.vae_dim)).to(device, dtype).eval()
    taehv = TAEHVDecoder(TAEHVConfig()).to(device, dtype).eval()
    lat = torch.randn(1, args.frames, 16, args.height // 8, args.width // 8, device=device, dtype=dtype)
    px = 4 * args.frames

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

    # encoders: a scene's first block is 4F - 3 pixel frames (warm-up), then 4F per block
    pixels = torch.rand(1, px, 3, args.height, args.width, device=device, dtype=dtype) * 2 - 1
    enc: dict[str, float] = {}
    with torch.device(device):
        streams = {n: encoder_stream(n, dtype, args.vae_dim, 4 * (args.vae_frames_per_call or 0) or None)
                   for n in ("vae", "taehv")}
    for name, s in streams.items():
        ms = time_stream(s.push, s.reset, pixels, args.blocks, device, first=pixels[:, : px - 3])
        enc[name] = statistics.median(ms)
        log.info("%-8s %8.1f ms/block encode (median of %d; %s)", f"{name}_enc", enc[name], len(ms),
                 " ".join(f"{m:.0f}" for m in ms))
    log.info("encode %d pixel frames -> %d latent frames per block: ratio vae / taehv = %.1fx",
             px, args.frames, enc["vae"] / enc["taehv"])
    if not args.no_count:
        for name in ("vae", "taehv"):
            w = count_encoder_block(name, args.count_height, args.count_width, args.frames)
            log.info("%-8s %8.2f TFLOP per block at %dx%d (meta count, %d pixel frames), %d kernels, "
                     "activation peak %.2f GiB", f"{name}_enc", w.flops / 1e12, args.count_height,
                     args.count_width, px, w.kernels, w.peak_bytes / 2**30)


if __name__ == "__main__":
    main()
