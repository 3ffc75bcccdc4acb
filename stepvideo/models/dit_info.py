"""Size, compute and memory of a DiT configuration, without building it: parameter count, forward
FLOPs per sample, training memory (what `stepvideo model info` prints and bench/bench_dit.py uses)."""

from __future__ import annotations

from typing import Any

from stepvideo.models.dit import DiTConfig, build_on_meta

def latent_frames(frames: int, vae_t: int = 8, vae_chunk: int = 17) -> int:
    """Latent frames of the Step-Video VAE: every ``vae_chunk`` (17) frames -> 1 + 16/8 = 3."""
    if frames % vae_chunk:
        raise ValueError(f"frames ({frames}) must be a multiple of the VAE chunk ({vae_chunk})")
    if (vae_chunk - 1) % vae_t:
        raise ValueError(f"VAE chunk {vae_chunk} - 1 must be divisible by vae_t {vae_t}")
    return frames // vae_chunk * (1 + (vae_chunk - 1) // vae_t)


def forward_flops(cfg: DiTConfig, frames: int, h: int, w: int, llm_len: int = 320, clip_len: int = 77) -> dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of one forward for ONE sample of (frames, h, w) latent tokens
    (after patching). Norms, activations, RoPE and softmax are not counted (they are O(N*D))."""
    d, n = cfg.hidden_size, frames * h * w
    p2c_in = cfg.patch_size**2 * cfg.in_channels
    p2c_out = cfg.patch_size**2 * cfg.out_channels
    text = llm_len + (clip_len if cfg.clip_dim is not None else 0)
    proj = 2 * n * d * 3 * d + 2 * n * d * d  # wqkv, wo
    proj += 2 * n * d * d + 2 * text * d * 2 * d + 2 * n * d * d  # wq, wkv, wo
    ffn = 2 * 2 * n * d * cfg.ff_mult * d
    self_attn = 2 * 2 * n * n * d  # q k^T and p v
    cross_attn = 2 * 2 * n * text * d
    embed = 2 * n * p2c_in * d + 2 * n * d * p2c_out
    embed += 2 * llm_len * (cfg.llm_dim * d + d * d) + (2 * clip_len * cfg.clip_dim * d if cfg.clip_dim else 0)
    embed += 2 * (cfg.freq_dim * d + d * d + d * 6 * d)
    L = cfg.num_layers
    out = {
        "tokens": n,
        "linear": L * (proj + ffn) + embed,
        "self_attention": L * self_attn,
        "cross_attention": L * cross_attn,
    }
    out["total"] = out["linear"] + out["self_attention"] + out["cross_attention"]
    return out


def count_parameters(cfg: DiTConfig) -> int:
    return build_on_meta(cfg).num_parameters()


def model_info(
    cfg: DiTConfig | str,
    frames: int = 204,
    height: int = 544,
    width: int = 992,
    vae_t: int = 8,
    vae_hw: int = 16,
    *,
    llm_len: int = 320,
    clip_len: int = 77,
    batch_size: int = 1,
    vae_chunk: int = 17,
) -> dict[str, Any]:
    """Exact parameter count, training FLOPs per step and training-state memory.

    FLOPs/step = 3 x forward (backward ~ 2 x forward), plus the 4 x figure for per-block
    gradient checkpointing (one more forward). Memory: bf16 weights (2 B) + bf16 grads (2 B) +
    fp32 master weights (4 B) + Adam m and v (8 B) = 16 B/param, activations excluded.
    """
    if isinstance(cfg, str):
        cfg = DiTConfig.preset(cfg)
    if height % (vae_hw * cfg.patch_size) or width % (vae_hw * cfg.patch_size):
        raise ValueError(f"{height}x{width} must be divisible by vae_hw*patch = {vae_hw * cfg.patch_size}")
    lf = latent_frames(frames, vae_t, vae_chunk)
    lh, lw = height // vae_hw, width // vae_hw
    n_params = count_parameters(cfg)
    fl = forward_flops(cfg, lf, lh // cfg.patch_size, lw // cfg.patch_size, llm_len, clip_len)
    fwd = fl["total"] * batch_size
    mem = {
        "weights_bf16": 2 * n_params,
        "grads_bf16": 2 * n_params,
        "master_fp32": 4 * n_params,
        "adam_moments_fp32": 8 * n_params,
    }
    mem["total"] = sum(mem.values())
    gib = 1024**3
    return {
        "num_parameters": n_params,
        "hidden_size": cfg.hidden_size,
        "latent_shape": [lf, cfg.out_channels, lh, lw],
        "tokens": fl["tokens"],
        "text_tokens": llm_len + (clip_len if cfg.clip_dim else 0),
        "batch_size": batch_size,
        "flops_forward": fwd,
        "flops_forward_breakdown": {k: v * batch_size for k, v in fl.items() if k not in ("tokens", "total")},
        "flops_per_step": 3 * fwd,
        "flops_per_step_with_checkpointing": 4 * fwd,
        "memory_bytes": mem,
        "memory_gib": {k: v / gib for k, v in mem.items()},
    }


__all__ = ["model_info", "forward_flops", "count_parameters", "latent_frames"]
