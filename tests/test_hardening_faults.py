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

    def broken(*_args):
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


@pytest.mark.parametrize("client_kind", ["sync", "asyncio"])
def test_a_retry_on_a_new_socket_through_a_stalled_control_thread_applies_once(make_daemon, client_kind):
    """The Python clients' retry (new socket, same routing id) reaches a daemon whose control thread was
    stuck in a request: the daemon handles the first copy, answers the second from memory."""
    import asyncio

    from conftest import stall_first_prompt, wait_retry_answered

    from sfbridge.aio import AsyncClient
    from sfbridge.client import Client

    d = make_daemon()
    prompts = stall_first_prompt(d)  # 1.2 s: past the client's 2nd attempt
    before = d.box.peek().state_id
    if client_kind == "sync":
        with Client(control=d.config.control, timeout=0.5, retries=5) as c:
            result = c.set_prompt("a stalled prompt")
    else:
        async def one() -> dict:
            c = AsyncClient(control=d.config.control, timeout=0.5, retries=5)
            try:
                return await c.set_prompt("a stalled prompt")
            finally:
                c.close()
        result = asyncio.run(one())
    wait_retry_answered(d)
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


# --- 5. model faults: CUDA out of memory inside a block -------------------------------------------------------


def cuda_oom() -> BaseException:
    import torch

    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class OomSource(TestSource):
    """The test pattern, out of memory on the given block attempts (1-based); records the engine's hook calls."""

    def __init__(self, fail_on: set[int], presets=("balanced", "fast")) -> None:
        super().__init__(160, 96)
        self.fail_on, self.presets = set(fail_on), list(presets)
        self.attempts, self.freed, self.steps_down = 0, 0, []

    def next_block(self, steering):
        self.attempts += 1
        if self.attempts in self.fail_on:
            raise cuda_oom()
        return super().next_block(steering)

    def on_oom(self) -> None:
        self.freed += 1
        super().on_oom()

    def step_down(self) -> str | None:
        name = self.presets.pop(0) if self.presets else None
        self.steps_down.append(name)
        return name


def serve_events(gen, monkeypatch, until, timeout=20.0) -> tuple[Daemon, list[dict]]:
    """An in-process daemon on ``gen``; its events until ``until(events)`` holds."""
    monkeypatch.setattr("sfbridge.engine.RETRY_DELAY_S", 0.05)
    control, frames = endpoints()
    d = Daemon(DaemonConfig(control=control, frames=frames, pace="off"), gen)
    sock = sub_socket(zmq.Context.instance(), frames, "event")
    d.start()
    events, deadline = [], time.monotonic() + timeout
    while not until(events) and time.monotonic() < deadline:
        if sock.poll(100):
            events.append(msgpack.unpackb(sock.recv_multipart()[1]))
    sock.close()
    return d, events


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def started_after_error(events: list[dict]) -> bool:
    """A new scene began after the first error (the daemon's first `started` may come before the
    subscription is active, so counting `started` events would race)."""
    kinds = [e["type"] for e in events]
    return "error" in kinds and "started" in kinds[kinds.index("error") + 1:]


def test_one_oom_frees_caches_and_restarts_the_scene(monkeypatch):
    gen = OomSource({3})
    d, events = serve_events(gen, monkeypatch, lambda evs: started_after_error(evs) and gen.attempts >= 6)
    try:
        errors = of_type(events, "error")
        assert [e["code"] for e in errors] == ["out_of_memory"], errors
        assert "CUDA out of memory" in errors[0]["message"] and "caches freed" in errors[0]["message"]
        assert gen.freed == 1 and gen.steps_down == [] and not of_type(events, "warning")
        assert started_after_error(events)  # a new scene after the OOM
    finally:
        d.stop()


def test_a_second_oom_within_a_few_blocks_steps_down_and_says_so(monkeypatch):
    gen = OomSource({3, 4, 12, 30, 31})  # 3+4: step down; 12 alone: no; 30+31: step down again
    d, events = serve_events(gen, monkeypatch, lambda evs: gen.attempts >= 33)
    try:
        assert gen.freed == 5 and gen.steps_down == ["balanced", "fast"]
        warnings = of_type(events, "warning")
        assert [w["preset"] for w in warnings] == ["balanced", "fast"] and "stepped down to 'balanced'" in \
            warnings[0]["message"]
        assert [e["code"] for e in of_type(events, "error")] == ["out_of_memory"] * 5
        with_status = d.status()["warnings"]
        assert any("'balanced'" in w for w in with_status) and any("'fast'" in w for w in with_status)
    finally:
        d.stop()


def test_nothing_lighter_is_said_in_the_error(monkeypatch):
    gen = OomSource({2, 3}, presets=())
    d, events = serve_events(gen, monkeypatch, lambda evs: gen.attempts >= 5)
    d.stop()
    assert gen.steps_down == [None] and not of_type(events, "warning")
    assert "no lighter preset" in of_type(events, "error")[1]["message"]


def test_tiny_steps_down_by_shrinking_its_window(monkeypatch):
    from sfbridge.generators.tiny import TinyGenerator

    class OomTiny(TinyGenerator):
        attempts = 0

        def submit_block(self, steering, *inputs):
            OomTiny.attempts += 1
            if OomTiny.attempts in (3, 4):
                raise cuda_oom()
            return super().submit_block(steering, *inputs)

    gen = OomTiny(width=32, height=32, decoder="preview", window=9)
    d, events = serve_events(gen, monkeypatch, lambda evs: OomTiny.attempts >= 8)
    try:
        assert [w["preset"] for w in of_type(events, "warning")] == ["window 6"]
        assert gen.pipe.cfg.local_attn_size == 6 and d.status()["window_frames"] == 9  # status: start-up facts
        assert d.engine_stats.frames_total > 0 and OomTiny.attempts >= 8  # it streams on after the step-down
    finally:
        d.stop()
    assert gen.step_down() == "window 3" and gen.step_down() is None  # block + sink (0) is the floor


# --- 5. model faults: damaged checkpoints -------------------------------------------------------------------


def small_checkpoints(tmp_path):
    """The same small state dict as a torch zip (.pt) and as .safetensors; -> (paths, state dict)."""
    import torch
    from safetensors.torch import save_file

    sd = {"weight": torch.randn(32, 16), "bias": torch.randn(32)}
    torch.save(sd, tmp_path / "model.pt")
    save_file(sd, str(tmp_path / "model.safetensors"))
    return {".pt": tmp_path / "model.pt", ".safetensors": tmp_path / "model.safetensors"}, sd


def damaged(src, dst, cut: int = 0, flip: int | None = None):
    data = bytearray(src.read_bytes())
    if flip is not None:
        data[flip] ^= 0x01
    dst.write_bytes(bytes(data[:len(data) - cut]))
    return dst


def pickle_offset(path) -> int:
    """Where the pickle (data.pkl) of a torch zip starts: its local header, name and extra field skipped."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("cut", [1, 100, 0.5])
def test_a_truncated_checkpoint_is_refused_naming_the_file(tmp_path, suffix, cut):
    from sfbridge.model.files import ModelFileError, read_state_dict

    paths, _ = small_checkpoints(tmp_path)
    size = paths[suffix].stat().st_size
    bad = damaged(paths[suffix], tmp_path / f"cut{suffix}", cut=int(size * cut) if cut < 1 else int(cut))
    with pytest.raises(ModelFileError, match="truncated") as info:
        read_state_dict(bad)
    assert str(bad) in str(info.value)


def test_a_flipped_byte_in_a_header_is_refused(tmp_path):
    from sfbridge.model.files import ModelFileError, read_state_dict

    paths, _ = small_checkpoints(tmp_path)
    pt = damaged(paths[".pt"], tmp_path / "pkl.pt", flip=pickle_offset(paths[".pt"]) + 20)  # inside the pickle
    st = damaged(paths[".safetensors"], tmp_path / "hdr.safetensors", flip=20)  # inside the JSON header
    for bad in (pt, st):
        with pytest.raises(ModelFileError) as info:
            read_state_dict(bad)
        assert str(bad) in str(info.value) and "damaged" in str(info.value)


def test_a_flipped_byte_in_a_tensor_of_a_torch_checkpoint_is_refused(tmp_path):
    """torch itself loads such a file silently with one wrong weight; the zip's CRC-32 finds it."""
    import torch
    from sfbridge.model.files import ModelFileError, read_state_dict

    paths, sd = small_checkpoints(tmp_path)
    raw = paths[".pt"].read_bytes()
    at = raw.index(sd["weight"].numpy().tobytes()[:64]) + 100
    bad = damaged(paths[".pt"], tmp_path / "tensor.pt", flip=at)
    assert not torch.equal(torch.load(bad, weights_only=True)["weight"], sd["weight"])  # what torch does
    with pytest.raises(ModelFileError, match="Bad CRC-32") as info:
        read_state_dict(bad)
    assert str(bad) in str(info.value)
    assert torch.equal(read_state_dict(paths[".pt"])["weight"], sd["weight"])  # the intact file still loads


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_tensor_of_the_wrong_shape_is_refused_naming_file_and_key(tmp_path, suffix):
    import torch
    from safetensors.torch import save_file
    from sfbridge.model.files import ModelFileError, load_strict, read_state_dict

    sd = {"weight": torch.randn(16, 32), "bias": torch.randn(32)}  # weight transposed: same bytes, wrong shape
    path = tmp_path / f"wrong{suffix}"
    torch.save(sd, path) if suffix == ".pt" else save_file(sd, str(path))
    with pytest.raises(ModelFileError) as info:
        load_strict(torch.nn.Linear(16, 32), read_state_dict(path), path)
    assert str(path) in str(info.value) and "'weight'" in str(info.value) and "[16, 32]" in str(info.value)


def test_self_forcing_steps_down_through_the_presets(tmp_path):
    """balanced (window 12) -> fast (9) -> nothing lighter (quality -> balanced is the same path), on the
    tiny weights in the official layout (CPU); without taew2_1.pth the VAE stays. Blocks still come."""
    from test_self_forcing_generator import TINY, build_tiny_model_dir

    from sfbridge.generators import Steering, create_generator

    gen = create_generator("self-forcing", model_dir=str(build_tiny_model_dir(tmp_path)),
                           **{**TINY, "window": 12, "sink": 3, "warmup": False})
    try:
        s = Steering(prompt="a lake", seed=1)
        names = []
        for _ in range(2):
            names.append(gen.step_down())
            gen.on_oom()
            gen.reset(s)
            frames = gen.next_block(s).frames
            assert frames.shape[0] == 9 and frames.dtype.name == "uint8"
        assert names == ["fast", None]
        assert (gen.pipe.cfg.local_attn_size, gen.pipe.cfg.sink_size) == (9, 3)
        assert gen._steps == (1000.0, 500.0, 250.0) and gen.decoder.name == "vae"
    finally:
        gen.close()


# --- 4. prompt encodings bounded under a flood ------------------------------------------------------------------


class SlowEncoder(TestSource):
    """The test pattern with a 50 ms text encoder (the issue's regression), recording every encoding."""

    def __init__(self) -> None:
        super().__init__(160, 96)
        self.encoded: list[tuple[float, float, str]] = []  # (start, end, text), monotonic

    def prepare(self, prompt: str) -> None:
        t0 = time.monotonic()
        time.sleep(0.05)
        self.encoded.append((t0, time.monotonic(), prompt))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_prompt_flood_leaves_no_encoding_backlog():
    """Issue 11 (10): 50,000 prompts in 10 s at a 50 ms encoder left 49,820 encodings queued (41 minutes of
    work) and +316 MB. Scaled to run here: 5,000 prompts, pipelined as fast as one DEALER sends them."""
    n = 5000
    gen = SlowEncoder()
    control, frames = endpoints()
    d = Daemon(DaemonConfig(control=control, frames=frames), gen).start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(control)
    try:
        sock.send(msgpack.packb({"op": "ping", "id": -1}))
        assert sock.poll(5000)
        sock.recv()
        rss0, t0 = rss_mb(), time.monotonic()
        for i in range(n):
            sock.send(msgpack.packb({"op": "prompt", "id": i, "text": f"flood prompt {i}"}))
        replies = 0
        while replies < n and sock.poll(10_000):
            replies += msgpack.unpackb(sock.recv())["ok"]
        flood_s = time.monotonic() - t0
        assert replies == n
        time.sleep(0.5)  # settle (50 ms) + one encoding (50 ms), with room for a loaded machine
        idle_at, rss1 = time.monotonic(), rss_mb()
        last_end = max((end for _, end, _ in gen.encoded), default=t0)
        assert d.preparer._waiting is None and last_end < idle_at  # drained at once: nothing left to encode
        assert len(gen.encoded) <= flood_s / 0.05 + 5, (len(gen.encoded), flood_s)  # one at a time, never a queue
        assert d.box.peek().prompt == f"flood prompt {n - 1}"  # the newest prompt is the one that shows
        assert rss1 - rss0 < 40, (rss0, rss1)
        print(f"{n} prompts in {flood_s:.2f} s: {len(gen.encoded)} encodings, "
              f"{d.preparer.jobs_dropped} dropped, RSS {rss0:.0f} -> {rss1:.0f} MB")
    finally:
        sock.close()
        d.stop()
