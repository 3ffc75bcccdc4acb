"""Does Video-DPO work: train DPO on a project's candidates, then judge DPO against SFT on held-out
benchmark prompts with shared seeds.

    python bench/bench_dpo.py --root . --candidates .cache/dpo/<key>/candidates-0 \
        --beta 500 --lr 1e-5 --steps 40 --pairs margin --min-margin 0.05 --prompts 64

Or judge a DPO model already trained (the demo's two-round `outputs/dit/dpo`), on more seeds:

    python bench/bench_dpo.py --root . --dpo-model outputs/dit/dpo --prompts 64 --seeds 3

Prints the reward win rate of DPO over SFT (ties count half) with its 95% Wilson interval, the mean
reward, benchmark accuracy and artifact scores of each, and the DPO curves' first/last values. The
SFT side is cached under --work (it does not depend on the DPO settings). Needs a project whose
cascade ran through sft (outputs/dit/sft, outputs/vae, the text encoders named in params.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--candidates", type=Path, default=None, help="a candidates folder (the dpo stage's cache)")
    ap.add_argument("--dpo-model", type=Path, default=None, help="judge this trained DPO DiT folder (no training)")
    ap.add_argument("--work", type=Path, default=Path(".cache/bench_dpo"))
    ap.add_argument("--beta", type=float, default=500.0)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--sft-weight", type=float, default=0.0)
    ap.add_argument("--pairs", default="margin")
    ap.add_argument("--min-margin", type=float, default=0.05)
    ap.add_argument("--prompts", type=int, default=64, help="N benchmark prompts over every category (x EN + ZH)")
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=1, help="seeds per prompt and language (0..N-1)")
    ap.add_argument("--reward-flicker", type=float, default=None, help="[params: dpo.reward_flicker]")
    ap.add_argument("--reward-color-noise", type=float, default=None, help="[params: dpo.reward_color_noise]")
    args = ap.parse_args()
    if (args.candidates is None) == (args.dpo_model is None):
        ap.error("give --candidates (train DPO on them) or --dpo-model (judge a trained one), not both")

    import torch

    from stepvideo.config import load_params
    from stepvideo.evaluation.runner import balanced_subset, load_prompts, run_benchmark
    from stepvideo.preference.candidates import read_candidates
    from stepvideo.preference.pairs import RewardWeights, reward_pairs
    from stepvideo.stages.common import load_encoders
    from stepvideo.stages.evaluate import _pipe, preference_figures

    torch.set_num_threads(2)
    root = args.root.resolve()
    params = load_params(root / "params.yaml")
    ep = params.evaluate
    ep.steps = args.eval_steps
    for name in ("reward_flicker", "reward_color_noise"):
        if getattr(args, name) is not None:
            setattr(params.dpo, name, getattr(args, name))
    encoders = load_encoders(params, root)
    sft, vae = root / "outputs/dit/sft", root / "outputs/vae"
    weights = RewardWeights(params.dpo.reward_checks, params.dpo.reward_flicker, params.dpo.reward_color_noise)
    work = (root / args.work).resolve()
    pipe = _pipe(sft, vae, encoders, ep)
    result, pairs, rows, train_s = None, [], [], 0.0
    if args.dpo_model is not None:
        model_dir = (root / args.dpo_model).resolve()
        if not (model_dir / "model.safetensors").is_file():
            ap.error(f"{model_dir}: no model.safetensors (a DiT folder such as outputs/dit/dpo)")
        import hashlib

        tag = f"model-{hashlib.sha256((model_dir / 'model.safetensors').read_bytes()).hexdigest()[:12]}-s{args.seeds}"
    else:
        rows = read_candidates(args.candidates)
        pairs = reward_pairs(rows, weights, args.pairs, args.min_margin)
        tag = (f"b{args.beta:g}-lr{args.lr:g}-s{args.steps}-bs{args.batch_size}-sw{args.sft_weight:g}-{args.pairs}"
               f"{args.min_margin:g}-f{params.dpo.reward_flicker:g}-n{params.dpo.reward_color_noise:g}")
        result, train_s = _train(args, rows, pairs, tag, work, pipe, sft)
        model_dir = Path(result["model_dir"])
    prompts = balanced_subset(load_prompts(None), args.prompts)
    settings = dict(seeds=args.seeds, batch_size=16, frames=params.data.frames, height=params.data.height,
                    width=params.data.width, steps=ep.steps, cfg=ep.cfg, shift=ep.shift, progress=False)
    sft_dir = work / f"sft-eval-balanced{args.prompts}-{ep.steps}" / f"seeds{args.seeds}"
    if (sft_dir / "results.json").is_file():
        base = json.loads((sft_dir / "results.json").read_text())
    else:
        base = run_benchmark(pipe, prompts, sft_dir, model="sft", **settings)
    t1 = time.perf_counter()
    dpo = run_benchmark(_pipe(model_dir, vae, encoders, ep), prompts, work / tag / f"eval-seeds{args.seeds}", model="dpo",
                        **settings)
    eval_s = time.perf_counter() - t1
    pref = preference_figures(params, dpo, base)
    w = pref["win_rate"]
    made = (f"{len(pairs)} pairs from {len(rows)} candidates; train {train_s:.0f} s" if result is not None
            else f"the trained model {model_dir}")
    print(f"{tag}: {made}; eval {eval_s:.0f} s ({len(dpo['videos'])} videos)")
    if result is not None:
        print(f"  DPO curves: implicit acc {result['implicit_acc_first']:.2f} -> {result['implicit_acc_last']:.2f}, margin "
              f"{result['reward_margin_first']:.2f} -> {result['reward_margin_last']:.2f}, KL proxy "
              f"{result['kl_proxy_first']:.4f} -> {result['kl_proxy_last']:.4f}")
    print(f"  win rate DPO vs SFT by the reward: {w['win_rate']:.3f} (95% CI {w['ci_low']:.3f}-{w['ci_high']:.3f}; "
          f"{w['wins']} wins, {w['ties']} ties, {w['losses']} losses of {w['n']})")
    c = pref["win_rate_by_checks"]
    print(f"  where the checks decide: {c['win_rate']:.3f} (95% CI {c['ci_low']:.3f}-{c['ci_high']:.3f}; {c['wins']} "
          f"wins, {c['losses']} losses of {c['n']})")
    print(f"  mean reward SFT {pref['reward_baseline']:.4f} DPO {pref['reward_candidate']:.4f}; accuracy SFT "
          f"{base['summary']['overall']:.3f} DPO {dpo['summary']['overall']:.3f}; flicker SFT "
          f"{_f(pref['flicker_baseline'])} ({pref['flicker_videos_baseline']} videos with an object) DPO "
          f"{_f(pref['flicker_candidate'])} ({pref['flicker_videos_candidate']}); colour noise SFT "
          f"{pref['color_noise_baseline']:.2f} DPO {pref['color_noise_candidate']:.2f}")
    for k in ("flicker", "color_noise"):
        ch = pref[f"{k}_change"]
        print(f"  {k} change DPO - SFT per video: {ch['mean']:+.3f} (95% bootstrap CI {ch['ci_low']:+.3f} to "
              f"{ch['ci_high']:+.3f}); {ch['up']} up, {ch['down']} down, {ch['equal']} equal of {ch['n']}")


def _train(args, rows, pairs, tag, work, pipe, sft):
    """Train DPO on `pairs` from the SFT model; (train_dpo's result, seconds)."""
    from stepvideo.preference.pairs import pair_tensors
    from stepvideo.training.dpo_trainer import DPOTrainConfig, train_dpo

    encode = lambda texts: {k: v.cpu() for k, v in pipe.encode_prompts(texts).items()}  # noqa: E731
    pf = pair_tensors(pairs, {r["id"]: (args.candidates, r) for r in rows}, encode, work / tag / "pairs.safetensors",
                      {"version": tag})
    t0 = time.perf_counter()
    cfg = DPOTrainConfig(init_from=str(sft), beta=args.beta, lr=args.lr, steps=args.steps, batch_size=args.batch_size,
                         sft_weight=args.sft_weight, checkpoint_every=max(args.steps, 1))
    result = train_dpo(cfg, pf, work / tag / "train", progress=False)
    train_s = time.perf_counter() - t0
    return result, train_s


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    main()
