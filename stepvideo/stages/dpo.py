"""The Video-DPO stage (after SFT): candidates -> preference pairs -> DPO against the frozen SFT model.

    round 0: candidates from the SFT model (or, with `dpo.source: human`, the labelled candidates
             folder), pairs from the scorer's reward, from people's labels, or from the reward model
             fitted to those labels
    round r >= 1 (`dpo.rounds` > 1): fresh candidates from the current policy, ranked by the scorer
             or the reward model (`dpo.onpolicy_reward`); the reference stays the SFT model unless
             `dpo.update_reference`

Writes outputs/dit/dpo (a StepVideoDiT folder + lineage.json + metrics.json with the curves),
outputs/dpo/pairs (the pair dataset of every round: pairs.jsonl + summary.json) and, when fitted,
outputs/dpo/reward_model. Registers `stepvideo-dit-dpo` (alias candidate) with its lineage: the
parent SFT version, the pair dataset's version, the reward weights or the annotators. Candidates and
checkpoints live under .cache/dpo/<key>/ and an interrupted run resumes there.

`dpo.method: lora` trains a peft adapter on the SFT DiT instead of every weight, against the same
DiT with the adapter off (no reference copy). Each round continues the previous round's adapter on
the SFT base; later rounds generate from the policy with the adapter on (the merged DiT). It also
writes outputs/dpo/adapter (the peft folder) and registers it as `stepvideo-lora` (tag `stage: dpo`);
outputs/dit/dpo is the SFT DiT with the adapter merged, so evaluate and the bundle are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepvideo import registry, tracking
from stepvideo.config import Params, shared_fields
from stepvideo.stages.common import (OUTPUTS, check_lora_targets, default_device, load_encoders, local_path,
                                     model_hash, project_data_version, publish_model_folder, register_adapter,
                                     require_output, write_adapter_lineage)
from stepvideo.registry import registered_version
from stepvideo.errors import InputError

if TYPE_CHECKING:
    from stepvideo.training.dpo_trainer import DPOTrainConfig

SOURCES = ("reward", "human", "reward_model")

# the DPOTrainConfig fields each round sets; every other one comes from the `dpo` section by name
DPO_SET_BY_STAGE = ("init_from", "reference", "seed", "deepspeed_config", "lora", "init_adapter")

logger = logging.getLogger(__name__)


def dpo_train_config(dp: Any, policy: Path, reference: Path, round_index: int,
                     adapter: Path | None = None) -> "DPOTrainConfig":
    """The trainer config of DPO round `round_index` (`dp`: the params' `dpo` section). With
    `dp.method: lora`, `policy` is the base DiT (the SFT model, also the reference) and `adapter` the
    previous round's adapter the policy continues from (None in round 0)."""
    from stepvideo.training.dpo_trainer import DPOTrainConfig

    lora = dp.lora_dict() if dp.method == "lora" else None
    return DPOTrainConfig(**shared_fields(DPOTrainConfig, dp, DPO_SET_BY_STAGE), init_from=str(policy),
                          reference=str(reference), seed=dp.seed + round_index,
                          deepspeed_config=dp.deepspeed_config or None, lora=lora,
                          init_adapter=str(adapter) if lora and adapter else "")


def dpo_parent(params: Params, root: Path) -> tuple[Path, str]:
    """The SFT model DPO starts from (also its reference) and its lineage tag."""
    init_from = local_path(params.dpo.init_from, root)
    if init_from:
        remote = init_from.startswith(("models:/", "runs:/"))
        folder = tracking.resolve_model(init_from, root / ".cache" / "dpo" / "init" if remote else None)
        return folder, init_from if remote else f"folder:{model_hash(folder)}"
    folder = require_output(root / OUTPUTS / "dit" / "sft", "sft")
    weights = model_hash(folder)
    return folder, registered_version(registry.DIT_STAGES["sft"], weights) or f"folder:{weights}"


def _check(params: Params) -> None:
    dp = params.dpo
    errors = []
    if dp.source not in SOURCES:
        errors.append(f"dpo.source must be one of {SOURCES}, got {dp.source!r}")
    if dp.onpolicy_reward not in ("scorer", "reward_model"):
        errors.append(f"dpo.onpolicy_reward must be scorer or reward_model, got {dp.onpolicy_reward!r}")
    if dp.source in ("human", "reward_model") and not (dp.labels and dp.human_candidates):
        errors.append(f"dpo.source {dp.source} needs dpo.labels (a labels JSONL) and dpo.human_candidates (the "
                      "candidates folder it labels)")
    if dp.method == "lora" and dp.update_reference:
        errors.append("dpo.update_reference needs dpo.method: full (with lora the reference is the SFT DiT, "
                      "the adapter off)")
    if dp.rounds < 1 or dp.candidates_per_prompt < 2:
        errors.append("dpo.rounds >= 1 and dpo.candidates_per_prompt >= 2 are required")
    if errors:
        raise InputError("; ".join(errors))


def dpo_key(params: Params, root: Path, sft: Path) -> str:
    """What the stage's work depends on: SFT weights, VAE, encoders, the data, the dpo section, the labels."""
    dp = params.dpo
    parts = [model_hash(sft), tracking.file_hash(root / OUTPUTS / "vae"), params.section_hash("dpo"),
             params.section_hash("text_encoders"), tracking.file_hash(root / OUTPUTS / "validated" / "clean.jsonl")]
    for value in (dp.labels, dp.human_candidates):
        path = Path(local_path(value, root)) if value else None
        parts.append(tracking.file_hash(path) if path and path.exists() else "")
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _pipe(dit: Path, params: Params, root: Path, encoders: dict) -> Any:
    from stepvideo.pipelines.t2v import T2VPipeline

    device = default_device()
    return T2VPipeline.from_components(dit, root / OUTPUTS / "vae", encoders, device=device,
                                       dtype="bfloat16" if device == "cuda" else None)


def _encode_cpu(pipe: Any):
    def encode(texts: list[str]) -> dict:
        return {k: v.cpu() for k, v in pipe.encode_prompts(texts).items()}
    return encode


def _human(params: Params, root: Path) -> tuple[Path, list[dict], list[dict]]:
    """(candidates folder, its rows, the pairs the labels give)."""
    from stepvideo.preference.labeling import human_pairs, load_candidates, read_labels

    folder = Path(local_path(params.dpo.human_candidates, root))
    labels = Path(local_path(params.dpo.labels, root))
    rows = load_candidates(folder)
    pairs = human_pairs(read_labels(labels), rows)
    for p in pairs:
        p.setdefault("margin", None)
        p["round"] = 0
    if not pairs:
        raise InputError(f"{labels}: the labels give no preference pairs (only ties, skips or split votes)")
    return folder, rows, pairs


def _fit_reward_model(pairs: list[dict], index: dict, encode, out: Path, work: Path, params: Params) -> dict:
    from stepvideo.preference.pairs import pair_tensors
    from stepvideo.preference.reward_model import train_reward_model
    from stepvideo.training.dpo_trainer import load_pair_tensors

    f = pair_tensors(pairs, index, encode, work / "reward_model_pairs.safetensors", {"for": "reward_model"})
    data = load_pair_tensors(f)
    data.pop("_meta")
    return train_reward_model(data, [f"{p['prompt_id']}/{p['lang']}" for p in pairs], out,
                              steps=params.dpo.reward_model_steps, heldout_fraction=params.dpo.reward_model_heldout,
                              seed=params.dpo.seed)


def _rm_pairs(rows: list[dict], folder: Path, rm_dir: Path, encode, params: Params, round_index: int) -> list[dict]:
    import torch

    from stepvideo.preference.candidates import load_latent
    from stepvideo.preference.pairs import ranked_pairs
    from stepvideo.preference.reward_model import LatentRewardModel, score_latents

    model = LatentRewardModel.from_pretrained(rm_dir)
    scores = score_latents(model, torch.stack([load_latent(folder, r) for r in rows]), encode([r["prompt"] for r in rows]))
    value = dict(zip((r["id"] for r in rows), scores))
    return ranked_pairs(rows, lambda r: value[r["id"]], params.dpo.pairs, params.dpo.min_margin, "reward_model",
                        round_index)


def dpo_prompts(params: Params, root: Path) -> list[dict]:
    """Round 0's prompts: `dpo.train_prompts` training captions + `dpo.style_prompts` benchmark-style
    prompts in EN and ZH (never benchmark prompts)."""
    from stepvideo.preference.candidates import style_prompt_rows, train_prompts

    dp = params.dpo
    prompts = train_prompts(root / OUTPUTS / "validated" / "clean.jsonl", dp.train_prompts, dp.seed) + \
        style_prompt_rows(dp.style_prompts, dp.seed + 1)
    if not prompts:
        raise InputError("dpo: no prompts (dpo.train_prompts and dpo.style_prompts are 0, or the data has no "
                         "training clips with attributes)")
    return prompts


def make_candidates(params: Params, root: Path, out: Path, model: str | None = None,
                    progress: bool = True) -> list[dict]:
    """Candidates for people to label (`stepvideo dpo candidates`): round 0's prompts and seeds, from
    a bundle (`model`: a folder or models:/ URI) or by default the project's SFT DiT with its VAE and
    text encoders (what the dpo stage itself generates). Resumable."""
    from stepvideo.pipelines.t2v import T2VPipeline
    from stepvideo.preference.candidates import generate_candidates

    dp = params.dpo
    if model:
        device = default_device()
        pipe = T2VPipeline.from_pretrained(tracking.resolve_model(local_path(model, root)), device=device,
                                           dtype="bfloat16" if device == "cuda" else None)
        name = model
    else:
        sft, name = dpo_parent(params, root)
        pipe = _pipe(sft, params, root, load_encoders(params, root))
    size = dict(frames=dp.frames or params.data.frames, height=dp.height or params.data.height,
                width=dp.width or params.data.width)
    return generate_candidates(pipe, dpo_prompts(params, root), out, per_prompt=dp.candidates_per_prompt,
                               seed=dp.seed, steps=dp.sample_steps, cfg=dp.sample_cfg, shift=dp.sample_shift,
                               batch_size=dp.generate_batch_size, fps=params.data.fps, model=name,
                               progress=progress, **size)


def _skip(sft: Path, parent_version: str, root: Path) -> dict[str, Any]:
    """`dpo.enabled: false`: outputs/dit/dpo is the SFT weights (so evaluate, the bundle and dvc.yaml
    see one final DiT), marked as such in lineage.json; nothing is trained or registered."""
    from stepvideo.fileio import atomic_folder

    out = root / OUTPUTS / "dit" / "dpo"
    with atomic_folder(out) as tmp:
        shutil.copytree(sft, tmp, dirs_exist_ok=True)
        lineage = {"stage": "dpo", "skipped": "dpo.enabled is false: these are the SFT weights",
                   "parent_model_version": parent_version, "weights_hash": model_hash(tmp)}
        (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
        (tmp / "metrics.json").unlink(missing_ok=True)
    logger.info("dpo: skipped (dpo.enabled is false); the SFT model is the cascade's final DiT")
    return {"model_dir": str(out), "metrics": {}, "registered_version": None, "lineage": lineage, "skipped": True}


def stage_dpo(params: Params, root: Path, parent_run_id: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Video-DPO from the SFT model; see the module doc."""
    from stepvideo.fileio import atomic_folder
    from stepvideo.preference.candidates import generate_candidates
    from stepvideo.preference.pairs import RewardWeights, reward, reward_pairs, write_pairs, pair_tensors
    from stepvideo.training.dpo_trainer import train_dpo

    _check(params)
    dp = params.dpo
    sft, parent_version = dpo_parent(params, root)
    if not dp.enabled:
        return _skip(sft, parent_version, root)
    lora = dp.method == "lora"
    if lora:
        check_lora_targets(dp.lora_target_modules, sft, "dpo.lora_target_modules")
    key = dpo_key(params, root, sft)
    work = root / ".cache" / "dpo" / key
    out, pairs_dir, rm_dir = root / OUTPUTS / "dit" / "dpo", root / OUTPUTS / "dpo" / "pairs", root / OUTPUTS / "dpo" / "reward_model"
    adapter_out = root / OUTPUTS / "dpo" / "adapter"
    weights = RewardWeights(dp.reward_checks, dp.reward_flicker, dp.reward_color_noise)
    prompts = dpo_prompts(params, root)
    size = dict(frames=dp.frames or params.data.frames, height=dp.height or params.data.height,
                width=dp.width or params.data.width)
    lineage = {"stage": "dpo", "parent_model_version": parent_version, "sft_weights": model_hash(sft),
               "data_version": project_data_version(params, root), "params_hash": params.section_hash("dpo"),
               "source": dp.source, "rounds": str(dp.rounds), "beta": str(dp.beta), "dpo_key": key,
               "reward_weights": json.dumps(weights.to_dict(), sort_keys=True), "git_commit": tracking.git_commit(root),
               "method": dp.method}
    if lora:
        lineage["lora_spec"] = json.dumps(dp.lora_dict(), sort_keys=True)
    with tracking.run("dpo", experiment=params.tracking.experiment, params={"dpo": dataclasses.asdict(dp)},
                      tags=lineage, parent_run_id=parent_run_id) as active:
        encoders = load_encoders(params, root)
        t0 = time.perf_counter()
        all_pairs: list[dict] = []
        index: dict[str, tuple[Path, dict]] = {}
        rounds: list[dict] = []
        rm_metrics: dict = {}
        policy, reference = sft, sft  # policy: what generates (lora: the merged DiT, i.e. the adapter on)
        adapter: Path | None = None  # lora: the adapter the next round continues
        step_offset = 0
        for r in range(dp.rounds):
            pipe = _pipe(policy, params, root, encoders)
            encode = _encode_cpu(pipe)
            t_round = time.perf_counter()
            if r == 0 and dp.source == "human":
                folder, rows, pairs = _human(params, root)
            else:
                folder = work / f"candidates-{r}"
                rows = generate_candidates(pipe, prompts, folder, per_prompt=dp.candidates_per_prompt, seed=dp.seed,
                                           round_index=r, steps=dp.sample_steps, cfg=dp.sample_cfg,
                                           shift=dp.sample_shift, batch_size=dp.generate_batch_size,
                                           fps=params.data.fps, model=f"round {r} policy", progress=progress, **size)
                for row in rows:
                    if row["id"] in index:
                        raise InputError(f"candidate id {row['id']} appears in two candidate folders")
                use_rm = dp.source == "reward_model" if r == 0 else dp.onpolicy_reward == "reward_model"
                if use_rm and not rm_metrics:
                    if dp.labels and dp.human_candidates:
                        hfolder, hrows, base = _human(params, root)
                        index.update({row["id"]: (hfolder, row) for row in hrows})
                    else:  # no labels: the reward model learns the scorer's round-0 pairs
                        base = all_pairs
                    rm_metrics = _fit_reward_model(base, index, encode, rm_dir, work, params)
                    tracking.log_metrics({f"reward_model_{k}": v for k, v in rm_metrics.items()})
                if use_rm:
                    pairs = _rm_pairs(rows, folder, rm_dir, encode, params, r)
                else:
                    pairs = reward_pairs(rows, weights, dp.pairs, dp.min_margin, r)
            index.update({row["id"]: (folder, row) for row in rows})
            rewards = [v for v in (reward(row.get("score"), weights) for row in rows) if v is not None]
            gen_seconds = time.perf_counter() - t_round
            pairs_file = pair_tensors(pairs, index, encode, work / f"pairs-{r}.safetensors",
                                      {"version": hashlib.sha256(json.dumps(pairs, sort_keys=True).encode()).hexdigest()[:16],
                                       "round": r})
            all_pairs += pairs
            del pipe
            cfg = dpo_train_config(dp, sft if lora else policy, reference, r, adapter)
            log = lambda step, m, off=step_offset: tracking.log_metrics(m, step=off + step)  # noqa: E731
            result = train_dpo(cfg, pairs_file, work / f"train-{r}", log_fn=log, progress=progress, name=f"dpo round {r}")
            step_offset += result["step"]
            rounds.append({"round": r, "candidates": len(rows), "pairs": len(pairs), "generate_seconds": gen_seconds,
                           "candidate_reward_mean": sum(rewards) / len(rewards) if rewards else None,
                           **{k: v for k, v in result.items() if k not in ("model_dir", "curves")},
                           "curves": result["curves"]})
            if dp.update_reference:
                reference = policy
            policy = Path(result["model_dir"])
            adapter = Path(result["adapter_dir"]) if lora else None
            logger.info(f"dpo round {r}: {len(rows)} candidates, {len(pairs)} pairs, implicit reward accuracy "
                        f"{result['implicit_acc_first']:.2f} -> {result['implicit_acc_last']:.2f}, margin "
                        f"{result['reward_margin_first']:.3f} -> {result['reward_margin_last']:.3f}")
        seconds = time.perf_counter() - t0
        annotators = sorted({a for p in all_pairs for a in p.get("annotators", [])})
        summary = write_pairs(pairs_dir, all_pairs, {"reward_weights": weights.to_dict(), "source": dp.source,
                                                     "rounds": dp.rounds, "parent_model_version": parent_version})
        pairs_version = tracking.file_hash(pairs_dir)
        lineage.update(pairs_version=pairs_version, annotators=",".join(annotators) or "none")
        last = rounds[-1]
        metrics = {"seconds": seconds, "pairs": summary["pairs"], "rounds": len(rounds),
                   **{k: last[k] for k in last if isinstance(last[k], (int, float)) and k != "round"},
                   **{f"reward_model_{k}": v for k, v in rm_metrics.items()}}
        with atomic_folder(out) as tmp:
            shutil.copytree(policy, tmp, dirs_exist_ok=True)
            lineage["weights_hash"] = model_hash(tmp)
            (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
            (tmp / "metrics.json").write_text(json.dumps({**metrics, "rounds": rounds, "pair_summary": summary},
                                                         indent=1, sort_keys=True) + "\n")
        adapter_tags = _write_adapter(adapter, adapter_out, lineage) if lora else None
        if not lora:  # a full run leaves no adapter of an earlier lora run behind
            shutil.rmtree(adapter_out, ignore_errors=True)
        tracking.set_tags({"pairs_version": pairs_version, "annotators": lineage["annotators"],
                           "weights_hash": lineage["weights_hash"]})
        tracking.log_artifact(pairs_dir / "summary.json", "pairs")
        registered = publish_model_folder(params, out, registry.DPO, lineage,
                                          {k: float(v) for k, v in metrics.items() if v is not None and v == v})
        adapter_version = register_adapter(params, adapter_out, adapter_tags, "dpo", active.info.run_id) if lora else None
    return {"model_dir": str(out), "metrics": metrics, "registered_version": registered, "lineage": lineage,
            "pairs": str(pairs_dir), "pair_summary": summary, "rounds": rounds, "work_dir": str(work),
            "adapter_dir": str(adapter_out) if lora else None, "adapter_version": adapter_version if lora else None}


def _write_adapter(adapter: Path, folder: Path, lineage: dict[str, Any]) -> dict[str, str]:
    """outputs/dpo/adapter: the last round's adapter (peft folder) with its lineage (the run's, tagged
    `stage: dpo`, the merged DiT's hash); returns its registry tags."""
    from stepvideo.fileio import atomic_folder

    with atomic_folder(folder) as tmp:
        shutil.copytree(adapter, tmp, dirs_exist_ok=True)
        tags = write_adapter_lineage(tmp, lineage)
    return tags


__all__ = ["stage_dpo", "dpo_parent", "dpo_key", "dpo_prompts", "make_candidates"]
