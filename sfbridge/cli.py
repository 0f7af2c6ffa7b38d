"""The ``sfbridge`` command. Subcommands only parse arguments and forward to library functions.

The settings a project pins once read ``SFBRIDGE_<NAME>`` environment variables as defaults:
``CONTROL`` and ``FRAMES`` (every command), ``LOG_LEVEL``, and for ``serve`` ``MODEL``, ``PROMPT``,
``SEED``, ``PACE``, ``MODEL_DIR``. One-off arguments (a ``reset --seed``, say) deliberately do not.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import os
import sys
from collections.abc import Callable, Sequence

from sfbridge import __version__
from sfbridge.protocol import DEFAULT_CONTROL, DEFAULT_FRAMES

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNAVAILABLE = 3  # the daemon did not answer

LOG_LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str) -> None:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                                "stream": "ext://sys.stderr"}},
        "loggers": {"sfbridge": {"handlers": ["stderr"], "level": level.upper(), "propagate": False}},
    })


def env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"SFBRIDGE_{name.upper().replace('-', '_')}", default)


def _add_endpoints(p: argparse.ArgumentParser, frames: bool = False) -> None:
    p.add_argument("--control", default=env("control", DEFAULT_CONTROL),
                   help="control endpoint (ROUTER) [%(default)s]")
    if frames:
        p.add_argument("--frames", default=env("frames", DEFAULT_FRAMES),
                       help="frame stream endpoint (XPUB) [%(default)s]")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per request try [%(default)s]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfbridge", description="Real-time generated video for games and VR.")
    parser.add_argument("--version", action="version", version=f"sfbridge {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=env("log_level", "info"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon", description="Run the sfbridge daemon.")
    p.add_argument("--model", default=env("model", "auto"),
                   help="generator: testsrc, tiny, self-forcing, or auto (self-forcing when its files and a "
                        "CUDA GPU are there, else testsrc with a warning) [%(default)s]")
    p.add_argument("--control", default=env("control", DEFAULT_CONTROL), help="control endpoint [%(default)s]")
    p.add_argument("--frames", default=env("frames", DEFAULT_FRAMES), help="frames endpoint [%(default)s]")
    p.add_argument("--width", type=int, default=None, help="frame width (testsrc default 832)")
    p.add_argument("--height", type=int, default=None, help="frame height (testsrc default 480)")
    p.add_argument("--prompt", default=env("prompt", None), help="initial prompt")
    p.add_argument("--seed", type=int, default=int(env("seed", "0") or 0), help="initial seed [%(default)s]")
    p.add_argument("--jpeg-quality", type=int, default=85, help="JPEG quality 1-100 [%(default)s]")
    p.add_argument("--pace", choices=("native", "off"), default=env("pace", "native"),
                   help="native: 16 fps or the production rate; off: publish as soon as decoded")
    p.add_argument("--sndhwm", type=int, default=4, help="frames queued per subscriber before dropping")
    p.add_argument("--block-delay", type=float, default=0.0,
                   help="testsrc only: seconds per block, to simulate a slow GPU")
    p.add_argument("--model-dir", default=env("model_dir", None), help="folder with the model files")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="model precision")
    p.add_argument("--decoder", choices=("vae", "taehv", "preview"), default=None,
                   help="latent decoder: vae or taehv (self-forcing), vae or preview (tiny)")
    p.add_argument("--window", type=int, default=None, help="attention window in latent frames")
    p.add_argument("--sink", type=int, default=None, help="sink frames kept at the window start")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="print the daemon's status as JSON")
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "status"))

    p = sub.add_parser("prompt", help="change the prompt while the stream runs")
    p.add_argument("text")
    p.add_argument("--transition", choices=("cut", "blend"), default="cut")
    p.add_argument("--blend-blocks", type=int, default=4)
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "prompt", text=a.text, transition=a.transition,
                                           blend_blocks=a.blend_blocks))

    p = sub.add_parser("seed", help="change the noise seed from the next block on")
    p.add_argument("seed", type=int)
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "seed", seed=a.seed))

    p = sub.add_parser("steps", help="set the denoising step list, e.g. 1000 750 500 250")
    p.add_argument("steps", type=int, nargs="+")
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "steps", steps=a.steps))

    for op in ("pause", "resume", "ping"):
        p = sub.add_parser(op, help=f"{op} the stream" if op != "ping" else "check the daemon answers")
        _add_endpoints(p)
        p.set_defaults(func=lambda a, op=op: _request(a, op))

    p = sub.add_parser("reset", help="start a new scene (clears caches)")
    p.add_argument("--prompt", default=None)
    p.add_argument("--seed", type=int, default=None)
    _add_endpoints(p)
    p.set_defaults(func=lambda a: _request(a, "reset", **{k: v for k, v in (("prompt", a.prompt),
                                                                           ("seed", a.seed)) if v is not None}))

    p = sub.add_parser("record", help="record what the stream shows to a video file")
    p.add_argument("output", help="output file, e.g. out.mp4")
    p.add_argument("--seconds", type=float, default=10.0, help="length to record [%(default)s]")
    p.add_argument("--format", choices=("rgb24", "jpeg"), default="rgb24",
                   help="stream format to record from (rgb24 = exact pixels) [%(default)s]")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better [%(default)s]")
    _add_endpoints(p, frames=True)
    p.set_defaults(func=cmd_record)

    for extra in _EXTRA_COMMANDS.values():
        extra(sub)
    return parser


# Later subcommands (view, doctor) register themselves here by name without touching the others.
_EXTRA_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def cmd_serve(a: argparse.Namespace) -> int:
    import zmq

    from sfbridge.daemon import DEFAULT_PROMPT, DaemonConfig, serve
    from sfbridge.generators import GeneratorError

    options = {k: v for k, v in (("width", a.width), ("height", a.height), ("model_dir", a.model_dir),
                                 ("dtype", a.dtype), ("decoder", a.decoder), ("window", a.window),
                                 ("sink", a.sink), ("device", a.device), ("seed", a.seed)) if v is not None}
    if a.block_delay:
        options["block_delay"] = a.block_delay
    try:
        config = DaemonConfig(model=a.model, control=a.control, frames=a.frames,
                              prompt=a.prompt or DEFAULT_PROMPT, seed=a.seed, jpeg_quality=a.jpeg_quality,
                              pace=a.pace, sndhwm=a.sndhwm, model_options=options)
        return serve(config)
    except (GeneratorError, ValueError) as exc:
        logging.getLogger("sfbridge.cli").error("%s", exc)
        return EXIT_ERROR
    except zmq.ZMQError as exc:
        logging.getLogger("sfbridge.cli").error("cannot bind %s / %s: %s (another daemon running?)",
                                                a.control, a.frames, exc)
        return EXIT_ERROR


def _request(a: argparse.Namespace, op: str, **args: object) -> int:
    from sfbridge.client import Client, DaemonUnavailable, RequestError

    with Client(control=a.control, timeout=a.timeout, retries=1) as client:
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
    from sfbridge.record import record

    try:
        n = record(a.output, seconds=a.seconds, control=a.control, frames=a.frames, fmt=a.format, crf=a.crf)
    except DaemonUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"wrote {n} frames to {a.output}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    _load_extra_commands()
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    return int(args.func(args) or 0)


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
