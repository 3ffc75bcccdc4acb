"""`stepvideo plan`: per-GPU training memory of a DiT run (weights, gradients, optimizer states,
activations) and whether it fits, before launching it (stepvideo.training.memory_plan)."""

from __future__ import annotations

from typing import Optional

import typer

from stepvideo.cli._common import user_errors
from stepvideo.errors import InputError


@user_errors
def plan_cmd(
    preset: str = typer.Option("step-video-t2v", "--preset", help="DiT preset: step-video-t2v | small | demo"),
    gpus: int = typer.Option(1, "--gpus", help="GPUs in the run (ZeRO partitions over all of them)"),
    gpu_mem: float = typer.Option(80.0, "--gpu-mem", help="memory of one GPU in GiB (an 80 GB H100: 80)"),
    frames: int = typer.Option(204, "--frames", help="video frames (1 or a multiple of 17)"),
    height: int = typer.Option(544, "--height", help="video height in pixels (a multiple of 16 x patch size)"),
    width: int = typer.Option(992, "--width", help="video width in pixels (a multiple of 16 x patch size)"),
    batch: int = typer.Option(1, "--batch", help="videos per GPU per micro-step"),
    method: str = typer.Option("full", "--method", help="full | lora"),
    rank: Optional[int] = typer.Option(None, "--rank", help="LoRA rank (with --method lora; default 64)"),
    zero: int = typer.Option(0, "--zero", help="DeepSpeed ZeRO stage 0..3"),
    checkpointing: bool = typer.Option(False, "--checkpointing/--no-checkpointing",
                                       help="activation checkpointing per DiT block"),
    sp: int = typer.Option(1, "--sp", help="sequence-parallel degree: divides the video tokens of a sample"),
    weights: str = typer.Option("bf16", "--weights",
                                help="bf16 | fp32 | fp8 (fp8: frozen block Linears stored as float8_e4m3fn; LoRA only)"),
    optimizer: str = typer.Option("adamw", "--optimizer",
                                  help="adamw | adamw8bit (8-bit states: bitsandbytes, CUDA only)"),
    overhead: float = typer.Option(2.0, "--overhead", help="fixed per-GPU overhead in GiB (CUDA context, allocator)"),
):
    """Plan one training step's per-GPU memory and say whether it fits."""
    from stepvideo.training.memory_plan import plan_memory

    if rank is not None and method != "lora":
        raise InputError(f"--rank {rank} is for --method lora (got --method {method})")
    plan = plan_memory(preset, frames=frames, height=height, width=width, batch=batch, method=method,
                       rank=64 if rank is None else rank,
                       zero=zero, gpus=gpus, checkpointing=checkpointing, sp=sp, weights=weights,
                       optimizer=optimizer, gpu_mem_gib=gpu_mem, overhead_gib=overhead)
    typer.echo(plan.table())


__all__ = ["plan_cmd"]
