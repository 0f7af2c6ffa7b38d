"""Request validation: unit cases plus hypothesis fuzzing, in-process and over a real ROUTER socket."""

from __future__ import annotations

import msgpack
import pytest
import zmq
from conftest import recv_until, sub_socket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfbridge.protocol import ERROR_CODES, OPS, Prompt, ProtocolError, Reset, Seed, Steps, decode_request

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True) | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
requests = st.fixed_dictionaries(
    {"op": st.sampled_from([*OPS, "", "PING", "x" * 300]) | values},
    optional={"id": values, "text": values, "seed": values, "steps": values, "transition": values,
              "blend_blocks": values, "prompt": values},
)
bodies = st.binary(max_size=300) | requests.map(lambda m: msgpack.packb(m, use_bin_type=True))


def test_valid_requests_parse():
    rid, req = decode_request(msgpack.packb({"op": "prompt", "id": 3, "text": " a cat ", "transition": "blend"}))
    assert rid == 3 and req == Prompt(text="a cat", transition="blend", blend_blocks=4)
    assert decode_request(msgpack.packb({"op": "seed", "seed": 2**63 - 1}))[1] == Seed(2**63 - 1)
    assert decode_request(msgpack.packb({"op": "steps", "steps": [1000, 750, 500, 250]}))[1].steps == (
        1000, 750, 500, 250)
    assert decode_request(msgpack.packb({"op": "reset"}))[1] == Reset()
    assert isinstance(decode_request(msgpack.packb({"op": "steps", "steps": [1000]}))[1], Steps)


@given(bodies)
@settings(max_examples=400, deadline=None)
def test_decode_request_only_raises_protocol_errors(body):
    try:
        decode_request(body)
    except ProtocolError as err:
        assert err.code in ERROR_CODES and err.message


@pytest.fixture(scope="module")
def fuzz_daemon():
    from conftest import endpoints

    from sfbridge.daemon import Daemon, DaemonConfig

    control, frames = endpoints()
    d = Daemon(DaemonConfig(control=control, frames=frames, model_options={"width": 64, "height": 48})).start()
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(control)
    yield d, dealer
    dealer.close(0)
    d.stop()


@given(body=bodies)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_requests_over_the_socket_each_get_one_reply(fuzz_daemon, body):
    _, dealer = fuzz_daemon
    dealer.send(body)
    assert dealer.poll(3000, zmq.POLLIN), f"no reply to {body[:60]!r}"
    reply = msgpack.unpackb(dealer.recv(), strict_map_key=False)
    assert isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert reply["error"]["code"] in ERROR_CODES
    assert not dealer.poll(0, zmq.POLLIN), "more than one reply"


def test_frames_keep_flowing_after_fuzzing(fuzz_daemon):
    d, dealer = fuzz_daemon
    dealer.send(msgpack.packb({"op": "resume", "id": 1}))  # the fuzzer may have sent a valid pause
    assert dealer.poll(3000, zmq.POLLIN)
    dealer.recv()
    s = sub_socket(zmq.Context.instance(), d.config.frames, "jpeg")
    first = msgpack.unpackb(recv_until(s, lambda m: True)[1])["seq"]
    recv_until(s, lambda m: msgpack.unpackb(m[1])["seq"] > first + 5)
    s.close(0)
