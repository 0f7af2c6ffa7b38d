"""Msgpack samples shared by the client tests (tests/test_csharp_client.py, tests/test_godot_client.py).

DECODE_SAMPLE is packed with Python's msgpack and handed to a client's decoder; ENCODED_BY_CLIENT
is what the clients' console/headless test programs encode (Python unpacks it and compares).
Each test adds the values only its client handles (uint64 above 2**63, float32, str16, ...).
"""

from __future__ import annotations

DECODE_SAMPLE: dict = {
    "u8": 200,
    "u16": 60000,
    "u32": 4000000000,
    "i8": -100,
    "i16": -30000,
    "i32": -2000000000,
    "i64": -(2**40),
    "nfix": -3,
    "f64": 0.1,
    "t": True,
    "f": False,
    "n": None,
    "s": "héllo",
    "b": b"\x00\x01\xff",
    "a": [1, [2, {"x": "y"}]],
    "m": {"k": 1.5},
}

ENCODED_BY_CLIENT: dict = {
    "op": "prompt",
    "id": 7,
    "neg": -100000,
    "big": 1 << 40,
    "f64": 3.5,
    "nil": None,
    "yes": True,
    "bin": b"\x00\xff",
    "arr": [1, "two", 3.0],
}


def decode_sample(**extra) -> dict:
    """DECODE_SAMPLE plus (or overriding) the given keys, as a new dict."""
    return {**DECODE_SAMPLE, **extra}


def encoded_by_client(**extra) -> dict:
    """ENCODED_BY_CLIENT plus the given keys, as a new dict."""
    return {**ENCODED_BY_CLIENT, **extra}
