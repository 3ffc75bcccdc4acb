"""Our DiT and Video-VAE against the official Step-Video-T2V modules: speed ratio and output difference.

    python bench/bench_vs_official.py --official PATH [--threads 2] [--repeats 3] [--profile]
                                      [--vae-cases 17x128,34x256] [--dit-cases c4x4,small,demo]

``PATH`` is a checkout of https://github.com/stepfun-ai/Step-Video-T2V (its ``stepvideo/`` folder).
Nothing of it is copied here: the official modules are imported from PATH in this process. Their
package is also called ``stepvideo``, so it is imported under that name with our package moved
aside in ``sys.modules`` and put back afterwards (their module objects keep their own globals).

Stubs (import time only; no official source is edited):

* ``xfuser``: an empty stand-in (``stepvideo/parallel.py`` imports it at module level). At the
  checkout's HEAD, ``modules/model.py`` imports ``StepVideoTransformerBlock``/``PatchEmbed`` and the
  norms from ``xfuser.model_executor.models.customized.step_video_t2v``; those names are bound to
  the checkout's own ``stepvideo/modules/blocks.py`` and ``normalization.py`` (same math on one
  device). The DiT runs with ``attention_type='torch'`` (SDPA), ``parallel=False``.
* ``diffusers`` (only when not installed): ``ModelMixin`` = ``nn.Module``, ``ConfigMixin`` and
  ``register_to_config`` keep the constructor arguments in ``self.config``.
* ``stepvideo.utils`` is loaded from ``utils/utils.py`` alone (its ``__init__`` also imports the
  video writer, which needs imageio).

Both models get the same random weights (ours, through our module names, which equal the
official ``state_dict`` keys; ``strict=True``). fp32, ``--threads`` threads, interleaved repeats
(official, ours, official, ...) after one warm-up each; the ratio is median(official) /
median(ours), > 1 means ours is faster. Timings on a shared CPU are noisy: only the ratios
measured side by side are claims.

DiT cases: ``c4x4`` = 4 layers x 4 heads x 128 (D=512), 6x16x16 = 1,536 tokens; ``small`` and
``demo`` are our presets (head dims 64 and 32: the official SelfAttention hard-codes
``rope_ch_split=[64, 32, 32]``, so for them the bench sets that instance attribute to our 2:1:1
split; no code is changed). Also printed: the CPU's fp32 matmul rate (torch.mm 2048^2) and the
DiT forward's achieved FLOP/s from :func:`stepvideo.models.dit_info.forward_flops` (matmul FLOPs).

VAE cases ``FxS`` = F frames at SxS, released widths (encoder 32x(4,8,16,16), decoder
128x(1,2,4,4), z=64, 2 res blocks). Encode: our posterior mean vs the official ``encode``
(which returns a sample; its means are taken from the encoder's outputs with a forward hook).
Decode: our ``decode`` (with the boundary mix) vs the official ``decode``. 34x256 takes several
minutes per call here; ``--vae-cases 17x128`` is the quick set and ``--vae-width-div N`` divides
the VAE widths and z by N (labelled) when even that is too slow.

``--compile``: a third column, our DiT with :meth:`StepVideoDiT.compile_blocks` (``torch.compile`` of
each block, inductor's C++ kernels on the CPU), with its compile time (the first call) and max diff.

``--profile``: torch.profiler top ops (self CPU time) of our and the official DiT forward (c4x4)
and VAE decode (the first VAE case).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stepvideo.models.dit import DiTConfig, StepVideoDiT  # noqa: E402
from stepvideo.models.dit_info import forward_flops  # noqa: E402
from stepvideo.models.vae import VAEConfig, VideoVAE  # noqa: E402

DIT_CASES = {
    # name: (config overrides, latent (frames, h, w), llm_len, clip_len)
    "c4x4": (dict(num_layers=4, num_heads=4, head_dim=128, caption_channels=[256, 128]), (6, 16, 16), 64, 16),
    "small": ("small", (4, 16, 16), 64, 16),
    "demo": ("demo", (2, 8, 8), 16, 8),
}


# ----------------------------------------------------------------------------------------------
# importing the official modules


def _stub_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__bench_stub__ = True
    return mod


def _diffusers_stubs() -> dict[str, types.ModuleType]:
    try:
        import diffusers.configuration_utils  # noqa: F401
        import diffusers.models.modeling_utils  # noqa: F401

        return {}
    except ImportError:
        pass

    class ConfigMixin:  # keeps the constructor arguments, nothing else
        pass

    def register_to_config(init):
        sig = inspect.signature(init)

        @functools.wraps(init)
        def wrapper(self, *args, **kwargs):
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            cfg = {k: v for k, v in bound.arguments.items() if k != "self"}
            object.__setattr__(self, "config", types.SimpleNamespace(**cfg))
            return init(self, *args, **kwargs)

        return wrapper

    return {
        "diffusers": _stub_module("diffusers"),
        "diffusers.configuration_utils": _stub_module(
            "diffusers.configuration_utils", ConfigMixin=ConfigMixin, register_to_config=register_to_config
        ),
        "diffusers.models": _stub_module("diffusers.models"),
        "diffusers.models.modeling_utils": _stub_module("diffusers.models.modeling_utils", ModelMixin=torch.nn.Module),
    }


def load_official(path: str | os.PathLike) -> types.SimpleNamespace:
    """Import the official DiT and VAE modules from a checkout; returns their classes/modules."""
    root = Path(path).resolve()
    pkg_dir = root / "stepvideo"
    if not (pkg_dir / "vae" / "vae.py").is_file() or not (pkg_dir / "modules" / "model.py").is_file():
        raise SystemExit(f"{root}: not a Step-Video-T2V checkout (no stepvideo/vae/vae.py, stepvideo/modules/model.py)")
    ours = {k: v for k, v in sys.modules.items() if k == "stepvideo" or k.startswith("stepvideo.")}
    added: list[str] = []

    def put(name, mod):
        if name not in sys.modules:
            added.append(name)
        sys.modules[name] = mod

    try:
        for k in ours:
            del sys.modules[k]
        pkg = _stub_module("stepvideo", __path__=[str(pkg_dir)])
        put("stepvideo", pkg)
        # stepvideo.utils without its __init__ (which imports the video writer / imageio)
        spec = importlib.util.spec_from_file_location("stepvideo.utils.utils", pkg_dir / "utils" / "utils.py")
        utils_utils = importlib.util.module_from_spec(spec)
        utils_pkg = _stub_module("stepvideo.utils", __path__=[str(pkg_dir / "utils")])
        put("stepvideo.utils", utils_pkg)
        put("stepvideo.utils.utils", utils_utils)
        spec.loader.exec_module(utils_utils)
        utils_pkg.__dict__.update({k: v for k, v in vars(utils_utils).items() if not k.startswith("_")})
        pkg.utils = utils_pkg
        for name in ("xfuser", "xfuser.core", "xfuser.core.distributed"):
            if name not in sys.modules:
                put(name, _stub_module(name))
        for name, mod in _diffusers_stubs().items():
            put(name, mod)
        blocks = importlib.import_module("stepvideo.modules.blocks")
        norms = importlib.import_module("stepvideo.modules.normalization")
        xp = "xfuser.model_executor.models.customized.step_video_t2v"
        parts = xp.split(".")
        for i in range(2, len(parts) + 1):
            if ".".join(parts[:i]) not in sys.modules:
                put(".".join(parts[:i]), _stub_module(".".join(parts[:i])))
        put(xp + ".blocks", blocks)
        put(xp + ".normalization", norms)
        model = importlib.import_module("stepvideo.modules.model")
        vae = importlib.import_module("stepvideo.vae.vae")
        return types.SimpleNamespace(root=root, model=model, vae=vae, blocks=blocks)
    finally:
        for k in [k for k in sys.modules if k == "stepvideo" or k.startswith("stepvideo.")]:
            del sys.modules[k]
        for k in added:
            sys.modules.pop(k, None)
        sys.modules.update(ours)


# ----------------------------------------------------------------------------------------------
# timing


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, one warm-up each, then repeats in turn."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_gflops(n: int = 2048, iters: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / min(ts) / 1e9


def profile_top(fn, label: str, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    print(f"--- profile: {label} (self CPU time, top {rows})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))


# ----------------------------------------------------------------------------------------------
# DiT


def _dit_config(spec) -> DiTConfig:
    return DiTConfig.preset(spec) if isinstance(spec, str) else DiTConfig(**spec)


def build_dit_pair(off, name: str, seed: int = 0, compiled: bool = False):
    spec, (f, h, w), llm_len, clip_len = DIT_CASES[name]
    cfg = _dit_config(spec)
    torch.manual_seed(seed)
    ours = StepVideoDiT(cfg).float().eval()
    if compiled:
        ours.compile_blocks(dynamic=False)
    official = off.model.StepVideoModel(
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        num_layers=cfg.num_layers,
        patch_size=cfg.patch_size,
        caption_channels=list(cfg.caption_channels),
        attention_type="torch",
    )
    if cfg.head_dim != 128:  # official hard-codes [64, 32, 32]; the instance attribute takes ours
        for blk in official.transformer_blocks:
            blk.attn1.rope_ch_split = list(cfg.resolved_rope_split)
    official.load_state_dict(ours.state_dict(), strict=True)
    official = official.float().eval()
    g = torch.Generator().manual_seed(seed + 1)
    b = 1
    x = torch.randn(b, f, cfg.in_channels, h, w, generator=g)
    t = torch.rand(b, generator=g)
    llm = torch.randn(b, llm_len, cfg.llm_dim, generator=g)
    clip = torch.randn(b, clip_len, cfg.clip_dim, generator=g) if cfg.clip_dim else None
    mask = torch.ones(b, llm_len + (clip_len if clip is not None else 0))

    def run_ours():
        with torch.no_grad():
            return ours.forward_official(x, t, llm, mask, clip)

    def run_official():
        return official(
            hidden_states=x, timestep=t, encoder_hidden_states=llm, encoder_hidden_states_2=clip,
            encoder_attention_mask=mask, return_dict=False,
        )

    flops = forward_flops(cfg, f, h // cfg.patch_size, w // cfg.patch_size, llm_len, clip_len if clip is not None else 0)
    return cfg, run_ours, run_official, flops


def bench_dit(off, names, repeats, peak, compiled: bool = False) -> list[dict]:
    rows = []
    for name in names:
        cfg, ours, official, flops = build_dit_pair(off, name)
        diff = float((ours() - official()).abs().max())
        fns = {"official": official, "ours": ours}
        if compiled:  # a second copy of ours, its blocks compiled; the first call compiles
            _, fns["compiled"], _, _ = build_dit_pair(off, name, compiled=True)
            t0 = time.perf_counter()
            diff_c = float((fns["compiled"]() - official()).abs().max())
            compile_s = time.perf_counter() - t0
        t = interleaved(fns, repeats)
        row = {
            "case": name,
            "geometry": f"{cfg.num_layers}L x {cfg.num_heads}H x {cfg.head_dim}, {flops['tokens']} tokens",
            "official_s": t["official"], "ours_s": t["ours"], "ratio": t["official"] / t["ours"], "max_diff": diff,
            "gflop": flops["total"] / 1e9, "ours_gflops": flops["total"] / t["ours"] / 1e9,
        }
        row["of_peak"] = row["ours_gflops"] / peak
        if compiled:
            row.update(compiled_s=t["compiled"], compiled_ratio=t["official"] / t["compiled"], compiled_diff=diff_c,
                       compile_s=compile_s, compiled_of_peak=flops["total"] / t["compiled"] / 1e9 / peak)
        rows.append(row)
        print(
            f"DiT {name:6s} {row['geometry']:34s} official/ours {row['ratio']:5.2f}x  max|diff| {diff:.2e}  "
            f"forward {row['gflop']:.2f} GFLOP, ours {row['ours_gflops']:.1f} GFLOP/s = {row['of_peak']:.0%} of the matmul rate "
            f"(official {flops['total'] / t['official'] / 1e9:.1f})",
            flush=True,
        )
        if compiled:
            print(f"    compiled blocks (compile_blocks, first call {compile_s:.1f} s): official/ours "
                  f"{row['compiled_ratio']:5.2f}x  max|diff| {diff_c:.2e}  {row['compiled_of_peak']:.0%} of the matmul rate",
                  flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# VAE


def _vae_config(div: int) -> VAEConfig:
    c = VAEConfig.official()
    if div == 1:
        return c
    # the official modules hard-code 32 norm groups and patch_channels = 32 z: shrink the encoder's
    # multipliers, the decoder's base width and z together
    return VAEConfig(encoder_ch_mult=tuple(m // div for m in c.encoder_ch_mult), decoder_ch=c.decoder_ch // div,
                     z_channels=c.z_channels // div)


@contextlib.contextmanager
def _official_widths(off, cfg: VAEConfig):
    """Bind the official VideoEncoder/VideoDecoder names to partials with ``cfg``'s widths while the
    official AutoencoderKL is built (the golden reference's method; it takes no width arguments)."""
    mod = off.vae
    enc, dec = mod.VideoEncoder, mod.VideoDecoder
    mod.VideoEncoder = functools.partial(enc, ch=cfg.encoder_ch, ch_mult=cfg.encoder_ch_mult)
    mod.VideoDecoder = functools.partial(dec, ch=cfg.decoder_ch, ch_mult=cfg.decoder_ch_mult)
    try:
        yield
    finally:
        mod.VideoEncoder, mod.VideoDecoder = enc, dec


def build_vae_pair(off, div: int = 1, seed: int = 0):
    cfg = _vae_config(div)
    torch.manual_seed(seed)
    ours = VideoVAE(cfg).float().eval()
    with _official_widths(off, cfg):
        official = off.vae.AutoencoderKL(in_channels=3, out_channels=3, z_channels=cfg.z_channels,
                                         num_res_blocks=cfg.num_res_blocks, version=2)
    official.load_state_dict(ours.state_dict(), strict=True)
    return cfg, ours, official.float().eval()


def bench_vae(off, cases, repeats, div, profile_rows) -> list[dict]:
    cfg, ours, official = build_vae_pair(off, div)
    label = "released widths" if div == 1 else f"released widths and z / {div}"
    print(f"VAE: {label}, z={cfg.z_channels}, {ours.num_parameters() / 1e6:.1f}M parameters")
    captured: list[torch.Tensor] = []
    hook = official.encoder.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    rows = []
    for k, (frames, size) in enumerate(cases):
        g = torch.Generator().manual_seed(k)
        video = torch.rand(1, frames, 3, size, size, generator=g) * 2 - 1
        f = cfg.spatial_factor
        latent = torch.randn(1, ours.latent_frames(frames), cfg.z_channels, size // f, size // f, generator=g)

        mean = ours.encode(video)
        captured.clear()
        official.encode(video)
        off_mean = off.vae.DiagonalGaussianDistribution(torch.cat(captured, dim=1)).mean
        enc_diff = float((mean - off_mean).abs().max())
        dec_diff = float((ours.decode(latent) - official.decode(latent.clone())).abs().max())
        te = interleaved({"official": lambda: official.encode(video), "ours": lambda: ours.encode(video)}, repeats)
        td = interleaved({"official": lambda: official.decode(latent.clone()), "ours": lambda: ours.decode(latent)}, repeats)
        for mode, t, diff in (("encode", te, enc_diff), ("decode", td, dec_diff)):
            row = {"case": f"{frames}x{size}", "mode": mode, "official_s": t["official"], "ours_s": t["ours"],
                   "ratio": t["official"] / t["ours"], "max_diff": diff, "widths": label}
            rows.append(row)
            print(f"VAE {mode} {frames} frames {size}x{size} ({label}): official/ours {row['ratio']:5.2f}x  "
                  f"max|diff| {diff:.2e}" + ("  (latent means)" if mode == "encode" else ""), flush=True)
        if profile_rows and k == 0:
            profile_top(lambda: ours.decode(latent), f"ours VAE decode {frames}x{size}", profile_rows)
            profile_top(lambda: official.decode(latent.clone()), f"official VAE decode {frames}x{size}", profile_rows)
    hook.remove()
    return rows


def _parse_vae_cases(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        if item.strip():
            fr, sz = item.lower().split("x")
            out.append((int(fr), int(sz)))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="a Step-Video-T2V checkout (the folder holding stepvideo/)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dit-cases", default="c4x4,small,demo", help=f"comma list of {sorted(DIT_CASES)} ('' = none)")
    ap.add_argument("--vae-cases", default="17x128,34x256", help="comma list of FRAMESxSIZE ('' = none)")
    ap.add_argument("--vae-width-div", type=int, default=1, help="divide the VAE widths and z by N (1, 2 or 4; labelled)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler top ops (DiT c4x4, first VAE case)")
    ap.add_argument("--profile-rows", type=int, default=12)
    ap.add_argument("--compile", action="store_true",
                    help="also time our DiT with its blocks torch.compile'd (StepVideoDiT.compile_blocks); prints compile time")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    off = load_official(args.official)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, CPU fp32, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load(1m) {load:.2f}; official from {off.root}")
    peak = matmul_gflops(2048)
    print(f"fp32 matmul peak (torch.mm 2048x2048, best of 5): {peak:.1f} GFLOP/s")
    dit_names = [n.strip() for n in args.dit_cases.split(",") if n.strip()]
    unknown = sorted(set(dit_names) - set(DIT_CASES))
    if unknown:
        raise SystemExit(f"unknown DiT cases {unknown}; known: {sorted(DIT_CASES)}")
    result = {"matmul_gflops": peak, "threads": torch.get_num_threads(), "load_1m": load}
    result["dit"] = bench_dit(off, dit_names, args.repeats, peak, compiled=args.compile)
    if args.profile and "c4x4" in dit_names:
        _, ours, official, _ = build_dit_pair(off, "c4x4")
        profile_top(ours, "ours DiT forward c4x4", args.profile_rows)
        profile_top(official, "official DiT forward c4x4", args.profile_rows)
    cases = _parse_vae_cases(args.vae_cases)
    result["vae"] = bench_vae(off, cases, args.repeats, args.vae_width_div, args.profile_rows if args.profile else 0) if cases else []
    return result


if __name__ == "__main__":
    main()
