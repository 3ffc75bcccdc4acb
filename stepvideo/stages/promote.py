"""The `promote` stage (after evaluate and bundle): the bundle's registered version of
`stepvideo-t2v` against the registry's `champion`, by the gates in `params.promote`
(`stepvideo.registry.promotion`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from stepvideo import tracking
from stepvideo.config import Params
from stepvideo.fileio import atomic_write_text
from stepvideo.registry import registered_version
from stepvideo.stages.common import OUTPUTS, require_output
from stepvideo.errors import InputError, MissingError

logger = logging.getLogger(__name__)


def bundle_version(name: str, dit_weights: str) -> str | None:
    """The newest version of `name` whose `dit_weights` tag is `dit_weights` (what the bundle stage
    registered for outputs/bundle), or None."""
    found = registered_version(name, dit_weights, tag="dit_weights")
    return found.rsplit("/", 1)[1] if found else None


def _evaluated_weights(model: str) -> str | None:
    """The DiT weights hash behind results.json's `model` ('folder:HASH' or 'NAME/VERSION')."""
    if model.startswith("folder:"):
        return model.removeprefix("folder:")
    if "/" in model:
        try:
            return (tracking.model_version(f"models:/{model}").tags or {}).get("weights_hash")
        except FileNotFoundError:
            return None
    return None


def _figures(g: dict) -> str:
    cand = "n/a" if g["candidate"] is None else f"{g['candidate']:.4f}"
    return f"{g['gate']} {cand}" + ("" if g["champion"] is None else f" vs {g['champion']:.4f}")


def decision_lines(outcome: dict) -> list[str]:
    """The decision as text: the verdict, then every gate with both figures."""
    d = outcome["decision"]
    if d is None:
        return [f"{outcome['candidate']}: {outcome.get('note', 'no decision')}"]
    champ = outcome["champion"]
    head = (f"{outcome['candidate']}: {d['outcome']}" + (f" against champion version {champ} (scores: "
                                                          f"{outcome['champion_scores']})" if champ else
                                                          " (no champion yet: the first-model minimums)"))
    lines = [head]
    for g in d["gates"]:
        lines.append(f"  {'pass' if g['passed'] else 'FAIL'}  {_figures(g)}  (limit {g['limit']:g})")
    lines += [f"  why: {r}" for r in d["reasons"]]
    return lines


def stage_promote(params: Params, root: Path, parent_run_id: str | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Promotion by alias gates: the bundle's registered version (`promote.registered`, found by
    the `dit_weights` tag of outputs/bundle) with the benchmark results of outputs/eval (the same
    DiT) against the version holding `champion`, judged on the same prompts/seeds/settings (its
    scores cached on its version, else evaluated). Pass: champion moves, the old one -> previous;
    fail: challenger. Writes outputs/promote/decision.json, decision.txt and report.html (the
    evaluation report led by the decision: every gate with both figures); its own MLflow run
    logs every gate's figures. `promote.enabled: false` or `tracking.register: false`: skipped."""
    pp = params.promote
    out = root / OUTPUTS / "promote"
    if not pp.enabled or not params.tracking.register:
        why = "promote.enabled is false" if not pp.enabled else "tracking.register is false: nothing is registered"
        logger.info(f"promote: skipped ({why})")
        return {"skipped": True, "why": why, "decision": None, "metrics": {}}
    bundle = require_output(root / OUTPUTS / "bundle", "bundle", marker="model_index.json")
    eval_file = require_output(root / OUTPUTS / "eval", "evaluate", marker="results.json") / "results.json"
    lineage = json.loads((bundle / "model_index.json").read_text(encoding="utf-8")).get("lineage") or {}
    weights = lineage.get("dit_weights")
    version = bundle_version(pp.registered, weights) if weights else None
    if version is None:
        raise MissingError(f"{bundle}: no version of {pp.registered} with dit_weights={weights} in the registry: "
                                "run the bundle stage (stepvideo stage bundle) with tracking.register: true")
    results = json.loads(eval_file.read_text(encoding="utf-8"))
    judged = _evaluated_weights(str(results.get("model", "")))
    if judged != weights:
        raise InputError(f"{eval_file} judged DiT {results.get('model')!r} (weights {judged}), but {bundle} ships "
                         f"weights {weights}: run the evaluate stage again (stepvideo stage evaluate)")
    if not (results.get("summary") or {}).get("overall") and results.get("gallery"):
        raise InputError(f"{eval_file}: a gallery run (official-format prompts) has no accuracy to promote on")
    from stepvideo.registry.promotion import eval_key, promote

    candidate = f"{pp.registered}/{version}"
    tags = {"candidate": candidate, "dit_weights": weights, "eval_key": eval_key(results),
            "params_hash": params.section_hash("promote"), "git_commit": tracking.git_commit(root)}
    with tracking.run("promote", experiment=params.tracking.experiment, params={"promote": dataclasses.asdict(pp)},
                      tags=tags, parent_run_id=parent_run_id):
        outcome = promote(pp.registered, version, results, pp, work_dir=root / ".cache" / "promote",
                          prompts_file=params.evaluate.prompts or None, experiment=params.tracking.experiment,
                          batch_size=params.evaluate.batch_size, progress=progress)
        lines = decision_lines(outcome)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "decision.json", json.dumps(outcome, indent=2, sort_keys=True, default=str) + "\n")
        atomic_write_text(out / "decision.txt", "\n".join(lines) + "\n")
        # the evaluation page led by the decision (outputs/eval stays the evaluate stage's own output)
        from stepvideo.evaluation.report import write_report

        write_report({**results, "promotion": {"decision": outcome["decision"], "candidate": candidate,
                                               "champion": outcome["champion"]}},
                     eval_file.parent, out / "report.html", title=f"Promotion of {candidate}")
        for name in ("decision.json", "decision.txt", "report.html"):
            tracking.log_artifact(out / name, "promotion")
    d = outcome["decision"]
    failed = [g for g in (d or {}).get("gates", []) if not g["passed"]]
    summary = lines[0] + ("; failed: " + ", ".join(_figures(g) for g in failed) if failed else "")
    metrics = {"promotion_passed": float(bool(d and d["passed"]))}
    if d:
        metrics.update({f"gate_{g['gate'].replace('.', '_')}_passed": float(g["passed"]) for g in d["gates"]})
    logger.info("promote: " + "\n".join(lines))
    return {"decision": d, "metrics": metrics, "candidate": candidate, "aliases": outcome["aliases"],
            "champion_before": outcome["champion"], "champion_scores": outcome["champion_scores"],
            "summary": summary, "out": str(out), "report": str(out / "report.html")}
