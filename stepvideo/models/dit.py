"""Step-Video-T2V diffusion transformer (DiT), flow-velocity predictor.

Parameter names equal the official ``StepVideoModel`` state_dict names, so an official
checkpoint loads with ``load_state_dict(strict=True)``.

Per block (D = heads * head_dim, modulation rows = shift/scale/gate for attention, then FFN):

    x += gate_a * SelfAttn(LN1(x) * (1 + scale_a) + shift_a)       # fused per-head [q,k,v], RMSNorm q/k, 3D RoPE
    x += CrossAttn(x, text)                                          # raw residual stream as query
    x += gate_f * FFN(LN2(x) * (1 + scale_f) + shift_f)              # Linear-GELU(tanh)-Linear

The text tokens are concat([clip_projection(clip), caption_projection(LN(llm))]): CLIP first.
Timestep t in [0, 1] (t = 1 is clean data with our flow-matching convention) is multiplied by
``timestep_scale`` (1000) before the 256-channel [cos, sin] sinusoidal embedding.

Sequence parallel (``set_sequence_parallel``): the blocks run on a token shard per rank; see
``stepvideo.parallel.sequence``.

Masks: ``llm_mask``/``clip_mask`` are (B, L) bool, True = real token. Padding may be anywhere;
its content never influences the output. ``official_mask_to_ours`` turns the official
single mask (row sums over the [CLIP, LLM] concatenation) into the two masks.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from stepvideo.models.attention import BACKENDS, attention
from stepvideo.models.rope import RoPE3D, apply_rope, check_rope_split, default_rope_split
from stepvideo.errors import InputError

MODEL_TYPE = "stepvideo_dit"


# ----------------------------------------------------------------------------------------------
# config


@dataclass
class DiTConfig:
    num_layers: int = 48
    num_heads: int = 48
    head_dim: int = 128
    in_channels: int = 64
    out_channels: int = 64
    patch_size: int = 1
    caption_channels: list[int] = field(default_factory=lambda: [6144, 1024])  # [llm_dim, clip_dim]
    rope_split: list[int] | None = None  # (t, h, w) chunks of head_dim; None = 2:1:1 ([64, 32, 32] at 128)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6  # caption_norm / norm_out (non-affine)
    block_norm_eps: float = 1e-5  # norm1 / norm2 (affine)
    qk_norm_eps: float = 1e-6
    ff_mult: int = 4
    timestep_scale: float = 1000.0
    freq_dim: int = 256
    gradient_checkpointing: bool = False
    attention_backend: str = "auto"

    def __post_init__(self):
        if isinstance(self.caption_channels, int):
            self.caption_channels = [self.caption_channels]
        self.caption_channels = [int(c) for c in self.caption_channels]
        if len(self.caption_channels) not in (1, 2) or any(c <= 0 for c in self.caption_channels):
            raise InputError(f"caption_channels must be [llm_dim] or [llm_dim, clip_dim], got {self.caption_channels}")
        for name in ("num_layers", "num_heads", "head_dim", "in_channels", "out_channels", "patch_size", "ff_mult"):
            if int(getattr(self, name)) <= 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}")
        if self.freq_dim <= 0 or self.freq_dim % 2:
            raise InputError(f"freq_dim must be positive and even, got {self.freq_dim}")
        split = self.rope_split if self.rope_split is not None else default_rope_split(self.head_dim)
        check_rope_split(split, self.head_dim)
        if self.rope_split is not None:
            self.rope_split = [int(s) for s in self.rope_split]
        if self.attention_backend not in BACKENDS:
            raise InputError(f"attention_backend must be one of {BACKENDS}, got {self.attention_backend!r}")

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def llm_dim(self) -> int:
        return self.caption_channels[0]

    @property
    def clip_dim(self) -> int | None:
        return self.caption_channels[1] if len(self.caption_channels) > 1 else None

    @property
    def resolved_rope_split(self) -> tuple[int, int, int]:
        return tuple(self.rope_split) if self.rope_split is not None else default_rope_split(self.head_dim)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_type"] = MODEL_TYPE
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DiTConfig":
        d = dict(d)
        mt = d.pop("model_type", MODEL_TYPE)
        if mt != MODEL_TYPE:
            raise InputError(f"config is for model_type {mt!r}, not {MODEL_TYPE!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown DiTConfig keys: {unknown}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "DiTConfig":
        if name not in PRESETS:
            raise InputError(f"unknown DiT preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, DiTConfig] = {
    # the released Step-Video-T2V transformer (~30B parameters)
    "step-video-t2v": DiTConfig(),
    # CPU-sized: a benchmark/training smoke model
    "small": DiTConfig(num_layers=4, num_heads=4, head_dim=64, caption_channels=[256, 128]),
    # tiny: unit tests and demos on a laptop
    "demo": DiTConfig(num_layers=2, num_heads=2, head_dim=32, in_channels=16, out_channels=16, caption_channels=[64, 32]),
}


# ----------------------------------------------------------------------------------------------
# layers (attribute names follow the official module tree)


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in float32, one learnable gain."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=True)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, h*w, D)
        return self.proj(frames).flatten(2).transpose(1, 2)


class TimestepMLP(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class _TimestepEmbedding(nn.Module):
    def __init__(self, freq_dim: int, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepMLP(freq_dim, dim)


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos | sin] embedding of (already rescaled) timesteps, float32, (B, dim)."""
    half = dim // 2
    exponent = (-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)) / half
    args = t.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class AdaLNSingle(nn.Module):
    """t -> (global modulation (B, 6D), embedded timestep (B, D))."""

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = scale
        self.emb = _TimestepEmbedding(freq_dim, dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype):
        freqs = timestep_sinusoid(t.float() * self.scale, self.freq_dim)
        embedded = self.emb.timestep_embedder(freqs.to(dtype))
        return self.linear(F.silu(embedded)), embedded


class TextProjection(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.gelu(self.linear_1(x), approximate="tanh"))


class _GeluProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=False)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(dim, inner), nn.Identity(), nn.Linear(inner, dim, bias=False)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class SelfAttention(nn.Module):
    def __init__(self, dim: int, head_dim: int, eps: float, rope_split):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.rope_split = tuple(rope_split)
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def forward(self, x, cos, sin, backend="auto", sp=None, key_mask=None):
        """x (B, N, D); with a sequence-parallel ``sp``, x and cos/sin are this rank's token shard and
        ``sp.attention`` attends over the whole sequence (``key_mask``: its pad)."""
        b, n, d = x.shape
        qkv = self.wqkv(x).view(b, n, self.num_heads, 3 * self.head_dim)  # per head [q | k | v]
        q, k, v = qkv.split(self.head_dim, dim=-1)
        q = apply_rope(self.q_norm(q), cos, sin, self.rope_split)
        k = apply_rope(self.k_norm(k), cos, sin, self.rope_split)
        if sp is None:
            out = attention(q, k, v, None, backend=backend)
        else:
            out = sp.attention(q.contiguous(), k.contiguous(), v.contiguous(), key_mask, backend)
        return self.wo(out.reshape(b, n, d))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, head_dim: int, eps: float):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wkv = nn.Linear(dim, 2 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def forward(self, x, ctx, ctx_mask, backend="auto"):
        b, n, d = x.shape
        q = self.wq(x).view(b, n, self.num_heads, self.head_dim)
        kv = self.wkv(ctx).view(b, ctx.shape[1], self.num_heads, 2 * self.head_dim)  # per head [k | v]
        k, v = kv.split(self.head_dim, dim=-1)
        out = attention(self.q_norm(q), self.k_norm(k), v, ctx_mask, backend=backend)
        return self.wo(out.reshape(b, n, d))


class StepVideoBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.block_norm_eps, elementwise_affine=True)
        self.attn1 = SelfAttention(dim, cfg.head_dim, cfg.qk_norm_eps, cfg.resolved_rope_split)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.block_norm_eps, elementwise_affine=True)
        self.attn2 = CrossAttention(dim, cfg.head_dim, cfg.qk_norm_eps)
        self.ff = FeedForward(dim, cfg.ff_mult * dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x, ctx, ctx_mask, mod, cos, sin, backend="auto", record=None, prefix="", sp=None,
                self_mask=None):
        m = self.scale_shift_table[None] + mod.view(-1, 6, self.dim)
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = m.unbind(1)
        # modulation and gated residuals as one fused multiply-add each (addcmul)
        h = torch.addcmul(shift_a[:, None], self.norm1(x), 1 + scale_a[:, None])
        a = self.attn1(h, cos, sin, backend) if sp is None else self.attn1(h, cos, sin, backend, sp, self_mask)
        x = torch.addcmul(x, gate_a[:, None], a)
        c = self.attn2(x, ctx, ctx_mask, backend)
        x = x + c
        h = torch.addcmul(shift_f[:, None], self.norm2(x), 1 + scale_f[:, None])
        x = torch.addcmul(x, gate_f[:, None], self.ff(h))
        if record is not None:
            record[f"{prefix}.attn1"] = a.detach()
            record[f"{prefix}.attn2"] = c.detach()
            record[prefix] = x.detach()
        return x


# ----------------------------------------------------------------------------------------------
# model


class StepVideoDiT(nn.Module):
    _no_split_modules = ["StepVideoBlock"]  # FSDP / device-map wrapping unit

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        p = config.patch_size
        self.gradient_checkpointing = config.gradient_checkpointing
        self.attention_backend = config.attention_backend
        self.rope = RoPE3D(config.head_dim, config.resolved_rope_split, config.rope_theta)

        self.pos_embed = PatchEmbed(config.in_channels, dim, p)
        self.transformer_blocks = nn.ModuleList(StepVideoBlock(config) for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, p * p * config.out_channels)
        self.adaln_single = AdaLNSingle(dim, config.freq_dim, config.timestep_scale)
        if config.clip_dim is not None:
            self.clip_projection = nn.Linear(config.clip_dim, dim)
        self.caption_norm = nn.LayerNorm(config.llm_dim, eps=config.norm_eps, elementwise_affine=False)
        self.caption_projection = TextProjection(config.llm_dim, dim)
        self.sequence_parallel = None  # set_sequence_parallel(); not a module, not in the state_dict

    # -- conveniences -------------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> "StepVideoDiT":
        """Fresh initialisation (e.g. after ``build_on_meta(cfg).to_empty(device=...)``): PyTorch
        defaults for linear/conv/LayerNorm, unit RMSNorm gains, modulation tables N(0, 1/D)."""
        dim = self.config.hidden_size
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)):
                m.reset_parameters()
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
            if isinstance(m, (StepVideoBlock, StepVideoDiT)):
                m.scale_shift_table.normal_(0.0, dim**-0.5)
        return self

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.gradient_checkpointing = enabled

    def compile_blocks(self, **options) -> "StepVideoDiT":
        """``torch.compile`` each transformer block in place (regional compilation: the blocks share
        one code object, so one compiled graph serves them all; the first forward pays the compile
        time). Names, ``state_dict`` and checkpoints are unchanged. ``options`` go to
        ``nn.Module.compile`` (e.g. ``mode``, ``dynamic``)."""
        for block in self.transformer_blocks:
            block.compile(**options)
        return self

    def set_sequence_parallel(self, sp: Any | None) -> None:
        """Split the video tokens over a sequence-parallel group (a ``stepvideo.parallel.SequenceParallel``);
        None or degree 1: the single-device forward. Every rank of the group passes the same inputs and
        gets the same full output."""
        sp = None if sp is None or int(sp.degree) == 1 else sp
        if sp is not None and self.config.num_heads % int(sp.degree):
            raise InputError(f"sequence parallel degree {sp.degree} must divide the DiT's {self.config.num_heads} heads")
        self.sequence_parallel = sp

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- forward -------------------------------------------------------------------------------

    def _check_inputs(self, x, t, llm_emb, llm_mask, clip_emb, clip_mask):
        cfg = self.config
        if x.ndim != 5:
            raise ValueError(f"x must be (B, F, C, H, W), got shape {tuple(x.shape)}")
        b, _, c, h, w = x.shape
        if c != cfg.in_channels:
            raise ValueError(f"x has {c} channels, model expects {cfg.in_channels}")
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"latent H, W = {h}, {w} must be divisible by patch_size {cfg.patch_size}")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, b)):
            raise ValueError(f"t must be a scalar or (B,) = ({b},), got shape {tuple(t.shape)}")
        if llm_emb.ndim != 3 or llm_emb.shape[0] != b or llm_emb.shape[2] != cfg.llm_dim:
            raise ValueError(f"llm_emb must be (B={b}, L, {cfg.llm_dim}), got {tuple(llm_emb.shape)}")
        if llm_mask is not None and tuple(llm_mask.shape) != tuple(llm_emb.shape[:2]):
            raise ValueError(f"llm_mask must be {tuple(llm_emb.shape[:2])}, got {tuple(llm_mask.shape)}")
        if clip_emb is not None:
            if cfg.clip_dim is None:
                raise ValueError("this model has no CLIP projection (caption_channels has one entry) but clip_emb was given")
            if clip_emb.ndim != 3 or clip_emb.shape[0] != b or clip_emb.shape[2] != cfg.clip_dim:
                raise ValueError(f"clip_emb must be (B={b}, L, {cfg.clip_dim}), got {tuple(clip_emb.shape)}")
            if clip_mask is not None and tuple(clip_mask.shape) != tuple(clip_emb.shape[:2]):
                raise ValueError(f"clip_mask must be {tuple(clip_emb.shape[:2])}, got {tuple(clip_mask.shape)}")
        elif clip_mask is not None:
            raise ValueError("clip_mask given without clip_emb")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        llm_emb: torch.Tensor,
        llm_mask: torch.Tensor | None = None,
        clip_emb: torch.Tensor | None = None,
        clip_mask: torch.Tensor | None = None,
        *,
        return_intermediates: bool = False,
    ):
        """x (B,F,C,H,W), t (B,) in [0,1] -> velocity (B,F,C_out,H,W).

        Masks are bool (True = real token); None = all tokens real. With
        ``return_intermediates`` a dict of named activations (official names) is returned too.
        """
        t = torch.as_tensor(t, device=x.device)
        self._check_inputs(x, t, llm_emb, llm_mask, clip_emb, clip_mask)
        cfg = self.config
        p = cfg.patch_size
        b, f, c, hh, ww = x.shape
        h, w = hh // p, ww // p
        dtype = self.dtype
        rec: dict[str, torch.Tensor] | None = {} if return_intermediates else None
        if return_intermediates and self.sequence_parallel is not None:
            raise ValueError("return_intermediates is for the single-device forward (sequence parallel is set)")

        tokens = self.pos_embed(x.reshape(b * f, c, hh, ww).to(dtype))  # (B*F, h*w, D)
        if rec is not None:
            rec["pos_embed"] = tokens.detach()
        tokens = tokens.reshape(b, f * h * w, -1)

        t = t.reshape(-1).expand(b)
        mod, embedded_t = self.adaln_single(t, dtype)
        if rec is not None:
            rec["adaln_single.0"], rec["adaln_single.1"] = mod.detach(), embedded_t.detach()

        llm = self.caption_projection(self.caption_norm(llm_emb.to(dtype)))
        if llm_mask is None:
            llm_mask = torch.ones(llm.shape[:2], dtype=torch.bool, device=x.device)
        ctx, ctx_mask = llm, llm_mask.to(device=x.device, dtype=torch.bool)
        if rec is not None:
            rec["caption_projection"] = llm.detach()
        if clip_emb is not None:
            clip = self.clip_projection(clip_emb.to(dtype))
            if rec is not None:
                rec["clip_projection"] = clip.detach()
            if clip_mask is None:
                clip_mask = torch.ones(clip.shape[:2], dtype=torch.bool, device=x.device)
            ctx = torch.cat([clip, llm], dim=1)
            ctx_mask = torch.cat([clip_mask.to(device=x.device, dtype=torch.bool), ctx_mask], dim=1)

        cos, sin = self.rope.tables(f, h, w, device=x.device, dtype=torch.float32)
        backend = self.attention_backend
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        sp = self.sequence_parallel
        if sp is not None:
            return self._forward_sp(sp, tokens, ctx, ctx_mask, mod, embedded_t, cos, sin, use_ckpt, (b, f, hh, ww))
        for i, block in enumerate(self.transformer_blocks):
            if use_ckpt:
                tokens = checkpoint(block, tokens, ctx, ctx_mask, mod, cos, sin, backend, use_reentrant=False)
            else:
                tokens = block(tokens, ctx, ctx_mask, mod, cos, sin, backend, rec, f"transformer_blocks.{i}")
        out = self._final(tokens, embedded_t)
        out = self._unpatchify(out, b, f, hh, ww)
        return (out, rec) if return_intermediates else out

    def _final(self, tokens, embedded_t):
        """AdaLN-modulated output norm and projection: (B, N, D) -> (B, N, p*p*C), channel order (pi, pj, c)."""
        shift, scale = (self.scale_shift_table[None] + embedded_t[:, None]).unbind(1)
        tokens = torch.addcmul(shift[:, None], self.norm_out(tokens), 1 + scale[:, None])
        return self.proj_out(tokens)

    def _unpatchify(self, out, b, f, hh, ww):
        p, co = self.config.patch_size, self.config.out_channels
        h, w = hh // p, ww // p
        return out.view(b, f, h, w, p, p, co).permute(0, 1, 6, 2, 4, 3, 5).reshape(b, f, co, hh, ww)

    def _forward_sp(self, sp, tokens, ctx, ctx_mask, mod, embedded_t, cos, sin, use_ckpt, shape):
        """The blocks on this rank's token shard (its own 3D RoPE positions; Ulysses all-to-all around
        self-attention; the per-sample modulation and text whole), then the sequence gathered."""
        b, f, hh, ww = shape
        n = tokens.shape[1]
        backend = self.attention_backend
        tokens = sp.shard(tokens, dim=1)  # (B, L, D), zero-padded at the end of the sequence
        cos, sin = sp.shard(cos, dim=0), sp.shard(sin, dim=0)
        self_mask = sp.pad_mask(n, b, tokens.device)
        for block in self.transformer_blocks:
            if use_ckpt:
                tokens = checkpoint(block, tokens, ctx, ctx_mask, mod, cos, sin, backend, None, "", sp, self_mask,
                                    use_reentrant=False)
            else:
                tokens = block(tokens, ctx, ctx_mask, mod, cos, sin, backend, None, "", sp, self_mask)
        out = sp.gather(self._final(tokens, embedded_t), n, dim=1)
        return self._unpatchify(out, b, f, hh, ww)

    def forward_official(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        encoder_hidden_states_2: torch.Tensor | None = None,
        *,
        return_intermediates: bool = False,
    ):
        """The official call signature and mask semantics (see ``official_mask_to_ours``)."""
        clip_len = 0 if encoder_hidden_states_2 is None else encoder_hidden_states_2.shape[1]
        clip_mask, llm_mask = official_mask_to_ours(encoder_attention_mask, clip_len, encoder_hidden_states.shape[1])
        return self.forward(
            hidden_states,
            timestep,
            encoder_hidden_states,
            llm_mask,
            encoder_hidden_states_2,
            clip_mask,
            return_intermediates=return_intermediates,
        )

    # -- checkpoints ---------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike, *, max_shard_bytes: int = 5 * 1024**3):
        from stepvideo.models.io import save_folder

        return save_folder(folder, self.state_dict(), self.config.to_dict(), max_shard_bytes=max_shard_bytes)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        from stepvideo.models.io import load_config, load_sharded, weight_files, weights_label

        cfg = load_config(DiTConfig, folder, ignore=("model_type",))
        return load_sharded(cls, cfg, weight_files(folder), device=device, dtype=dtype, label=weights_label(folder))


def official_mask_to_ours(
    encoder_attention_mask: torch.Tensor, clip_len: int, llm_len: int
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Official mask (B, clip_len + llm_len) over concat[CLIP, LLM] -> (clip_mask, llm_mask).

    Only the row sums matter in the official model: sample b attends to the first
    ``int(sum(mask[b]))`` positions of the concatenation. ``clip_mask`` is None when clip_len == 0.
    """
    m = encoder_attention_mask
    if m.ndim != 2 or m.shape[1] != clip_len + llm_len:
        raise ValueError(f"official mask must be (B, {clip_len + llm_len}) over [CLIP, LLM], got {tuple(m.shape)}")
    kv_len = m.sum(dim=1).to(torch.int64)  # float 0/1 rows; same truncation as the official code
    if bool((kv_len > clip_len + llm_len).any()) or bool((kv_len < 0).any()):
        raise ValueError("official mask row sums exceed the text length")
    pos = torch.arange(clip_len + llm_len, device=m.device)
    full = pos[None, :] < kv_len[:, None]
    return (full[:, :clip_len] if clip_len else None), full[:, clip_len:]


# ----------------------------------------------------------------------------------------------
# loading without a second copy


def build_on_meta(config: DiTConfig) -> StepVideoDiT:
    with torch.device("meta"):
        return StepVideoDiT(config)


__all__ = [
    "DiTConfig",
    "PRESETS",
    "StepVideoDiT",
    "official_mask_to_ours",
    "build_on_meta",
]
