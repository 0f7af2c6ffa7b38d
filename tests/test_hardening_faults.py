"""Issue 11, faults: one validator per value (wire, CLI, SFBRIDGE_*, DaemonConfig), every daemon thread
watched (a dead thread stops the daemon with EXIT_THREAD_DIED), retried requests applied once, prompt
encodings bounded under a flood, CUDA out-of-memory inside a block, and damaged checkpoints."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq
from conftest import REPO, endpoints, sub_socket

from sfbridge import cli, values
from sfbridge.daemon import EXIT_THREAD_DIED, Daemon, DaemonConfig
from sfbridge.generators.testsrc import TestSource

# --- 1. one validator per value ---------------------------------------------------------------------------

# (CLI arguments of `serve`, the validator call whose message every entry point must repeat)
BAD_SERVE_VALUES = [
    (["--seed", str(2**64)], lambda: values.seed(2**64)),
    (["--seed", "-5"], lambda: values.seed(-5)),
    (["--prompt", ""], lambda: values.prompt("")),
    (["--prompt", "   "], lambda: values.prompt("   ")),
    (["--block-delay", "-1"], lambda: values.block_delay(-1)),
    (["--sndhwm", "0"], lambda: values.sndhwm(0)),
    (["--sndhwm", "-1"], lambda: values.sndhwm(-1)),
    (["--jpeg-quality", "0"], lambda: values.jpeg_quality(0)),
]


def refusal(check) -> str:
    """The validator's message up to the refused value (a typed '-5' and a wire -5 show differently)."""
    with pytest.raises(values.InvalidValue) as info:
        check()
    return str(info.value).split(", got ")[0]


@pytest.mark.parametrize(("args", "check"), BAD_SERVE_VALUES)
def test_serve_refuses_bad_values_before_serving(args, check, monkeypatch, capsys):
    served = []
    monkeypatch.setattr("sfbridge.daemon.serve", lambda config, generator=None: served.append(config) or 0)
    control, frames = endpoints()
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--model", "testsrc", "--control", control, "--frames", frames, *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and not served
    assert refusal(check) in err and "another daemon" not in err, err


@pytest.mark.parametrize(("var", "raw", "check"), [
    ("SFBRIDGE_SEED", "-5", lambda: values.seed(-5)),
    ("SFBRIDGE_SEED", str(2**64), lambda: values.seed(2**64)),
    ("SFBRIDGE_PROMPT", "   ", lambda: values.prompt("   ")),
    ("SFBRIDGE_PACE", "fast", lambda: values.pace("fast")),
])
def test_environment_refuses_with_the_same_message(var, raw, check, monkeypatch, capsys):
    monkeypatch.setattr("sfbridge.daemon.serve", lambda config, generator=None: 0)
    monkeypatch.setenv(var, raw)
    control, frames = endpoints()
    assert cli.main(["serve", "--model", "testsrc", "--control", control, "--frames", frames]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert var in err and refusal(check) in err, err


@pytest.mark.parametrize(("field", "value", "check"), [
    ("seed", 2**64, lambda: values.seed(2**64)),
    ("seed", -5, lambda: values.seed(-5)),
    ("prompt", "", lambda: values.prompt("")),
    ("sndhwm", 0, lambda: values.sndhwm(0)),
    ("sndhwm", -1, lambda: values.sndhwm(-1)),
    ("pace", "", lambda: values.pace("")),
    ("model", "nope", lambda: values.model("nope")),
])
def test_daemon_config_validates_every_field(field, value, check):
    with pytest.raises(ValueError) as info:
        DaemonConfig(**{field: value})
    assert f"DaemonConfig.{field}" in str(info.value) and refusal(check) in str(info.value)


def test_daemon_config_checks_the_block_delay_option():
    with pytest.raises(ValueError, match=r"block_delay.*" + refusal(lambda: values.block_delay(-1))[-10:]):
        DaemonConfig(model_options={"block_delay": -1.0})


@pytest.fixture
def wire(make_daemon):
    d = make_daemon()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.config.control)

    def request(op: str, rid: int | str = 1, **fields) -> dict:
        sock.send(msgpack.packb({"op": op, "id": rid, **fields}))
        assert sock.poll(5000), f"no reply to {op}"
        return msgpack.unpackb(sock.recv())

    request.daemon, request.sock = d, sock
    yield request
    sock.close()
    ctx.term()


@pytest.mark.parametrize(("op", "fields", "check"), [
    ("seed", {"seed": -5}, lambda: values.seed(-5)),
    ("seed", {"seed": 2**64 - 1}, lambda: values.seed(2**64 - 1)),
    ("prompt", {"text": "  "}, lambda: values.prompt("  ", "text")),
    ("prompt", {"text": "x", "transition": ""}, lambda: values.transition("")),
    ("prompt", {"text": "x", "blend_blocks": 0}, lambda: values.blend_blocks(0)),
    ("steps", {"steps": [1000, 2000]}, lambda: values.steps([1000, 2000])),
    ("reset", {"seed": -5}, lambda: values.seed(-5)),
])
def test_wire_refuses_with_the_same_message(wire, op, fields, check):
    reply = wire(op, **fields)
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_value", reply
    assert refusal(check) in reply["error"]["message"], reply


# --- 2. every daemon thread watched -------------------------------------------------------------------------


@pytest.fixture
def daemon_log(caplog):
    """The daemon's log records, whether or not an earlier cli.main() turned off propagation to the root."""
    logger = logging.getLogger("sfbridge.daemon")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


class Doomed(BaseException):
    """Not an Exception: it passes every `except Exception` on its way out, as a real bug in a handler could."""


def wait_for_exit(d: Daemon) -> int:
    stop = threading.Event()
    timer = threading.Timer(20, stop.set)  # the test fails (code 0) rather than hangs if nothing dies
    timer.start()
    try:
        return d.wait(stop)
    finally:
        timer.cancel()


def events_socket(d: Daemon) -> zmq.Socket:
    sock = sub_socket(zmq.Context.instance(), d.config.frames, "event")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the late-joiner `state` event proves the subscription is in
        if sock.poll(100) and msgpack.unpackb(sock.recv_multipart()[1])["type"] == "state":
            return sock
    pytest.fail("no state event")


def error_events(sock: zmq.Socket, timeout: float = 3.0) -> list[dict]:
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and sock.poll(100):
        ev = msgpack.unpackb(sock.recv_multipart()[1])
        if ev["type"] == "error":
            out.append(ev)
    return out


def test_a_dead_control_thread_stops_the_daemon_with_an_error_event(make_daemon, daemon_log):
    d = make_daemon()
    sock = events_socket(d)

    def broken(frames):
        raise RuntimeError("injected control failure")

    d.control._serve_one = broken  # the next request kills the thread inside its own loop
    client = zmq.Context.instance().socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(d.config.control)
    client.send(msgpack.packb({"op": "ping", "id": 1}))
    assert wait_for_exit(d) == EXIT_THREAD_DIED
    errors = error_events(sock)
    assert errors and errors[0]["thread"] == "sfbridge-control" and "injected control failure" in errors[0]["message"]
    assert "thread sfbridge-control died (RuntimeError: injected control failure)" in daemon_log.text
    assert not d.publisher.thread.is_alive() and not d.engine.thread.is_alive()
    client.close()
    sock.close()


def test_a_dead_publisher_stops_the_daemon(make_daemon, daemon_log):
    d = make_daemon()

    def overflow(*_a):
        raise OverflowError("int too big to convert")  # what a seed of 2^64 did inside msgpack

    d.publisher._send_event = overflow
    assert wait_for_exit(d) == EXIT_THREAD_DIED  # the next 1 s stats event kills it
    assert "thread sfbridge-publisher died (OverflowError: int too big to convert)" in daemon_log.text


class DoomedPrepare(TestSource):
    def prepare(self, prompt: str) -> None:
        raise Doomed(f"encoder crashed on {prompt!r}")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_prepare_thread_stops_the_daemon(make_daemon, daemon_log):
    control, frames = endpoints()
    d = Daemon(DaemonConfig(control=control, frames=frames), DoomedPrepare(160, 96)).start()
    sock = events_socket(d)
    d.preparer.submit(("boom",), None, settle=False)
    assert wait_for_exit(d) == EXIT_THREAD_DIED
    assert "thread sfbridge-prepare died (Doomed: encoder crashed on 'boom')" in daemon_log.text
    assert any(e["thread"] == "sfbridge-prepare" for e in error_events(sock))
    sock.close()


DYING_SERVE = """
import sys
from sfbridge.cli import configure_logging
from sfbridge.daemon import DaemonConfig, serve
from sfbridge.generators.testsrc import TestSource

class Doomed(BaseException):
    pass

class DyingEngine(TestSource):
    def next_block(self, steering):
        if self.blocks_made >= 2:
            raise Doomed("injected engine death")
        self.blocks_made += 1
        return super().next_block(steering)

gen = DyingEngine(160, 96)
gen.blocks_made = 0
configure_logging("info")
sys.exit(serve(DaemonConfig(control=sys.argv[1], frames=sys.argv[2]), gen))
"""


def test_serve_exits_non_zero_when_the_engine_thread_dies():
    """A real process: `serve` returns EXIT_THREAD_DIED and says which thread died of what."""
    control, frames = endpoints()
    r = subprocess.run([sys.executable, "-c", DYING_SERVE, control, frames], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == EXIT_THREAD_DIED, r.stderr[-3000:]
    assert "thread sfbridge-engine died (Doomed: injected engine death)" in r.stderr, r.stderr[-3000:]


# --- 3. retried requests apply once -------------------------------------------------------------------------


def test_the_same_request_id_twice_applies_once(wire):
    first = wire("prompt", rid=7, text="a red desert")
    again = wire("prompt", rid=7, text="a red desert")  # a Lazy Pirate retry: same peer, id and body
    assert first["ok"] and again == first
    after = wire("prompt", rid=8, text="a blue ocean")
    assert after["result"]["state_id"] == first["result"]["state_id"] + 1  # the retry made no change
    reused = wire("prompt", rid=7, text="a green forest")  # same id, new body: a new request
    assert reused["result"]["state_id"] == after["result"]["state_id"] + 1
    assert wire.daemon.box.peek().prompt == "a green forest"
    assert wire("status", rid=9)["ok"] and wire("status", rid=9)["ok"]  # reads are not remembered


def test_a_retry_on_a_new_socket_through_a_stalled_control_thread_applies_once(make_daemon):
    """The Python client's retry (new socket, same routing id) reaches a daemon whose control thread was
    stuck in a request: the daemon handles the first copy, answers the second from memory."""
    from sfbridge.client import Client
    from sfbridge.protocol import Prompt

    d = make_daemon()
    handle, release, prompts = d.control.handler, threading.Event(), []

    def stalling(req):
        if isinstance(req, Prompt):
            prompts.append(req.text)
            release.wait(10)  # the control thread is stuck: the client times out and retries
        return handle(req)

    d.control.handler = stalling
    before = d.box.peek().state_id
    timer = threading.Timer(1.2, release.set)  # after the client's 2nd attempt was sent
    timer.start()
    with Client(control=d.config.control, timeout=0.5, retries=5) as c:
        result = c.set_prompt("a stalled prompt")
        deadline = time.monotonic() + 5
        while d.control.retries.retries_answered < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    timer.cancel()
    assert prompts == ["a stalled prompt"], prompts  # handled once, though sent at least twice
    assert d.control.retries.retries_answered >= 1
    assert result["state_id"] == before + 1 and d.box.peek().state_id == before + 1


def test_remembered_replies_are_bounded_and_expire():
    from sfbridge.retries import ReplyCache

    calls = []

    def handle(body: bytes) -> bytes:
        calls.append(body)
        return b"reply-%d" % len(calls)

    cache = ReplyCache(window_s=0.2, max_per_peer=4, max_total=10)
    bodies = [msgpack.packb({"op": "seed", "id": i, "seed": i}) for i in range(100)]
    for b in bodies:  # one hostile peer: only its newest 4 are kept
        cache.answer(b"peer-a", b, handle)
    assert len(cache) == 4
    for p in range(20):  # many peers: 10 in all
        cache.answer(b"peer-%d" % p, bodies[0], handle)
    assert len(cache) == 10
    n = len(calls)
    assert cache.answer(b"peer-19", bodies[0], handle) == b"reply-%d" % n and len(calls) == n  # remembered
    time.sleep(0.25)
    cache.answer(b"peer-19", bodies[0], handle)
    assert len(calls) == n + 1 and len(cache) == 1  # expired: handled again, the rest forgotten
