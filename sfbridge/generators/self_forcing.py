"""``self-forcing``: the real Self Forcing (DMD, chunk-wise) model on Wan2.1-T2V-1.3B, streamed endlessly.

Per block (3 latent frames): 4 denoising passes + 1 context pass of the causal DiT
(:class:`~sfbridge.model.pipeline.StreamPipeline`), then a streaming decode (Wan VAE or TAEHV)
-> 9 uint8 frames for the first block of a scene, 12 for every later one. The KV cache rolls:
``window`` latent frames of attention with ``sink`` first frames kept (defaults 21 / 3; the
official code never rolls past 21 frames, so everything after block 7 is extrapolation, see
docs/SELF_FORCING.md).

:class:`~sfbridge.generators.streaming.StreamingGenerator` (shared with ``tiny``) holds the
steering logic; this module loads the real files into it.

The registry imports this module only when ``self-forcing`` (or ``auto``) is asked for; model
code and transformers load inside the constructor.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from sfbridge.generators.base import GeneratorError, Steering
from sfbridge.generators.overlap import DecodeStage
from sfbridge.generators.streaming import FrameDecoder, StreamingGenerator, TAEHVFrames, VAEFrames
from sfbridge.generators.v2v import InputEncoder

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_WINDOW = 21  # latent frames: the official 21-frame context (32760 tokens at 480x832)
DEFAULT_SINK = 3  # the first block stays as an attention sink once the window rolls
BIG_GPU_BYTES = 40e9  # at or above: the 11 GB text encoder stays on the GPU
WARMUP_PROMPT = "warm up"
HELP = "see docs/MODELS.md and `sfbridge doctor`, or use --model testsrc / --model tiny"
# Wan's config.json keys (original format) that map 1:1 onto ModelConfig; text_dim is an sfbridge extension
CONFIG_KEYS = ("dim", "num_heads", "num_layers", "ffn_dim", "in_dim", "out_dim", "text_len", "freq_dim", "eps",
               "text_dim", "qk_norm", "cross_attn_norm")


# ------------------------------------------------------------------------------------------------


def model_config_from_json(path: Path) -> Any:
    """ModelConfig from Wan's ``config.json`` (original format: dim, num_heads, ...); missing keys = 1.3B."""
    from sfbridge.model.config import ModelConfig

    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GeneratorError(f"self-forcing: {path}: unreadable config.json ({e})") from e
    if raw.get("model_type", "t2v") != "t2v":
        raise GeneratorError(f"self-forcing: {path}: model_type {raw.get('model_type')!r}, only t2v is supported")
    kw = {k: raw[k] for k in CONFIG_KEYS if k in raw}
    if "patch_size" in raw:
        kw["patch_size"] = tuple(raw["patch_size"])
    try:
        return ModelConfig(**kw)
    except (AssertionError, TypeError) as e:
        raise GeneratorError(f"self-forcing: {path}: bad model config ({e})") from e


def _find_config(files: Any) -> Path | None:
    from sfbridge.model.files import WAN_DIR

    for p in (files.vae.parent / "config.json", files.model_dir / WAN_DIR / "config.json"):
        if p.is_file():
            return p
    return None


def _preflight(files: Any, decoder: str, device: str | None) -> list[str]:
    """Everything that rules the real model out, each named exactly (missing files, no CUDA)."""
    from sfbridge.model.files import hf_cache_dir

    problems = []
    need = [n for n in ("generator", "text_encoder", "vae", "tokenizer") if n in files.missing]
    if decoder == "taehv" and "taehv" in files.missing:
        need.append("taehv")
    if need:
        where = ", ".join(f"{n} ({files.paths[n]})" for n in need)
        problems.append(f"missing model files: {where}; also looked in the Hugging Face cache {hf_cache_dir()}")
    if device is None and not torch.cuda.is_available():
        problems.append("no CUDA GPU (self-forcing needs a CUDA GPU, torch "
                        f"{torch.__version__} sees none; pass --device to force another device)")
    return problems


class SelfForcingGenerator(StreamingGenerator):
    """The real model; see module docstring. Options mirror ``sfbridge serve`` flags."""

    name = "self-forcing"

    def __init__(self, width: int = 832, height: int = 480, model_dir: str | None = None, dtype: str | None = None,
                 decoder: str = "vae", window: int = DEFAULT_WINDOW, sink: int = DEFAULT_SINK,
                 device: str | None = None, seed: int = 0, steps: list[float] | None = None,
                 text_encoder_device: str = "auto", vae_frames_per_call: int | None = 1, warmup: bool = True,
                 hf_cache: str | None = None, attn: str = "auto", compile: bool = False,
                 overlap: bool | str = "auto") -> None:
        from sfbridge.model.config import ModelConfig, StreamConfig
        from sfbridge.model.files import resolve_model_files

        if width % 16 or height % 16 or width <= 0 or height <= 0:
            raise GeneratorError(f"self-forcing: width/height must be positive multiples of 16, got {width}x{height}"
                                 " (the model was trained on 832x480)")
        if decoder not in ("vae", "taehv"):
            raise GeneratorError(f"self-forcing: decoder must be 'vae' or 'taehv', got {decoder!r}")
        files = resolve_model_files(model_dir, hf_cache)
        problems = _preflight(files, decoder, device)
        if problems:
            raise GeneratorError("self-forcing unavailable: " + "; ".join(problems) + f" ({HELP})")
        dev = torch.device(device or "cuda")
        dtype = dtype or ("bf16" if dev.type == "cuda" else "fp32")
        if dtype not in DTYPES:
            raise GeneratorError(f"self-forcing: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.dtype_name, tdtype = dtype, DTYPES[dtype]
        cfg_path = _find_config(files)
        mcfg = model_config_from_json(cfg_path) if cfg_path else ModelConfig()
        try:
            scfg = StreamConfig(latent_h=height // 8, latent_w=width // 8, local_attn_size=int(window),
                                sink_size=int(sink))
            scfg.tokens_per_frame(mcfg.patch_size)
        except AssertionError as e:
            raise GeneratorError(f"self-forcing: bad window/sink/resolution: {e}") from e
        if scfg.local_attn_size == -1:
            raise GeneratorError("self-forcing: an endless stream needs a rolling window (window > 0)")
        self.attn, self.attn_reason = _attention_backend(attn, dev, tdtype, mcfg.head_dim)
        self.device, self.files, self.mcfg = dev, files, mcfg
        t0 = time.perf_counter()
        try:
            model = self._load_dit(files.generator, mcfg, tdtype, dev, self.attn)
            self.text = self._load_text(files, mcfg, tdtype, dev, text_encoder_device)
            frames = self._load_decoder(files, decoder, tdtype, dev, vae_frames_per_call)
        except GeneratorError:
            raise
        except Exception as e:  # WeightsError, ModelFileError, OOM: one clear message for --model auto
            raise GeneratorError(f"self-forcing: loading failed: {type(e).__name__}: {e}") from e
        from sfbridge.model.pipeline import StreamPipeline

        super().__init__(StreamPipeline(model, scfg, seed=int(seed), compile=compile), frames, width, height, seed,
                         steps,
                         overlap=overlap)
        if compile and warmup:  # compiles every attended length now, not during the first blocks of a stream
            log.info("torch.compile warm-up: %d blocks", self.pipe.warm_up())
        log.info("self-forcing loaded in %.1f s (%s, %s, decoder %s, window %d, sink %d, attention %s: %s)",
                 time.perf_counter() - t0, dev, dtype, decoder, scfg.local_attn_size, scfg.sink_size, self.attn,
                 self.attn_reason)
        if warmup:
            self._warmup()

    # loading ----------------------------------------------------------------------------------
    @staticmethod
    def _load_dit(path: Path, mcfg: Any, dtype: torch.dtype, dev: torch.device, attn: str) -> Any:
        from sfbridge.model.weights import load_model

        log.info("loading the DiT from %s", path)
        return load_model(path, mcfg, dtype=dtype, device=dev, attn_backend=attn)

    @staticmethod
    def _load_text(files: Any, mcfg: Any, dtype: torch.dtype, dev: torch.device, where: str) -> Any:
        """UMT5 placement: on a >= 40 GB GPU it stays there; else CPU ("auto"), or GPU + offload ("offload")."""
        from sfbridge.model.t5 import TextEncoder

        offload = where == "offload"
        if where == "auto":
            big = dev.type == "cuda" and torch.cuda.get_device_properties(dev).total_memory >= BIG_GPU_BYTES
            enc_dev = dev if big else torch.device("cpu")
        else:
            enc_dev = dev if offload else torch.device(where)
        enc_dtype = torch.float32 if dtype == torch.float32 else torch.bfloat16
        log.info("loading the text encoder from %s on %s%s", files.text_encoder, enc_dev,
                 " (offloaded after each prompt)" if offload else "")
        enc = TextEncoder.from_wan_files(files.text_encoder, files.tokenizer, text_len=mcfg.text_len, device=enc_dev,
                                         dtype=enc_dtype, out_device=dev, cache_size=32,
                                         offload_after_encode=offload)
        if offload:
            enc.offload()
        if enc.dim != mcfg.text_dim:
            raise GeneratorError(f"self-forcing: text encoder dim {enc.dim} != DiT text_dim {mcfg.text_dim}")
        return enc

    @staticmethod
    def _load_decoder(files: Any, decoder: str, dtype: torch.dtype, dev: torch.device,
                      frames_per_call: int | None) -> FrameDecoder:
        if decoder == "taehv":
            from sfbridge.model.taehv import TAEHVDecoder

            log.info("loading TAEHV from %s", files.taehv)
            return TAEHVFrames(TAEHVDecoder.from_file(files.taehv, device=dev, dtype=dtype))
        from sfbridge.model.vae import WanVAEDecoder

        log.info("loading the VAE from %s", files.vae)
        return VAEFrames(WanVAEDecoder.from_file(files.vae, device=dev, dtype=dtype), frames_per_call)

    def _make_input_encoder(self) -> InputEncoder:
        """v2v, loaded on its first block: the encoder half of the file the decoder came from (TAEHV with
        ``--decoder taehv``, else the Wan VAE), on the DiT's device and dtype."""
        dtype = self.pipe.dtype
        try:
            if self.decoder.name == "taehv":
                from sfbridge.model.taehv_encoder import StreamingTAEHVEncoder, TAEHVEncoder

                log.info("v2v: loading the TAEHV encoder from %s", self.files.taehv)
                return InputEncoder(StreamingTAEHVEncoder(TAEHVEncoder.from_file(self.files.taehv, self.device,
                                                                                 dtype)))
            from sfbridge.model.vae_encoder import StreamingVAEEncoder, WanVAEEncoder

            log.info("v2v: loading the VAE encoder from %s", self.files.vae)
            return InputEncoder(StreamingVAEEncoder(WanVAEEncoder.from_file(self.files.vae, device=self.device,
                                                                            dtype=dtype)))
        except Exception as e:  # a missing or broken file: the engine reports the block's error
            raise GeneratorError(f"self-forcing: v2v encoder: {type(e).__name__}: {e}") from e

    def _warmup(self) -> None:
        """One block (allocates caches, picks kernels), then a clean reset: the first real block is fast."""
        t0 = time.perf_counter()
        s = Steering(prompt=WARMUP_PROMPT, seed=self._seed)
        self.next_block(s)
        self.reset(s)
        log.info("warm-up block took %.0f ms", 1e3 * (time.perf_counter() - t0))

    # Generator --------------------------------------------------------------------------------
    def _embeds(self, prompt: str) -> torch.Tensor:
        return self.text.encode([prompt])  # the encoder's own LRU cache makes repeats free

    def prepare(self, prompt: str) -> None:
        self.text.encode([prompt])  # fills the encoder's (locked) LRU; _embeds then finds it

    def describe(self) -> dict[str, Any]:
        c = self.pipe.cfg
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return {**super().describe(), "dtype": self.dtype_name, "decoder": self.decoder.name,
                "window_frames": c.local_attn_size, "sink_frames": c.sink_size, "device": str(self.device),
                "gpu": gpu, "latent": [c.latent_h, c.latent_w], "steps": list(self._steps),
                "text_encoder_device": str(self.text.device), "model_dir": str(self.files.model_dir),
                "attn": self.attn, "attn_reason": self.attn_reason}

    def on_oom(self) -> None:
        with self.text._lock:  # prompt embeddings on the GPU: re-encoded when a prompt needs them again
            self.text.cache.clear()
        super().on_oom()

    def step_down(self) -> str | None:
        """The next lighter preset (quality -> balanced -> fast) after repeated OOMs: its window, sink and
        steps; its TAEHV decoder when the file is there (else the decoder stays). FP8 is not switched on
        while serving (it converts the weights). Applies from the next scene -> the preset's name, or None."""
        from sfbridge.model.presets import PRESETS

        c = self.pipe.cfg
        lighter = [p for p in PRESETS.values() if p.window < c.local_attn_size]
        if not lighter:
            return None
        preset = max(lighter, key=lambda p: p.window)
        self._shrink_window(preset.window, preset.sink)
        self.default_steps = tuple(float(s) for s in preset.steps)
        if preset.decoder == "taehv" and self.decoder.name != "taehv" and "taehv" not in self.files.missing:
            self.stage.close()  # waits for decodes in flight: nothing uses the old decoder after this
            self.decoder = self._load_decoder(self.files, "taehv", self.pipe.dtype, self.device, None)
            self.stage = DecodeStage(self.decoder, self.device, overlap=self.stage.overlap)
        log.warning("stepped down to preset %r: window %d, sink %d, %d steps, decoder %s", preset.name,
                    preset.window, preset.sink, len(preset.steps), self.decoder.name)
        return preset.name

    def close(self) -> None:
        super().close()  # the decode worker first: it may still hold the decoder
        del self.pipe, self.text, self.decoder, self.stage
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _attention_backend(attn: str, dev: torch.device, dtype: torch.dtype, head_dim: int) -> tuple[str, str]:
    """(backend, reason) for ``--attn``; resolved once here so ``status`` names what really runs."""
    from sfbridge.model.attention import AttentionBackendError, explain_backend

    try:
        return explain_backend(attn, dev, dtype, head_dim)
    except (AttentionBackendError, ValueError) as e:
        raise GeneratorError(f"self-forcing: {e}") from e


def create(preset: str | None = None, fp8: bool | str | None = None, **options: Any) -> SelfForcingGenerator:
    """``preset`` (quality|balanced|fast, see sfbridge/model/presets.py) sets window, sink, decoder, steps
    and fp8; explicit options win. FP8 converts the DiT's block linears before the warm-up block."""
    from sfbridge.model.presets import FP8Unavailable, apply_fp8, fp8_problems, resolve

    try:
        opts = resolve(preset, fp8=fp8, **options)
    except ValueError as e:
        raise GeneratorError(f"self-forcing: {e}") from e
    fp8_mode, warmup = opts.pop("fp8", "off"), opts.pop("warmup", True)
    if fp8_mode in ("on", True) and (problems := fp8_problems(opts.get("device") or "cuda")):
        raise GeneratorError("self-forcing: " + "; ".join(problems))  # before minutes of loading
    gen = SelfForcingGenerator(warmup=False, **opts)
    try:
        gen.fp8 = apply_fp8(gen.pipe.model, fp8_mode, gen.device)
    except FP8Unavailable as e:
        gen.close()
        raise GeneratorError(f"self-forcing: {e}") from e
    if warmup:
        gen._warmup()
    return gen
