"""`stepvideo lora export` and `stepvideo lora merge`: LoRA adapters for other tools, or merged into a DiT."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from stepvideo.cli._common import user_errors

lora_app = typer.Typer(help="LoRA adapters of the DiT: export for ComfyUI / diffusers / peft, merge into weights.",
                       no_args_is_help=True)


@lora_app.command("export")
@user_errors
def lora_export(
    adapter: Path = typer.Argument(..., help="an adapter folder (adapter_model.safetensors + adapter_config.json) "
                                             "or a LoRA .safetensors file"),
    format: str = typer.Option(..., "--format", help="comfyui | diffusers | peft"),
    out: Path = typer.Option(..., "--out", help="a .safetensors file (comfyui, diffusers) or a folder (peft)"),
):
    """Write the adapter in another tool's layout (official module names; alpha kept explicitly)."""
    from stepvideo.training.lora import export_lora, load_adapter

    a = load_adapter(adapter)
    path = export_lora(a, format, out)
    typer.echo(f"wrote {path} ({format}: {len(a.modules)} modules, {a.num_parameters():,} parameters)")


@lora_app.command("merge")
@user_errors
def lora_merge(
    base: Path = typer.Option(..., "--base", help="a DiT folder (config.json + safetensors) or a pipeline bundle"),
    lora: List[str] = typer.Option(..., "--lora", help="FILE_OR_FOLDER[:SCALE] (repeatable; scale 1 when omitted)"),
    out: Path = typer.Option(..., "--out", help="the merged DiT folder to write"),
):
    """Merge adapters into the DiT weights (W + scale * alpha / rank * B @ A) and write a full DiT folder."""
    from stepvideo.models.lora import parse_lora_arg
    from stepvideo.training.lora import merge_into_folder

    adapters = [parse_lora_arg(s) for s in lora]
    path = merge_into_folder(base, adapters, out)
    typer.echo(f"wrote {path} (" + ", ".join(f"{p}@{s:g}" for p, s in adapters) + " merged)")
