"""sfbridge: real-time generated video for games and VR, served from a local daemon.

``from sfbridge import Client, AsyncClient, Frame, DaemonUnavailable, RequestError`` is the Python
entry point. Those names are imported on first use (PEP 562 module ``__getattr__``), so
``import sfbridge`` stays cheap: no zmq, numpy or JPEG codec until a client is actually asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "PROTOCOL_VERSION": "sfbridge.protocol",
    "Client": "sfbridge.client",
    "Frame": "sfbridge.client",
    "SfbridgeError": "sfbridge.client",
    "DaemonUnavailable": "sfbridge.client",
    "RequestError": "sfbridge.client",
    "AsyncClient": "sfbridge.aio",
}

__all__ = ["AsyncClient", "Client", "DaemonUnavailable", "Frame", "PROTOCOL_VERSION", "RequestError", "SfbridgeError",
           "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names come from __getattr__
    from sfbridge.aio import AsyncClient
    from sfbridge.client import Client, DaemonUnavailable, Frame, RequestError, SfbridgeError
    from sfbridge.protocol import PROTOCOL_VERSION


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sfbridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
