"""Per-GPU training memory of a DiT run, before launching it: weights, gradients, optimizer states,
activations and a fixed overhead, and whether the sum fits the GPU.

Weights / gradients / optimizer states (P = all parameters, P_t = trainable ones, N = GPUs):

- weights: sum over parameters of numel * bytes (bf16 2, fp32 4; ``weights="fp8"`` stores the
  frozen transformer-block Linear weights as float8_e4m3fn, 1 B/element + one fp32 scale per
  output row, see stepvideo/models/fp8.py, plus the transient upcast of the largest such Linear in
  the compute dtype, component "fp8 upcast"); LoRA adds R * (in + out) adapter parameters per
  targeted Linear. ZeRO-3 divides the weights by N and adds a gather buffer of two blocks' weights
  (the live block and the prefetched one).
- gradients: P_t * (2 for bf16 weights, 4 for fp32); ZeRO >= 2 divides by N.
- optimizer: AdamW m and v (4 + 4 B, or 1 + 1 B plus one fp32 scale per 2048 for 8-bit states),
  plus the fp32 master copy (4 B) when the weights are bf16; ZeRO >= 1 divides by N.

ZeRO partitions over all N ranks (DeepSpeed-Ulysses shards over the data x sequence group).

Activations (e = compute-dtype bytes: 2 for bf16/fp8 weights, 4 for fp32; D = hidden size,
F = ff_mult * D, H = heads, R = LoRA rank, n = B * ceil(tokens / K) video tokens per rank for
batch B and sequence-parallel degree K, T = B * text tokens). Per block and video token, what
autograd keeps for backward in StepVideoBlock.forward (attention through flash-attn / SDPA keeps
q, k, v, out and the log-sum-exp, never the n x n matrix); [c] counts only when c holds:

    self-attn   x 1  | y1 = LN1(x) 1 [mod]   | h 1 [wqkv]     | qkv 3 (v is a view of it)
                q, k RMSNorm fp32 copies 8D bytes [e != 4; in fp32 they alias qkv]
                q, k normalised 2 [norm gains]  | q, k after RoPE 2 | attention out 1 | wo out 1 [mod]
    cross-attn  x 1 [wq]  | q fp32 4D bytes | q normalised 1 [norm gains] | q after norm 1
                attention out 1 | its masked copy 1 [sdpa backend and wo]
    ffn         x 1 | y2 1 [mod] | h 1 [proj] | proj out F/D | GELU out F/D [net.2] | ff out 1 [mod]
    per position  the RoPE cos/sin tables cast to the compute dtype, 4 * head_dim * e [e != 4]
    small       2 log-sum-exp + 3 RMSNorm rsqrt rows (H * 4 B each) + 2 LayerNorm stats (8 B each)
    adapters    R per targeted Linear (its down-projection output)

in units of D * e bytes unless marked, where [mod] = the modulation (scale_shift_table / adaln) is
trainable, [norm gains] = the RMSNorm gains are trainable, [wqkv] etc. = that Linear is trainable or
carries an adapter. Full training: all conditions hold, so a block keeps
``(20 D + 2 F) e + 12 D [e != 4] + ...`` bytes per token (bf16, F = 4D: 68 D bytes; sdpa +2 D).
LoRA on the official targets: ``(13 D + 2 F + 6 R) e + 12 D``-ish. Per text token and block:
kv 2, k fp32 4D bytes, k normalised 1 (+1 [norm gains]), + R [wkv adapter].

Whole model: without checkpointing, L blocks' keeps; with per-block checkpointing, the L block
inputs (D e per token each) plus one block's keeps during its recompute. Both add the backward's
transient gradient buffers (2 F + 2 D) e per token, the output head (norm_out input, its modulated
output, proj_out input: 3 D e) and the latent / noise / target / loss tensors (4 * C * 4 B).

The model is checked against autograd's saved tensors in tests/unit/training/test_memory_plan.py
and against measured peak memory in bench/bench_memory_plan.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stepvideo.errors import InputError
from stepvideo.models.dit import DiTConfig, build_on_meta
from stepvideo.training.lora import DEFAULT_TARGETS

GIB = 1024**3
LORA_TARGETS = DEFAULT_TARGETS  # apply_lora's default: every Linear inside a StepVideoBlock
BLOCK_LINEARS = ("attn1.wqkv", "attn1.wo", "attn2.wq", "attn2.wkv", "attn2.wo", "ff.net.0.proj", "ff.net.2")
METHODS = ("full", "lora")
WEIGHT_DTYPES = {"fp32": 4, "bf16": 2, "fp8": 1}
OPTIMIZERS = ("adamw", "adamw8bit")
BACKENDS = ("flash", "sdpa")
TEXT_TOKENS = 320 + 77  # LLM + CLIP tokens of the official text encoders


@dataclass
class MemoryPlan:
    """Per-GPU bytes by component and the figures they came from."""

    components: dict[str, int]
    gpu_bytes: int
    settings: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def margin(self) -> int:
        return self.gpu_bytes - self.total

    @property
    def fits(self) -> bool:
        return self.margin >= 0

    def table(self) -> str:
        s = self.settings
        lines = [f"{s['preset']}: {s['method']}{' r=' + str(s['rank']) if s['method'] == 'lora' else ''}, "
                 f"{s['gpus']} GPU(s) x {self.gpu_bytes / GIB:.0f} GiB, ZeRO-{s['zero']}, sp {s['sp']}, "
                 f"batch {s['batch']}, checkpointing {'on' if s['checkpointing'] else 'off'}, "
                 f"weights {s['weights']}, {s['optimizer']}",
                 f"tokens {self.details['tokens']:,} per sample ({self.details['tokens_per_rank']:,} per rank), "
                 f"params {self.details['params']:,} (trainable {self.details['trainable']:,})",
                 f"{'component':<14}{'GiB/GPU':>10}"]
        lines += [f"{k:<14}{v / GIB:>10.2f}" for k, v in self.components.items()]
        lines.append(f"{'total':<14}{self.total / GIB:>10.2f}")
        verdict = "FITS" if self.fits else "DOES NOT FIT"
        lines.append(f"{verdict}: {self.total / GIB:.2f} of {self.gpu_bytes / GIB:.2f} GiB, "
                     f"margin {self.margin / GIB:+.2f} GiB")
        return "\n".join(lines)


def latent_tokens(cfg: DiTConfig, frames: int, height: int, width: int, *, vae_t: int = 8, vae_hw: int = 16,
                  vae_chunk: int = 17) -> tuple[int, int, int]:
    """(latent frames, token rows, token columns) of a video: every 17 frames -> 3 latent frames
    (8x temporal), 16x spatial, then the DiT's patch_size."""
    if frames < 1 or (frames != 1 and frames % vae_chunk):
        raise InputError(f"--frames must be 1 or a multiple of {vae_chunk}, got {frames}")
    step = vae_hw * cfg.patch_size
    if height <= 0 or width <= 0 or height % step or width % step:
        raise InputError(f"--height/--width must be positive multiples of {step}, got {height}x{width}")
    lf = 1 if frames == 1 else frames // vae_chunk * (1 + (vae_chunk - 1) // vae_t)
    return lf, height // step, width // step


def block_keep_bytes(cfg: DiTConfig, e: int, *, full: bool, adapted: frozenset[str] = frozenset(),
                     rank: int = 0, backend: str = "flash") -> tuple[float, float, float]:
    """(bytes per video token, per text token, per grid position) one StepVideoBlock keeps for
    backward (the table in the module docstring; per position: the RoPE tables apply_rope casts to
    the compute dtype, 4 x head_dim when that is not fp32). ``full``: every block parameter trainable; otherwise the base is
    frozen and only the ``adapted`` Linears carry rank-``rank`` adapters."""
    d, f, h = cfg.hidden_size, cfg.ff_mult * cfg.hidden_size, cfg.num_heads

    def lin(name):  # the Linear's input is kept (its weight needs a gradient, or its adapter does)
        return full or name in adapted

    units = 1 + 3 + 2 + 1  # self: x, qkv, q/k after RoPE, attention out
    units += full * (1 + 1 + 2)  # y1 and wo out (modulation), q/k normalised (gains)
    units += lin("attn1.wqkv")
    units += 2 + full * 1 + lin("attn2.wq")  # cross: q normalised, attention out; q normalised (gains); x
    units += backend == "sdpa" and lin("attn2.wo")
    units += 1 + full * 2 + lin("ff.net.0.proj")  # ffn: x; y2, ff out; h
    per_tok = units * d * e + (f * e) * (1 + lin("ff.net.2"))
    per_tok += (8 * d if e != 4 else 0) + 4 * d  # RMSNorm fp32 copies
    per_tok += 5 * h * 4 + 2 * 8
    per_tok += rank * e * sum(1 for t in adapted if t != "attn2.wkv")
    per_text = (3 + full) * d * e + (4 * d if e != 4 else 0) + h * 4 + (rank * e if "attn2.wkv" in adapted else 0)
    per_pos = 4 * cfg.head_dim * e if e != 4 else 0
    return float(per_tok), float(per_text), float(per_pos)


def _param_counts(cfg: DiTConfig) -> tuple[int, int, int, int, int]:
    """(all parameters, block-Linear weight elements, block-Linear output rows, one block's
    parameters, the largest block Linear's weight elements)."""
    model = build_on_meta(cfg)
    total = sum(p.numel() for p in model.parameters())
    lin_el = lin_rows = lin_max = 0
    for name, p in model.named_parameters():
        if name.startswith("transformer_blocks.") and name.endswith(".weight") and any(
                f".{t}." in name for t in BLOCK_LINEARS):
            lin_el += p.numel()
            lin_rows += p.shape[0]
            lin_max = max(lin_max, p.numel())
    block = sum(p.numel() for p in model.transformer_blocks[0].parameters())
    return total, lin_el, lin_rows, block, lin_max


def _adapter_params(cfg: DiTConfig, rank: int, targets) -> int:
    """Parameters peft's LoRA adds: lora_A (rank x in) + lora_B (out x rank) per targeted Linear,
    read off the block's Linear shapes (tests compare it with ``apply_lora``)."""
    block = build_on_meta(cfg).transformer_blocks[0]
    per_block = 0
    for t in targets:
        lin = block.get_submodule(t)
        per_block += rank * (lin.in_features + lin.out_features)
    return cfg.num_layers * per_block


def plan_memory(
    cfg: DiTConfig | str,
    *,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    latent: tuple[int, int, int] | None = None,
    batch: int = 1,
    method: str = "full",
    rank: int = 64,
    targets=LORA_TARGETS,
    zero: int = 0,
    gpus: int = 1,
    checkpointing: bool = True,
    sp: int = 1,
    weights: str = "bf16",
    optimizer: str = "adamw",
    gpu_mem_gib: float = 80.0,
    overhead_gib: float = 2.0,
    text_tokens: int = TEXT_TOKENS,
    backend: str = "flash",
    compute: str | None = None,
) -> MemoryPlan:
    """Plan one training step's per-GPU memory. Give the video as ``frames``/``height``/``width``
    pixels (official VAE: 8x16x16) or directly as ``latent`` = (latent frames, token rows, token
    columns) after patching. ``compute`` is the activation dtype (default: fp32 for fp32 weights,
    else bf16); only fp8 storage may differ from it (fp8 on the CPU computes in fp32). Bad values
    raise InputError."""
    preset = cfg if isinstance(cfg, str) else "custom"
    if isinstance(cfg, str):
        cfg = DiTConfig.preset(cfg)
    if gpus < 1:
        raise InputError(f"--gpus must be at least 1, got {gpus}")
    if sp < 1 or gpus % sp:
        raise InputError(f"--sp {sp} must be a positive divisor of --gpus {gpus}")
    if cfg.num_heads % sp:
        raise InputError(f"--sp {sp} must divide the {cfg.num_heads} attention heads (Ulysses splits heads)")
    if not 0 <= zero <= 3:
        raise InputError(f"--zero must be 0..3, got {zero}")
    if batch < 1:
        raise InputError(f"--batch must be at least 1, got {batch}")
    if method not in METHODS:
        raise InputError(f"--method must be one of {METHODS}, got {method!r}")
    if weights not in WEIGHT_DTYPES:
        raise InputError(f"--weights must be one of {sorted(WEIGHT_DTYPES)}, got {weights!r}")
    if optimizer not in OPTIMIZERS:
        raise InputError(f"--optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if gpu_mem_gib <= 0:
        raise InputError(f"--gpu-mem must be positive, got {gpu_mem_gib}")
    targets = tuple(targets) if method == "lora" else ()
    if method == "lora":
        if rank < 1:
            raise InputError(f"--rank must be at least 1, got {rank}")
        bad = sorted(set(targets) - set(LORA_TARGETS))
        if bad or not targets:
            raise InputError(f"LoRA targets must be a non-empty subset of {LORA_TARGETS}, got {list(targets)}")
    compute = compute or ("fp32" if weights == "fp32" else "bf16")
    if compute not in ("fp32", "bf16") or (weights != "fp8" and compute != weights):
        raise InputError(f"compute dtype {compute!r} does not go with --weights {weights} (fp32 or bf16; "
                         "only fp8 storage computes in another dtype)")
    if weights == "fp8" and method == "full":
        raise InputError("--weights fp8 stores frozen base weights; full fine-tuning trains them (use bf16)")
    if latent is None:
        if frames is None or height is None or width is None:
            raise InputError("give frames, height and width (pixels) or latent=(frames, rows, cols)")
        latent = latent_tokens(cfg, frames, height, width)

    full = method == "full"
    n_all, lin_el, lin_rows, block_params, lin_max = _param_counts(cfg)
    adapters = _adapter_params(cfg, rank, targets) if not full else 0
    trainable = n_all if full else adapters
    wb = WEIGHT_DTYPES[weights]
    e = WEIGHT_DTYPES[compute]
    # weights
    if weights == "fp8":  # the block Linears in fp8 + a per-row fp32 scale, the rest in the compute dtype
        w_bytes = (n_all - lin_el) * e + lin_el * 1 + lin_rows * 4
    else:
        w_bytes = n_all * wb
    w_bytes += adapters * e
    g_bytes = trainable * e
    # AdamW: fp32 m and v; 8-bit (bitsandbytes AdamW8bit, CUDA only): 1 B each + an fp32 absmax per
    # block of 2048 (the paper's block; newer bitsandbytes uses 256: +0.03 B/param)
    state = 8 if optimizer == "adamw" else 2 + 4 / 2048 * 2
    o_bytes = trainable * (state + (4 if e != 4 else 0))
    if zero >= 1:
        o_bytes /= gpus
    if zero >= 2:
        g_bytes /= gpus
    gather = 0
    if zero == 3:
        w_bytes /= gpus
        gather = 2 * block_params * (1 if weights == "fp8" else e) if gpus > 1 else 0
    # activations
    tokens = latent[0] * latent[1] * latent[2]
    n = batch * math.ceil(tokens / sp)
    t = batch * text_tokens
    per_tok, per_text, per_pos = block_keep_bytes(cfg, e, full=full, adapted=frozenset(targets), rank=rank,
                                                  backend=backend)
    block = n * per_tok + t * per_text + math.ceil(tokens / sp) * per_pos
    d, f = cfg.hidden_size, cfg.ff_mult * cfg.hidden_size
    keep = cfg.num_layers * n * d * e + block if checkpointing else cfg.num_layers * block
    transient = n * (2 * f + 2 * d) * e
    head = n * 3 * d * e + n * 4 * cfg.in_channels * cfg.patch_size**2 * 4
    acts = keep + transient + head

    # fp8 storage: the forward (and the backward) upcasts one Linear's weight at a time
    upcast = lin_max * e if weights == "fp8" else 0
    components = {"weights": int(w_bytes), "gradients": int(g_bytes), "optimizer": int(o_bytes),
                  "activations": int(acts), "zero3 gather": int(gather),
                  "fp8 upcast": int(upcast), "overhead": int(overhead_gib * GIB)}
    settings = dict(preset=preset, method=method, rank=rank, gpus=gpus, zero=zero, sp=sp, batch=batch,
                    checkpointing=checkpointing, weights=weights, optimizer=optimizer, backend=backend,
                    compute=compute)
    details = dict(params=n_all + adapters, trainable=trainable, tokens=tokens, tokens_per_rank=n // batch,
                   latent=tuple(latent), block_bytes_per_token=per_tok, block_bytes=block, text_tokens=text_tokens)
    return MemoryPlan(components, int(gpu_mem_gib * GIB), settings, details)


__all__ = ["MemoryPlan", "plan_memory", "block_keep_bytes", "latent_tokens", "LORA_TARGETS", "GIB"]
