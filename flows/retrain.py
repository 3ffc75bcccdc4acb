"""Retraining that decides for itself: the flow behind the scheduled and the data-triggered
deployments (infra/prefect/prefect.yaml).

It first asks `stepvideo.registry.retrain.check` whether the data version (DVC) and the training params
differ from the lineage of the bundle the registry already judged (`champion`, else
`challenger`). Nothing changed: the run finishes at once, Completed with the reason as its state
message. Otherwise it runs the cascade (a subflow, every task cached on its real inputs) on the
data folder as it is, and promotion decides as in any cascade run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.states import Completed

from flows.cascade import cascade
from stepvideo.registry import retrain as retrain_check
from stepvideo.config import load_params


@flow(name="stepvideo-retrain", log_prints=True)
def retrain(root: str = ".", params_file: str = "params.yaml", preset: str | None = None, source: str = "data",
            push: bool = True, force: bool = False, reason: str = "manual", data_version: str | None = None) -> Any:
    """Retrain when the data or the params changed since the judged bundle (or when `force`).

    `source`: 'data' trains on the data folder as it is (what `stepvideo data ingest` / `data version`
    left there); 'synth' regenerates the embedded data first. `reason` and `data_version` only
    record what started the run (the schedule, the data event and the version it announced)."""
    root_path = Path(root).resolve()
    params = load_params(root_path / params_file, preset)
    announced = f" (the event announced data version {data_version})" if data_version else ""
    print(f"retrain ({reason}){announced}: comparing the data and params with {params.promote.registered}'s "
          "champion/challenger lineage")
    if force:
        why = "forced (force=True)"
    else:
        found = retrain_check.check(params, root_path)
        if not found.changed:
            print(f"retrain skipped: {found.why}")
            return Completed(message=f"skipped: {found.why}", data={"skipped": True, **found.to_dict()})
        why = found.why
    print(f"retrain: {why}; running the cascade")
    result = cascade(root=str(root_path), params_file=params_file, preset=preset, source=source, push=push)
    promoted = result["promote"]
    summary = promoted.get("summary") or f"promotion skipped ({promoted.get('why')})"
    return Completed(message=f"retrained ({why}); {summary}",
                     data={"skipped": False, "why": why, "run_id": result["run_id"], "report": result["report"],
                           "promote": summary})
