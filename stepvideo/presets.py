"""The presets: named overrides on top of the params dataclasses' defaults (`stepvideo.config`).

`params.yaml`'s `preset:` key names one of these; `stepvideo params show --preset NAME` prints one in
full. Plain data only: this module imports nothing from the project.
"""

from __future__ import annotations

from typing import Any

RELEASE = "release/stepvideo-tiny"  # the embedded release (stepvideo.release), relative to the checkout

# Overrides on top of the dataclass defaults (the tiny from-scratch geometry the tests shrink further).
PRESETS: dict[str, dict[str, Any]] = {
    # `demo` (what `make demo` runs): fine-tune the `stepvideo-tiny` release on freshly generated data
    # (another seed than the release's) with a short budget, then evaluate. Empty `init_from` and
    # text encoders train from scratch instead (or run `--preset small`).
    "demo": {
        "data": {"seed": 1},
        "text_encoders": {"llm": f"{RELEASE}/text_encoders/llm", "clip": f"{RELEASE}/text_encoders/clip"},
        "vae": {"init_from": f"{RELEASE}/vae", "steps": 30, "lr": 1.0e-4, "warmup_steps": 5, "eval_every": 0,
                "checkpoint_every": 15},
        "t2i_pretrain": {"model": "small", "init_from": f"{RELEASE}/dit", "steps": 60, "lr": 5.0e-5,
                         "warmup_steps": 10},
        "t2v_lowres": {"model": "small", "steps": 60, "lr": 5.0e-5, "warmup_steps": 10},
        "t2v_highres": {"model": "small", "steps": 60, "lr": 5.0e-5, "warmup_steps": 10},
        "sft": {"model": "small", "steps": 40, "lr": 2.0e-5, "warmup_steps": 5, "checkpoint_every": 10},
        # Video-DPO with reward pairs: 18 prompt groups (12 captions + 3 style prompts x EN/ZH) x 4 candidates,
        # two rounds (the second on the policy's own candidates): 87.5% win rate vs 68.0% with one on the old release;
        # 56.2% on the current one (README, Video-DPO)
        "dpo": {"train_prompts": 12, "style_prompts": 3, "candidates_per_prompt": 4, "sample_steps": 12,
                "rounds": 2},
        # SFT and DPO each on 64 of the 128 prompts (every category), EN + ZH: 256 videos in all
        "evaluate": {"max_prompts": 64, "vae_items": 32},
    },
    # `small`: everything from scratch on the embedded data (the recipe behind the `stepvideo-tiny`
    # release): a few CPU-hours on 2 cores, most of it the VAE's 5,000 steps (README: "Learning per
    # CPU-second" for the recipe, "The release" for the measured time of each stage).
    # 64x64x17 keeps the VAE affordable; 3x more media than `demo`; the DiT is the `small` preset.
    "small": {
        "data": {"clips": 1200, "images": 1200, "seed": 0},
        # the VAE recipe bench/bench_learning.py picked (README, "Learning per CPU-second"): 8x8x8
        # geometry, 90% image batches, L1 + L2 + edge loss with object pixels weighted 1 + 4
        "vae": {"model": "small", "steps": 5000, "batch_size": 4, "image_prob": 0.9, "lr": 1.0e-3,
                "warmup_steps": 100, "l2_weight": 1.0, "edge_weight": 1.0, "object_weight": 4.0,
                "checkpoint_every": 250, "eval_every": 500, "eval_max_items": 32},
        # patch 2 on the 8x8 latent grid: the DiT sees as many tokens as it did on the 16x VAE's 4x4 grid.
        # Batch 8 with 4x the steps of batch 32 (equal samples, ~0.85x the seconds): at equal CPU seconds
        # batch 8 takes 4.7x the steps and learns background where batch 32 does not (README,
        # "Learning per CPU-second", bench/bench_learning_dit.py)
        "t2i_pretrain": {"model": "small", "patch_size": 2, "steps": 4000, "batch_size": 8, "lr": 5.0e-4,
                         "warmup_steps": 400, "checkpoint_every": 1000},
        "t2v_lowres": {"model": "small", "patch_size": 2, "steps": 4800, "batch_size": 8, "lr": 3.0e-4,
                       "warmup_steps": 400, "checkpoint_every": 1000},
        "t2v_highres": {"model": "small", "patch_size": 2, "steps": 2400, "batch_size": 8, "lr": 2.0e-4,
                        "warmup_steps": 100, "checkpoint_every": 600},
        "sft": {"model": "small", "patch_size": 2, "steps": 600, "batch_size": 8, "lr": 5.0e-5,
                "checkpoint_every": 100, "average_last": 3, "keep_checkpoints": 3},
        "evaluate": {"vae_items": 100},
    },
    # `finetune-lora`: the finetune pipeline (flow.pipeline: finetune) on the embedded default: fresh
    # data -> validate -> caches from the release's VAE and text encoders -> a LoRA adapter on the
    # release's DiT -> the benchmark of the release and of the fine-tuned model side by side -> the
    # adapter registered as `stepvideo-lora`, the merged bundle as `stepvideo-t2v@candidate`. Sized to
    # finish in a few minutes on 2 CPU cores (README: "Fine-tuning a release").
    "finetune-lora": {
        "flow": {"pipeline": "finetune"},
        "data": {"clips": 96, "images": 96, "seed": 2},
        "text_encoders": {"llm": f"{RELEASE}/text_encoders/llm", "clip": f"{RELEASE}/text_encoders/clip"},
        "latent_cache": {"vae": RELEASE},
        "finetune": {"base": RELEASE, "method": "lora", "lora_rank": 8, "lora_alpha": 8.0, "steps": 60,
                     "batch_size": 8, "lr": 5.0e-4, "warmup_steps": 10, "checkpoint_every": 20,
                     "sample_prompts": 2},
        # base and fine-tuned model each on 11 of the 128 prompts (1 per category), EN + ZH: 44 videos
        "evaluate": {"max_prompts": 11},
    },
    "step-video-t2v": {
        # The paper's geometry: 544x992, 204 frames (12 VAE chunks of 17), 30B DiT.
        "data": {"clips": 10000, "images": 10000, "height": 544, "width": 992, "frames": 204, "fps": 25},
        "validate": {"max_height": 1088, "max_width": 1984},
        # the released encoders: Step-LLM (served as precomputed embeddings) and HunyuanCLIP
        "text_encoders": {"llm": "step_llm", "clip": "hunyuan_clip", "llm_dim": 6144, "clip_dim": 1024},
        "vae": {"model": "official", "steps": 100000, "crop_size": 256, "batch_size": 1, "lr": 1.0e-4,
                "sample_posterior": True, "disc_weight": 0.1, "disc_start_step": 20000},
        # the report's low-resolution stage trains at ~192x320: 544x992 x 0.35 -> 192x352
        "latent_cache": {"low_res_factor": 0.35, "batch_size": 1},
        # the 30B DiT: ZeRO-2 + activation checkpointing, bf16 (engine default on CUDA)
        "t2i_pretrain": {"model": "step-video-t2v", "steps": 100000, "batch_size": 512, "lr": 1.0e-4,
                         "warmup_steps": 1000, "zero_stage": 2, "gradient_checkpointing": True, "log_every": 10,
                         "checkpoint_every": 1000, "timestep_sampling": "shifted", "timestep_shift": 3.0,
                         "sample_steps": 50, "sample_cfg": 9.0, "sample_shift": 13.0},
        "t2v_lowres": {"model": "step-video-t2v", "steps": 100000, "batch_size": 256, "lr": 1.0e-4,
                       "warmup_steps": 1000, "zero_stage": 2, "gradient_checkpointing": True, "log_every": 10,
                       "checkpoint_every": 1000, "timestep_sampling": "shifted", "timestep_shift": 3.0,
                       "sample_steps": 50, "sample_cfg": 9.0, "sample_shift": 13.0, "sample_frames": 102},
        "t2v_highres": {"model": "step-video-t2v", "steps": 50000, "batch_size": 64, "lr": 1.0e-4,
                        "warmup_steps": 500, "zero_stage": 2, "gradient_checkpointing": True, "log_every": 10,
                        "checkpoint_every": 1000, "timestep_sampling": "shifted", "timestep_shift": 13.0,
                        "sample_steps": 50, "sample_cfg": 9.0, "sample_shift": 13.0, "sample_frames": 204},
        "sft": {"model": "step-video-t2v", "steps": 5000, "batch_size": 64, "lr": 1.0e-5, "warmup_steps": 100,
                "zero_stage": 2, "gradient_checkpointing": True, "log_every": 10, "checkpoint_every": 500,
                "average_last": 5, "keep_checkpoints": 5, "timestep_sampling": "shifted", "timestep_shift": 13.0,
                "sample_steps": 50, "sample_cfg": 9.0, "sample_shift": 13.0, "sample_frames": 204},
        "evaluate": {"seeds": 2, "batch_size": 1, "frames": 204, "steps": 50, "cfg": 9.0, "shift": 13.0,
                     "vae_items": 16},
    },
}
