"""Endpoint strings: where they come from (argument, ``SFBRIDGE_*`` variable, default) and whether they are sane.

Why a module of its own: the CLI (every command, ``serve`` included), :class:`sfbridge.Client` and
:class:`sfbridge.aio.AsyncClient` must agree on one rule. libzmq's own errors are poor guides:
``127.0.0.1:5555`` (no scheme) fails with "Invalid argument", and ``tcp://127.0.0.1:99999``
silently binds a random port. So the rule is checked here, before any socket exists, and the
error names the setting and the value the user gave.
"""

from __future__ import annotations

import os

from sfbridge.protocol import DEFAULT_CONTROL, DEFAULT_FRAMES, DEFAULT_INPUT

SCHEMES = ("tcp", "ipc", "inproc")
ENV = {"control": "SFBRIDGE_CONTROL", "frames": "SFBRIDGE_FRAMES", "input": "SFBRIDGE_INPUT"}
DEFAULTS = {"control": DEFAULT_CONTROL, "frames": DEFAULT_FRAMES, "input": DEFAULT_INPUT}
ACCEPTED = "use tcp://HOST:PORT (port 1..65535), ipc://PATH or inproc://NAME"


def check_endpoint(value: str, label: str) -> str:
    """Return ``value`` if it is a usable ZeroMQ endpoint, else raise ValueError naming ``label``.

    ``label`` is what the user typed it as: ``--control``, ``SFBRIDGE_FRAMES`` or ``control``.
    """
    if not isinstance(value, str):
        raise ValueError(f"{label}: endpoint must be a string, got {type(value).__name__}")
    scheme, sep, rest = value.partition("://")
    if not sep:
        raise ValueError(f"{label} {value!r} has no scheme; {ACCEPTED}")
    if scheme not in SCHEMES:
        raise ValueError(f"{label} {value!r}: unknown scheme {scheme!r}; {ACCEPTED}")
    if not rest:
        raise ValueError(f"{label} {value!r} names no address; {ACCEPTED}")
    if scheme != "tcp":
        return value
    host, colon, port = rest.rpartition(":")
    if not colon or not port:
        raise ValueError(f"{label} {value!r} has no port; {ACCEPTED}")
    if not host:
        raise ValueError(f"{label} {value!r} has no host; {ACCEPTED}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{label} {value!r}: port {port!r} is not in 1..65535")
    return value


def resolve_endpoint(name: str, value: str | None, label: str | None = None) -> tuple[str, str]:
    """``(endpoint, label)`` for ``name`` ("control", "frames" or "input"), validated.

    An explicit ``value`` wins (reported as ``label``, default ``name``); otherwise the
    ``SFBRIDGE_CONTROL`` / ``SFBRIDGE_FRAMES`` variable; otherwise the protocol default.
    """
    if value is not None:
        label = label or name
    elif os.environ.get(ENV[name]):
        value, label = os.environ[ENV[name]], ENV[name]
    else:
        value, label = DEFAULTS[name], f"default {name} endpoint"
    return check_endpoint(value, label), label


def check_distinct(control: tuple[str, str], frames: tuple[str, str]) -> None:
    """The control (ROUTER) and frames (XPUB) sockets cannot share one address."""
    if control[0] == frames[0]:
        raise ValueError(f"{control[1]} and {frames[1]} are both {control[0]!r}; "
                         "control and frames need two different endpoints")


def serve_input(value: str | None, others: dict[str, tuple[str, str]]) -> str | None:
    """``serve``'s input endpoint: ``value`` (``--input``) or ``$SFBRIDGE_INPUT``, checked and distinct from
    ``others`` (control, frames); None when neither is set: the daemon then binds the default if it is free."""
    if value is None and not os.environ.get(ENV["input"]):
        return None
    endpoint, label = resolve_endpoint("input", value, "--input")
    for name, (other, other_label) in others.items():
        if endpoint == other:
            raise ValueError(f"{label} and {other_label} are both {endpoint!r}; input and {name} need two "
                             "different endpoints")
    return endpoint
