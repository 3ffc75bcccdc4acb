"""Pipeline parameters: one dataclass per `params.yaml` section; the presets live in `stepvideo.presets`.

`params.yaml` is the one source of pipeline parameters for both drivers (Prefect and DVC). Its
`preset:` key names the base values (`demo`, `small`, `step-video-t2v`); every section in the file
overrides fields of that base. `stepvideo params show --preset NAME` prints a preset in full and
`stepvideo params write --preset NAME` writes it as a params file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stepvideo.params_check import ParamsError, apply_overrides, check_params
from stepvideo.presets import PRESETS


@dataclass
class DataParams:
    """The embedded bilingual dataset (`stepvideo data synth`)."""

    out: str = "data"
    clips: int = 400
    images: int = 400
    seed: int = 0
    height: int = 64
    width: int = 64
    frames: int = 17
    fps: int = 8
    heldout_fraction: float = 0.125
    degraded_fraction: float = 0.15
    lossless: bool = True  # clips stored as lossless RGB H.264, so VAE figures judge the VAE, not the codec


@dataclass
class ValidateParams:
    """The Great Expectations gate over the manifest (`stepvideo data validate`)."""

    policy: str = "quarantine"  # fail | quarantine
    min_clean_fraction: float = 0.8
    min_frames: int = 1
    max_frames: int = 204
    min_fps: float = 1.0
    max_fps: float = 60.0
    min_height: int = 16
    max_height: int = 1088
    min_width: int = 16
    max_width: int = 1920
    multiple_of: int = 16
    caption_min_chars: int = 3
    caption_max_chars: int = 512
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])


@dataclass
class TextEncoderParams:
    """The two text encoders. Empty `llm`/`clip`: build the tiny embedded ones from the captions;
    otherwise a local folder or hub id loaded with transformers (already on disk: nothing downloads)."""

    llm: str = ""
    clip: str = ""
    llm_dim: int = 64
    clip_dim: int = 32
    layers: int = 2
    heads: int = 2
    vocab_size: int = 4096
    seed: int = 0
    llm_max_length: int = 320
    clip_max_length: int = 77


@dataclass
class VAEParams:
    """`train_vae`: model geometry (a VAEConfig preset, or a folder to fine-tune) and the recipe."""

    model: str = "demo"  # demo | small | tiny | official (VAEConfig presets)
    init_from: str = ""  # a VAE folder (ours or converted official weights) to start from
    steps: int = 250
    batch_size: int = 2
    crop_size: int = 64
    image_prob: float = 0.8  # demo: mostly 1-frame batches (a 17-frame batch costs ~4x an image batch)
    lr: float = 1.0e-3
    lr_schedule: str = "cosine"  # constant | cosine
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0  # cosine decays to lr x this
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    kl_weight: float = 1.0e-6
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    edge_weight: float = 0.0  # L1 between spatial gradients
    object_weight: float = 0.0  # pixels far from their frame's median colour weigh 1 + this
    sample_posterior: bool = False
    disc_weight: float = 0.0
    disc_start_step: int = 0
    disc_lr: float = 1.0e-4
    disc_channels: int = 32
    perceptual_weight: float = 0.0
    perceptual_backbone_path: str = ""
    dual_path_start_step: int = 0
    # the report's two-stage recipe (off at 0): `stage1_steps` of the 4x8x8 VAE without the dual path,
    # then `steps` of the full model grown from it: dual-path modules only for `adapt_steps`, then
    # also the mid blocks for `mid_steps`, then everything
    stage1_steps: int = 0
    adapt_steps: int = 0
    mid_steps: int = 0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    eval_max_items: int = 8
    eval_every: int = 100  # held-out PSNR/SSIM every N steps as well as at the end (0: end only)
    eval_size: int = 64
    threads: int = 0  # torch threads (0: torch's default)


@dataclass
class LatentCacheParams:
    """`latent_cache`: every clean clip/still encoded once by the VAE (posterior mean + log-variance)
    at full and low resolution, with its text embeddings; rebuilt when the data, VAE or encoders change."""

    low_res_factor: float = 0.5  # the low-resolution copy (t2v_lowres) is H x W scaled by this
    # '' = the train_vae stage's output; else a VAE folder or a T2VPipeline bundle (its vae/): the
    # `finetune` pipeline encodes with its base's VAE
    vae: str = ""
    batch_size: int = 8  # VAE encode batch


@dataclass
class DiTRecipeParams:
    """How a DiT trains on the latent cache and the sample videos it renders at the end: the fields
    every DiT training section shares (the cascade's four stages, `finetune`)."""

    resolution: str = "full"  # full | low (the latent cache's copy at latent_cache.low_res_factor)
    kinds: list[str] = field(default_factory=lambda: ["video", "image"])
    still_share: float | None = None  # share of steps on stills; null: in proportion to the items
    min_quality: float = 0.0  # keep rows with quality >= this (0: all)
    batch_size: int = 16  # global batch per optimizer step
    bucket_batch_sizes: dict[str, int] = field(default_factory=dict)  # "FxHxW" (latent) -> global batch
    grad_accum: int = 1
    steps: int = 300
    lr: float = 5.0e-4
    lr_schedule: str = "cosine"  # constant | cosine
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    timestep_sampling: str = "logit_normal"  # uniform | logit_normal | shifted
    timestep_shift: float = 1.0  # for `shifted`
    logit_mean: float = 0.0  # for `logit_normal`
    logit_std: float = 1.0
    caption_dropout: float = 0.1  # share of samples trained on the empty prompt (for CFG)
    sample_posterior: bool = True
    ema_decay: float = 0.0  # 0: no EMA
    average_last: int = 0  # >0: the output is the mean of the last N checkpoints
    gradient_checkpointing: bool = False
    zero_stage: int = 0  # DeepSpeed ZeRO stage (0-3)
    sp_degree: int = 1  # sequence parallel (Ulysses): ranks sharing each sample's tokens; data parallel = ranks / this
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on the CPU) | fp32 | bf16 | fp16
    deepspeed_config: str = ""  # a DeepSpeed JSON file overriding the engine's own
    seed: int = 0
    log_every: int = 1  # loss / lr / grad norm / throughput to MLflow every N steps
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_bad_steps: int = 3  # non-finite steps in a row before the run stops
    threads: int = 0  # torch threads (0: torch's default)
    # the sample videos rendered from the stage's output (fixed EN + ZH prompts)
    sample_prompts: int = 4  # how many of stages.dit.SAMPLE_PROMPTS (0: none)
    sample_steps: int = 20
    sample_cfg: float = 5.0
    sample_shift: float = 3.0
    sample_frames: int = 17  # 1: a still


@dataclass
class _DiTModelFields:
    model: str = "demo"  # a DiTConfig.PRESETS name: demo | small | step-video-t2v
    # latent pixels per token side (0: the starting model's when fine-tuning, else the preset's);
    # 2 on an 8x-spatial VAE gives the DiT as many tokens as patch 1 on a 16x one
    patch_size: int = 0
    # '' = the previous stage's output (t2i_pretrain: from scratch); else a folder or models:/NAME@ALIAS
    init_from: str = ""


@dataclass
class DiTStageParams(DiTRecipeParams, _DiTModelFields):
    """One DiT stage of the cascade (`t2i_pretrain`, `t2v_lowres`, `t2v_highres`, `sft`): the model
    it trains (`model`, `patch_size`, `init_from`, first in the section), then the recipe
    (:class:`DiTRecipeParams`). The DiT's in/out channels and caption channels are filled in from
    the VAE and the text encoders at run time."""


# the LoRA targets of stepvideo.training.lora.DEFAULT_TARGETS (this module imports no torch)
LORA_TARGETS = ("attn1.wqkv", "attn1.wo", "attn2.wq", "attn2.wkv", "attn2.wo", "ff.net.0.proj", "ff.net.2")


@dataclass
class LoraFields:
    """A LoRA adapter's params (`finetune` and `dpo` with `method: lora`): stepvideo.training.lora.LoraSpec."""

    lora_rank: int = 16
    lora_alpha: float = 16.0  # the update is scaled by alpha / rank
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def lora_dict(self) -> dict[str, Any]:
        """The adapter as the trainers' `lora` mapping (LoraSpec's fields)."""
        return {"rank": self.lora_rank, "alpha": self.lora_alpha, "dropout": self.lora_dropout,
                "target_modules": list(self.lora_target_modules)}


@dataclass
class _FinetuneFields:
    # a DiT folder or a T2VPipeline bundle (model_index.json; its vae/ and text_encoders/ are what the
    # latent cache must be built with), relative to the project or the checkout, or models:/NAME@ALIAS
    base: str = "release/stepvideo-tiny"
    method: str = "lora"  # lora (an adapter on the frozen base) | full (every weight; ZeRO via zero_stage)


@dataclass
class FinetuneParams(DiTRecipeParams, LoraFields, _FinetuneFields):
    """`finetune`: fine-tune a released DiT (`base`) on the project's latent cache, with a LoRA adapter
    or in full, through the DiT trainer (checkpoints, resume, NaN guard). Writes outputs/finetune/
    (the adapter and the merged DiT) and registers them (`stepvideo-lora`, `stepvideo-dit-finetune`)."""

    steps: int = 100
    batch_size: int = 8
    lr: float = 1.0e-4
    warmup_steps: int = 10
    checkpoint_every: int = 20


@dataclass
class FlowParams:
    """Which stages `stepvideo flow run` runs: `cascade` (data -> VAE -> the DiT cascade -> DPO ->
    evaluate -> bundle -> promote) or `finetune` (data -> caches from the base's VAE and text
    encoders -> `finetune` -> evaluate of the base and the fine-tuned model)."""

    pipeline: str = "cascade"  # cascade | finetune


def _t2i_pretrain() -> DiTStageParams:
    return DiTStageParams(kinds=["image"], resolution="full", steps=300, batch_size=16, lr=1.0e-3, warmup_steps=20,
                          lr_schedule="cosine", sample_frames=1)


def _t2v_lowres() -> DiTStageParams:
    return DiTStageParams(kinds=["video", "image"], still_share=0.25, resolution="low", steps=300, batch_size=16,
                          lr=5.0e-4)


def _t2v_highres() -> DiTStageParams:
    return DiTStageParams(kinds=["video", "image"], still_share=0.25, resolution="full", steps=200, batch_size=8,
                          lr=3.0e-4)


def _sft() -> DiTStageParams:
    return DiTStageParams(kinds=["video"], resolution="full", min_quality=0.7, steps=100, batch_size=8, lr=1.0e-4,
                          warmup_steps=10, average_last=3, checkpoint_every=20, keep_checkpoints=3)


@dataclass
class _DPOFields:
    """Video-DPO after SFT (`stepvideo.stages.dpo`): candidates from the SFT model, preference pairs
    from the scorer's reward or from people's labels, the flow-matching DPO loss against the frozen
    SFT model, on-policy rounds. `enabled: false` skips it (evaluate and the bundle then take SFT)."""

    enabled: bool = True
    init_from: str = ""  # '' = the sft stage's output; else a folder or models:/NAME@ALIAS (also the reference)
    # candidates: N videos per prompt; training captions + benchmark-style prompts (never benchmark prompts)
    train_prompts: int = 24  # caption rows of training clips (one language each)
    style_prompts: int = 24  # benchmark-style prompts, each in EN and ZH
    candidates_per_prompt: int = 4
    frames: int = 0  # 0: the data's
    height: int = 0
    width: int = 0
    sample_steps: int = 20
    sample_cfg: float = 5.0
    sample_shift: float = 3.0
    generate_batch_size: int = 16
    # preferences
    source: str = "reward"  # reward (the scorer) | human (labels) | reward_model (fitted to the labels)
    labels: str = ""  # human labels (JSONL, `stepvideo label serve/import`); with source human or reward_model
    human_candidates: str = ""  # the candidates folder those labels refer to
    # margin (every pair of a prompt above min_margin) | best_worst | dominant (margin, keeping only pairs whose
    # chosen video is no worse in checks, flicker and colour noise; source reward)
    pairs: str = "dominant"
    min_margin: float = 0.0  # 0: every pair whose rewards differ (108 pairs from the demo's 72 candidates)
    reward_checks: float = 1.0  # weight of the share of the prompt's checks passed
    reward_flicker: float = 0.02  # penalty per unit of the scorer's flicker
    reward_color_noise: float = 0.005  # penalty per RGB level of background colour noise
    # the loss and its optimisation. beta 500 with lr 1e-5, 20 steps on the 94 dominant pairs: on the demo's
    # SFT model (bench/bench_dpo.py, README: Video-DPO) DPO wins 68.0% of held-out videos by the reward
    # (40 steps: 61.7%; 80: 57.0%; all 108 margin pairs, 40 steps: 63.3%, with twice the flicker rise);
    # beta 100 with lr 1e-4 moved the policy 60x further from the reference (KL proxy 1.53) and won 39.8%
    beta: float = 500.0
    sft_weight: float = 0.0  # > 0: + the flow-matching loss on the chosen sample
    steps: int = 20  # per round
    batch_size: int = 8  # pairs per step
    grad_accum: int = 1
    lr: float = 1.0e-5
    lr_schedule: str = "constant"
    warmup_steps: int = 5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    timestep_sampling: str = "logit_normal"
    timestep_shift: float = 1.0
    # on-policy rounds: regenerate with the current policy and score again
    rounds: int = 1
    update_reference: bool = False  # rounds > 1: the reference becomes the previous round's policy
    onpolicy_reward: str = "scorer"  # scorer | reward_model: what ranks the fresh candidates of rounds >= 2
    reward_model_steps: int = 300
    reward_model_heldout: float = 0.25
    gradient_checkpointing: bool = False
    zero_stage: int = 0
    precision: str = "auto"
    deepspeed_config: str = ""
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    max_bad_steps: int = 3
    # full: the policy is a copy of every DiT weight, the reference a second frozen copy; lora: a peft adapter
    # (lora_* below) on the one frozen DiT, the reference being that DiT with the adapter off
    method: str = "full"


@dataclass
class DPOParams(LoraFields, _DPOFields):
    """The `dpo` section: :class:`_DPOFields`, then the adapter of `method: lora` (:class:`LoraFields`)."""


@dataclass
class TrackingParams:
    experiment: str = "stepvideo"
    register: bool = True


@dataclass
class EvaluateParams:
    """The `evaluate` stage: the benchmark on the SFT candidate (stepvideo.evaluation), and how much
    content the VAE keeps (the scorer on held-out clips before and after a VAE round trip)."""

    prompts: str = ""  # '' = the embedded benchmark (128 prompts x EN + ZH); else a benchmark .jsonl
    max_prompts: int = 0  # 0: all; else N spread over the categories (runner.balanced_subset: quick runs)
    seeds: int = 1  # seeds per prompt (0..N-1), the same in both languages
    batch_size: int = 16
    frames: int = 17
    height: int = 0  # 0: the data's height
    width: int = 0  # 0: the data's width
    steps: int = 20
    cfg: float = 5.0
    shift: float = 3.0
    vae_items: int = 64  # held-out media scored before/after the VAE round trip (train_vae stage)


@dataclass
class PromoteParams:
    """The `promote` stage (`stepvideo.registry.promotion`): the bundle's registered version (the
    DPO model, or SFT when DPO is off) against the registry's `champion`, on the same prompts and
    seeds as `evaluate`. Pass: `champion` moves to it, the old one becomes `previous`; fail: it
    gets `challenger`. With no champion yet, the first candidate is promoted when it meets the
    absolute minimums. Scores are fractions (0-1); flicker and colour noise are the scorer's units."""

    enabled: bool = True
    registered: str = "stepvideo-t2v"  # the registered model whose aliases move: the whole generation bundle
    # candidate overall - champion overall must be >= this (and > 0: a tie never promotes). 1 point: about one
    # flipped check in each of 2-3 small categories of the demo's 64-prompt subset; less promotes on noise
    min_overall_gain: float = 0.01
    # no category may lose more than this: one flipped check in the smallest category of a 64-prompt run
    # (sequence, ~26 checks) moves it ~4 points
    max_category_drop: float = 0.05
    # the artifact scores (mean flicker, background colour noise in RGB levels) and bilingual consistency:
    # 0 = not worse, as issue 12 asks; raise them to tolerate measurement noise
    max_flicker_increase: float = 0.0
    max_color_noise_increase: float = 0.0
    max_consistency_drop: float = 0.0
    # the first model (no champion yet) needs these: chance is ~13% overall on the benchmark and the
    # release scores 18%, so 15% keeps a model that ignores the text out; the release's consistency is 92%
    min_overall: float = 0.15
    min_consistency: float = 0.8


@dataclass
class Params:
    preset: str = "demo"
    data: DataParams = field(default_factory=DataParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    text_encoders: TextEncoderParams = field(default_factory=TextEncoderParams)
    vae: VAEParams = field(default_factory=VAEParams)
    latent_cache: LatentCacheParams = field(default_factory=LatentCacheParams)
    t2i_pretrain: DiTStageParams = field(default_factory=_t2i_pretrain)
    t2v_lowres: DiTStageParams = field(default_factory=_t2v_lowres)
    t2v_highres: DiTStageParams = field(default_factory=_t2v_highres)
    sft: DiTStageParams = field(default_factory=_sft)
    dpo: DPOParams = field(default_factory=DPOParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    flow: FlowParams = field(default_factory=FlowParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    promote: PromoteParams = field(default_factory=PromoteParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, name: str) -> str:
        """A short stable hash of one section (cache keys, lineage tags)."""
        blob = json.dumps(_hashed(getattr(self, name)), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def training_hash(self) -> str:
        """A short stable hash of every section that shapes the shipped model (`TRAINING_SECTIONS`):
        the bundle's `cascade_params` lineage tag, which a scheduled retrain compares with."""
        sections = FINETUNE_SECTIONS if self.flow.pipeline == "finetune" else TRAINING_SECTIONS
        blob = json.dumps({s: _hashed(getattr(self, s)) for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# What the shipped model depends on; evaluate, promote and tracking only judge or record it.
TRAINING_SECTIONS = ("data", "validate", "text_encoders", "vae", "latent_cache", "t2i_pretrain", "t2v_lowres",
                     "t2v_highres", "sft", "dpo")
# ... and what the `finetune` pipeline's model depends on (flow.pipeline: finetune)
FINETUNE_SECTIONS = ("data", "validate", "text_encoders", "latent_cache", "finetune")


def _hashed(section: Any) -> dict[str, Any]:
    """What a section's hashes cover: its fields, less `dpo`'s LoRA fields under `method: full` (they
    do nothing there), so a full DPO keeps the cache keys and lineage hashes it had before they existed."""
    d = dataclasses.asdict(section)
    if isinstance(section, DPOParams) and section.method == "full":
        for k in ("method", *(f.name for f in dataclasses.fields(LoraFields))):
            d.pop(k)
    return d


def shared_fields(target: type, section: Any, set_by_stage: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of the trainer config class `target` that the params `section` holds under the same
    name (copied), for `target(**shared_fields(...), **what_the_stage_sets)`.

    Checked: every other field of `target` must be named in `set_by_stage` (the stage computes it:
    the model geometry, the starting folder). A trainer field added without a params field raises
    here instead of silently taking the trainer's default (tests/unit/config/test_config_fields.py)."""
    have = {f.name for f in dataclasses.fields(section)}
    fields = [f.name for f in dataclasses.fields(target)]
    missing = [n for n in fields if n not in have and n not in set_by_stage]
    if missing:
        raise TypeError(f"{target.__name__} fields {missing} are neither in the params section "
                        f"{type(section).__name__} nor set by the stage: add them to {type(section).__name__}")
    return {n: copy.deepcopy(getattr(section, n)) for n in fields if n in have and n not in set_by_stage}


def preset(name: str) -> Params:
    if name not in PRESETS:
        raise ParamsError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    p = Params(preset=name)
    apply_overrides(p, PRESETS[name], name)
    return p


def load_params(path: str | Path = "params.yaml", preset_name: str | None = None) -> Params:
    """Load a params file: its preset's values, overridden by its sections.

    `preset_name` given: that preset alone, ignoring the file (used by `--preset` on the CLI).
    """
    if preset_name is not None:
        p = preset(preset_name)
        check_params(p, f"preset {preset_name}")
        return p
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not a text (UTF-8) file ({e.reason} at byte {e.start})") from e
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from e
    except RecursionError:
        raise ParamsError(f"{path}: not valid params (YAML nested too deeply to read)") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    raw = dict(raw)
    name = raw.pop("preset", "demo")
    if not isinstance(name, str) or name not in PRESETS:
        raise ParamsError(f"{path}: preset: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    p = preset(name)
    apply_overrides(p, raw, str(path))
    check_params(p, str(path))
    return p


def dump_params(p: Params) -> str:
    header = (
        "# stepvideo pipeline parameters: the one source for the Prefect flow and dvc.yaml.\n"
        f"# Written from the '{p.preset}' preset; edit a value, then `dvc repro` or `stepvideo flow run`.\n"
    )
    return header + yaml.safe_dump(p.to_dict(), sort_keys=False, allow_unicode=True)
