"""`stepvideo generate`, `stepvideo model info`, `stepvideo compat verify` and `stepvideo release build`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from stepvideo.cli._common import PARAMS, load_params_file, project_root, user_errors

compat_app = typer.Typer(help="Official Step-Video-T2V compatibility.", no_args_is_help=True)
model_app = typer.Typer(help="Model presets and facts.", no_args_is_help=True)
release_app = typer.Typer(help="The embedded release (stepvideo-tiny).", no_args_is_help=True)


@user_errors
def generate_cmd(
    prompt: str = typer.Argument(..., help="the text (English or Chinese)"),
    out: Path = typer.Option(Path("video.mp4"), help="output mp4"),
    model: Optional[str] = typer.Option(None, help="a pipeline folder or MLflow URI (models:/NAME@ALIAS); omitted: "
                                                   "the registry's champion, else the stepvideo-tiny release"),
    negative_prompt: str = typer.Option("", help="text for the unconditional branch of CFG"),
    seed: int = typer.Option(0, help="noise seed"),
    steps: Optional[int] = typer.Option(None, help="Euler steps [pipeline default: 50]"),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="classifier-free guidance scale [default: 9]"),
    shift: Optional[float] = typer.Option(None, help="time shift [default: 13]"),
    frames: int = typer.Option(17, help="1 or a multiple of 17"),
    height: int = typer.Option(64, help="multiple of 16"),
    width: int = typer.Option(64, help="multiple of 16"),
    fps: int = typer.Option(8, help="frames per second of the mp4"),
    gif: bool = typer.Option(False, help="also write a GIF beside the mp4"),
    vae_tile: Optional[int] = typer.Option(None, help="decode in spatial tiles of this many pixels (multiple of 16)"),
    vae_tile_mode: str = typer.Option("exact", help="exact (equals untiled; latents stay in host memory) | blend"),
    lora: Optional[List[str]] = typer.Option(None, "--lora", help="a LoRA adapter FILE_OR_FOLDER[:SCALE] merged into "
                                                                  "the DiT at load (repeatable; scale 1 when omitted)"),
):
    """Sample a video from text and write it as mp4 (and optionally GIF)."""
    from tqdm import tqdm

    from stepvideo.pipelines.t2v import T2VPipeline, save_video
    from stepvideo.tracking import resolve_model

    if model is None:
        from stepvideo.release import default_model

        model, why = default_model()
        typer.echo(f"no --model: using {why} ({model})", err=True)
    from stepvideo.models.lora import fuse_lora, load_adapter, parse_lora_arg

    adapters = [(load_adapter(path), scale) for path, scale in map(parse_lora_arg, lora or [])]  # bad files: at once
    pipe = T2VPipeline.from_pretrained(resolve_model(model))
    for adapter, scale in adapters:
        fuse_lora(pipe.dit, adapter, scale)
        typer.echo(f"LoRA {adapter.source} merged at scale {scale:g}", err=True)
    bar = tqdm(desc="sampling", unit="step")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    video = pipe.generate(prompt, negative_prompt=negative_prompt, num_frames=frames, height=height, width=width,
                          steps=steps, cfg_scale=cfg, shift=shift, seed=seed, progress=progress,
                          vae_tile_size=vae_tile, vae_tile_mode=vae_tile_mode)
    bar.close()
    path = save_video(video[0], out, fps=fps, gif=gif)
    typer.echo(f"wrote {path}")

@model_app.command("info")
@user_errors
def model_info_cmd(
    preset: str = typer.Option("step-video-t2v", help="DiT preset: step-video-t2v | small | demo"),
    frames: int = typer.Option(204, help="video frames (1 or a multiple of 17)"),
    height: int = typer.Option(544, help="video height"),
    width: int = typer.Option(992, help="video width"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
):
    """Parameter count (built on the meta device), FLOPs per training step, training memory."""
    from stepvideo.models.dit import DiTConfig
    from stepvideo.models.dit_info import model_info

    info = model_info(DiTConfig.preset(preset), frames=frames, height=height, width=width)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    gib = info["memory_gib"]
    typer.echo(f"DiT preset {preset}: {info['num_parameters']:,} parameters ({info['num_parameters'] / 1e9:.2f} B), "
               f"hidden {info['hidden_size']}")
    typer.echo(f"video {frames}x{height}x{width} -> latent {info['latent_shape']} -> {info['tokens']:,} tokens "
               f"(+{info['text_tokens']} text)")
    typer.echo(f"FLOPs: forward {info['flops_forward']:.3e}; training step {info['flops_per_step']:.3e} "
               f"({info['flops_per_step_with_checkpointing']:.3e} with per-block checkpointing)")
    for k, v in info["flops_forward_breakdown"].items():
        typer.echo(f"  forward {k:24s} {v:.3e}")
    typer.echo("training memory (activations excluded): " + ", ".join(f"{k} {v:.1f} GiB" for k, v in gib.items()))

@compat_app.command("verify")
@user_errors
def compat_verify(reference: Path = typer.Argument(..., help="an official golden .safetensors (JSON beside it)")):
    """Load official weights into our module, run the reference inputs, compare outputs."""
    from stepvideo.compat.verify import verify

    kind, diffs = verify(reference)
    ok = True
    typer.echo(f"{reference.name} ({kind})")
    for name, (diff, tol) in diffs.items():
        passed = diff <= tol
        ok &= passed
        typer.echo(f"  {name:46s} max|diff| {diff:.3e}  tol {tol:.0e}  {'ok' if passed else 'FAIL'}")
    if not ok:
        typer.secho("parity FAILED", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo("parity ok")

@release_app.command("build")
@user_errors
def release_build(
    out: Optional[Path] = typer.Option(None, help="release folder [default: release/stepvideo-tiny in the package]"),
    preset: Optional[str] = typer.Option(None, help="the preset the cascade ran (instead of the params file)"),
    params: Path = PARAMS,
    vae_items: int = typer.Option(100, help="held-out media for the VAE figures"),
):
    """Make the release folder from this project's cascade outputs (bundle, benchmark, VAE) in bf16."""
    from stepvideo.release import RELEASE_DIR, build_release

    info = build_release(project_root(), load_params_file(params, preset), out or RELEASE_DIR, vae_items=vae_items)
    b = info["benchmark"]
    typer.echo(f"wrote {out or RELEASE_DIR}: {info['bytes'] / 2**20:.1f} MiB; benchmark overall "
               f"{100 * (b.get('overall') or 0):.1f}%, VAE {info['vae']['psnr']:.2f} dB / SSIM {info['vae']['ssim']:.3f}")
