"""Learning per CPU-second, the DiT half: benchmark accuracy of what a DiT recipe draws, against the
seconds it trained.

Every candidate (a DiT size plus trainer settings, on a latent) trains from scratch for a budget of
*training seconds* on a project's latent cache, then draws a fixed balanced subset of the embedded
benchmark (default 32 prompts x EN + ZH, one seed) which the scorer judges, next to the chance
baseline of the same videos (each judged against another prompt of its category). The `oracle`
candidates train the same DiT on a lossless latent instead of the VAE's: raw pixels cut into
8x8x8 patches (`PixelPatchify`, z = 3*8*8*8), so the DiT's own ceiling on this data is known apart
from what the VAE loses.

    .venv/bin/python bench/bench_learning_dit.py --list
    .venv/bin/python bench/bench_learning_dit.py --root ~/.cache/stepvideo/release-src --candidates base,oracle --seconds 300
    .venv/bin/python bench/bench_learning_dit.py --smoke                       # seconds: the suite runs it

--root is a project where the cascade ran up to the text cache (and `train_vae` for the `vae`
candidates): its clean manifest, text encoders and VAE are read from outputs/; its latent cache is
reused when present, else the bench encodes its own into --work/latents/. Each candidate's steps are
sized from a short probe of its step time so the cosine schedule ends at the budget; a finished
(candidate, seconds[, VAE]) is not rerun (--work/<candidate>-<seconds>s[-vae<hash>]/result.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

CACHE = Path.home() / ".cache" / "stepvideo"
DEFAULT_ROOT = CACHE / "release-src"

# the `small` preset's DiT recipe (t2i_pretrain's settings, on clips and stills at full resolution)
BASE_MODEL: dict[str, Any] = {"preset": "small", "patch_size": 2}
BASE_TRAIN: dict[str, Any] = {"batch_size": 32, "lr": 5.0e-4, "warmup_steps": 100, "lr_schedule": "cosine",
                              "timestep_sampling": "logit_normal", "caption_dropout": 0.1, "resolution": "full"}

# name -> (what it tests, latent: vae | oracle, DiT overrides, trainer overrides)
CANDIDATES: dict[str, tuple[str, str, dict, dict]] = {
    "base": ("the `small` preset's DiT on the VAE's latent (4 layers, 256 wide, patch 2)", "vae", {}, {}),
    "oracle": ("the same DiT on a lossless latent (raw 8x8x8 pixel patches)", "oracle", {}, {}),
    "lr1e-3": ("lr 1e-3", "vae", {}, {"lr": 1.0e-3}),
    "batch8": ("batch 8 (4x the steps per second)", "vae", {}, {"batch_size": 8}),
    "uniform-t": ("uniform timestep sampling instead of logit-normal", "vae", {}, {"timestep_sampling": "uniform"}),
    "nodrop": ("no caption dropout", "vae", {}, {"caption_dropout": 0.0}),
    "deep8": ("8 layers", "vae", {"num_layers": 8}, {}),
    "oracle-batch8": ("the oracle at batch 8", "oracle", {}, {"batch_size": 8}),
}


class PixelPatchify(torch.nn.Module):
    """A lossless stand-in for the VAE: frames (B, T, 3, H, W) -> latents (B, T_lat, 3*t*s*s, H/s, W/s).

    The causal chunking is the VAE's: 17 frames -> 3 latent frames, the first one the chunk's first
    frame (repeated t times, so every latent frame has one width), then 8 frames each. Decoding a
    first latent frame averages its t copies (identical for an encoded clip: the round trip is exact).
    """

    def __init__(self, spatial: int = 8, temporal: int = 8) -> None:
        super().__init__()
        self.config = SimpleNamespace(spatial_factor=spatial, temporal_factor=temporal, in_channels=3, out_channels=3,
                                      z_channels=3 * temporal * spatial * spatial, latent_chunk=3)
        self.frame_chunk = temporal * 2 + 1
        self.latent_chunk = 3
        self._device_anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # device/dtype for callers

    def latent_frames(self, frames: int) -> int:
        return 1 if frames == 1 else frames // self.frame_chunk * self.latent_chunk

    def num_parameters(self) -> int:
        return 0

    @staticmethod
    def check_tiling(tile_size: int | None, *_: Any) -> None:
        if tile_size is not None:
            raise ValueError("PixelPatchify decodes whole frames only (no tiling)")

    def _groups(self, video: torch.Tensor) -> list[torch.Tensor]:
        t = self.config.temporal_factor
        if video.shape[1] == 1:
            return [video.expand(-1, t, -1, -1, -1)]
        if video.shape[1] % self.frame_chunk:
            raise ValueError(f"frame count {video.shape[1]} is not 1 or a multiple of {self.frame_chunk}")
        groups = []
        for c in range(0, video.shape[1], self.frame_chunk):
            chunk = video[:, c:c + self.frame_chunk]
            groups += [chunk[:, :1].expand(-1, t, -1, -1, -1), chunk[:, 1:1 + t], chunk[:, 1 + t:]]
        return groups

    def posterior(self, video: torch.Tensor, **_: Any):
        from stepvideo.models.vae import DiagonalGaussian

        s = self.config.spatial_factor
        lat = []
        for g in self._groups(video.float()):
            b, t, c, h, w = g.shape
            lat.append(g.reshape(b, t, c, h // s, s, w // s, s).permute(0, 1, 2, 4, 6, 3, 5)
                       .reshape(b, t * c * s * s, h // s, w // s))
        mean = torch.stack(lat, dim=1)
        return DiagonalGaussian(torch.cat([mean, torch.full_like(mean, -30.0)], dim=2))

    def encode(self, video: torch.Tensor, sample: bool = False, **_: Any) -> torch.Tensor:
        return self.posterior(video).mean

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, **_: Any) -> torch.Tensor:
        s, t = self.config.spatial_factor, self.config.temporal_factor
        b, n, z, h, w = latent.shape
        if z != self.config.z_channels:
            raise ValueError(f"latent has {z} channels, expected {self.config.z_channels}")
        groups = latent.float().reshape(b, n, t, 3, s, s, h, w).permute(0, 1, 2, 3, 6, 4, 7, 5) \
            .reshape(b, n, t, 3, h * s, w * s)
        frames = []
        for k in range(n):
            if k % self.latent_chunk == 0:
                frames.append(groups[:, k].mean(dim=1, keepdim=True))
            else:
                frames.append(groups[:, k])
        return torch.cat(frames, dim=1).clamp(-1.0, 1.0)


# ------------------------------------------------------------------ the inputs: a project's outputs


def project_inputs(root: Path) -> dict[str, Any]:
    """Rows, media root, text encoders, text cache and VAE folder of a project where the cascade ran."""
    from stepvideo.config import load_params
    from stepvideo.stages.common import OUTPUTS, clean_rows, load_encoders

    params = load_params(root / "params.yaml")
    clean, rows = clean_rows(root)
    return {"rows": rows, "data_root": clean.parent, "encoders": load_encoders(params, root),
            "text_cache": root / OUTPUTS / "text_cache" / "text_cache.safetensors",
            "vae_dir": root / OUTPUTS / "vae", "latent_cache": root / OUTPUTS / "latent_cache"}


def smoke_inputs(work: Path) -> dict[str, Any]:
    """A 12-item synthetic set, tiny text encoders and a random `small` VAE (seconds)."""
    from stepvideo.data.manifest import read_manifest
    from stepvideo.data.synth import SynthConfig, generate
    from stepvideo.models.text_encoders import TextEncoder
    from stepvideo.models.tiny_text import build_tiny_text_encoders
    from stepvideo.models.vae import VAEConfig, VideoVAE

    data, enc, vae_dir = work / "smoke" / "data", work / "smoke" / "encoders", work / "smoke" / "vae"
    if not (data / "manifest.jsonl").is_file():
        generate(SynthConfig(clips=6, images=6, seed=3, heldout_fraction=0.0, degraded_fraction=0.0), data,
                 progress=False)
    rows = [r for r in read_manifest(data / "manifest.jsonl") if r.get("degradation", "none") == "none"]
    if not (enc / "clip" / "config.json").is_file():
        from stepvideo.evaluation.runner import load_prompts

        texts = sorted({r["caption"] for r in rows} | {t for p in load_prompts(None) for t in (p.en, p.zh)})
        build_tiny_text_encoders(texts, enc, llm_dim=64, clip_dim=32)
    if not (vae_dir / "config.json").is_file():
        torch.manual_seed(0)
        VideoVAE(VAEConfig.small()).save_pretrained(vae_dir)
    return {"rows": rows, "data_root": data, "text_cache": None, "vae_dir": vae_dir, "latent_cache": None,
            "encoders": {k: TextEncoder.from_pretrained(str(enc / k), kind=k) for k in ("llm", "clip")}}


def latent_model(kind: str, inputs: dict) -> tuple[Any, str]:
    """The encoder/decoder of a latent kind and its version string."""
    from stepvideo import tracking
    from stepvideo.models.vae import VideoVAE

    if kind == "oracle":
        return PixelPatchify(), "pixel-patchify-8x8x8"
    if not (inputs["vae_dir"] / "config.json").is_file():
        raise FileNotFoundError(f"{inputs['vae_dir']}: no trained VAE; run `stepvideo stage train_vae` in --root first")
    return VideoVAE.from_pretrained(inputs["vae_dir"]).eval(), tracking.file_hash(inputs["vae_dir"])


def latent_cache(kind: str, model: Any, version: str, inputs: dict, work: Path, progress: bool) -> Path:
    """The project's own latent cache for `vae` when it was made with this VAE, else one built here."""
    from stepvideo.data.latent_cache import build_latent_cache

    own = inputs["latent_cache"]
    if kind == "vae" and own is not None and (own / "meta.json").is_file():
        meta = json.loads((own / "meta.json").read_text())
        if meta.get("vae_version") == version:
            return own
    out = work / "latents" / f"{kind}-{version[:12]}"
    text_cache = inputs["text_cache"] if inputs["text_cache"] and inputs["text_cache"].is_file() else None
    return build_latent_cache(inputs["rows"], inputs["data_root"], model, inputs["encoders"], out,
                              data_version="bench", vae_version=version, low_res=None, batch_size=16,
                              progress=progress, text_cache=text_cache)


# ------------------------------------------------------------------ one candidate


def train_config(name: str, steps: int, z: int, text_dims: list[int], extra: dict | None = None):
    from stepvideo.models.dit import DiTConfig
    from stepvideo.training.dit_trainer import DiTTrainConfig

    _, _, model_over, train_over = CANDIDATES[name]
    over = {**BASE_MODEL, **model_over}
    model = DiTConfig.preset(over.pop("preset"), in_channels=z, out_channels=z, caption_channels=text_dims, **over)
    train = {**BASE_TRAIN, **train_over, **(extra or {})}
    train["warmup_steps"] = min(train["warmup_steps"], max(steps // 5, 0))
    return DiTTrainConfig(model=model.to_dict(), steps=steps, checkpoint_every=max(steps, 1), log_every=1,
                          keep_checkpoints=1, **train)


def _train(cfg, cache: Path, out: Path, threads: int, progress: bool) -> tuple[dict, list[float]]:
    """train_dit with the wall-clock time of each step (log_every=1)."""
    from stepvideo.training.dit_trainer import train_dit

    cfg.threads = threads
    stamps: list[float] = []
    result = train_dit(cfg, cache, out, log_fn=lambda step, m: stamps.append(time.perf_counter()),
                       progress=progress, resume=False)
    return result, [b - a for a, b in zip(stamps, stamps[1:])]


def run_candidate(name: str, seconds: float, inputs: dict, work: Path, threads: int, prompts: int, sample_steps: int,
                  progress: bool, smoke: bool = False) -> dict:
    from stepvideo.evaluation.runner import balanced_subset, load_prompts, run_benchmark, summary_metrics
    from stepvideo.models.dit import StepVideoDiT
    from stepvideo.pipelines.t2v import T2VPipeline

    what, kind, _, _ = CANDIDATES[name]
    model, version = latent_model(kind, inputs)
    tag = f"{name}-{seconds:g}s" + (f"-vae{version[:8]}" if kind == "vae" else "")  # one result per VAE
    done = work / tag / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    torch.set_num_threads(threads)
    cache = latent_cache(kind, model, version, inputs, work, progress)
    encoders = inputs["encoders"]
    dims = [int(encoders["llm"].dim), int(encoders["clip"].dim)]
    extra = {"batch_size": 2} if smoke else None
    z = int(model.config.z_channels)
    _, probe = _train(train_config(name, 4, z, dims, extra), cache, work / tag / "probe", threads, False)
    per_step = sorted(probe)[len(probe) // 2]
    steps = max(4, int(seconds / per_step))
    cfg = train_config(name, steps, z, dims, extra)
    result, step_times = _train(cfg, cache, work / tag / "run", threads, progress)
    dit = StepVideoDiT.from_pretrained(result["model_dir"]).eval()
    pipe = T2VPipeline(dit, model, encoders["llm"], encoders["clip"])
    subset = balanced_subset(load_prompts(None), prompts)
    size = inputs["rows"][0]["height"], inputs["rows"][0]["width"]
    bench = run_benchmark(pipe, subset, work / tag / "eval", steps=sample_steps, cfg=5.0, shift=3.0,
                          height=size[0], width=size[1], batch_size=16, progress=progress)
    summary = bench["summary"]
    out = {"name": name, "what": what, "latent": kind, "z": z, "steps": steps,
           "latent_version": version, "vae_dir": str(inputs["vae_dir"]) if kind == "vae" else None,
           "train_seconds": round(sum(step_times) + per_step, 1), "step_s": round(per_step, 3), "threads": threads,
           "params_m": round(dit.num_parameters() / 1e6, 2), "final_loss": result["loss_curve"][-1],
           "scores": summary_metrics(summary, ""), "videos": summary["videos"], "train_config": cfg.to_dict()}
    done.parent.mkdir(parents=True, exist_ok=True)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(done)
    return out


CATEGORIES = ("color", "shape", "count", "background", "motion", "camera")


def table(results: list[dict]) -> str:
    head = ("candidate", "latent", "params", "s/step", "steps", "train s", "loss", *CATEGORIES, "EN", "ZH",
            "overall", "chance")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s = r["scores"]
        cats = [f"{100 * s[k]:.0f}% ({100 * s.get('chance_' + k, float('nan')):.0f})" if k in s else "-"
                for k in CATEGORIES]
        langs = [f"{100 * s.get('lang_' + k, float('nan')):.0f}%" for k in ("en", "zh")]
        lines.append(f"| {r['name']} | {r['latent']} z{r['z']} | {r['params_m']}M | {r['step_s']:.2f} | {r['steps']} | "
                     f"{r['train_seconds']:.0f} | {r['final_loss']:.3f} | " + " | ".join(cats) + " | "
                     + " | ".join(langs) + f" | {100 * s.get('overall', 0):.0f}% | {100 * s.get('chance_overall', 0):.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", default="base,oracle", help="comma-separated names (--list shows them)")
    ap.add_argument("--seconds", default="300", help="training seconds per run; a comma list gives a curve")
    ap.add_argument("--prompts", type=int, default=32, help="benchmark prompts (balanced over the categories) x EN+ZH")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="a project where the cascade ran to the text cache")
    ap.add_argument("--vae", type=Path, default=None,
                    help="the VAE folder of the `vae` candidates [default: ROOT/outputs/vae]; e.g. a checkpoint's model/")
    ap.add_argument("--work", type=Path, default=CACHE / "bench-dit")
    ap.add_argument("--list", action="store_true", help="print the candidates and exit")
    ap.add_argument("--smoke", action="store_true", help="12 synthetic items, a random VAE, a few seconds each")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for name, (what, kind, _, _) in CANDIDATES.items():
            print(f"{name:14s} [{kind}] {what}")
        return 0
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        ap.error(f"unknown candidates {unknown}; --list shows them")
    try:
        budgets = [float(s) for s in args.seconds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seconds must be numbers separated by commas, got {args.seconds!r}")
    if not budgets or min(budgets) <= 0:
        ap.error("--seconds must be positive")
    if args.smoke:
        budgets, args.prompts, args.sample_steps = [min(min(budgets), 2.0)], 22, 2  # 2 per category: chance
        inputs = smoke_inputs(args.work)
    else:
        if not (args.root / "params.yaml").is_file():
            ap.error(f"--root {args.root}: not a project (no params.yaml)")
        inputs = project_inputs(args.root)
        if args.vae is not None:
            if not (args.vae / "config.json").is_file():
                ap.error(f"--vae {args.vae}: not a VideoVAE folder (no config.json)")
            inputs["vae_dir"] = args.vae
    results = []
    for name in names:
        for seconds in budgets:
            r = run_candidate(name, seconds, inputs, args.work, args.threads, args.prompts, args.sample_steps,
                              progress=not args.no_progress, smoke=args.smoke)
            results.append(r)
            print(f"{name} @ {seconds:g} s: {r['steps']} steps, loss {r['final_loss']:.3f}, benchmark "
                  f"{100 * r['scores'].get('overall', 0):.0f}% (chance {100 * r['scores'].get('chance_overall', 0):.0f}%)",
                  flush=True)
    print(f"\nDiT learning per CPU-second ({args.threads} thread(s); {args.prompts} prompts x EN+ZH, "
          f"{args.sample_steps} sampler steps, cfg 5; chance in brackets)")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
