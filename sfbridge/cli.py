"""The ``sfbridge`` command. Subcommands only parse arguments and forward to library functions.

The settings a project pins once read ``SFBRIDGE_<NAME>`` environment variables as defaults:
``CONTROL`` and ``FRAMES`` (every command), ``LOG_LEVEL``, and for ``serve`` ``MODEL``, ``PROMPT``,
``SEED``, ``PACE``, ``MODEL_DIR``, ``CURVE_SECRET``, ``CURVE_ALLOW``; for client commands ``SERVER_KEY`` and
``CLIENT_KEY`` (read by :class:`sfbridge.Client` itself). One-off arguments (a ``reset --seed``, say)
deliberately do not.

Values are checked and variables read in :mod:`sfbridge.cli_settings`. Anything a user can type
ends in one ``error:`` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sfbridge import __version__
from sfbridge.cli_settings import (
    LOG_LEVELS,
    UsageError,
    apply_environment,
    block_delay_value,
    float_min,
    int_range,
    jpeg_quality_value,
    model_name,
    one_of,
    prompt_value,
    seed_value,
    sndhwm_value,
)
from sfbridge.cli_steering import (
    add_input_options,
    add_prompt_options,
    add_schedule_options,
    input_request,
    prompt_request,
    schedule_request,
)
from sfbridge.entry import EXIT_INTERRUPTED
from sfbridge.protocol import DEFAULT_CONTROL, DEFAULT_FRAMES

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # a bad option or SFBRIDGE_* value (argparse uses 2 too)
EXIT_UNAVAILABLE = 3  # the daemon did not answer
EXIT_BROKEN_PIPE = 141  # reader went away (`sfbridge status | head`), as a shell reports a SIGPIPE death

STEP_RANGE = (1, 1000)  # protocol.py: each denoising step is a timestep in 1..1000
log = logging.getLogger("sfbridge.cli")


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the object it was at set-up: a
    program that runs ``main()`` in-process (tests, embedders) may swap or close its stderr later, while
    daemon threads started by that call still log."""

    @property  # type: ignore[override]
    def stream(self) -> Any:  # what StreamHandler.emit writes to
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def configure_logging(level: str) -> None:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "sfbridge.cli.StderrHandler", "formatter": "plain"}},
        "loggers": {"sfbridge": {"handlers": ["stderr"], "level": level.upper(), "propagate": False}},
    })


# --- parser ----------------------------------------------------------------------------------------------

ENDPOINT_HELP = {"control": f"control endpoint (ROUTER) [$SFBRIDGE_CONTROL or {DEFAULT_CONTROL}]",
                 "frames": f"frame stream endpoint (XPUB) [$SFBRIDGE_FRAMES or {DEFAULT_FRAMES}]"}


def _add_endpoints(p: argparse.ArgumentParser, frames: bool = False, timeout: bool = True) -> None:
    p.add_argument("--control", default=None, help=ENDPOINT_HELP["control"])
    if frames:
        p.add_argument("--frames", default=None, help=ENDPOINT_HELP["frames"])
    if timeout:  # a client command: it may need CURVE keys too
        p.add_argument("--timeout", type=float_min(0, False), default=2.0,
                       help="seconds per request try [%(default)s]")
        add_key_options(p)


def add_key_options(p: argparse.ArgumentParser) -> None:
    """A client's CURVE settings (sfbridge/security.py); both or neither."""
    p.add_argument("--server-key", metavar="FILE", default=None,
                   help="the daemon's public key file (NAME.key) when it runs CURVE [$SFBRIDGE_SERVER_KEY]")
    p.add_argument("--client-key", metavar="FILE", default=None,
                   help="this client's key pair (NAME.key_secret from `sfbridge keygen`) [$SFBRIDGE_CLIENT_KEY]")


def check_key_files(a: argparse.Namespace) -> None:
    """Read a client command's key files once up front: a bad one is a usage error naming the option or variable."""
    if not hasattr(a, "server_key"):
        return
    from sfbridge.security import AccessError, client_keys

    try:
        client_keys(a.server_key, a.client_key, labels=("--server-key", "--client-key"))
    except AccessError as exc:
        raise UsageError(str(exc)) from None


def key_name(text: str) -> str:
    from sfbridge.security import AccessError, check_key_name

    try:
        return check_key_name(text)
    except AccessError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfbridge", description="Real-time generated video for games and VR.")
    parser.add_argument("--version", action="version", version=f"sfbridge {__version__}")
    log_help = "log detail on stderr [$SFBRIDGE_LOG_LEVEL or info]"
    parser.add_argument("--log-level", type=one_of(*LOG_LEVELS), metavar="{" + ",".join(LOG_LEVELS) + "}",
                        default=None, help=log_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon", description="Run the sfbridge daemon.")
    p.add_argument("--model", type=model_name, default=None,
                   help="generator: testsrc, tiny, self-forcing, or auto (self-forcing when its files and a "
                        "CUDA GPU are there, else testsrc with a warning) [$SFBRIDGE_MODEL or auto]")
    _add_endpoints(p, frames=True, timeout=False)
    p.add_argument("--input", default=None, metavar="ENDPOINT",
                   help="input endpoint (SUB, bound): game frames for v2v [$SFBRIDGE_INPUT or tcp://127.0.0.1:5557; "
                        "that default, when taken, only warns]")
    p.add_argument("--curve-secret", metavar="FILE", default=None,
                   help="CurveZMQ on every socket: the daemon's key pair (NAME.key_secret from `sfbridge keygen`); "
                        "needs --curve-allow [$SFBRIDGE_CURVE_SECRET]")
    p.add_argument("--curve-allow", metavar="DIR", default=None,
                   help="directory of the client public keys (*.key) admitted; any other key gets nothing "
                        "[$SFBRIDGE_CURVE_ALLOW]")
    p.add_argument("--insecure", action="store_true",
                   help="allow binding beyond loopback/ipc without CURVE (a trusted network only, e.g. WireGuard); "
                        "warned in the log and in status")
    p.add_argument("--width", type=int_range(2), default=None,
                   help="frame width, even (testsrc: 16..8192, default 832; tiny/self-forcing: multiple of 16)")
    p.add_argument("--height", type=int_range(2), default=None, help="frame height, even (testsrc default 480)")
    p.add_argument("--prompt", type=prompt_value, default=None, help="initial prompt [$SFBRIDGE_PROMPT or a landscape]")
    p.add_argument("--seed", type=seed_value, default=None, help="initial seed, 0..2^63-1 [$SFBRIDGE_SEED or 0]")
    p.add_argument("--jpeg-quality", type=jpeg_quality_value, default=85, help="JPEG quality 1-100 [%(default)s]")
    p.add_argument("--pace", type=one_of("native", "off"), metavar="{native,off}", default=None,
                   help="native: 16 fps or the production rate; off: publish as soon as decoded "
                        "[$SFBRIDGE_PACE or native]")
    p.add_argument("--sndhwm", type=sndhwm_value, default=4,
                   help="frames queued per subscriber before dropping [%(default)s]")
    p.add_argument("--block-delay", type=block_delay_value, default=0.0,
                   help="testsrc only: seconds per block, to simulate a slow GPU")
    p.add_argument("--model-dir", default=None, help="folder with the model files [$SFBRIDGE_MODEL_DIR]")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="model precision (self-forcing)")
    p.add_argument("--decoder", choices=("vae", "taehv", "preview"), default=None,
                   help="latent decoder: vae or taehv (self-forcing), vae or preview (tiny)")
    p.add_argument("--window", type=int, default=None, help="attention window in latent frames (tiny, self-forcing)")
    p.add_argument("--sink", type=int, default=None, help="sink frames kept at the window start (tiny, self-forcing)")
    p.add_argument("--device", default=None, help="torch device for self-forcing (default: cuda)")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="self-forcing speed preset: window/sink, decoder, steps and FP8 together; explicit "
                        "options win (docs/SELF_FORCING.md 'Presets') [quality]")
    p.add_argument("--fp8", choices=FP8_MODES, default=None,
                   help="FP8 linear layers (self-forcing, torchao, CUDA sm89+): on refuses elsewhere, auto falls "
                        "back to bf16 [the preset's, else off]")
    p.add_argument("--attn", choices=ATTN_BACKENDS, default=None,
                   help="attention backend (tiny, self-forcing); auto: fa3 on sm90, SDPA-cuDNN, fa2, SDPA; a "
                        "forced one that cannot run is refused with what is missing [auto]")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the DiT (tiny, self-forcing): compiles every window length at start-up "
                        "(docs/MODEL.md 'Compiled path'), then never recompiles")
    p.add_argument("--overlap", choices=("auto", "on", "off"), default=None,
                   help="decode block k while the DiT runs block k+1 (tiny, self-forcing); auto: on CUDA only "
                        "(measured slower on CPU, docs/SELF_FORCING.md 'Pipelining') [auto]")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="print the daemon's status as JSON")
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "status"))

    p = sub.add_parser("prompt", help="change the prompt while the stream runs",
                       description="Change the prompt: one TEXT, or a weighted list of several. Lands at the next "
                                   "block unless --at-block/--at-pts schedule it; the reply says where.")
    add_prompt_options(p)
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "prompt", **prompt_request(a)))

    p = sub.add_parser("seed", help="change the noise seed from the next block on")
    p.add_argument("seed", type=seed_value, help="the new seed, 0..2^63-1")
    add_schedule_options(p)
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "seed", seed=a.seed, **schedule_request(a)))

    p = sub.add_parser("steps", help="set the denoising step list, e.g. 1000 750 500 250")
    p.add_argument("steps", type=int_range(*STEP_RANGE), nargs="+",
                   help="1 to 4 timesteps in 1..1000, strictly decreasing (models with steps only)")
    add_schedule_options(p)
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "steps", steps=a.steps, **schedule_request(a)))

    p = sub.add_parser("cancel", help="drop a scheduled change before it lands (see `status` 'scheduled')")
    p.add_argument("state_id", type=int_range(0), metavar="STATE_ID",
                   help="the state_id a scheduled prompt/seed/steps reply gave")
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "cancel", state_id=a.state_id))

    p = sub.add_parser("input", help="switch video-to-video from game frames on (v2v) or off",
                       description="Restyle the frames clients send to the input socket (v2v) or go back to "
                                   "text-to-video (off). Lands at the next block unless --at-block/--at-pts "
                                   "schedule it; the reply says where.")
    add_input_options(p)
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "input", **input_request(a)))

    for op in ("pause", "resume", "ping"):
        p = sub.add_parser(op, help=f"{op} the stream" if op != "ping" else "check the daemon answers")
        _add_endpoints(p)
        p.set_defaults(func=lambda a, op=op: _request(a, op))

    p = sub.add_parser("reset", help="start a new scene (clears caches)")
    p.add_argument("--prompt", type=prompt_value, default=None, help="prompt of the new scene [keep the current one]")
    p.add_argument("--seed", type=seed_value, default=None, help="seed of the new scene, 0..2^63-1 [keep]")
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "reset", **{k: v for k, v in (("prompt", a.prompt),
                                                                           ("seed", a.seed)) if v is not None}))

    p = sub.add_parser("record", help="record what the stream shows to a video file")
    p.add_argument("output", help="output file: .mp4, .mkv, .mov or .avi (H.264)")
    p.add_argument("--seconds", type=float_min(0, False), default=10.0, help="stream time to record [%(default)s]")
    p.add_argument("--format", choices=("rgb24", "jpeg"), default="rgb24",
                   help="stream format to record from (rgb24 = exact pixels) [%(default)s]")
    p.add_argument("--crf", type=int_range(0, 51), default=18,
                   help="H.264 quality 0..51, lower is better [%(default)s]")
    p.add_argument("--wait", type=float_min(0, False), default=15.0,
                   help="seconds without a frame before giving up [%(default)s]")
    _add_endpoints(p, frames=True)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("keygen", help="write a CurveZMQ key pair: NAME.key (public) and NAME.key_secret (0600)",
                       description="Write NAME.key (z85 public key: give it to the other side) and NAME.key_secret "
                                   "(both keys, mode 0600: keep it). A daemon uses its own as --curve-secret and "
                                   "admits the clients' NAME.key files in --curve-allow DIR; a client uses the "
                                   "daemon's NAME.key as --server-key and its own NAME.key_secret as --client-key.")
    p.add_argument("name", type=key_name, metavar="NAME", help="file name without extension, e.g. daemon or laptop")
    p.add_argument("--dir", default=".", help="where to write (created 0700 if missing) [%(default)s]")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.set_defaults(func=cmd_keygen)

    for extra in _EXTRA_COMMANDS.values():
        extra(sub)
    # `sfbridge status --log-level debug` works too; SUPPRESS keeps a top-level --log-level when absent here.
    for cmd in sub.choices.values():
        cmd.add_argument("--log-level", type=one_of(*LOG_LEVELS), metavar="{" + ",".join(LOG_LEVELS) + "}",
                         default=argparse.SUPPRESS, help=log_help)
    return parser


# Later subcommands (view, doctor) register themselves here by name without touching the others.
_EXTRA_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}

# serve options -> the models that use them; the rest are dropped with a warning (--model auto: self-forcing's).
MODEL_OPTIONS = {"model_dir": ("self-forcing",), "dtype": ("self-forcing",), "device": ("self-forcing",),
                 "decoder": ("tiny", "self-forcing"), "window": ("tiny", "self-forcing"),
                 "sink": ("tiny", "self-forcing"), "block_delay": ("testsrc",), "preset": ("self-forcing",),
                 "fp8": ("self-forcing",), "attn": ("tiny", "self-forcing"), "compile": ("tiny", "self-forcing"),
                 "overlap": ("tiny", "self-forcing")}
# Kept literal so `--help` does not import torch; tests/test_cli.py checks them against the model's tables.
PRESETS = ("quality", "balanced", "fast")
FP8_MODES = ("auto", "on", "off")
ATTN_BACKENDS = ("auto", "fa3", "cudnn", "fa2", "flash", "sdpa", "manual")


def model_options(a: argparse.Namespace) -> dict[str, Any]:
    """Generator options for ``a.model``; odd sizes are refused, options it ignores are warned about."""
    for name in ("width", "height"):
        value = getattr(a, name)
        if value is not None and value % 2:
            raise UsageError(f"--{name} {value} is odd; frame sizes must be even (H.264/yuv420p recording and "
                             f"the models need them), e.g. {value + 1}")
    options = {k: v for k, v in (("width", a.width), ("height", a.height), ("seed", a.seed)) if v is not None}
    target = "self-forcing" if a.model == "auto" else a.model
    for dest, models in MODEL_OPTIONS.items():
        value = getattr(a, dest)
        if value is None or (dest == "block_delay" and not value):
            continue
        if target in models:
            options[dest] = value
        else:
            log.warning("--%s has no effect with --model %s (used by %s only)", dest.replace("_", "-"), a.model,
                        " and ".join(models))
    return options


def cmd_serve(a: argparse.Namespace) -> int:
    import zmq

    from sfbridge.daemon import DEFAULT_PROMPT, DaemonConfig, serve
    from sfbridge.generators import GeneratorError
    from sfbridge.security import AccessError

    options = model_options(a)
    try:
        config = DaemonConfig(model=a.model, control=a.control, frames=a.frames, input=a.input,
                              prompt=a.prompt or DEFAULT_PROMPT, seed=a.seed, jpeg_quality=a.jpeg_quality,
                              pace=a.pace, sndhwm=a.sndhwm, model_options=options, curve_secret=a.curve_secret,
                              curve_allow=a.curve_allow, insecure=a.insecure)
        return serve(config)
    except AccessError as exc:  # a refused bind or a bad key file: fails before any model loads
        log.error("%s", exc)
        return EXIT_USAGE
    except (GeneratorError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    except zmq.ZMQError as exc:
        hint = " (another daemon running?)" if exc.errno == zmq.EADDRINUSE else ""
        log.error("cannot bind %s / %s: %s%s", a.control, a.frames, exc, hint)
        return EXIT_ERROR


def _request(a: argparse.Namespace, op: str, **args: object) -> int:
    from sfbridge.client import Client, DaemonUnavailable, RequestError

    with Client(control=a.control, timeout=a.timeout, retries=1, server_key=a.server_key,
                client_key=a.client_key) as client:
        try:
            result = client.request(op, **args)
        except DaemonUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except RequestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return EXIT_OK


def cmd_record(a: argparse.Namespace) -> int:
    from sfbridge.client import DaemonUnavailable
    from sfbridge.record import RecordError, record

    try:
        result = record(a.output, seconds=a.seconds, control=a.control, frames=a.frames, fmt=a.format, crf=a.crf,
                        wait=a.wait, timeout=a.timeout, server_key=a.server_key, client_key=a.client_key)
    except RecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except DaemonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if result.interrupted:
        done = f"wrote {result.frames} frames to {a.output}" if result.frames else "nothing written"
        print(f"interrupted: {done}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"wrote {result.frames} frames to {a.output}")
    return EXIT_OK


def cmd_keygen(a: argparse.Namespace) -> int:
    from sfbridge.security import AccessError, keygen

    try:
        public, secret = keygen(a.name, a.dir, force=a.force)
    except AccessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"public key: {public}  (give it to the other side)")
    print(f"secret key: {secret}  (mode 0600: keep it here)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        _load_extra_commands()  # imports zmq, numpy, PIL: Ctrl-C here is an interruption too, not a traceback
        args = build_parser().parse_args(argv)
        apply_environment(args)
        configure_logging(args.log_level)
        check_key_files(args)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler, not at interpreter exit
        return code
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader (`| head`) has what it wanted; stop quietly like any Unix filter.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _load_extra_commands() -> None:
    """Import optional subcommand modules (each registers itself in ``_EXTRA_COMMANDS``)."""
    import importlib

    for name in ("sfbridge.viewer", "sfbridge.doctor"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


if __name__ == "__main__":
    sys.exit(main())
