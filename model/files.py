"""Model files: where they come from, where they live, and whether they can be read.

Mirrors no single official file: the official code hardcodes `wan_models/Wan2.1-T2V-1.3B/`
and `checkpoints/` relative to the working directory (`inference.py`, `demo.py`,
`utils/wan_wrapper.py`). sfbridge instead resolves one model directory (see docs/MODELS.md):

    <model_dir>/
      self_forcing_dmd.pt                     gdhe17/Self-Forcing  checkpoints/self_forcing_dmd.pt
      Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth
      Wan2.1-T2V-1.3B/Wan2.1_VAE.pth
      Wan2.1-T2V-1.3B/google/umt5-xxl/        tokenizer folder (spiece.model, tokenizer.json, ...)
      taew2_1.pth                             optional, madebyollin/taehv

Every file may also be found in the Hugging Face hub cache
(`~/.cache/huggingface/hub/models--ORG--NAME/snapshots/*/PATH`), so a user who already ran
`huggingface-cli download` needs to copy nothing.

Also holds the state-dict reading helpers shared by vae.py, t5.py and taehv.py, so that every
loader reports a bad file the same way: the error names the file and the key.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("sfbridge.model.files")

ENV_MODEL_DIR = "SFBRIDGE_MODEL_DIR"
DEFAULT_MODEL_DIR = Path("~/.cache/sfbridge")
ENV_HF_CACHE = "HF_HUB_CACHE"  # huggingface_hub's own override of the hub cache folder


# ---------------------------------------------------------------------------------------------
# State dict reading (shared by the model loaders)


class ModelFileError(ValueError):
    """A weight file is unreadable or does not match the module; the message names file and key."""


def read_state_dict(path: str | os.PathLike, nested_keys: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Read a flat {name: tensor} dict from `.safetensors` or a torch pickle (`.pt`/`.pth`).

    The one reader of every loader here (DiT, VAE, T5, TAEHV), so a bad file is reported the same
    way everywhere. Pickles are loaded with `weights_only=True` (the official files are plain tensor
    dicts), so a file carrying arbitrary objects is refused instead of executed; zip-format pickles
    are memory-mapped (an 11 GB text encoder stays out of RAM until its tensors are copied).
    `nested_keys`: top-level keys to descend into, first match wins (e.g. `generator_ema`,
    `generator`, `model` for the Self Forcing checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:  # the reader checks the header against the file: a cut or altered header is refused here
            sd: Any = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, ValueError...
            raise ModelFileError(f"{path}: not a readable safetensors file, truncated or damaged "
                                 f"({path.stat().st_size} bytes; {type(e).__name__}: {e})") from e
    else:
        with open(path, "rb") as f:
            is_zip = f.read(4) == _ZIP_MAGIC
        if is_zip:
            verify_zip(path)
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
        except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, BadZipFile...
            raise ModelFileError(f"{path}: not a readable torch checkpoint, truncated or damaged "
                                 f"({path.stat().st_size} bytes; {type(e).__name__}: {e})") from e
    if not isinstance(sd, dict):
        raise ModelFileError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    for k in nested_keys:
        if isinstance(sd.get(k), dict):
            log.info("%s: using '%s'", path, k)
            sd = sd[k]
            break
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFileError(f"{path}: not a state dict; non-tensor entries {bad[:5]}")
    return sd


FULL_CRC_MAX_BYTES = 1 << 30  # files up to this size get every CRC checked; larger: members up to MEMBER_CRC_MAX
MEMBER_CRC_MAX_BYTES = 64 << 20  # the pickle, small tensors: always checked (a cut pickle is the usual damage)
ENV_VERIFY = "SFBRIDGE_VERIFY_CHECKSUMS"  # "1": check every CRC of every file, whatever its size


def verify_zip(path: Path, full: bool | None = None, chunk: int = 16 << 20) -> None:
    """Check a torch zip checkpoint against its own directory: every member inside the file, CRC-32s.

    Why: torch's reader trusts the archive. A cut file fails with a bare ``OSError: Invalid argument``,
    and a changed byte in a tensor loads silently as a wrong weight (only the pickle's own syntax is
    checked). Every zip member carries a CRC-32. Checking costs one read of the data at ~0.3-1 GB/s
    (zlib), so ``full`` (default: files up to FULL_CRC_MAX_BYTES, or ``$SFBRIDGE_VERIFY_CHECKSUMS=1``)
    checks all members; otherwise members up to MEMBER_CRC_MAX_BYTES (the pickle, small tensors) are
    checked and larger ones only for lying inside the file, so an 11 GB text encoder still starts fast.
    """
    size = path.stat().st_size
    if full is None:
        full = size <= FULL_CRC_MAX_BYTES or os.environ.get(ENV_VERIFY) == "1"
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.header_offset + info.compress_size > size:
                    raise ModelFileError(f"{path}: truncated: member {info.filename!r} ends past the end of "
                                         f"the file ({size} bytes)")
                if not full and info.file_size > MEMBER_CRC_MAX_BYTES:
                    continue
                with z.open(info) as member:  # ZipExtFile raises BadZipFile on a CRC mismatch at the end
                    while member.read(chunk):
                        pass
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ModelFileError(f"{path}: damaged torch checkpoint, truncated or altered ({size} bytes; "
                             f"{type(e).__name__}: {e})") from e


def load_strict(
    module: torch.nn.Module,
    sd: dict[str, torch.Tensor],
    source: str | os.PathLike,
    ignore_prefixes: tuple[str, ...] = (),
    assign: bool = False,
) -> list[str]:
    """Copy `sd` into `module`, strict on every key the module has.

    Keys starting with one of `ignore_prefixes` are dropped first (documented per caller, e.g.
    the VAE encoder half that sfbridge never runs); any other unexpected key, any missing key and
    any shape mismatch raises ModelFileError naming `source` and the key. Returns the ignored keys.
    `assign`: adopt the tensors instead of copying (for modules built on the meta device).
    """
    ignored = [k for k in sd if k.startswith(ignore_prefixes)] if ignore_prefixes else []
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore_prefixes)} if ignore_prefixes else sd
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing:
        raise ModelFileError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all)")
    if unexpected:
        raise ModelFileError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ModelFileError(
                f"{source}: key {k!r} has shape {list(sd[k].shape)}, the module expects {list(v.shape)}"
            )
    module.load_state_dict(sd, strict=True, assign=assign)
    if ignored:
        log.debug("%s: ignored %d keys with prefixes %s", source, len(ignored), ignore_prefixes)
    return ignored


# ---------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True)
class FileSpec:
    """One file (or folder) a user downloads."""

    name: str  # short name used in reports
    rel_path: str  # path under the model dir
    hf_repo: str  # public repository it comes from ("github:..." for non-HF sources)
    hf_path: str  # path inside that repository (also the path inside an HF cache snapshot)
    size: str  # human size, as published
    sha256: str  # "unknown" where it was not verified
    required: bool = True
    is_dir: bool = False


WAN_DIR = "Wan2.1-T2V-1.3B"
FILE_SPECS: tuple[FileSpec, ...] = (
    FileSpec(
        "generator",
        "self_forcing_dmd.pt",
        "gdhe17/Self-Forcing",
        "checkpoints/self_forcing_dmd.pt",
        "~5.7 GB (1.419 B float32 params)",
        "unknown",
    ),
    FileSpec(
        "text_encoder",
        f"{WAN_DIR}/models_t5_umt5-xxl-enc-bf16.pth",
        "Wan-AI/Wan2.1-T2V-1.3B",
        "models_t5_umt5-xxl-enc-bf16.pth",
        "~11.4 GB (bf16)",
        "unknown",
    ),
    FileSpec(
        "vae",
        f"{WAN_DIR}/Wan2.1_VAE.pth",
        "Wan-AI/Wan2.1-T2V-1.3B",
        "Wan2.1_VAE.pth",
        "~508 MB (fp32)",
        "unknown",
    ),
    FileSpec(
        "tokenizer",
        f"{WAN_DIR}/google/umt5-xxl",
        "Wan-AI/Wan2.1-T2V-1.3B",
        "google/umt5-xxl",
        "~20 MB",
        "unknown",
        is_dir=True,
    ),
    FileSpec("taehv", "taew2_1.pth", "github:madebyollin/taehv", "taew2_1.pth", "~22 MB", "unknown", required=False),
)


@dataclass
class ModelFiles:
    """Resolved paths: `paths[name]` is where the file is (or would go), `missing` the absent names."""

    model_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every required file is present (taehv is optional)."""
        required = {s.name for s in FILE_SPECS if s.required}
        return not any(m in required for m in self.missing)

    def __getattr__(self, name: str) -> Path:
        paths = self.__dict__.get("paths", {})
        if name in paths:
            return paths[name]
        raise AttributeError(name)


def default_model_dir() -> Path:
    """`$SFBRIDGE_MODEL_DIR`, else `~/.cache/sfbridge`."""
    return Path(os.environ.get(ENV_MODEL_DIR) or DEFAULT_MODEL_DIR).expanduser()


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`."""
    if os.environ.get(ENV_HF_CACHE):
        return Path(os.environ[ENV_HF_CACHE]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def _find_in_hf_cache(cache: Path, spec: FileSpec) -> Path | None:
    """Newest snapshot of `spec.hf_repo` holding `spec.hf_path`, or None."""
    if spec.hf_repo.startswith("github:"):
        return None
    snapshots = cache / f"models--{spec.hf_repo.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return None
    hits = [s / spec.hf_path for s in snapshots.iterdir() if (s / spec.hf_path).exists()]
    return max(hits, key=lambda p: p.stat().st_mtime) if hits else None


def resolve_model_files(
    model_dir: str | os.PathLike | None = None, hf_cache: str | os.PathLike | None = None
) -> ModelFiles:
    """Find every file of FILE_SPECS: first under `model_dir`, then in the HF hub cache.

    `model_dir` None -> default_model_dir(). Files found nowhere are listed in `missing`, and
    their path is where they should be put under `model_dir`.
    """
    root = Path(model_dir).expanduser() if model_dir is not None else default_model_dir()
    cache = Path(hf_cache).expanduser() if hf_cache is not None else hf_cache_dir()
    out = ModelFiles(model_dir=root)
    for spec in FILE_SPECS:
        local = root / spec.rel_path
        # also accept the flat layout (file directly under model_dir) for single files
        candidates = [local, root / Path(spec.rel_path).name] if not spec.is_dir else [local]
        found = next((p for p in candidates if p.exists()), None) or _find_in_hf_cache(cache, spec)
        out.paths[spec.name] = found or local
        if found is None:
            out.missing.append(spec.name)
    return out


# ---------------------------------------------------------------------------------------------
# Checks (back `sfbridge doctor`)

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOLS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def probe_file(path: Path) -> tuple[bool, str]:
    """Cheap readability check: header only, never the whole tensor data.

    .safetensors: 8-byte little-endian header length + JSON header that parses.
    .pt/.pth: a torch zip archive with a `*/data.pkl` member, or a legacy pickle magic.
    Folder (tokenizer): holds spiece.model or tokenizer.json.
    """
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        ok = bool(names & {"spiece.model", "tokenizer.json"})
        return ok, ("tokenizer files: " + ", ".join(sorted(names))) if ok else "no spiece.model/tokenizer.json"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if path.suffix == ".safetensors":
                (n,) = struct.unpack("<Q", head)
                if n > 100_000_000:
                    return False, f"safetensors header length {n} is implausible"
                header = json.loads(f.read(n))
                n_tensors = len([k for k in header if k != "__metadata__"])
                return True, f"safetensors, {n_tensors} tensors"
        if head.startswith(_ZIP_MAGIC):
            with zipfile.ZipFile(path) as z:
                pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
            return (True, "torch zip archive") if pkl else (False, "zip archive without data.pkl")
        if head[:2] in _PICKLE_PROTOCOLS:
            return True, "legacy torch pickle"
        return False, f"unknown header {head[:4]!r}"
    except Exception as e:  # noqa: BLE001 - report, never raise, in a doctor check
        return False, f"{type(e).__name__}: {e}"


def check_files(model_dir: str | os.PathLike | None = None, hf_cache: str | os.PathLike | None = None) -> list[dict]:
    """Per file: {name, path, required, present, loadable, ok, detail}."""
    files = resolve_model_files(model_dir, hf_cache)
    rows = []
    for spec in FILE_SPECS:
        path = files.paths[spec.name]
        present = spec.name not in files.missing
        loadable, detail = probe_file(path) if present else (False, f"missing; get it from {spec.hf_repo}")
        rows.append(
            dict(
                name=spec.name,
                path=str(path),
                required=spec.required,
                present=present,
                loadable=loadable,
                ok=loadable if present else not spec.required,  # a corrupt optional file is not ok
                detail=detail,
            )
        )
    return rows


def doctor_report(model_dir: str | os.PathLike | None = None, hf_cache: str | os.PathLike | None = None) -> list[dict]:
    """Structured checks for `sfbridge doctor`: a list of {name, ok, detail}.

    Environment checks (torch, CUDA, GPU, flash-attn) come first, then one row per model file.
    `ok` False on an optional item (flash-attn, taehv) is informational: the daemon runs without.
    """
    rows: list[dict] = [dict(name="torch", ok=True, detail=torch.__version__)]
    cuda = torch.cuda.is_available()
    rows.append(dict(name="cuda", ok=cuda, detail=f"CUDA {torch.version.cuda}" if cuda else "CUDA not available"))
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gib = p.total_memory / 2**30
            rows.append(dict(name=f"gpu{i}", ok=gib >= 23.0, detail=f"{p.name}, {gib:.1f} GiB (24 GB needed)"))
    try:
        import flash_attn  # noqa: F401

        rows.append(dict(name="flash_attn", ok=True, detail=getattr(flash_attn, "__version__", "importable")))
    except Exception as e:  # noqa: BLE001
        rows.append(dict(name="flash_attn", ok=False, detail=f"not importable ({type(e).__name__}); SDPA fallback"))
    for r in check_files(model_dir, hf_cache):
        rows.append(dict(name=f"file:{r['name']}", ok=r["ok"], detail=f"{r['path']}: {r['detail']}"))
    return rows
