"""Shared fixtures: free ports, an in-process daemon on real sockets, a subprocess daemon."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import msgpack
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from sfbridge.client import Client
from sfbridge.daemon import Daemon, DaemonConfig

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoints() -> tuple[str, str]:
    return f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"


def input_endpoint() -> str:
    """A free input endpoint: tests never bind the default 5557 (other daemons may run)."""
    return f"tcp://127.0.0.1:{free_port()}"


def load_benchmark(name: str) -> ModuleType:
    """Imports ``benchmarks/NAME.py`` (a script folder, not a package) as module ``NAME``.

    Registered in ``sys.modules`` before it runs: dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def make_daemon():
    """Factory for in-process daemons (testsrc by default, small frames); all stopped at teardown."""
    started: list[Daemon] = []

    def factory(**kw) -> Daemon:
        control, frames = endpoints()
        opts = {"width": 160, "height": 96, **kw.pop("model_options", {})}
        kw.setdefault("input", input_endpoint())
        cfg = DaemonConfig(control=control, frames=frames, model_options=opts, **kw)
        d = Daemon(cfg).start()
        started.append(d)
        return d

    yield factory
    for d in started:
        d.stop()


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()


@pytest.fixture
def dealer(daemon) -> Iterator[zmq.Socket]:
    """A raw DEALER on the daemon's control socket, for requests a Client would refuse to send."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(daemon.config.control)
    yield s
    s.close(0)


@pytest.fixture
def client(daemon) -> Iterator[Client]:
    c = Client(control=daemon.config.control, frames=daemon.config.frames, timeout=3.0)
    yield c
    c.close()


def sub_socket(ctx: zmq.Context, endpoint: str, *topics: str) -> zmq.Socket:
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    for t in topics:
        s.setsockopt(zmq.SUBSCRIBE, t.encode())
    s.connect(endpoint)
    return s


def recv_until(sock: zmq.Socket, pred, timeout: float = 5.0):
    """Receive multipart messages until ``pred(msg)`` is true; returns that message (or fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(50, zmq.POLLIN):
            msg = sock.recv_multipart()
            if pred(msg):
                return msg
    pytest.fail(f"no matching message within {timeout} s")


def unpack(data: bytes) -> dict:
    """A msgpack header or reply body as the daemon sends it (int map keys allowed)."""
    return msgpack.unpackb(data, strict_map_key=False)


def wait_for(sock: zmq.Socket, pred, timeout: float = 5.0) -> list[tuple[str, dict]]:
    """Messages up to and including the first one for which ``pred(topic, msg)`` holds."""
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(50, zmq.POLLIN):
            topic, head, _ = sock.recv_multipart()
            out.append((topic.decode(), unpack(head)))
            if pred(*out[-1]):
                return out
    pytest.fail(f"nothing matched within {timeout} s; last: {out[-3:]}")


def is_event(kind: str):
    """A ``wait_for`` predicate: an event of type ``kind``."""
    return lambda topic, m: topic == "event" and m["type"] == kind


@pytest.fixture
def stream(daemon) -> Iterator[zmq.Socket]:
    """One subscriber to frames and events (protocol tests): their relative order is what some
    promises are about. Yields once the first frame has arrived, so the subscription is live."""
    s = sub_socket(zmq.Context.instance(), daemon.config.frames, "event", "jpeg")
    wait_for(s, lambda t, m: t == "jpeg")
    yield s
    s.close(0)


class ServeProcess:
    """``sfbridge serve`` as a real subprocess on fixed endpoints (free ports by default).

    Restartable on the same endpoints (``kill()`` then ``start()``), which the client tests use
    to prove reconnection. Output goes to a log file, never a pipe that could fill up and block.
    """

    def __init__(self, *args: str, control: str | None = None, frames: str | None = None,
                 log: Path | None = None, start: bool = True) -> None:
        c, f = endpoints()
        self.control, self.frames = control or c, frames or f
        self.args = args
        if log is None:
            fd, name = tempfile.mkstemp(prefix="sfbridge-serve-", suffix=".log")
            os.close(fd)
            log = Path(name)
        self.log = log
        self.proc: subprocess.Popen | None = None
        if start:
            self.start()

    def start(self, timeout: float = 60.0) -> None:
        cmd = [sys.executable, "-m", "sfbridge.cli", "--log-level", "info", "serve",
               "--control", self.control, "--frames", self.frames, *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        client = Client(control=self.control, frames=self.frames, timeout=0.5, retries=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
                try:
                    client.ping()
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise AssertionError(f"daemon not ready after {timeout} s:\n{self.output()[-3000:]}") from None
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: the daemon dies without any goodbye, like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(scope="session")
def vae_io():
    """The golden set's official VAE decode/encode inputs and outputs (decoder and encoder tests)."""
    from safetensors.torch import load_file
    from vae_golden import VAE_IO_FILE

    return load_file(str(VAE_IO_FILE))


def sigint_default() -> None:
    """``preexec_fn`` for a child that a test sends SIGINT: a shell that starts the test run in the
    background (``cmd &``) makes SIGINT ignored, the children inherit that, and Python then installs no
    KeyboardInterrupt handler at all. Ctrl-C tests need the default, as in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class SilentRouter:
    """A libzmq ROUTER (ROUTER_HANDOVER on, as in the daemon) that reads requests and never answers.
    Records the routing id of each request and counts accepted TCP connections."""

    def __init__(self) -> None:
        ctx = zmq.Context.instance()
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.monitor = self.router.get_monitor_socket(zmq.EVENT_ACCEPTED)
        self.endpoint = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.ids: list[bytes] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(100):
                if sock is self.router:
                    self.ids.append(self.router.recv_multipart()[0])
                else:
                    recv_monitor_message(self.monitor)
                    self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.router.disable_monitor()
        self.monitor.close(0)
        self.router.close(0)


def stall_first_prompt(daemon, seconds: float = 1.2) -> list[str]:
    """Make the daemon's control thread stick ``seconds`` in its first prompt, so a client with a shorter
    timeout retries on a new socket meanwhile; returns the list the texts of handled prompts go into."""
    from sfbridge.protocol import Prompt

    handle, prompts = daemon.control.handler, []

    def stalling(req):
        if isinstance(req, Prompt):
            prompts.append(req.text)
            if len(prompts) == 1:
                time.sleep(seconds)  # the control thread is stuck: the client times out and retries
        return handle(req)

    daemon.control.handler = stalling
    return prompts


def wait_retry_answered(daemon, timeout: float = 5.0) -> None:
    """Until the daemon has answered a retried request from memory (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while daemon.control.retries.retries_answered < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
