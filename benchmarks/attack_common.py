"""Shared parts of the attack suite (attack_control_fuzz.py, attack_transport.py, soak.py).

The attacks run against a real ``sfbridge serve`` subprocess, as a hostile client would meet it, so
everything measured about the daemon comes from outside: its RSS, threads and file descriptors from
/proc, its log file size, and what a well-behaved subscriber receives while the attack runs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq

REPO = Path(__file__).resolve().parents[1]
# The daemon's source tree: this checkout unless SFBRIDGE_ATTACK_TREE names another (e.g. a `git archive`
# of one commit, so the figures belong to that commit while the working tree changes).
TREE = Path(os.environ.get("SFBRIDGE_ATTACK_TREE", REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(endpoint: str, op: str, timeout: float = 5.0, **args: Any) -> dict:
    """One control request on a fresh DEALER, straight from docs/PROTOCOL.md (no client library in between);
    raises TimeoutError when no reply comes, RuntimeError on an error reply."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(msgpack.packb({"op": op, "id": 1, **args}))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise TimeoutError(f"no reply to {op!r} within {timeout} s")
        reply = msgpack.unpackb(sock.recv(), strict_map_key=False)
    finally:
        sock.close(0)
    if not reply.get("ok"):
        raise RuntimeError(f"{op}: {reply.get('error')}")
    return reply["result"]


def raise_fd_limit() -> int:
    """The attacker holds hundreds of sockets itself: lift its own soft open-file limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_status(pid: int) -> dict[str, int]:
    """RSS (kB), thread count and open descriptors of a live process; empty once it is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return {}
    return out


class Serve:
    """``sfbridge serve`` on free loopback ports, its output in a log file (never a pipe that could fill)."""

    def __init__(self, *args: str, log_level: str = "info", env: dict[str, str] | None = None) -> None:
        self.control = f"tcp://127.0.0.1:{free_port()}"
        self.frames = f"tcp://127.0.0.1:{free_port()}"
        fd, name = tempfile.mkstemp(prefix="sfbridge-attack-", suffix=".log")
        os.close(fd)
        self.log = Path(name)
        cmd = [sys.executable, "-m", "sfbridge.cli", "--log-level", log_level, "serve",
               "--control", self.control, "--frames", self.frames, *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(TREE), **(env or {})}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=TREE, env=env)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                self.request("ping", timeout=0.5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"daemon not ready after 90 s:\n{self.output()[-3000:]}") from None

    def request(self, op: str, timeout: float = 5.0, **args: Any) -> dict:
        return request(self.control, op, timeout, **args)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status(self) -> dict[str, int]:
        return proc_status(self.pid)

    def rss_mb(self) -> float:
        return self.status().get("VmRSS", 0) / 1024

    def log_bytes(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tracebacks(self) -> int:
        return self.output().count("Traceback (most recent call last)")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _watch(endpoint: str, pid: int, topic: str, stop: Any, out: Any) -> None:
    """The watcher's own process: a new frame's receive time, and a /proc sample every 0.2 s, go to ``out``."""
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 4)
    sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sock.connect(endpoint)
    last_seq, next_sample = -1, 0.0
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_sample:
            out.send(("sample", now, proc_status(pid)))
            next_sample = now + 0.2
        if not sock.poll(50, zmq.POLLIN):
            continue
        while True:
            try:
                msg = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            seq = msgpack.unpackb(msg[1]).get("seq", -1) if len(msg) == 3 else -1
            if seq > last_seq:  # last-value re-sends repeat a seq: not a new frame
                last_seq = seq
                out.send(("frame", time.monotonic(), None))
    out.send(("end", 0.0, None))
    sock.close(0)


@dataclass
class Watcher:
    """A well-behaved subscriber (RCVHWM 4, drains every tick) that timestamps each new frame it gets,
    and samples the daemon's RSS, threads and descriptors meanwhile.

    It runs in a process of its own, like a real client: in the attacker's process it would compete
    for the GIL with the attack's own Python threads and report their cost as the daemon's."""

    endpoint: str
    pid: int
    topic: str = "jpeg"
    times: list[float] = field(default_factory=list)
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        mp = multiprocessing.get_context("spawn")
        self._stop = mp.Event()
        self._conn, child = mp.Pipe(duplex=False)
        self._proc = mp.Process(target=_watch, args=(self.endpoint, self.pid, self.topic, self._stop, child),
                                daemon=True)
        self._proc.start()
        child.close()
        self._thread = threading.Thread(target=self._collect, name="watcher", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        try:
            while True:
                kind, t, sample = self._conn.recv()
                if kind == "end":
                    return
                if kind == "frame":
                    self.times.append(t)
                else:
                    self.samples.append((t, sample))
        except (EOFError, OSError):
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()

    def fps(self, t0: float, t1: float) -> float:
        n = bisect_right(self.times, t1) - bisect_left(self.times, t0)
        return n / max(t1 - t0, 1e-9)

    def min_fps_1s(self, t0: float, t1: float) -> float:
        """The worst one-second window (stepped by 0.5 s) between t0 and t1."""
        if t1 - t0 < 1.0:
            return self.fps(t0, t1)
        starts = [t0 + 0.5 * k for k in range(int((t1 - t0 - 1.0) / 0.5) + 1)]
        return min(self.fps(s, s + 1.0) for s in starts)

    def max_gap(self, t0: float, t1: float) -> float:
        """Longest time without a new frame between t0 and t1 (the edges count as frames)."""
        inside = self.times[bisect_left(self.times, t0):bisect_right(self.times, t1)]
        marks = [t0, *inside, t1]
        return max(b - a for a, b in zip(marks, marks[1:], strict=False))

    def peak(self, key: str, t0: float, t1: float) -> int:
        vals = [s.get(key, 0) for t, s in self.samples if t0 <= t <= t1]
        return max(vals, default=0)


def settle_rss(serve: Serve, seconds: float) -> float:
    """RSS after ``seconds`` of quiet (allocators return memory lazily; the minimum seen is what stayed)."""
    deadline, low = time.monotonic() + seconds, serve.rss_mb()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        low = min(low, serve.rss_mb() or low)
    return low


def write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2, default=str))
