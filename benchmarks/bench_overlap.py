"""Serial vs overlapped decode (docs/SELF_FORCING.md, "Pipelining"): blocks/s and prompt-change latency.

Runs the real daemon (engine, publisher, client over loopback, ``--pace off``) twice, once with the
decode serial and once overlapped, and prints both and their ratios:

- blocks/s: blocks published per second over ``--seconds`` after a warm-up;
- prompt-change latency: from the ``prompt`` request to the first received frame whose header
  carries the new ``state`` (median and worst of ``--prompts`` requests sent at random points of a block).

``--model timed`` (default) has a fixed DiT time and a fixed decode time (``--dit-ms``, ``--decode-ms``:
sleeps, so the numbers show the pipeline, not this machine's load); ``--model tiny`` is the tiny
random model with its tiny VAE on the CPU, where DiT and decode share the cores.

    python benchmarks/bench_overlap.py [--model timed|tiny] [--dit-ms 60] [--decode-ms 60]

:func:`compare` returns the numbers, :func:`measure` a flat summary for bench_model_cpu.py.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch

from sfbridge.client import Client
from sfbridge.daemon import Daemon, DaemonConfig
from sfbridge.generators.base import Block, Generator, Steering, pixel_frames, resolve
from sfbridge.generators.overlap import DecodeStage
from sfbridge.generators.streaming import FrameDecoder

LATENT_FRAMES = 3


class CountingDecoder(FrameDecoder):
    """Takes ``decode_s`` (+- ``jitter``) per block and writes each frame's scene frame number into its
    pixels (R = n % 256, G = n // 256), from its own streaming state, so a reordered or raced decode
    shows up as pixels that disagree with the header. ``fail_on``: decode calls (1-based) that raise."""

    name = "counting"

    def __init__(self, width: int, height: int, decode_s: float, jitter: float = 0.0, seed: int = 0,
                 fail_on: tuple[int, ...] = ()) -> None:
        self.width, self.height, self.decode_s, self.jitter = width, height, decode_s, jitter
        self.rng = random.Random(seed)
        self.fail_on = set(fail_on)
        self.calls = 0
        self.made = 0  # frames made since the scene started

    def frames(self, latents: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(max(0.0, self.decode_s * (1.0 + self.jitter * self.rng.uniform(-1.0, 1.0))))
        if self.calls in self.fail_on:
            raise RuntimeError(f"decode {self.calls} failed (simulated)")
        n = pixel_frames(latents.shape[1], first_of_scene=self.made == 0)
        numbers = torch.arange(self.made, self.made + n)
        out = torch.zeros(n, self.height, self.width, 3, dtype=torch.uint8)
        out[..., 0] = (numbers % 256).to(torch.uint8).view(n, 1, 1)
        out[..., 1] = (numbers // 256).to(torch.uint8).view(n, 1, 1)
        self.made += n
        return out

    def reset(self) -> None:
        self.made = 0


def frame_number(image: np.ndarray) -> int:
    """The scene frame number a :class:`CountingDecoder` wrote into ``image``."""
    return int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])


class TimedGenerator(Generator):
    """A block costs ``dit_s`` on the calling thread (the DiT) and ``decode_s`` in the real
    :class:`DecodeStage` (serial or overlapped), so the pipeline's effect is measured exactly."""

    name = "timed"

    def __init__(self, dit_s: float = 0.06, decode_s: float = 0.06, width: int = 32, height: int = 16,
                 overlap: bool = True, jitter: float = 0.0, fail_on: tuple[int, ...] = (), seed: int = 0) -> None:
        self.width, self.height, self.dit_s = width, height, dit_s
        self.decoder = CountingDecoder(width, height, decode_s, jitter, seed, fail_on)
        self.stage = DecodeStage(self.decoder, torch.device("cpu"), overlap=overlap)
        self._frame = self._block = 0

    def reset(self, steering: Steering) -> None:
        self.stage.reset()
        self._frame = self._block = 0

    def submit_block(self, steering: Steering) -> Block:
        time.sleep(self.dit_s)
        latents = torch.zeros(1, LATENT_FRAMES, 1, 1, 1)
        count = pixel_frames(LATENT_FRAMES, first_of_scene=self._frame == 0)
        frames = self.stage.submit(latents, count, {})
        block = Block(frames=frames, index=self._block, first_frame=self._frame, state_id=steering.state_id)
        self._frame += count
        self._block += 1
        return block

    def next_block(self, steering: Steering) -> Block:
        block = self.submit_block(steering)
        block.frames = resolve(block.frames)
        return block

    def close(self) -> None:
        self.stage.close()


def make_generator(model: str, overlap: bool, dit_ms: float, decode_ms: float) -> Generator:
    if model == "timed":
        return TimedGenerator(dit_ms / 1e3, decode_ms / 1e3, overlap=overlap)
    from sfbridge.generators.tiny import TinyGenerator

    gen = TinyGenerator()
    gen.set_overlap(overlap)
    gen.reset(Steering())  # the switch applies at a reset
    return gen


def serve_and_measure(gen: Generator, seconds: float, prompts: int, seed: int = 0) -> dict[str, Any]:
    """Blocks/s and prompt-change latencies (s) of ``gen`` served by an in-process daemon (pace off)."""
    with tempfile.TemporaryDirectory(prefix="sfb-overlap-") as tmp:
        cfg = DaemonConfig(control=f"ipc://{tmp}/control", frames=f"ipc://{tmp}/frames", pace="off", prompt="bench")
        daemon = Daemon(cfg, generator=gen).start()
        try:
            with Client(control=cfg.control, frames=cfg.frames, timeout=10.0) as client:
                frames = client.subscribe("rgb24", latest_only=False, timeout=30.0, decode=False)
                while next(frames).block < 2:  # warm-up: scene start and the first blocks
                    pass
                blocks, t0 = set(), time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    f = next(frames)
                    blocks.add((f.stream, f.block))
                rate = len(blocks) / (time.perf_counter() - t0)
                rng, latencies = random.Random(seed), []
                for k in range(prompts):
                    until = time.perf_counter() + rng.uniform(0.0, 1.0 / rate)  # a random point of a block
                    while time.perf_counter() < until:
                        next(frames)
                    t_req = time.perf_counter()
                    state = client.set_prompt(f"prompt {k}")["state_id"]
                    while next(frames).state < state:
                        pass
                    latencies.append(time.perf_counter() - t_req)
        finally:
            daemon.stop()
    return {"blocks_per_s": rate, "latency_s": latencies}


def compare(model: str = "timed", dit_ms: float = 60.0, decode_ms: float = 60.0, seconds: float = 4.0,
            prompts: int = 10) -> dict[str, Any]:
    """Serial and overlapped runs of the same generator kind; ratios overlapped / serial."""
    out: dict[str, Any] = {}
    for mode in ("serial", "overlapped"):
        out[mode] = serve_and_measure(make_generator(model, mode == "overlapped", dit_ms, decode_ms), seconds, prompts)
    s, o = out["serial"], out["overlapped"]
    out["blocks_ratio"] = o["blocks_per_s"] / s["blocks_per_s"]
    out["latency_ratio"] = statistics.median(o["latency_s"]) / statistics.median(s["latency_s"])
    return out


def measure(quick: bool = False, model: str = "tiny") -> dict[str, Any]:
    """Flat numbers for bench_model_cpu.py: blocks/s and median prompt latency (ms), serial and overlapped."""
    res = compare(model, seconds=2.0 if quick else 5.0, prompts=3 if quick else 8)
    flat: dict[str, Any] = {"model": model, "blocks_ratio": round(res["blocks_ratio"], 3),
                            "latency_ratio": round(res["latency_ratio"], 3)}
    for mode in ("serial", "overlapped"):
        flat[f"{mode}_blocks_per_s"] = round(res[mode]["blocks_per_s"], 3)
        flat[f"{mode}_latency_ms"] = round(1e3 * statistics.median(res[mode]["latency_s"]), 1)
    return flat


def report(res: dict[str, Any]) -> str:
    lines = []
    for mode in ("serial", "overlapped"):
        r = res[mode]
        lat = r["latency_s"]
        lines.append(f"{mode:10s} {r['blocks_per_s']:6.2f} blocks/s   prompt -> first new frame: median "
                     f"{1e3 * statistics.median(lat):6.0f} ms, worst {1e3 * max(lat):6.0f} ms ({len(lat)} prompts)")
    lines.append(f"overlapped / serial: blocks/s x{res['blocks_ratio']:.2f}, "
                 f"median prompt latency x{res['latency_ratio']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["timed", "tiny"], default="timed")
    ap.add_argument("--dit-ms", type=float, default=60.0, help="timed: DiT time per block")
    ap.add_argument("--decode-ms", type=float, default=60.0, help="timed: decode time per block")
    ap.add_argument("--seconds", type=float, default=4.0, help="throughput window per mode")
    ap.add_argument("--prompts", type=int, default=10, help="prompt changes timed per mode")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    what = (f"timed generator: DiT {a.dit_ms:.0f} ms + decode {a.decode_ms:.0f} ms per block"
            if a.model == "timed" else f"tiny model + tiny VAE, CPU, {torch.get_num_threads()} torch threads")
    print(f"{what}; daemon --pace off, loopback client")
    print(report(compare(a.model, a.dit_ms, a.decode_ms, a.seconds, a.prompts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
