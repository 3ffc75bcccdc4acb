"""Planned vs measured training memory (stepvideo/training/memory_plan.py) on the CPU.

Each configuration runs in a fresh subprocess: imports and a tiny warm-up step, then the RSS
high-water mark (VmHWM in /proc/self/status; not ``getrusage``'s ru_maxrss, which a child spawned
from a big process inherits across exec) is the baseline (glibc's mmap threshold is fixed at 64 KiB
so that freed tensors leave the RSS); the model is built (fp8 rows: quantized), the high-water mark
is reset to the current RSS (``/proc/self/clear_refs``, so the fp32 construction of an fp8 model
does not count), and two forward+backward+AdamW steps run (the second has the optimizer states
alive during its backward, the steady state the planner describes); measured = peak RSS -
baseline. The plan is taken with
fp32 compute (what the CPU run uses: no master copy; ``weights="fp8"`` rows store the frozen
block Linears through stepvideo.models.fp8), ``backend="sdpa"`` and no fixed
overhead (the baseline absorbs it).

LoRA runs go through the project's own ``stepvideo.training.lora.apply_lora`` (peft layers on
the official target Linears, dropout 0, the base frozen).

Tolerance: measured / planned within [0.75, 1.25] (TOLERANCE); tests/unit/training/
test_memory_plan.py checks two of these rows the same way.

    OMP_NUM_THREADS=1 python bench/bench_memory_plan.py          # the table
    python bench/bench_memory_plan.py --only small-full-ckpt     # one row
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from stepvideo.models.dit import DiTConfig, StepVideoDiT
from stepvideo.models.fp8 import quantize_frozen_linears
from stepvideo.training.lora import LoraSpec, apply_lora
from stepvideo.training.memory_plan import plan_memory

MIB = 1024**2
TOLERANCE = (0.75, 1.25)  # measured / planned
TINY_OFFICIAL = dict(num_layers=2, num_heads=2, head_dim=128, in_channels=64, out_channels=64,
                     caption_channels=[6144, 1024])

WIDE = dict(num_layers=4, num_heads=8, head_dim=64, caption_channels=[256, 128])  # weights dominate

# name -> (preset or DiTConfig kwargs, latent (f, h, w), batch, method, rank, checkpointing, block weights)
CONFIGS = {
    "demo-full": ("demo", (4, 32, 32), 1, "full", 0, False, "fp32"),
    "demo-full-ckpt": ("demo", (4, 32, 32), 1, "full", 0, True, "fp32"),
    "small-full": ("small", (6, 16, 16), 1, "full", 0, False, "fp32"),
    "small-full-ckpt": ("small", (6, 16, 16), 1, "full", 0, True, "fp32"),
    "small-full-b2": ("small", (3, 16, 16), 2, "full", 0, False, "fp32"),
    "small-lora": ("small", (6, 16, 16), 1, "lora", 8, False, "fp32"),
    "small-lora-ckpt": ("small", (6, 16, 16), 1, "lora", 8, True, "fp32"),
    "official-tiny-full": (TINY_OFFICIAL, (3, 16, 32), 1, "full", 0, False, "fp32"),
    "official-tiny-lora": (TINY_OFFICIAL, (3, 16, 32), 1, "lora", 16, False, "fp32"),
    "wide-lora": (WIDE, (2, 8, 8), 1, "lora", 8, False, "fp32"),
    "wide-lora-fp8": (WIDE, (2, 8, 8), 1, "lora", 8, False, "fp8"),
}
LLM_LEN, CLIP_LEN = 64, 16


def dit_config(spec) -> DiTConfig:
    return DiTConfig.preset(spec) if isinstance(spec, str) else DiTConfig(**spec)


def plan_for(name: str):
    spec, latent, batch, method, rank, ckpt, weights = CONFIGS[name]
    cfg = dit_config(spec)
    return plan_memory(cfg, latent=latent, batch=batch, method=method, rank=max(rank, 1), checkpointing=ckpt,
                       weights=weights, compute="fp32", overhead_gib=0.0, text_tokens=LLM_LEN + (CLIP_LEN if cfg.clip_dim else 0),
                       backend="sdpa")


def _inputs(cfg: DiTConfig, latent, batch):
    f, h, w = latent
    p = cfg.patch_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, f, cfg.in_channels, h * p, w * p, generator=g)
    llm = torch.randn(batch, LLM_LEN, cfg.llm_dim, generator=g)
    clip = torch.randn(batch, CLIP_LEN, cfg.clip_dim, generator=g) if cfg.clip_dim else None
    return x, torch.rand(batch, generator=g), llm, clip


def _step(model, opt, x, t, llm, clip):
    out = model(x, t, llm, clip_emb=clip)
    loss = (out - x).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def _reset_peak() -> None:
    """Reset the RSS high-water mark to the current RSS (Linux: clear_refs 5), so that building the
    model (fp32, then quantized for fp8 rows) does not count as the training peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak() -> int:
    """This process's RSS high-water mark in bytes (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def child(name: str) -> dict:
    """Run in a fresh process: measured peak bytes of two training steps above the baseline."""
    torch.manual_seed(0)
    spec, latent, batch, method, rank, ckpt, weights = CONFIGS[name]
    cfg = dit_config(spec)
    warm = StepVideoDiT(DiTConfig.preset("demo", num_layers=1))  # load kernels, thread pools
    if method == "lora":  # peft imported and its layers built before the baseline
        apply_lora(warm, LoraSpec(rank=2, alpha=2.0))
    _step(warm, torch.optim.AdamW([p for p in warm.parameters() if p.requires_grad]),
          *_inputs(warm.config, (1, 4, 4), 1))
    del warm
    x, t, llm, clip = _inputs(cfg, latent, batch)
    base = _peak()
    model = StepVideoDiT(cfg)
    if method == "lora":
        apply_lora(model, LoraSpec(rank=rank, alpha=float(rank)))
    if weights == "fp8":  # built in fp32, so the fp32 copies are freed again before the steps
        quantize_frozen_linears(model.transformer_blocks)
    model.enable_gradient_checkpointing(ckpt)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    _reset_peak()
    for _ in range(2):
        _step(model, opt, x, t, llm, clip)
    return {"name": name, "measured": _peak() - base}


def measure(name: str) -> int:
    """Peak bytes of configuration ``name``, measured in a fresh subprocess."""
    # A fixed mmap threshold: glibc's sliding one keeps freed blocks of up to 32 MiB in the heap,
    # so the RSS peak then counts freed activations as live (ratios up to 3x without it).
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, env=env,
                          check=True)
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["measured"])


def saved_block_bytes(model: StepVideoDiT, x, t, llm, clip) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps for the first block's backward
    when it is run alone on the tokens the model would feed it (what block_keep_bytes models)."""
    blk = model.transformer_blocks[0]
    b, f, c, hh, ww = x.shape
    p = model.config.patch_size
    with torch.no_grad():
        tokens = model.pos_embed(x.reshape(b * f, c, hh, ww)).reshape(b, f * (hh // p) * (ww // p), -1)
        mod, _ = model.adaln_single(t, model.dtype)
        ctx = model.caption_projection(model.caption_norm(llm.to(model.dtype)))
        if clip is not None:
            ctx = torch.cat([model.clip_projection(clip.to(model.dtype)), ctx], dim=1)
    full = next(blk.parameters()).requires_grad
    tokens.requires_grad_(True)
    ctx.requires_grad_(full)
    mod.requires_grad_(full)
    cos, sin = model.rope.tables(f, hh // p, ww // p)
    mask = torch.ones(ctx.shape[:2], dtype=torch.bool)
    y = blk(tokens, ctx, mask, mod, cos, sin, "sdpa")
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    inputs = {v.untyped_storage().data_ptr() for v in (tokens, ctx, mod, cos, sin)}  # kept outside the block
    seen, stack, stor = set(), [y.grad_fn], {}
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for attr in dir(fn):
            if attr.startswith("_saved_"):
                v = getattr(fn, attr)
                if isinstance(v, torch.Tensor):
                    s = v.untyped_storage()
                    stor[s.data_ptr()] = s.nbytes()
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return sum(nb for ptr, nb in stor.items() if ptr not in params and ptr not in inputs) + \
        sum(v.untyped_storage().nbytes() for v in (tokens,))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    names = args.only or list(CONFIGS)
    lo, hi = TOLERANCE
    print(f"tolerance: measured / planned in [{lo}, {hi}]")
    print(f"{'config':<20}{'tokens':>7}{'planned MiB':>13}{'(acts)':>9}{'measured MiB':>14}{'ratio':>7}")
    bad = []
    for name in names:
        plan = plan_for(name)
        got = measure(name)
        c = plan.components
        print(f"{name:<20}{plan.details['tokens'] * CONFIGS[name][2]:>7}{plan.total / MIB:>13.1f}"
              f"{c['activations'] / MIB:>9.1f}{got / MIB:>14.1f}{got / plan.total:>7.2f}"
              f"{'' if lo <= got / plan.total <= hi else '  OUTSIDE'}", flush=True)
        if not lo <= got / plan.total <= hi:
            bad.append(name)
    if bad:
        sys.exit(f"outside the tolerance: {', '.join(bad)}")


if __name__ == "__main__":
    main()
