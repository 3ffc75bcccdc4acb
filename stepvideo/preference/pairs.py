"""Preference pairs: the reward, pairs from it or from people, the pair dataset, the win rate.

The reward is the evaluation scorer (one implementation: `stepvideo.evaluation.scorer`) turned into
one number per video, with weights from params (`dpo.reward_*`):

    reward = w_checks * (share of the prompt's checks passed)
             - w_flicker * flicker - w_color_noise * color_noise        (the two artifact scores)

Both sources give the same pair dataset: a folder with `pairs.jsonl`, one row per pair

    {"prompt_id", "lang", "prompt", "chosen": <candidate id>, "rejected": <candidate id>,
     "source": "reward" | "human" | "reward_model", "margin": float | null, "round": int,
     "votes"/"total"/"annotators" (human pairs)}

and `summary.json` (counts, sources, annotators, the reward weights). Its version is the folder's
content hash (`tracking.file_hash`); `dvc.yaml` tracks it as the dpo stage's output.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from stepvideo.fileio import atomic_write_text, read_jsonl
from stepvideo.errors import InputError, MissingError

# best_worst: one pair per prompt; margin: every pair whose rewards differ; dominant: every pair where
# the chosen video is also no worse on each part of the reward (checks, flicker, colour noise)
PAIR_MODES = ("best_worst", "margin", "dominant")


@dataclass(frozen=True)
class RewardWeights:
    checks: float = 1.0
    flicker: float = 0.02
    color_noise: float = 0.005

    def to_dict(self) -> dict[str, float]:
        return {"checks": self.checks, "flicker": self.flicker, "color_noise": self.color_noise}


def reward(score: dict | None, w: RewardWeights) -> float | None:
    """One video's reward from its `candidates.score_summary` (None: not judgeable)."""
    if not score:
        return None
    return w.checks * score["passed_share"] - w.flicker * flicker_penalty(score) - w.color_noise * score["color_noise"]


def flicker_penalty(score: dict) -> float:
    """The scorer's flicker, 0 for a video without a tracked object (None: nothing flickers there;
    the checks already charge the missing object)."""
    f = score.get("flicker")
    return 0.0 if f is None else float(f)


def _groups(rows: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["prompt_id"], r["lang"]), []).append(r)
    return groups


def ranked_pairs(rows: Sequence[dict], value: Callable[[dict], float | None], mode: str = "best_worst",
                 min_margin: float = 0.0, source: str = "reward", round_index: int = 0,
                 keep: Callable[[dict, dict], bool] | None = None) -> list[dict]:
    """Pairs within each (prompt, language) group of candidates, ranked by `value(row)`:
    `best_worst` = the best against the worst, `margin` (and `dominant`) = every pair; only when the
    two differ by more than `min_margin` (equal values never make a pair) and `keep(chosen row,
    rejected row)` holds when given."""
    if mode not in PAIR_MODES:
        raise InputError(f"dpo.pairs must be one of {PAIR_MODES}, got {mode!r}")
    out = []
    for (pid, lang), group in _groups(rows).items():
        scored = sorted(((value(r), r["id"], r) for r in group if value(r) is not None), key=lambda x: (-x[0], x[1]))
        if len(scored) < 2:
            continue
        candidates = [(scored[0], scored[-1])] if mode == "best_worst" else itertools.combinations(scored, 2)
        for (va, _, a), (vb, _, b) in candidates:
            if va - vb > min_margin and (keep is None or keep(a, b)):
                out.append({"prompt_id": pid, "lang": lang, "prompt": a["prompt"], "chosen": a["id"],
                            "rejected": b["id"], "source": source, "margin": va - vb, "round": round_index,
                            "chosen_value": va, "rejected_value": vb})
    return out


def reward_pairs(rows: Sequence[dict], weights: RewardWeights, mode: str = "best_worst", min_margin: float = 0.0,
                 round_index: int = 0) -> list[dict]:
    """`ranked_pairs` by the scorer's reward; `dominant` keeps a pair only when the chosen video passes
    at least the rejected one's share of checks and neither flickers nor strays in colour more
    (no trading one artifact for another)."""
    return ranked_pairs(rows, lambda r: reward(r.get("score"), weights), mode, min_margin, "reward", round_index,
                        keep=_dominates if mode == "dominant" else None)


def _dominates(a: dict, b: dict) -> bool:
    sa, sb = a["score"], b["score"]
    return (sa["passed_share"] >= sb["passed_share"] and flicker_penalty(sa) <= flicker_penalty(sb)
            and sa["color_noise"] <= sb["color_noise"])


def write_pairs(folder: str | os.PathLike, pairs: Sequence[dict], meta: dict[str, Any]) -> dict[str, Any]:
    """Write the pair dataset (`pairs.jsonl` + `summary.json`, atomically); returns the summary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "pairs.jsonl",
                      "".join(json.dumps(p, ensure_ascii=False, sort_keys=True) + "\n" for p in pairs))
    margins = [p["margin"] for p in pairs if p.get("margin") is not None]
    summary = {"pairs": len(pairs), "prompts": len({(p["prompt_id"], p["lang"]) for p in pairs}),
               "sources": {s: sum(p["source"] == s for p in pairs) for s in sorted({p["source"] for p in pairs})},
               "languages": {g: sum(p["lang"] == g for p in pairs) for g in sorted({p["lang"] for p in pairs})},
               "annotators": sorted({a for p in pairs for a in p.get("annotators", [])}),
               "mean_margin": sum(margins) / len(margins) if margins else None, **meta}
    atomic_write_text(folder / "summary.json", json.dumps(summary, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return summary


def read_pairs(folder: str | os.PathLike) -> list[dict]:
    path = Path(folder) / "pairs.jsonl"
    if not path.is_file():
        raise MissingError(f"{path}: no pair dataset (run the dpo stage, or `stepvideo dpo pairs`)")
    return [row for _, row in read_jsonl(path)]


def pair_tensors(pairs: Sequence[dict], candidates: dict[str, tuple[Path, dict]], encode: Callable,
                 out: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """The trainer's input for `pairs`: the chosen/rejected latents (from the candidates' latent
    files; `candidates` maps id -> (folder, row)) and the prompts' text embeddings (`encode(list of
    texts) -> dict of (N, ...) tensors`), written with `dpo_trainer.write_pair_tensors`."""
    import torch

    from stepvideo.preference.candidates import load_latent
    from stepvideo.training.dpo_trainer import write_pair_tensors

    if not pairs:
        raise InputError("no preference pairs: every prompt's candidates scored alike (lower dpo.min_margin, raise "
                         "dpo.candidates_per_prompt) or no labels were given")
    chosen, rejected = [], []
    for p in pairs:
        for key, dst in (("chosen", chosen), ("rejected", rejected)):
            if p[key] not in candidates:
                raise InputError(f"pair {p['chosen']} > {p['rejected']}: candidate {p[key]} is not in the candidates")
            folder, row = candidates[p[key]]
            dst.append(load_latent(folder, row))
    shapes = {tuple(x.shape) for x in chosen + rejected}
    if len(shapes) != 1:
        raise InputError(f"the pairs' latents have several shapes {sorted(shapes)}: generate candidates at one size")
    with torch.no_grad():
        text = encode([p["prompt"] for p in pairs])
    return write_pair_tensors(out, torch.stack(chosen), torch.stack(rejected),
                              {k: v.detach().cpu() for k, v in text.items()}, meta)


def win_rate(a: Sequence[float], b: Sequence[float], z: float = 1.96) -> dict[str, float]:
    """How often `a[i]` beats `b[i]` (paired; ties count half) with the Wilson score interval of the
    share among decided pairs: {"wins", "losses", "ties", "n", "win_rate", "ci_low", "ci_high"}."""
    if len(a) != len(b):
        raise InputError(f"paired scores must have one length, got {len(a)} and {len(b)}")
    wins = sum(x > y for x, y in zip(a, b))
    losses = sum(x < y for x, y in zip(a, b))
    ties = len(a) - wins - losses
    n = len(a)
    if n == 0:
        return {"wins": 0, "losses": 0, "ties": 0, "n": 0, "win_rate": float("nan"), "ci_low": float("nan"),
                "ci_high": float("nan")}
    p = (wins + 0.5 * ties) / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"wins": wins, "losses": losses, "ties": ties, "n": n, "win_rate": p, "ci_low": centre - half,
            "ci_high": centre + half}


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int = 5000, seed: int = 0) -> dict:
    """`a[i] - b[i]` over paired videos: the mean with a 95% bootstrap interval (seeded), and how many
    went up, down or stayed equal (an artifact score is 0 on most videos: the counts say more)."""
    if len(a) != len(b):
        raise InputError(f"paired scores must have one length, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    if not d:
        return {"n": 0, "mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "up": 0, "down": 0,
                "equal": 0}
    import random

    rng = random.Random(seed)
    means = sorted(sum(rng.choices(d, k=len(d))) / len(d) for _ in range(resamples))
    return {"n": len(d), "mean": sum(d) / len(d), "ci_low": means[int(0.025 * resamples)],
            "ci_high": means[int(0.975 * resamples) - 1], "up": sum(x > 0 for x in d), "down": sum(x < 0 for x in d),
            "equal": sum(x == 0 for x in d)}


__all__ = ["RewardWeights", "reward", "ranked_pairs", "reward_pairs", "write_pairs", "read_pairs", "pair_tensors",
           "win_rate", "paired_difference", "PAIR_MODES"]
