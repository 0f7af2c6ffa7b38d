"""Bridge benchmark: testsrc at 832x480, JPEG q85, daemon as a subprocess on tcp loopback.

Prints, all measured in this one run on this machine:
- generator alone: frames/s of `testsrc` called in a loop (no sockets, no encoding);
- delivered: frames/s a subscriber receives from `sfbridge serve --pace off` -> ratio (target >= 0.95).
  The two are measured side by side in alternating rounds (the daemon is paused while the
  generator runs alone), and the median of the per-round ratios is reported: on a noisy
  2-core machine, phases minutes apart are not comparable;
- latency publish -> receive (t_pub in the header vs the receive clock), pace native: p50/p99 (targets 5/20 ms);
- encode ms/frame for jpeg (q85, 4:2:0) and rgb24.

Usage: python benchmarks/bench_bridge.py [--seconds 8] [--rounds 5] [--width 832 --height 480]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

from sfbridge.client import Client
from sfbridge.encoders import JpegEncoder, Rgb24Encoder
from sfbridge.generators import Steering
from sfbridge.generators.testsrc import TestSource


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generator_alone(w: int, h: int, seconds: float) -> float:
    g, s = TestSource(w, h), Steering(prompt="benchmark prompt", state_id=1)
    g.reset(s)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(g.next_block(s).frames)
    return n / (time.perf_counter() - t0)


def serve(w: int, h: int, pace: str, quality: int) -> tuple[subprocess.Popen, Client]:
    c, f = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "sfbridge.cli", "--log-level", "warning", "serve", "--model",
                             "testsrc", "--width", str(w), "--height", str(h), "--pace", pace,
                             "--jpeg-quality", str(quality), "--control", c, "--frames", f])
    client = Client(control=c, frames=f, timeout=1.0, retries=20)
    client.ping()
    return proc, client


def delivered(client: Client, seconds: float) -> tuple[float, list[float]]:
    n, lat, t0 = 0, [], None
    for frame in client.subscribe("jpeg", latest_only=False, decode=False, timeout=10):
        now = time.time()
        if t0 is None:  # start the clock at the first frame: excludes connection set-up
            t0 = time.perf_counter()
            continue
        n += 1
        lat.append((now - frame.header["t_pub"]) * 1000)
        if time.perf_counter() - t0 >= seconds:
            break
    return n / (time.perf_counter() - t0), lat


def side_by_side(a: argparse.Namespace) -> list[tuple[float, float]]:
    """Alternate generator-alone and delivered phases; the daemon is paused during the former."""
    proc, client = serve(a.width, a.height, "off", a.quality)
    rounds = []
    try:
        per = a.seconds / a.rounds
        for _ in range(a.rounds):
            client.pause()
            time.sleep(0.2)
            gen = generator_alone(a.width, a.height, per)
            client.resume()
            got, _ = delivered(client, per)
            rounds.append((gen, got))
    finally:
        proc.terminate()
        proc.wait()
    return rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=16.0, help="total seconds of each measurement")
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds for the ratio")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--quality", type=int, default=85)
    a = ap.parse_args()

    rounds = side_by_side(a)
    ratios = [got / gen for gen, got in rounds]
    proc, client = serve(a.width, a.height, "native", a.quality)
    try:
        paced_fps, lat = delivered(client, a.seconds)
    finally:
        proc.terminate()
        proc.wait()

    g, s = TestSource(a.width, a.height), Steering(prompt="benchmark prompt")
    g.reset(s)
    frames = g.next_block(s).frames
    jpeg, rgb = JpegEncoder(a.quality), Rgb24Encoder()
    enc = {}
    for name, e in (("jpeg", jpeg), ("rgb24", rgb)):
        ts = []
        for i in range(60):
            t0 = time.perf_counter()
            e.encode(frames[i % len(frames)])
            ts.append((time.perf_counter() - t0) * 1000)
        enc[name] = statistics.median(ts)
    size = np.mean([len(jpeg.encode(f)) for f in frames]) / 1024

    print(f"sfbridge bridge benchmark: testsrc {a.width}x{a.height}, JPEG q{a.quality},"
          f" {a.seconds:.0f} s per measurement")
    gen_fps = statistics.median(g for g, _ in rounds)
    del_fps = statistics.median(d for _, d in rounds)
    print(f"  generator alone           {gen_fps:8.1f} frames/s   (median of {a.rounds} rounds)")
    print(f"  delivered (--pace off)    {del_fps:8.1f} frames/s   ratio {statistics.median(ratios):.3f} median,"
          f" rounds {' '.join(f'{r:.2f}' for r in ratios)}  (target >= 0.95)")
    print(f"  delivered (--pace native) {paced_fps:8.1f} frames/s   (native 16)")
    p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
    print(f"  latency publish->receive  p50 {p50:.2f} ms  p99 {p99:.2f} ms  (targets 5 / 20 ms, pace native,"
          f" n={len(lat)})")
    print(f"  encode                    jpeg {enc['jpeg']:.2f} ms/frame ({size:.0f} KB), rgb24 {enc['rgb24']:.3f} ms")


if __name__ == "__main__":
    main()
