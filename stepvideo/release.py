"""`stepvideo-tiny`: the embedded release, and which model `stepvideo generate` uses by default.

The release is a finished cascade's outputs in one `T2VPipeline` bundle folder committed to the
repository (`release/stepvideo-tiny/`): tokenizer + both text encoders, the VAE and the DiT (after SFT and DPO) as
bf16 safetensors, with a model card (`README.md`), the run's parameters (`params.yaml`), the
measured figures (`release.json`) and sample frames (`samples.png`).

`build_release` makes it from a project folder where the cascade has run (`stepvideo flow run
--preset small`): it reads `outputs/bundle`, `outputs/eval/results.json` and `outputs/vae`,
writes the bf16 weights, reloads them and measures the shipped VAE again (held-out PSNR/SSIM and
the scorer on round trips) and renders the samples with the shipped pipeline, so every figure on
the card is a figure of the files in the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from stepvideo import registry, tracking
from stepvideo.config import Params, dump_params
from stepvideo.evaluation.checks import CATEGORIES
from stepvideo.stages.common import OUTPUTS, PACKAGE_ROOT, clean_rows, require_output
from stepvideo.errors import InputError, MissingError

RELEASE_NAME = "stepvideo-tiny"
RELEASE_DIR = PACKAGE_ROOT / "release" / RELEASE_NAME

# the README's picture: the same scenes in both languages
SAMPLES: tuple[tuple[str, str], ...] = (
    ("en", "A large red circle moves right quickly on a navy background."),
    ("zh", "深蓝色背景上，一个大的红色圆形快速地向右移动。"),
    ("en", "A medium yellow square on a gray background moves up slowly."),
    ("zh", "在黑色的背景中，一个大的绿色星形逐渐变大。"),
    ("en", "On a brown background, a small white triangle and a large blue diamond. The camera pans left."),
    ("zh", "灰色背景上有一个中等大小的橙色圆形和一个小的青色正方形。"),
)
SAMPLE_FRAMES = (0, 4, 8, 12, 16)


def default_model() -> tuple[str, str]:
    """What `stepvideo generate` loads without `--model`: `(uri or folder, why)`. The registry's
    champion (`models:/stepvideo-t2v@champion`) when there is one, else the committed release."""
    if tracking.alias_exists(registry.BUNDLE, registry.CHAMPION):
        return f"models:/{registry.BUNDLE}@{registry.CHAMPION}", "the registry's champion"
    if (RELEASE_DIR / "model_index.json").is_file():
        return str(RELEASE_DIR), f"the {RELEASE_NAME} release"
    raise MissingError(f"no --model given, no models:/{registry.BUNDLE}@{registry.CHAMPION} in the registry and no release "
                            f"at {RELEASE_DIR}: pass --model (a bundle folder or models:/ URI)")


def _heldout_media(root: Path, max_items: int) -> list[np.ndarray]:
    from stepvideo.training.vae_trainer import load_clips

    clean, rows = clean_rows(root)
    return load_clips(rows, clean.parent, split="heldout", max_items=max_items)


def vae_quality(vae: Any, media: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of VAE round trips of `media` (uint8 (T, H, W, 3)): the trainer's
    held-out evaluation, on every item at full size."""
    from stepvideo.training.vae_trainer import VAETrainConfig, evaluate

    size = max(max(m.shape[1], m.shape[2]) for m in media)
    metrics, _ = evaluate(vae, media, VAETrainConfig(eval_max_items=len(media), eval_size=size))
    return {"psnr": metrics["heldout_psnr"], "ssim": metrics["heldout_ssim"]}


def _sample_grid(pipe: Any, seed: int = 0, scale: int = 2) -> tuple[np.ndarray, list[dict]]:
    """Frames SAMPLE_FRAMES of one clip per SAMPLES prompt, a row per prompt (scaled `scale`x)."""
    prompts = [p for _, p in SAMPLES]
    video = pipe.generate(prompts, num_frames=17, height=64, width=64, seed=seed)
    rows = []
    for clip in video:
        strip = [np.pad(clip[i], ((2, 2), (2, 2), (0, 0)), constant_values=255) for i in SAMPLE_FRAMES]
        rows.append(np.concatenate(strip, axis=1))
    grid = np.concatenate(rows, axis=0)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid, [{"lang": lang, "prompt": p, "seed": seed + i} for i, (lang, p) in enumerate(SAMPLES)]


def build_release(root: Path, params: Params, out: Path = RELEASE_DIR, vae_items: int = 100) -> dict:
    """Write the release folder from the cascade outputs under `root` (see the module docstring)."""
    from PIL import Image

    from stepvideo.pipelines.t2v import MODEL_INDEX, T2VPipeline
    from stepvideo.fileio import atomic_folder
    from stepvideo.evaluation.runner import vae_content_metrics
    from stepvideo.models.io import read_json

    root = Path(root)
    bundle = require_output(root / OUTPUTS / "bundle", "bundle", marker=MODEL_INDEX)
    results_file = root / OUTPUTS / "eval" / "results.json"
    if not results_file.is_file():
        raise MissingError(f"{results_file}: no benchmark results; run the evaluate stage first")
    results = read_json(results_file, dict)
    vae_train = read_json(require_output(root / OUTPUTS / "vae", "train_vae") / "metrics.json", dict)
    if not isinstance(results.get("summary"), dict):
        raise InputError(f"{results_file}: no \"summary\" object; run the evaluate stage again")
    out = Path(out)
    with atomic_folder(out) as tmp:
        pipe = T2VPipeline.from_pretrained(bundle, dtype=torch.float32)
        pipe.to(dtype=torch.bfloat16).save_pretrained(tmp)  # the shipped weights
        shipped = T2VPipeline.from_pretrained(tmp, dtype=torch.float32)
        shipped.vae.eval()
        media = _heldout_media(root, vae_items)
        vae = {**vae_quality(shipped.vae, media), "items": len(media),
               "train_heldout_psnr": vae_train.get("heldout_psnr"), "train_heldout_ssim": vae_train.get("heldout_ssim")}
        clean, _ = clean_rows(root)
        vae.update(vae_content_metrics(tmp / "vae", clean, vae_items))
        grid, samples = _sample_grid(shipped)
        Image.fromarray(grid).save(tmp / "samples.png", optimize=True)
        lineage = dict(shipped.lineage)
        size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        info = {"name": RELEASE_NAME, "preset": params.preset, "data_version": lineage.get("data_version"),
                "git_commit": lineage.get("git_commit"), "benchmark": results["summary"],
                "benchmark_settings": results.get("settings"), "vae": vae, "samples": samples,
                "stage_seconds": tracking.stage_durations(params.tracking.experiment),
                "dit_parameters": shipped.dit.num_parameters(), "vae_parameters": shipped.vae.num_parameters(),
                "vae_geometry": {"temporal": shipped.vae.config.temporal_factor,
                                 "spatial": shipped.vae.config.spatial_factor,
                                 "z_channels": shipped.vae.config.z_channels},
                "bytes": size}
        (tmp / "params.yaml").write_text(dump_params(params))
        (tmp / "release.json").write_text(json.dumps(info, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        (tmp / "README.md").write_text(model_card(info), encoding="utf-8")
    return info


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def model_card(info: dict) -> str:
    """The release's README.md from its `release.json` content."""
    b, v = info["benchmark"], info["vae"]
    chance = (b.get("chance") or {}).get("categories") or {}
    langs = b.get("languages") or {}
    g = info.get("vae_geometry")  # absent in a release.json written before it was recorded
    geometry = f" {g['temporal']}x{g['spatial']}x{g['spatial']}, {g['z_channels']} latent channels" if g else ""
    lines = [
        f"# {info['name']}",
        "",
        f"The embedded text-to-video release of stepvideo: a Step-Video-T2V-class cascade (Video-VAE{geometry}; "
        "DiT with 3D full attention and two bilingual text encoders) trained from scratch on the embedded "
        "synthetic shapes domain (64x64, 17 frames, English + Chinese captions). It is what `stepvideo "
        "generate` uses when no `--model` is given and no registry champion exists, and what `make demo` "
        "fine-tunes.",
        "",
    ]
    if g and (g["temporal"], g["spatial"], g["z_channels"]) != (8, 16, 64):
        lines += [
            f"The VAE is {g['temporal']}x{g['spatial']}x{g['spatial']}, not the report's 8x16x16 with 64 channels: on a "
            f"64x64 frame a 16x spatial latent is a 4x4 grid, while this one is "
            f"{64 // g['spatial']}x{64 // g['spatial']} with {g['temporal'] * g['spatial'] ** 2 * 3 // g['z_channels']} "
            "pixel values per latent value (the report's VAE: 96), and it learned more per CPU second in "
            "`bench/bench_learning.py` (the project README, *Learning per CPU-second*). The 8x16x16 geometry is "
            "the `official` VAE preset, at official parity.",
            "",
        ]
    lines += [
        "## Recipe and lineage",
        f"- recipe: the `{info['preset']}` preset (`params.yaml` here); rebuild with `stepvideo flow run --preset "
        f"{info['preset']}` then `stepvideo release build`",
        f"- data version (DVC): `{info['data_version']}`",
        f"- code: git commit `{info['git_commit']}`",
        f"- weights: bf16 safetensors, {info['bytes'] / 2**20:.1f} MiB in all (DiT {info['dit_parameters']:,} "
        f"parameters, VAE {info['vae_parameters']:,})",
    ]
    if info.get("stage_seconds"):
        times = ", ".join(f"{k} {s:.0f} s" for k, s in info["stage_seconds"].items())
        lines.append(f"- training wall time per stage (the machine that trained it): {times}")
    lines += [
        "",
        "## Benchmark (the embedded 128-prompt bilingual benchmark, the project's pixel scorer)",
        f"overall {_pct(b.get('overall'))} (chance {_pct((b.get('chance') or {}).get('overall'))}); English "
        f"{_pct(langs.get('en'))}, Chinese {_pct(langs.get('zh'))}; bilingual consistency {_pct(b.get('consistency'))}. "
        "Chance: the same videos judged against another prompt of their category.",
        "",
        "| category | accuracy | chance |",
        "|---|---|---|",
    ]
    for cat in CATEGORIES:
        lines.append(f"| {cat} | {_pct((b.get('categories') or {}).get(cat))} | {_pct(chance.get(cat))} |")
    lines += [
        "",
        "## VAE (held-out clips and stills, against the frames as rendered)",
        f"PSNR {v['psnr']:.2f} dB, SSIM {v['ssim']:.3f} over {v['items']} held-out media (bf16 weights loaded as "
        "float32). The scorer on the same ground-truth clips before / after a VAE round trip:",
        "",
        "| category | ground truth | after the VAE |",
        "|---|---|---|",
    ]
    for cat in CATEGORIES:
        lines.append(f"| {cat} | {_pct(v.get(f'scorer_gt_{cat}'))} | {_pct(v.get(f'scorer_vae_{cat}'))} |")
    lines += ["", "## Samples (frames 0, 4, 8, 12, 16; seed per row)", "", "![samples](samples.png)", ""]
    lines += [f"{i + 1}. ({s['lang']}) {s['prompt']}" for i, s in enumerate(info["samples"])]
    return "\n".join(lines) + "\n"
