"""Golden-vector check: ``python -m sfbridge.model.golden DIR [--atol 1e-4 --rtol 1e-4]``.

Runs this implementation on a golden set made by the official Self-Forcing code (see
``tests/data/golden/README.md``): every scenario in ``metadata.json`` plus the first raw
generator call, with the set's weights and injected noise, and compares latents, per-step x0
and the final layer-0 K/V cache (valid part), and the per-call cache index trace; then the tiny
Wan VAE (loaded strictly, encoder + decoder): full decode, and the streaming encoder on
``encode_pixels_in`` against ``encode_latents_out``. Every size comes from ``metadata.json``.
Exit status 1 if anything is outside ``|a - b| <= atol + rtol * |b|`` (torch.allclose).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .config import ModelConfig, StreamConfig
from .kv_cache import CrossAttnCache, KVCache
from .pipeline import StreamPipeline
from .rope import RopeTable
from .scheduler import FlowMatchScheduler
from .vae import VAEConfig
from .vae_encoder import load_wan_vae
from .weights import load_model

log = logging.getLogger(__name__)


@dataclass
class Item:
    name: str
    max_abs: float
    max_rel: float
    ok: bool


def compare(name: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> Item:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs golden {tuple(want.shape)}"
    got, want = got.double().cpu(), want.double()
    diff = (got - want).abs()
    rel = diff / want.abs().clamp_min(1e-12)
    ok = bool((diff <= atol + rtol * want.abs()).all())
    return Item(name, float(diff.max()), float(rel.max()), ok)


def load_meta(d: Path) -> dict[str, Any]:
    return json.loads((d / "metadata.json").read_text())


def run_scenario(model: torch.nn.Module, meta: dict[str, Any], scenario: str,
                 inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Roll out one scenario with the set's noise; returns latents, x0 per step, K/V, trace."""
    cfg = StreamConfig.from_golden_metadata(meta, scenario)
    pipe = StreamPipeline(model, cfg, batch=inputs["noise"].shape[0])
    sc = meta["scenarios"][scenario]
    if cfg.local_attn_size != -1:
        assert pipe.kv.capacity == sc["kv_cache_size_tokens"], (
            f"{scenario}: cache {pipe.kv.capacity} tokens vs official {sc['kv_cache_size_tokens']}")
    pipe.set_steps([int(v) for v in inputs["denoising_step_list_raw"]], warp=meta["warp_denoising_step"])
    pipe.set_prompt_embeds(inputs["text_embeds"])
    pipe.kv.trace = []
    F = cfg.num_frame_per_block
    latents, x0s = [], []
    for b in range(meta["num_blocks"]):
        latents.append(pipe.next_block(noise=inputs["noise"][:, b * F:(b + 1) * F],
                                       renoise=inputs["renoise_noise"][b]))
        x0s.append(torch.stack(pipe.last_x0))
    k, v = pipe.kv.ordered(0)  # ring slots back in the official physical order
    x0 = torch.stack(x0s)  # [blocks, steps, B, F, C, H, W]; golden stores batch 1 squeezed
    x0 = x0.squeeze(2) if x0.shape[2] == 1 else x0
    return dict(latents=torch.cat(latents, 1), x0_per_step=x0, k=k, v=v, trace=pipe.kv.trace)


def first_call(model: torch.nn.Module, meta: dict[str, Any], inputs: dict[str, torch.Tensor],
               fc: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The very first generator call (empty cache) on the set's x_in and timestep."""
    cfg = StreamConfig.from_golden_metadata(meta, next(iter(meta["scenarios"])))
    mcfg = model.cfg
    x = fc["x_in"]
    tpf = cfg.tokens_per_frame(mcfg.patch_size)
    dtype = next(model.parameters()).dtype
    kv = KVCache(mcfg.num_layers, x.shape[0], cfg.cache_frames(), tpf, mcfg.num_heads, mcfg.head_dim,
                 rolling=cfg.local_attn_size != -1, sink_frames=cfg.sink_size, dtype=dtype)
    cross = CrossAttnCache(mcfg.num_layers, x.shape[0], mcfg.text_len, mcfg.num_heads, mcfg.head_dim,
                           dtype=dtype)
    F, (h, w) = x.shape[1], (cfg.latent_h // mcfg.patch_size[1], cfg.latent_w // mcfg.patch_size[2])
    rope = RopeTable(mcfg.head_dim, h, w, frames=F).block(0, F)
    with torch.no_grad():
        model.fill_cross(inputs["text_embeds"], cross)
        flow = model(x.to(dtype), model.time_features(fc["timestep"]), rope, kv.begin(0, F * tpf), cross)
    x0 = FlowMatchScheduler(cfg.timestep_shift).flow_to_x0(flow, x.to(dtype), fc["timestep"])
    return flow, x0


def check_vae(d: Path, meta: dict[str, Any], atol: float, rtol: float, dtype: torch.dtype) -> list[Item]:
    """The set's tiny VAE, whole file loaded strictly: full decode and streaming encode (1, 4, 4, ...)."""
    if "vae_config" not in meta or not (d / "vae_io.safetensors").is_file():
        return []
    dec, enc = load_wan_vae(d / "vae.safetensors", VAEConfig.from_dict(meta["vae_config"]), dtype=dtype)
    io = load_file(str(d / "vae_io.safetensors"))
    items = [compare("vae.decode_full", dec.decode(io["latents"]), io["pixels_full"], atol, rtol)]
    if "encode_pixels_in" in io:
        pixels = io["encode_pixels_in"].permute(0, 2, 1, 3, 4)  # golden [B, 3, T, H, W] -> [B, T, 3, H, W]
        items.append(compare("vae.encode", enc.encode(pixels), io["encode_latents_out"], atol, rtol))
    return items


def check(d: str | Path, atol: float = 1e-4, rtol: float = 1e-4,
          dtype: torch.dtype = torch.float32, compile: str | None = None) -> list[Item]:
    """Every item of the set; ``compile`` = a torch.compile backend runs the compiled passes instead of eager."""
    d = Path(d)
    meta = load_meta(d)
    model = load_model(d / "generator.safetensors", ModelConfig.from_golden_metadata(meta), dtype=dtype)
    if compile:  # every scenario has its own fill lengths: room for all of them
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        model.set_compile(True, compile)
    inputs = load_file(str(d / "inputs.safetensors"))
    items: list[Item] = []
    fc = load_file(str(d / "first_call_block0_step0.safetensors"))
    flow, x0 = first_call(model, meta, inputs, fc)
    items += [compare("first_call.flow_pred", flow, fc["flow_pred"], atol, rtol),
              compare("first_call.x0", x0, fc["x0"], atol, rtol)]
    for scenario in meta["scenarios"]:
        out = load_file(str(d / f"outputs_{scenario}.safetensors"))
        r = run_scenario(model, meta, scenario, inputs)
        items.append(compare(f"{scenario}.latents", r["latents"], out["latents"], atol, rtol))
        items.append(compare(f"{scenario}.x0_per_step", r["x0_per_step"], out["x0_per_step"], atol, rtol))
        items.append(compare(f"{scenario}.kv_layer0_k", r["k"], out["kv_layer0_k_final"], atol, rtol))
        items.append(compare(f"{scenario}.kv_layer0_v", r["v"], out["kv_layer0_v_final"], atol, rtol))
        keys = ("current_start", "global_end_before", "local_end_before",
                "global_end_after", "local_end_after")
        want = [{k: t[k] for k in keys} for t in meta["scenarios"][scenario]["trace"]]
        same = want == r["trace"]
        items.append(Item(f"{scenario}.cache_trace ({len(want)} calls)", 0.0 if same else float("inf"),
                          0.0 if same else float("inf"), same))
    return items + check_vae(d, meta, atol, rtol, dtype)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sfbridge.model.golden", description=__doc__.split("\n")[0])
    ap.add_argument("dir", help="golden set directory (with metadata.json)")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--compile", metavar="BACKEND", help="run the torch.compile'd passes (inductor, aot_eager, ...)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    items = check(a.dir, a.atol, a.rtol, getattr(torch, a.dtype), a.compile)
    w = max(len(i.name) for i in items)
    for i in items:
        flag = "ok  " if i.ok else "FAIL"
        sys.stdout.write(f"{flag} {i.name:<{w}}  max_abs {i.max_abs:.3e}  max_rel {i.max_rel:.3e}\n")
    bad = [i.name for i in items if not i.ok]
    sys.stdout.write(f"{len(items) - len(bad)}/{len(items)} within atol={a.atol} rtol={a.rtol}\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
