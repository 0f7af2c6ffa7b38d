"""CurveZMQ's cost per 832x480 frame, against NULL, side by side in one run.

The daemon's frame path in miniature: an XPUB bound through :class:`sfbridge.security.ServerAccess`
(CURVE keys and the ZAP handler, exactly as ``serve --curve-secret`` sets them up, or NULL) and a
SUB connected like :class:`sfbridge.Client`, over tcp loopback, each in its own context (the client
decrypts in its own I/O thread, as in another process). Messages are ``[topic, header, payload]``
as the daemon sends them, with a ~50 KB JPEG (a synthetic 832x480 picture at q85, 4:2:0) and a
1.2 MB rgb24 frame. Per format and mechanism:

- ``us/frame``: wall time per frame of a back-to-back burst (send HWM high, so nothing drops);
- ``cpu us/frame``: process CPU time per frame over the same burst (both ends, all libzmq threads:
  encryption and decryption included);
- ``lat p50 ms``: one frame at a time, send to receive.

NULL and CURVE alternate round by round and the medians are reported with their ratio: on a noisy
shared machine, runs minutes apart are not comparable.

Usage: python benchmarks/bench_curve.py [--frames 400] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from sfbridge.encoders import JpegEncoder
from sfbridge.security import ServerAccess, client_keys, keygen, read_allowed_keys, read_key_pair

WIDTH, HEIGHT = 832, 480


def sample_jpeg() -> bytes:
    """A smooth picture with mild noise: ~50 KB at q85, about what a generated frame gives."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([128 + 60 * np.sin(x / 37 + c) + 40 * np.cos(y / 23 + 2 * c) for c in range(3)], -1)
    frame = np.clip(base + rng.normal(0, 4, (HEIGHT, WIDTH, 3)), 0, 255).astype(np.uint8)
    return JpegEncoder(85).encode(frame)


class Link:
    """One XPUB -> SUB pair on tcp loopback, NULL or CURVE."""

    def __init__(self, curve: bool, keydir: Path, topic: bytes) -> None:
        self.server_ctx, self.client_ctx = zmq.Context(), zmq.Context()
        if curve:
            public, secret = read_key_pair(keydir / "daemon.key_secret", "bench")
            self.access = ServerAccess(public, secret, read_allowed_keys(keydir / "allow", "bench"), "bench")
        else:
            self.access = ServerAccess()
        self.access.start(self.server_ctx)
        self.pub = self.server_ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.pub.linger = 0
        endpoint = self.access.bind(self.pub, "tcp://127.0.0.1:*")
        self.sub = self.client_ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        if curve:
            keys = client_keys(keydir / "daemon.key", keydir / "game.key_secret")
            assert keys is not None
            keys.apply(self.sub)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.connect(endpoint)
        if not self.pub.poll(5000, zmq.POLLIN):  # the subscription arrives once the handshake is done
            raise RuntimeError("no subscription within 5 s (handshake failed?)")
        self.pub.recv()

    def close(self) -> None:
        self.sub.close()
        self.pub.close()
        self.access.stop()
        self.client_ctx.term()
        self.server_ctx.term()


def burst(link: Link, topic: bytes, payload: bytes, n: int) -> tuple[float, float]:
    """(wall s, process CPU s) to deliver ``n`` frames back to back."""
    done = threading.Event()

    def receive() -> None:
        for _ in range(n):
            link.sub.recv_multipart(copy=False)
        done.set()

    rx = threading.Thread(target=receive)
    header = msgpack.packb({"seq": 0, "w": WIDTH, "h": HEIGHT, "t_pub": 0.0})
    c0, t0 = time.process_time(), time.perf_counter()
    rx.start()
    for _ in range(n):
        link.pub.send_multipart([topic, header, payload], copy=False)
    rx.join(120)
    if not done.is_set():
        raise RuntimeError("burst did not complete")
    return time.perf_counter() - t0, time.process_time() - c0


def latency(link: Link, topic: bytes, payload: bytes, n: int) -> float:
    """Median send -> receive seconds, one frame in flight at a time."""
    out = []
    for i in range(n):
        header = msgpack.packb({"seq": i})
        t0 = time.perf_counter()
        link.pub.send_multipart([topic, header, payload], copy=False)
        link.sub.recv_multipart(copy=False)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def measure(curve: bool, keydir: Path, fmt: str, payload: bytes, frames: int, lat_frames: int) -> dict[str, float]:
    topic = fmt.encode()
    link = Link(curve, keydir, topic)
    try:
        burst(link, topic, payload, max(4, frames // 10))  # warm-up: buffers, caches
        wall, cpu = burst(link, topic, payload, frames)
        lat = latency(link, topic, payload, lat_frames)
    finally:
        link.close()
    return {"us": 1e6 * wall / frames, "cpu_us": 1e6 * cpu / frames, "lat_ms": 1e3 * lat}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400, help="frames per burst [%(default)s]")
    ap.add_argument("--rounds", type=int, default=5, help="alternating NULL/CURVE rounds [%(default)s]")
    ap.add_argument("--quick", action="store_true", help="a few frames and 1 round (tests)")
    a = ap.parse_args(argv)
    frames, rounds = (20, 1) if a.quick else (a.frames, a.rounds)
    lat_frames = max(5, frames // 4)
    payloads = {"jpeg": sample_jpeg(), "rgb24": bytes(WIDTH * HEIGHT * 3)}
    with tempfile.TemporaryDirectory() as tmp:
        keydir = Path(tmp)
        keygen("daemon", keydir)
        keygen("game", keydir)
        (keydir / "allow").mkdir()
        (keydir / "allow" / "game.key").write_bytes((keydir / "game.key").read_bytes())
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(rounds):
            for fmt, payload in payloads.items():
                for mech in ("NULL", "CURVE"):
                    r = measure(mech == "CURVE", keydir, fmt, payload, frames, lat_frames)
                    results.setdefault((fmt, mech), []).append(r)
    print(f"CurveZMQ cost per {WIDTH}x{HEIGHT} frame, tcp loopback, {frames} frames x {rounds} rounds (medians)")
    print(f"{'format':7} {'bytes':>9} | {'NULL us':>8} {'CURVE us':>9} {'ratio':>6} | {'NULL cpu':>8} "
          f"{'CURVE cpu':>9} {'ratio':>6} | {'NULL lat':>8} {'CURVE lat':>9} {'ratio':>6}")
    for fmt, payload in payloads.items():
        med = {m: {k: statistics.median(r[k] for r in results[(fmt, m)]) for k in ("us", "cpu_us", "lat_ms")}
               for m in ("NULL", "CURVE")}
        n, c = med["NULL"], med["CURVE"]
        print(f"{fmt:7} {len(payload):>9} | {n['us']:>8.0f} {c['us']:>9.0f} {c['us'] / n['us']:>6.2f} | "
              f"{n['cpu_us']:>8.0f} {c['cpu_us']:>9.0f} {c['cpu_us'] / n['cpu_us']:>6.2f} | "
              f"{n['lat_ms']:>8.2f} {c['lat_ms']:>9.2f} {c['lat_ms'] / n['lat_ms']:>6.2f}")
    print("us: wall microseconds per frame in a burst; cpu: process CPU microseconds per frame (both ends); "
          "lat: one frame in flight, send -> receive, milliseconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
