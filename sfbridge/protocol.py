"""Wire protocol v1: message validation at the socket edge, headers, events. See docs/PROTOCOL.md.

Requests are validated here into frozen dataclasses, so the rest of the daemon only ever sees
well-typed commands. Anything wrong raises :class:`ProtocolError` with a code from
:data:`ERROR_CODES`; the control thread turns that into an error reply and carries on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from sfbridge import values
from sfbridge.values import (  # noqa: F401 - re-exported: clients and the CLI import the limits from here
    INTERPS,
    MAX_AT_BLOCK,
    MAX_AT_PTS,
    MAX_BLEND_BLOCKS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MIXES,
    TRANSITIONS,
    InvalidValue,
)

PROTOCOL_VERSION = 1

DEFAULT_CONTROL = "tcp://127.0.0.1:5555"  # ROUTER: requests and replies
DEFAULT_FRAMES = "tcp://127.0.0.1:5556"  # XPUB: frames and events

MAX_REQUEST_BYTES = 65536  # larger requests get a `too_large` error reply
MAX_SOCKET_MESSAGE_BYTES = 1 << 20  # ZMQ_MAXMSGSIZE on the ROUTER: libzmq drops such peers
MAX_WEIGHTED_PROMPTS = 8  # entries of a `prompts` list
MAX_SCHEDULED = 256  # scheduled changes pending at once; more -> `too_large`

FRAME_FORMATS = ("jpeg", "rgb24")
EVENT_TOPIC = "event"
# TRANSITIONS; INTERPS: path of a blend from the conditioning on screen to the new one; MIXES: how a
# weighted `prompts` list combines (slerp takes exactly 2 entries). Value limits live in sfbridge/values.py.

ERROR_CODES = (
    "bad_msgpack",
    "bad_request",
    "unknown_op",
    "invalid_value",
    "too_large",
    "not_supported",
    "not_found",
    "internal",
)


class ProtocolError(Exception):
    """A request the daemon refuses; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id  # the request's id when it could be read: the reply echoes it


# ---------------------------------------------------------------------------------------------
# Typed requests


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Schedule:
    """When a steering change lands: the next block (both None), a block index, or a scene time."""

    at_block: int | None = None
    at_pts: float | None = None

    @property
    def immediate(self) -> bool:
        return self.at_block is None and self.at_pts is None


@dataclass(frozen=True)
class Prompt:
    text: str  # the single prompt, or the display string of ``prompts``
    transition: str = "cut"
    blend_blocks: int = 4
    prompts: tuple[tuple[str, float], ...] = ()  # weighted list (2..8 entries); () = just ``text``
    mix: str = "linear"
    interp: str = "linear"
    recache: bool = False
    schedule: Schedule = field(default_factory=Schedule)

    def texts(self) -> tuple[str, ...]:
        """Every text the conditioning needs encoded."""
        return tuple(t for t, _ in self.prompts) or (self.text,)


@dataclass(frozen=True)
class Seed:
    seed: int
    schedule: Schedule = field(default_factory=Schedule)


@dataclass(frozen=True)
class Steps:
    steps: tuple[int, ...]
    schedule: Schedule = field(default_factory=Schedule)


@dataclass(frozen=True)
class Cancel:
    state_id: int


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Reset:
    prompt: str | None = None
    seed: int | None = None


Request = Ping | Status | Prompt | Seed | Steps | Pause | Resume | Reset | Cancel


def _field(msg: dict, name: str, types: type | tuple[type, ...], required: bool, op: str) -> Any:
    if name not in msg or msg[name] is None:
        if required:
            raise ProtocolError("bad_request", f"op {op!r} needs field {name!r}")
        return None
    value = msg[name]
    # bool is a subclass of int: a `true` seed is a type error, not seed 1.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ProtocolError("bad_request", f"field {name!r} of op {op!r} must be {_tname(types)}, got bool")
    if not isinstance(value, types):
        raise ProtocolError(
            "bad_request", f"field {name!r} of op {op!r} must be {_tname(types)}, got {type(value).__name__}"
        )
    return value


def _tname(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join({int: "int", str: "str", list: "array", bool: "bool", float: "float",
                        dict: "map"}.get(t, t.__name__)
                       for t in ts)


def _checked(check: Any, value: Any, name: str, op: str) -> Any:
    """``check(value, name)`` from sfbridge/values.py; its refusal becomes an ``invalid_value`` reply with
    the very message the CLI and the environment variables give."""
    try:
        return check(value, name)
    except InvalidValue as exc:
        raise ProtocolError("invalid_value", f"op {op!r}: {exc}") from None


def _prompt_text(text: str, field: str, op: str) -> str:
    return _checked(values.prompt, text, field, op)


def _seed(value: int, op: str) -> int:
    return _checked(values.seed, value, "seed", op)


def _choice(m: dict, name: str, choices: tuple[str, ...], default: str, op: str) -> str:
    value = _field(m, name, str, False, op)
    if value is None:
        return default
    return _checked(lambda v, n: values.choice(v, n, choices), value, name, op)


def _number(value: Any, name: str, op: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError("bad_request", f"{name} of op {op!r} must be int or float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ProtocolError("invalid_value", f"{name} of op {op!r} must be finite, got {value}")
    return float(value)


def parse_schedule(m: dict, op: str) -> Schedule:
    """``at_block`` or ``at_pts`` of any steering op (prompt, seed, steps; later input): neither = next block."""
    at_block = _field(m, "at_block", int, False, op)
    at_pts = m.get("at_pts")
    if at_block is not None and at_pts is not None:
        raise ProtocolError("bad_request", f"op {op!r} takes at_block or at_pts, not both "
                            f"(got at_block={at_block}, at_pts={at_pts})")
    if at_block is not None:
        at_block = _checked(values.at_block, at_block, "at_block", op)
    if at_pts is not None:
        at_pts = _checked(values.at_pts, _number(at_pts, "field 'at_pts'", op), "at_pts", op)
    return Schedule(at_block=at_block, at_pts=at_pts)


def display_text(prompts: tuple[tuple[str, float], ...]) -> str:
    """``"a red desert (0.70) + a blue ocean (0.30)"``: the weights normalised to sum 1, 2 decimals."""
    total = sum(w for _, w in prompts)
    return " + ".join(f"{t} ({w / total:.2f})" for t, w in prompts)


def _parse_prompts(items: list) -> tuple[tuple[str, float], ...]:
    if not 1 <= len(items) <= MAX_WEIGHTED_PROMPTS:
        raise ProtocolError("invalid_value", f"field 'prompts' of op 'prompt' must hold 1 to "
                            f"{MAX_WEIGHTED_PROMPTS} entries, got {len(items)}")
    out = []
    for i, entry in enumerate(items):
        name = f"prompts[{i}]"
        if not isinstance(entry, dict):
            raise ProtocolError("bad_request", f"{name} of op 'prompt' must be a map {{text, weight}}, "
                                f"got {type(entry).__name__}")
        text = _prompt_text(_field(entry, "text", str, True, "prompt"), f"{name}.text", "prompt")
        if entry.get("weight") is None:
            raise ProtocolError("bad_request", f"{name} of op 'prompt' needs field 'weight'")
        weight = _number(entry["weight"], f"{name}.weight", "prompt")
        if weight < 0:
            raise ProtocolError("invalid_value", f"{name}.weight of op 'prompt' must be >= 0, got {weight}")
        out.append((text, weight))
    if not any(w > 0 for _, w in out):
        raise ProtocolError("invalid_value", "the weights of field 'prompts' of op 'prompt' must not all be 0")
    return tuple(out)


def _parse_prompt(m: dict) -> Prompt:
    has_text, has_list = m.get("text") is not None, m.get("prompts") is not None
    if has_text == has_list:
        raise ProtocolError("bad_request", "op 'prompt' needs exactly one of the fields 'text' and 'prompts', got "
                            + ("both" if has_text else "neither"))
    transition = _choice(m, "transition", TRANSITIONS, "cut", "prompt")
    interp = _choice(m, "interp", INTERPS, "linear", "prompt")
    mix = _choice(m, "mix", MIXES, "linear", "prompt")
    blend = _field(m, "blend_blocks", int, False, "prompt")
    blend = 4 if blend is None else _checked(values.blend_blocks, blend, "blend_blocks", "prompt")
    recache = _field(m, "recache", bool, False, "prompt")
    schedule = parse_schedule(m, "prompt")
    if has_text:
        text, prompts = _prompt_text(_field(m, "text", str, True, "prompt"), "text", "prompt"), ()
    else:
        prompts = _parse_prompts(_field(m, "prompts", list, True, "prompt"))
        text = display_text(prompts)
    count = len(prompts) if has_list else 1
    if mix == "slerp" and count != 2:  # a single `text` is one prompt: nothing to slerp between
        raise ProtocolError("invalid_value", f"mix 'slerp' of op 'prompt' takes exactly 2 prompts, "
                            f"got {count}; use mix 'linear' for other counts")
    if has_list and len(prompts) == 1:  # one entry at any weight > 0 is that prompt: the same state as `text`
        text, prompts = prompts[0][0], ()
    return Prompt(text=text, transition=transition, blend_blocks=blend, prompts=prompts,
                  mix=mix if prompts else "linear", interp=interp, recache=bool(recache), schedule=schedule)


def _parse_seed(m: dict) -> Seed:
    return Seed(seed=_seed(_field(m, "seed", int, True, "seed"), "seed"), schedule=parse_schedule(m, "seed"))


def _parse_steps(m: dict) -> Steps:
    steps = _field(m, "steps", list, True, "steps")
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ProtocolError("bad_request",
                                f"field 'steps' of op 'steps' must hold integers, got {type(s).__name__}")
    steps = _checked(values.steps, steps, "steps", "steps")
    return Steps(steps=tuple(steps), schedule=parse_schedule(m, "steps"))


def _parse_cancel(m: dict) -> Cancel:
    return Cancel(state_id=_field(m, "state_id", int, True, "cancel"))


def _parse_reset(m: dict) -> Reset:
    prompt = _field(m, "prompt", str, False, "reset")
    seed = _field(m, "seed", int, False, "reset")
    return Reset(
        prompt=None if prompt is None else _prompt_text(prompt, "prompt", "reset"),
        seed=None if seed is None else _seed(seed, "reset"),
    )


# --- op `input` and the input socket's defaults (issue 12; docs/PROTOCOL.md "Input frames") ---------------
DEFAULT_INPUT = "tcp://127.0.0.1:5557"  # SUB, bound by the daemon: game frames in (clients connect PUB)
INPUT_MODES = ("off", "v2v")  # ignore input frames, or restyle them (video-to-video)
DEFAULT_INPUT_STRENGTH = 0.7  # Daydream Scope's default; StreamDiffusionV2 uses 0.8


@dataclass(frozen=True)
class Input:
    mode: str  # one of INPUT_MODES
    strength: float = DEFAULT_INPUT_STRENGTH  # 0: the input as encoded .. 1: text-to-video
    motion_adaptive: bool = False
    schedule: Schedule = field(default_factory=Schedule)


Request = Request | Input  # type: ignore[misc]


def _parse_input(m: dict) -> Input:
    if m.get("mode") is None:
        raise ProtocolError("bad_request", f"op 'input' needs field 'mode' ({' or '.join(INPUT_MODES)})")
    mode = _choice(m, "mode", INPUT_MODES, "off", "input")
    strength = m.get("strength")
    strength = DEFAULT_INPUT_STRENGTH if strength is None else _number(strength, "field 'strength'", "input")
    if not 0.0 <= strength <= 1.0:
        raise ProtocolError("invalid_value", f"field 'strength' of op 'input' must be in 0..1, got {strength}")
    motion = _field(m, "motion_adaptive", bool, False, "input")
    return Input(mode=mode, strength=strength, motion_adaptive=bool(motion), schedule=parse_schedule(m, "input"))


_PARSERS = {
    "ping": lambda m: Ping(),
    "status": lambda m: Status(),
    "prompt": _parse_prompt,
    "seed": _parse_seed,
    "steps": _parse_steps,
    "pause": lambda m: Pause(),
    "resume": lambda m: Resume(),
    "reset": _parse_reset,
    "cancel": _parse_cancel,
    "input": _parse_input,
}
OPS = tuple(_PARSERS)


def _valid_id(rid: Any) -> bool:
    """Ids are int or str (docs/PROTOCOL.md 2.1); bool is an int subclass in Python but not on the wire."""
    return rid is None or (isinstance(rid, (int, str)) and not isinstance(rid, bool))


_ID_KEYS = (b"\xa2id", b"\xd9\x02id")  # the key "id" as fixstr and as str8


def peek_request_id(body: bytes) -> Any:
    """The ``id`` of a request too large to decode, or None.

    Walks only the top-level map and skips every value but ``id`` without building it (``skip``
    allocates nothing), so a hostile body of nested containers costs no memory. The id itself is
    read with limits that refuse any container: a valid id is an int or a str.
    """
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(body), 1), max_str_len=MAX_REQUEST_BYTES,
                                max_bin_len=0, max_array_len=0, max_map_len=0, max_ext_len=0)
    rid = None
    try:
        unpacker.feed(body)
        for _ in range(unpacker.read_map_header()):
            pos = unpacker.tell()
            key = next((k for k in _ID_KEYS if body[pos:pos + len(k)] == k), None)
            if key is None:
                unpacker.skip()
                unpacker.skip()
                continue
            unpacker.read_bytes(len(key))
            rid = unpacker.unpack()
    except Exception:  # not a map, truncated, an id that is a container: no id to echo
        return None
    return rid if _valid_id(rid) else None


def decode_request(body: bytes) -> tuple[Any, Request]:
    """Decode and validate one request body -> ``(id, request)``.

    Raises :class:`ProtocolError`; its ``request_id`` holds the id when it could be read, so even a
    rejected request's reply carries the client's id. An id of the wrong type is itself a
    ``bad_request`` (reply id nil): echoing nil with ``ok: true`` would hide the client's bug.
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise ProtocolError("too_large", f"request is {len(body)} bytes, max {MAX_REQUEST_BYTES}",
                            request_id=peek_request_id(body))
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError("bad_msgpack", f"body is not valid msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_request", f"request must be a msgpack map, got {type(msg).__name__}")
    rid = msg.get("id")
    if not _valid_id(rid):
        raise ProtocolError("bad_request", f"'id' must be an int or a string, got {type(rid).__name__}")
    try:
        op = msg.get("op")
        if op is None:
            raise ProtocolError("bad_request", "request has no 'op' field")
        if not isinstance(op, str):
            raise ProtocolError("bad_request", f"'op' must be a string, got {type(op).__name__}")
        parser = _PARSERS.get(op)
        if parser is None:
            raise ProtocolError("unknown_op", f"unknown op {op[:64]!r}; known ops: {', '.join(OPS)}")
        return rid, parser(msg)
    except ProtocolError as err:
        err.request_id = rid
        raise


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def ok_reply(rid: Any, result: dict) -> bytes:
    return pack({"id": rid, "ok": True, "v": PROTOCOL_VERSION, "result": result})


def error_reply(rid: Any, code: str, message: str) -> bytes:
    return pack({"id": rid, "ok": False, "v": PROTOCOL_VERSION, "error": {"code": code, "message": message}})


def make_event(type_: str, **fields: Any) -> dict:
    return {"v": PROTOCOL_VERSION, "type": type_, "t": time.time(), **fields}


def frame_header(*, stream: str, seq: int, block: int, idx: int, frame: int, fps: float, width: int,
                 height: int, fmt: str, state: int, t_gen: float, input_mode: str = "off",
                 source: tuple[str, int, float] | None = None) -> dict:
    """The frame header map (docs/PROTOCOL.md 3.1); ``t_pub`` is filled in right before sending.

    ``input`` names the input frame this frame was made from (client, seq, t_cap), nil when none was
    (input mode off, or the text-only fallback): a game measures its round trip with it."""
    return {
        "v": PROTOCOL_VERSION, "stream": stream, "seq": seq, "block": block, "idx": idx, "frame": frame,
        "pts": frame / fps, "w": width, "h": height, "format": fmt, "state": state, "t_gen": t_gen,
        "t_pub": 0.0, "input_mode": input_mode,
        "input": None if source is None else {"client": source[0], "seq": source[1], "t_cap": source[2]},
    }
