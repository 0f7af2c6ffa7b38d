"""Steering benchmark (issue 10): what a KV re-cache costs and how soon each kind of prompt change shows.

Prints:
- tiny (CPU, the tiny generator's DiT at 160x96, window 9 / sink 0 and window 12 / sink 3): a normal block,
  a re-cache alone and a block with a re-cache before it, side by side, and re-cache / normal block;
- a 4-block blend with a re-cache once at its first block (what the generators do) vs at every blend block;
- a meta-device count of one re-cache at the real config (1.3B, bf16, 480x832) for window 12 and 21
  (sink 3): TFLOP beside a normal block's, no GPU needed (~1 minute; --no-meta skips);
- request-to-first-new-frame latency per mode (cut, blend, blend+slerp, recache, blend+recache, weighted)
  through a real daemon on real sockets (testsrc and tiny): blocks after the block on screen when the
  request left, and ms until the first frame of the new state arrived.

    python benchmarks/bench_steering.py [--samples 9] [--reps 3] [--json out.json]
    python benchmarks/bench_steering.py --quick     # seconds: what tests/test_model_bench.py runs
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import zmq
from sfbridge.model import budget
from sfbridge.model.config import ModelConfig, StreamConfig
from sfbridge.model.pipeline import StreamPipeline
from sfbridge.model.weights import random_model

from sfbridge.generators.base import BLOCK_FRAMES, NATIVE_FPS

MODES: dict[str, dict[str, Any]] = {  # Client.set_prompt keyword arguments per mode (text filled in per request)
    "cut": {},
    "blend": dict(transition="blend", blend_blocks=4),
    "blend+slerp": dict(transition="blend", blend_blocks=4, interp="slerp"),
    "recache": dict(recache=True),
    "blend+recache": dict(transition="blend", blend_blocks=4, recache=True),
    "weighted": dict(weighted=True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default); 1 = stable timings")
    ap.add_argument("--samples", type=int, default=9, help="timed repeats of each pipeline measurement (median)")
    ap.add_argument("--reps", type=int, default=3, help="requests per mode and daemon (median)")
    ap.add_argument("--models", default="testsrc,tiny", help="daemon models for the latency part")
    ap.add_argument("--no-meta", action="store_true", help="skip the real-config meta-device count")
    ap.add_argument("--no-daemon", action="store_true", help="skip the latency part")
    ap.add_argument("--pace", choices=("native", "off"), default="native",
                    help="daemon pacing; 'off' (quick) checks the path only: its latencies mean nothing")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: 64x32, 2 samples, testsrc only, 1 rep, pace off, no meta")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.width, a.height, a.samples, a.reps, a.models, a.no_meta, a.pace = 64, 32, 2, 1, "testsrc", True, "off"
    return a


# -- tiny pipeline: recache vs a normal block -----------------------------------------------------
def tiny_pipe(a: argparse.Namespace, window: int, sink: int) -> StreamPipeline:
    from sfbridge.generators.tiny import TINY_CONFIG, text_embedding

    cfg = StreamConfig(latent_h=a.height // 8, latent_w=a.width // 8, local_attn_size=window, sink_size=sink)
    pipe = StreamPipeline(random_model(TINY_CONFIG, seed=0), cfg, seed=0)
    pipe.set_prompt_embeds(text_embedding("a benchmark", TINY_CONFIG.text_len, TINY_CONFIG.text_dim))
    for _ in range(-(-window // cfg.num_frame_per_block) + 1):  # window full, the next block evicts
        pipe.next_block()
    return pipe


def _prompt(i: int) -> torch.Tensor:
    from sfbridge.generators.tiny import TINY_CONFIG, text_embedding

    return text_embedding(f"prompt {i}", TINY_CONFIG.text_len, TINY_CONFIG.text_dim)


def recache_cost(a: argparse.Namespace, window: int, sink: int) -> dict[str, Any]:
    """Median ms of: a block after a cut (new text, no re-cache), the re-cache alone, a block with a re-cache."""
    pipe = tiny_pipe(a, window, sink)
    normal, alone, total = [], [], []
    for i in range(a.samples):
        pipe.set_prompt_embeds(_prompt(2 * i))
        t0 = time.perf_counter()
        pipe.next_block()
        normal.append(time.perf_counter() - t0)
        pipe.set_prompt_embeds(_prompt(2 * i + 1))
        t0 = time.perf_counter()
        groups = pipe.recache()
        t1 = time.perf_counter()
        pipe.next_block()
        alone.append(t1 - t0)
        total.append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in (("normal", normal), ("recache", alone), ("total", total))}
    return dict(window=window, sink=sink, recached_frames=sum(n for _, n in groups), block_ms=ms["normal"],
                recache_ms=ms["recache"], block_with_recache_ms=ms["total"],
                recache_over_block=ms["recache"] / ms["normal"],
                block_with_recache_over_block=ms["total"] / ms["normal"])


def blend_policies(a: argparse.Namespace, window: int, sink: int, blocks: int = 4) -> dict[str, Any]:
    """ms of a whole ``blocks``-block blend: no re-cache, re-cache at its first block, re-cache at every block."""
    from sfbridge.generators.conditioning import blend_path

    out: dict[str, Any] = dict(window=window, sink=sink, blend_blocks=blocks)
    runs: dict[str, list[float]] = {"none": [], "start": [], "every": []}
    for r in range(max(1, a.samples)):
        for policy in runs:  # interleaved: load drift on a shared machine hits all three alike
            pipe = tiny_pipe(a, window, sink)
            path = blend_path(pipe.prompt_embeds, _prompt(100 + r), blocks)
            t0 = time.perf_counter()
            for k, e in enumerate(path):
                pipe.set_prompt_embeds(e)
                if policy == "every" or (policy == "start" and k == 0):
                    pipe.recache()
                pipe.next_block()
            runs[policy].append(time.perf_counter() - t0)
    for policy, times in runs.items():
        out[f"{policy}_ms"] = 1e3 * statistics.median(times)
    out["start_over_none"] = out["start_ms"] / out["none_ms"]
    out["every_over_none"] = out["every_ms"] / out["none_ms"]
    return out


# -- real config on the meta device -----------------------------------------------------------------
def meta_recache(window: int, sink: int = 3, mcfg: ModelConfig | None = None,
                 latent: tuple[int, int] = (60, 104)) -> dict[str, Any]:
    """TFLOP of one re-cache (window full, the cross cache already filled) beside one normal 4-step block, and
    the matmul + attention formula for the re-cache's groups (each attends sink + earlier groups + itself)."""
    mcfg = mcfg or ModelConfig()
    scfg = StreamConfig(latent_h=latent[0], latent_w=latent[1], local_attn_size=window, sink_size=sink)
    pipe = budget.meta_pipeline(mcfg, scfg)
    block = budget.count_dit_block(pipe, (1000, 750, 500, 250))
    with budget.count() as work:
        groups = pipe.recache()
    tpf, attended, formula = pipe.tokens_per_frame, sink, 0.0
    for _, n in groups:
        attended += n
        formula += budget.analytic_dit_flops(mcfg.dim, mcfg.num_layers, mcfg.ffn_dim, n * tpf, attended * tpf,
                                             mcfg.text_len, 1)
    return dict(window=window, sink=sink, recached_frames=sum(n for _, n in groups), groups=len(groups),
                recache_tflop=work.flops / 1e12, formula_tflop=formula / 1e12, block_tflop=block.flops / 1e12,
                recache_over_block=work.flops / block.flops, recache_peak_activation_gib=work.peak_bytes / 2**30)


# -- latency through a daemon -----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frames(sub: zmq.Socket, timeout: float = 10.0) -> dict:
    """The next frame header (events and payloads skipped)."""
    from sfbridge.protocol import unpack

    if not sub.poll(int(timeout * 1000)):
        raise TimeoutError("no frame from the daemon")
    return unpack(sub.recv_multipart()[1])


def request(client: Any, mode: str, i: int) -> dict:
    """Send one prompt change of ``mode`` (texts differ per request, so each is a new conditioning)."""
    kw = dict(MODES[mode])
    if kw.pop("weighted", False):
        return client.set_prompt(prompts=[(f"a red scene {i}", 0.7), (f"a blue scene {i}", 0.3)], **kw)
    return client.set_prompt(f"a {'green' if i % 2 else 'pink'} scene {i}", **kw)


def daemon_latency(model: str, a: argparse.Namespace) -> dict[str, Any]:
    """Per mode: blocks and ms from the request to the first frame of its state (median of ``reps``)."""
    from sfbridge.client import Client
    from sfbridge.daemon import Daemon, DaemonConfig

    control, frames = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    opts: dict[str, Any] = dict(width=a.width, height=a.height)
    if model == "tiny":
        opts.update(window=9, sink=3, threads=a.threads or None)
    cfg = DaemonConfig(model=model, control=control, frames=frames, pace=a.pace, model_options=opts)
    daemon = Daemon(cfg).start()
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"rgb24")
    sub.connect(frames)
    client = Client(control=control, frames=frames, timeout=5.0)
    out: dict[str, Any] = {}
    rng = random.Random(0)
    try:
        header = _frames(sub, 60.0)
        while header["block"] < 3:  # the window holds something to re-cache
            header = _frames(sub)
        i = 0
        for mode in MODES:
            blocks, ms, lands = [], [], []
            for _ in range(a.reps):
                i += 1
                if a.pace == "native":  # the request leaves at a random point of the block on screen
                    time.sleep(rng.uniform(0.0, BLOCK_FRAMES / NATIVE_FPS))
                while sub.poll(0):  # the newest frame on screen when the request leaves
                    header = _frames(sub)
                on_screen = header["block"]
                t0 = time.perf_counter()
                reply = request(client, mode, i)
                while header["state"] < reply["state_id"]:
                    header = _frames(sub)
                ms.append(1e3 * (time.perf_counter() - t0))
                blocks.append(header["block"] - on_screen)
                lands.append(reply["applies_at_block"] - on_screen)
                settle = header["block"] + 1  # one more block before the next request
                while header["block"] < settle:
                    header = _frames(sub)
            out[mode] = dict(blocks=statistics.median(blocks), ms=statistics.median(ms),
                             applies_after_blocks=statistics.median(lands))
    finally:
        client.close()
        sub.close(linger=0)
        daemon.stop()
    return out


# -- report -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res: dict[str, Any] = dict(config=dict(width=a.width, height=a.height, threads=a.threads, samples=a.samples))
    with torch.no_grad():
        res["recache_cost"] = [recache_cost(a, 9, 0), recache_cost(a, 12, 3)]
        res["blend_recache_policy"] = blend_policies(a, 12, 3)
    print(f"tiny {a.width}x{a.height}, {a.threads} thread(s), median of {a.samples}")
    print(f"{'window/sink':>12} {'frames':>7} {'block ms':>9} {'recache ms':>11} {'block+recache':>14} "
          f"{'recache/block':>14} {'(block+recache)/block':>22}")
    for r in res["recache_cost"]:
        print(f"{r['window']:>9}/{r['sink']:<2} {r['recached_frames']:>7} {r['block_ms']:>9.1f} "
              f"{r['recache_ms']:>11.1f} {r['block_with_recache_ms']:>14.1f} {r['recache_over_block']:>14.2f} "
              f"{r['block_with_recache_over_block']:>22.2f}")
    b = res["blend_recache_policy"]
    print(f"blend over {b['blend_blocks']} blocks (window {b['window']}/{b['sink']}): "
          f"no recache {b['none_ms']:.1f} ms, recache at start {b['start_ms']:.1f} ms ({b['start_over_none']:.2f}x), "
          f"every block {b['every_ms']:.1f} ms ({b['every_over_none']:.2f}x)")
    if not a.no_meta:
        res["meta_recache"] = [meta_recache(12), meta_recache(21)]
        print("real config (1.3B, bf16, 480x832, meta device):")
        for r in res["meta_recache"]:
            print(f"  window {r['window']}/sink {r['sink']}: recache of {r['recached_frames']} frames in {r['groups']} "
                  f"groups {r['recache_tflop']:.2f} TFLOP vs block {r['block_tflop']:.2f} TFLOP "
                  f"({r['recache_over_block']:.2f}x), peak activations {r['recache_peak_activation_gib']:.2f} GiB")
    if not a.no_daemon:
        res["latency"] = {}
        for model in a.models.split(","):
            res["latency"][model] = lat = daemon_latency(model, a)
            print(f"{model} daemon, request -> first frame of the new state (median of {a.reps}):")
            for mode, r in lat.items():
                print(f"  {mode:>14}: {r['blocks']:.0f} block(s) after the one on screen, {r['ms']:.0f} ms "
                      f"(lands {r['applies_after_blocks']:.0f} block(s) after it)")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
