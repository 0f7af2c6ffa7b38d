"""docs/PROTOCOL.md and the daemon agree: one test per promise a client written from the document relies on.

Request/reply side: ids (2.1), status and stats field types (2.3, 3.3), raw ZMTP (1.1). The
event stream's promises (applied events, pause, reset, late joiners, stopping) are in
test_protocol_events.py. Each test names the section it pins. Real sockets and the testsrc
generator throughout; the raw ZMTP tests speak the wire format of section 1.1 over a plain TCP
socket, as a C# or GDScript client does.
"""

from __future__ import annotations

import re
import socket
import struct
import time

import msgpack
import pytest
import zmq
from conftest import REPO, is_event, sub_socket, unpack, wait_for

PROTOCOL_MD = (REPO / "docs" / "PROTOCOL.md").read_text()


def request(sock: zmq.Socket, body: dict | bytes) -> dict:
    sock.send(body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True))
    assert sock.poll(3000, zmq.POLLIN), "no reply"
    return unpack(sock.recv())


# --- 2.1: ids ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rid", [1.5, [1], {"a": 1}, True, b"\x01"])
def test_id_of_the_wrong_type_is_bad_request_with_nil_id(dealer, rid):
    reply = request(dealer, {"op": "ping", "id": rid})
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request" and reply["id"] is None, reply


@pytest.mark.parametrize("rid", [0, -7, 2**64 - 1, "", "abc"])
def test_int_and_str_ids_are_echoed(dealer, rid):
    assert request(dealer, {"op": "ping", "id": rid})["id"] == rid


@pytest.mark.parametrize(("body", "rid"), [
    ({"op": "ping", "id": 41, "pad": "x" * 70000}, 41),
    ({"pad": b"x" * 70000, "op": "ping", "id": "late id"}, "late id"),  # id after the big value
    ({"pad": [{}] * 70000, "id": 42}, 42),  # containers are skipped, not built
    ({"op": "ping", "id": [1, 2], "pad": "x" * 70000}, None),  # not a valid id
    ({"op": "ping", "pad": "x" * 70000}, None),
])
def test_too_large_replies_carry_a_decodable_id(dealer, body, rid):
    reply = request(dealer, body)
    assert reply["error"]["code"] == "too_large" and reply["id"] == rid, reply


def test_too_large_garbage_gets_nil_id(dealer):
    reply = request(dealer, b"\xdf" + b"\xff" * 70000)
    assert reply["error"]["code"] == "too_large" and reply["id"] is None


def test_unknown_request_keys_are_ignored(dealer):
    reply = request(dealer, {"op": "ping", "id": 5, "future_key": [1, {"x": 2}], "priority": "high"})
    assert reply["ok"] is True and reply["id"] == 5
    assert request(dealer, {"op": "prompt", "id": 6, "text": "a cat", "mood": 3})["ok"] is True


# --- 2.3 / 3.3: field types ----------------------------------------------------------------------

def _section(heading: str) -> str:
    start = PROTOCOL_MD.index(heading)
    end = PROTOCOL_MD.index("\n#", start + len(heading))
    return PROTOCOL_MD[start:end]


def _doc_fields(heading: str) -> dict[str, str]:
    """``{key: type}`` from a ``| key | type | meaning |`` table of the document."""
    fields = {}
    for line in _section(heading).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            for key in re.findall(r"`([a-z_]+)`", cells[0]):
                fields[key] = cells[1]
    return fields


def _has_type(value, typ: str) -> bool:
    typ = typ.strip()
    if typ.endswith(" or nil"):
        return value is None or _has_type(value, typ[: -len(" or nil")])
    if typ.startswith("[") and typ.endswith("]"):
        return isinstance(value, list) and all(_has_type(v, typ[1:-1]) for v in value)
    if typ.startswith("map "):
        key_t, val_t = typ[4:].split("->")
        return isinstance(value, dict) and all(_has_type(k, key_t) and _has_type(v, val_t) for k, v in value.items())
    simple = {"int": int, "float": float, "str": str, "bool": bool, "map": dict}[typ]
    return isinstance(value, simple) and (simple is bool or not isinstance(value, bool))


def test_status_and_stats_fields_have_their_documented_types(daemon, client, stream):
    status_doc, stats_doc = _doc_fields("### 2.3"), _doc_fields("### 3.3")
    assert len(status_doc) >= 20 and len(stats_doc) == 11, (status_doc, stats_doc)
    time.sleep(1.1)  # one stats period with frames flowing: rates and encode times are filled in
    st = client.status()
    for key, typ in status_doc.items():
        assert key in st and _has_type(st[key], typ), (key, typ, st.get(key))
    stats_event = wait_for(stream, is_event("stats"))[-1][1]
    for stats in (st["stats"], stats_event):
        for key, typ in stats_doc.items():
            assert key in stats and _has_type(stats[key], typ), (key, typ, stats.get(key))
    assert set(st["stats"]["encode_ms"]) == {"jpeg"}


def test_encode_ms_forgets_formats_nobody_subscribes_to(daemon, client):
    raw = sub_socket(zmq.Context.instance(), daemon.config.frames, "rgb24")
    wait_for(raw, lambda t, m: True)
    time.sleep(1.1)
    assert "rgb24" in client.status()["stats"]["encode_ms"]
    raw.close(0)
    deadline = time.monotonic() + 3
    while "rgb24" in client.status()["stats"]["encode_ms"]:
        assert time.monotonic() < deadline, client.status()["stats"]
        time.sleep(0.1)


# --- 1.1: ZMTP without a ZeroMQ library ----------------------------------------------------------

class RawZmtp:
    """Section 1.1 over a plain TCP socket, nothing else."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=3)

    def recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("peer closed")
            data += chunk
        return data

    def handshake(self, socket_type: bytes) -> tuple[bytes, dict[str, bytes]]:
        mine = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
        self.sock.sendall(mine)
        greeting = self.recv_exact(64)
        self.send(b"\x05READY\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type, command=True)
        flags, body = self.recv_frame()
        assert flags & 4 and body.startswith(b"\x05READY"), body
        props, pos = {}, 6
        while pos < len(body):
            n = body[pos]
            name = body[pos + 1:pos + 1 + n].decode()
            (size,) = struct.unpack(">I", body[pos + 1 + n:pos + 5 + n])
            props[name] = body[pos + 5 + n:pos + 5 + n + size]
            pos += 5 + n + size
        return greeting, props

    def send(self, body: bytes, more: bool = False, command: bool = False) -> None:
        flags = (1 if more else 0) | (4 if command else 0)
        size = struct.pack(">Q", len(body)) if len(body) > 255 else bytes([len(body)])
        self.sock.sendall(bytes([flags | (2 if len(body) > 255 else 0)]) + size + body)

    def recv_frame(self) -> tuple[int, bytes]:
        flags = self.recv_exact(1)[0]
        size = struct.unpack(">Q", self.recv_exact(8))[0] if flags & 2 else self.recv_exact(1)[0]
        return flags, self.recv_exact(size)

    def recv_command(self, name: bytes) -> bytes:
        """Body of the next command called ``name`` (messages in between are skipped)."""
        while True:
            flags, body = self.recv_frame()
            if flags & 4 and body[1:1 + body[0]] == name:
                return body[1 + body[0]:]


def test_daemon_greeting_comes_in_pieces_with_its_own_byte_8_and_minor_version(daemon):
    z = RawZmtp(daemon.config.control)
    z.sock.sendall(b"\xff" + b"\x00" * 8 + b"\x7f")  # only the signature
    z.sock.settimeout(0.5)
    first = b""
    try:
        while len(first) < 64:
            chunk = z.sock.recv(64)
            if not chunk:
                break
            first += chunk
    except TimeoutError:
        pass
    assert 10 <= len(first) < 64, first  # the rest waits for ours: a client must not wait for 64 bytes first
    z.sock.settimeout(3)
    z.sock.sendall(b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32)
    greeting = first + z.recv_exact(64 - len(first))
    assert greeting[0] == 0xFF and greeting[9] & 1 and greeting[10] == 3
    assert greeting[8] == 0x01 and greeting[11] == 1  # libzmq: byte 8 = identity length + 1; ZMTP 3.1
    assert greeting[12:16] == b"NULL"
    z.sock.close()


def test_raw_req_client_and_ping_pong(daemon):
    z = RawZmtp(daemon.config.control)
    _, props = z.handshake(b"REQ")
    assert props["Socket-Type"] == b"ROUTER"
    z.send(b"\x04PING" + struct.pack(">H", 0) + b"ctx-0123456789ab", command=True)  # TTL 0, 16-byte context
    assert z.recv_command(b"PONG") == b"ctx-0123456789ab"
    z.send(b"", more=True)  # REQ: empty delimiter, then the body
    z.send(msgpack.packb({"op": "ping", "id": 77}))
    flags, delimiter = z.recv_frame()
    assert flags & 1 and delimiter == b""
    flags, body = z.recv_frame()
    assert not flags & 1 and unpack(body)["id"] == 77 and unpack(body)["ok"] is True
    z.sock.close()


def test_raw_sub_client_ping_ttl_drops_a_silent_client(daemon):
    z = RawZmtp(daemon.config.frames)
    _, props = z.handshake(b"SUB")
    assert props["Socket-Type"] == b"XPUB"
    z.send(b"\x01event")
    z.send(b"\x04PING" + struct.pack(">H", 3) + b"x", command=True)  # TTL 0.3 s
    assert z.recv_command(b"PONG") == b"x"
    time.sleep(1.0)  # say nothing for longer than the TTL: the daemon closes the connection
    with pytest.raises((ConnectionError, OSError)):
        while True:
            z.recv_frame()
    z.sock.close()
