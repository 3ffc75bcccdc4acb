"""What `dpo.method: lora` saves: DPO on the release's DiT with `full` and with `lora`, on synthetic
pairs, measuring the tensors alive during training (each storage once: weights, reference, AdamW
moments, gradients, the pairs), the trainable parameters, a checkpoint's size and seconds per step.

    python bench/bench_dpo_lora.py --steps 4 --pairs 8 --rank 16

The pairs are random latents (the figures are memory and time, not quality): 17 frames at 32x32
through the release's 8x8x8 VAE, i.e. (3, 16, 4, 4) per sample.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def live_tensor_bytes() -> tuple[int, int]:
    """(bytes of every live tensor's storage, bytes of the nn.Parameters'), each storage counted once."""
    import torch

    every: dict[int, int] = {}
    params: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            s = obj.untyped_storage()
            every.setdefault(s.data_ptr(), s.nbytes())
            if isinstance(obj, torch.nn.Parameter):
                params.setdefault(s.data_ptr(), s.nbytes())
    return sum(every.values()), sum(params.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dit", default=str(REPO / "release" / "stepvideo-tiny" / "dit"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()

    import torch

    from stepvideo.config import LORA_TARGETS
    from stepvideo.training.dpo_trainer import DPOTrainConfig, train_dpo, write_pair_tensors

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n, shape = args.pairs, (3, 16, 4, 4)
    text = {"llm_emb": torch.randn(n, 8, 64, generator=g), "llm_mask": torch.ones(n, 8, dtype=torch.bool),
            "clip_emb": torch.randn(n, 4, 32, generator=g), "clip_mask": torch.ones(n, 4, dtype=torch.bool)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = write_pair_tensors(Path(tmp) / "pairs.safetensors", torch.randn(n, *shape, generator=g),
                                   torch.randn(n, *shape, generator=g), text, {"version": "bench"})
        for method in ("full", "lora"):
            lora = {"rank": args.rank, "alpha": float(args.rank), "dropout": 0.0,
                    "target_modules": list(LORA_TARGETS)} if method == "lora" else None
            cfg = DPOTrainConfig(init_from=args.dit, beta=500.0, steps=args.steps, batch_size=min(8, n), lr=1e-4,
                                 warmup_steps=0, checkpoint_every=args.steps, lora=lora)
            seen: dict[str, int] = {}

            def log(step, m, seen=seen):
                if step == 1:  # after one optimizer step: moments and gradients exist
                    seen["all"], seen["params"] = live_tensor_bytes()

            gc.collect()
            t0 = time.perf_counter()
            out = Path(tmp) / method
            result = train_dpo(cfg, pairs, out, log_fn=log, progress=False)
            seconds = time.perf_counter() - t0
            step_dir = sorted((out / "checkpoints").glob("step-*"))[-1]
            rows.append({"method": method, "live_tensor_MB": round(seen["all"] / 1e6, 2),
                         "parameter_MB": round(seen["params"] / 1e6, 2),
                         "trainable_parameters": result["trainable_parameters"],
                         "checkpoint_MB": round(sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file()) / 1e6, 2),
                         "seconds_per_step": round(seconds / args.steps, 3),
                         "loss_step0": result["curves"]["loss"][0]})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
