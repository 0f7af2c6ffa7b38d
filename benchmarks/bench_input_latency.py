"""Input latency benchmark (issue 12): from a game frame's capture (``t_cap``) to the first output frame made
from it, through a real daemon on real sockets, for testsrc and tiny in v2v mode.

A sender thread plays a game: it sends an rgb24 frame at 16 fps to the input socket (PUB), each with its
capture time. A subscriber reads the frame stream; each output frame's header names the input frame it was
made from (``input``: client, seq, t_cap), so the first output frame naming a seq closes that seq's round
trip (both clocks are this process's ``time.time()``). Prints per model the median and p90 in ms and in
blocks (the measured block period: 0.75 s at 16 fps when the generator keeps up), the encoder's time per
block (tiny: the random VAE encoder's streaming encode of 12 frames, best of 5; testsrc: none), the daemon's
own time for its last block (``gen ms``: DiT + encode, from ``status``) and the target, 2 blocks + encode
time, with the ratio median / target.

Why ~2 blocks: a frame waits for the next block boundary (0..1 block), the block is generated while the one
before it is shown, and a block's slots end at the newest input frame, so an input frame shows about one
block after its block starts publishing (docs/PROTOCOL.md "Input frames", "Latency").

    python benchmarks/bench_input_latency.py [--seconds 10] [--models testsrc,tiny] [--json out.json]
    python benchmarks/bench_input_latency.py --quick     # seconds: what tests/test_bench_input_latency.py runs
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from sfbridge.generators.base import BLOCK_FRAMES, NATIVE_FPS

BLOCK_S = BLOCK_FRAMES / NATIVE_FPS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="testsrc,tiny")
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per model after the first v2v frame")
    ap.add_argument("--strength", type=float, default=0.7)
    ap.add_argument("--quick", action="store_true", help="3 s per model, tiny at 64x48")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.seconds, a.width, a.height = 3.0, 64, 48
    return a


def _free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def encode_ms(model: str, a: argparse.Namespace, reps: int = 5) -> float:
    """The generator's input encoder on one 12-frame block (best of ``reps``: a shared CPU is noisy), ms; 0 for
    testsrc."""
    if model != "tiny":
        return 0.0
    from sfbridge.generators.base import InputBlock
    from sfbridge.generators.tiny import TinyGenerator

    enc = TinyGenerator(width=a.width, height=a.height, decoder="preview", overlap="off")._make_input_encoder()
    frames = np.random.default_rng(0).integers(0, 256, (12, a.height, a.width, 3), np.uint8)
    enc.encode(InputBlock(frames=frames[3:], sources=[]))  # the scene's first push: 9 frames
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        enc.encode(InputBlock(frames=frames, sources=[]))
        times.append(1e3 * (time.perf_counter() - t0))
    return min(times)


def sender(endpoint: str, width: int, height: int, stop: threading.Event, sent: dict[int, float]) -> None:
    """16 fps of rgb24 frames (a moving bar) with their capture times; ``sent[seq] = t_cap``."""
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 2)
    sock.connect(endpoint)
    img = np.zeros((height, width, 3), np.uint8)
    seq, due = 0, time.monotonic()
    while not stop.is_set():
        img[:] = 30
        x = (seq * 4) % width
        img[:, x:x + 8] = 230
        t_cap = time.time()
        sock.send_multipart([msgpack.packb({"format": "rgb24", "w": width, "h": height, "t_cap": t_cap,
                                            "client": "bench", "seq": seq}), img.tobytes()])
        sent[seq] = t_cap
        seq += 1
        due += 1.0 / NATIVE_FPS
        time.sleep(max(0.0, due - time.monotonic()))
    sock.close()


def measure(model: str, a: argparse.Namespace) -> dict[str, Any]:
    from sfbridge.client import Client
    from sfbridge.daemon import Daemon, DaemonConfig
    from sfbridge.protocol import unpack

    control, frames, inp = _free_endpoint(), _free_endpoint(), _free_endpoint()
    opts: dict[str, Any] = dict(width=a.width, height=a.height)
    if model == "tiny":
        opts.update(window=9, sink=3, decoder="preview")
    daemon = Daemon(DaemonConfig(model=model, control=control, frames=frames, input=inp, model_options=opts)).start()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"rgb24")
    sub.connect(frames)
    stop, sent = threading.Event(), {}
    th = threading.Thread(target=sender, args=(inp, a.width, a.height, stop, sent), daemon=True)
    th.start()
    first_seen: dict[int, float] = {}
    block_starts: dict[int, float] = {}
    client = Client(control=control, frames=frames, timeout=5.0)
    try:
        client.request("input", mode="v2v", strength=a.strength)
        t_end, v2v_blocks = None, set()
        deadline = time.monotonic() + 180.0
        # At least the measured seconds and 4 v2v blocks (a slow CPU generator needs them for its block period).
        while time.monotonic() < deadline and (t_end is None or time.monotonic() < t_end or len(v2v_blocks) < 4):
            if not sub.poll(100):
                continue
            h = unpack(sub.recv_multipart()[1])
            now = time.time()
            block_starts.setdefault(h["block"], now)
            src = h.get("input")
            if src is None or src["client"] != "bench":
                continue
            if t_end is None:
                t_end = time.monotonic() + a.seconds
            v2v_blocks.add(h["block"])
            if src["seq"] not in first_seen:
                first_seen[src["seq"]] = now - src["t_cap"]
        gen_block_ms = client.status()["stats"]["block_ms"]  # the daemon's last block, v2v encode included
    finally:
        client.close()
        stop.set()
        th.join(2.0)
        sub.close()
        daemon.stop()
    if not first_seen:
        raise RuntimeError(f"{model}: no output frame named an input frame")
    lat = sorted(first_seen.values())
    starts = [block_starts[b] for b in sorted(block_starts)][1:]  # the first block seen may be cut short
    period = statistics.median(np.diff(starts)) if len(starts) > 2 else BLOCK_S
    enc = encode_ms(model, a)
    med, p90 = statistics.median(lat), lat[int(0.9 * (len(lat) - 1))]
    target_ms = 2 * 1e3 * period + enc
    return {"frames_measured": len(lat), "median_ms": 1e3 * med, "p90_ms": 1e3 * p90, "block_period_ms": 1e3 * period,
            "median_blocks": med / period, "p90_blocks": p90 / period, "encode_ms": enc, "target_ms": target_ms,
            "ratio_to_target": 1e3 * med / target_ms, "seqs_sent": len(sent), "gen_block_ms": gen_block_ms}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    results: dict[str, Any] = {"width": a.width, "height": a.height, "strength": a.strength, "latency": {}}
    print(f"input capture -> first output frame made from it ({a.width}x{a.height}, strength {a.strength}, "
          f"16 fps sender, pace native)")
    print(f"{'model':8} {'frames':>6} {'median ms':>10} {'p90 ms':>8} {'block ms':>9} {'med blocks':>10} "
          f"{'p90 blocks':>10} {'encode ms':>9} {'gen ms':>7} {'target ms':>9} {'med/target':>10}")
    for model in a.models.split(","):
        r = measure(model, a)
        results["latency"][model] = r
        print(f"{model:8} {r['frames_measured']:6d} {r['median_ms']:10.1f} {r['p90_ms']:8.1f} "
              f"{r['block_period_ms']:9.1f} {r['median_blocks']:10.2f} {r['p90_blocks']:10.2f} "
              f"{r['encode_ms']:9.1f} {r['gen_block_ms']:7.1f} {r['target_ms']:9.1f} {r['ratio_to_target']:10.2f}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
