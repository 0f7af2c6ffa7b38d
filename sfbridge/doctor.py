"""``sfbridge doctor``: can this machine run ``--model self-forcing``, and if not, what exactly to do.

Prints :func:`sfbridge.model.files.doctor_report` as a table (or ``--json``) plus a summary that
names every missing piece. Exit status 0 when everything ``self-forcing`` needs is there, else 1,
so scripts and CI can gate on it. torch is imported inside the command only: registering the
subcommand must not slow every ``sfbridge`` invocation down.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

OPTIONAL = ("flash_attn", "file:taehv")  # the daemon runs without them (SDPA, VAE decoder)
HINT = ("See docs/MODELS.md for the downloads and where to put them; until then use "
        "`sfbridge serve --model testsrc` (test pattern) or `--model tiny` (random tiny model on CPU).")


def is_required(name: str) -> bool:
    """Rows whose failure rules out self-forcing; GPU memory rows are advice (offloading may still fit),
    per-backend ``attn:`` rows are information (``auto`` always finds one that runs)."""
    return name not in OPTIONAL and not name.startswith(("gpu", "attn:"))


def attention_rows(requested: str = "auto") -> list[dict[str, Any]]:
    """Which attention backend ``serve --attn REQUESTED`` would run, and why; on CUDA one row per kernel.

    Asked for the dtype self-forcing uses by default (bf16 on CUDA, fp32 on CPU; bf16 for a forced GPU
    kernel, which has no fp32) and Wan's head_dim.
    """
    import torch

    from sfbridge.model.attention import (
        AUTO_ORDER,
        AttentionBackendError,
        explain_backend,
        missing_requirements,
        probe_facts,
    )

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda or requested not in ("auto", "sdpa", "manual") else torch.float32
    try:
        backend, reason = explain_backend(requested, device, dtype)
        rows = [dict(name="attention", ok=True, detail=f"{backend}: {reason}")]
    except (AttentionBackendError, ValueError) as e:
        rows = [dict(name="attention", ok=False, detail=str(e))]
    if cuda:
        facts = probe_facts(device, dtype)
        for name in AUTO_ORDER[:-1]:
            need = missing_requirements(name, facts)
            rows.append(dict(name=f"attn:{name}", ok=not need, detail="can run" if not need else
                             "needs " + "; needs ".join(need)))
    return rows


def summarize(rows: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    """(ready, lines): ``ready`` when every required row is ok; lines name each failing item."""
    lines = []
    for r in rows:
        if not r["ok"]:
            kind = "missing" if is_required(r["name"]) else "note"
            lines.append(f"{kind}: {r['name']}: {r['detail']}")
    ready = all(r["ok"] for r in rows if is_required(r["name"]))
    return ready, lines


def format_table(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["name"]) for r in rows)
    out = []
    for r in rows:
        status = "ok" if r["ok"] else ("FAIL" if is_required(r["name"]) else "warn")
        if r["ok"] and not is_required(r["name"]) and ": missing" in r["detail"]:
            status = "opt"  # optional file absent (doctor_report counts it ok)
        out.append(f"  {status:4}  {r['name']:{width}}  {r['detail']}")
    return "\n".join(out)


def cmd_doctor(a: argparse.Namespace) -> int:
    from sfbridge.model.files import default_model_dir, doctor_report

    model_dir = a.model_dir or str(default_model_dir())
    rows = doctor_report(model_dir, a.hf_cache) + attention_rows(a.attn)
    ready, problems = summarize(rows)
    if a.json:
        print(json.dumps({"ready": ready, "model_dir": model_dir, "checks": rows}, indent=2))
        return 0 if ready else 1
    print(f"sfbridge doctor: model dir {model_dir}")
    print(format_table(rows))
    if ready:
        print("\nready: `sfbridge serve --model self-forcing` (or --model auto) can run here.")
        return 0
    print("\nnot ready for --model self-forcing:")
    for line in problems:
        print(f"  - {line}")
    print(HINT)
    return 1


def add_doctor_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check GPU, CUDA and model files for --model self-forcing")
    p.add_argument("--model-dir", default=None, help="model folder [$SFBRIDGE_MODEL_DIR or ~/.cache/sfbridge]")
    p.add_argument("--hf-cache", default=None, help="Hugging Face hub cache to search too [$HF_HUB_CACHE]")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--attn", default="auto", help="attention backend to check (auto, fa3, cudnn, fa2, sdpa) [auto]")
    p.set_defaults(func=cmd_doctor)


def _register() -> None:
    """Register into sfbridge.cli, and into ``__main__`` too when run as ``python -m sfbridge.cli``."""
    from sfbridge.cli import _EXTRA_COMMANDS

    _EXTRA_COMMANDS["doctor"] = add_doctor_parser
    extra = getattr(sys.modules.get("__main__"), "_EXTRA_COMMANDS", None)
    if isinstance(extra, dict):
        extra["doctor"] = add_doctor_parser


_register()
