"""Promotion by alias gates in the MLflow registry.

A candidate version of the generation bundle (`stepvideo-t2v`) is judged against the version that
holds the `champion` alias, on the same benchmark prompts, seeds and sampler settings:

- `decide` (pure): the gates of `PromoteParams` on two scorer summaries -> a `Decision`;
- `promote`: the champion's scores (cached on its version when the eval key matches, else it is
  evaluated the same way), `decide`, then under a file lock the aliases move: pass -> `champion` =
  candidate and the old champion -> `previous`; fail -> `challenger` = candidate. The candidate
  version is tagged with the decision, each gate's figures and its scores; both scores are logged
  to the promote run so the next promotion can reuse them;
- `promote_by_person` / `rollback`: a person's decision (`stepvideo registry promote|rollback`),
  tagged `promoted_by = person:<user>`.

**Locking.** Aliases move under a `filelock` lock: `STEPVIDEO_PROMOTE_LOCK` when set, else a file
beside the sqlite store (`mlflow.db.promote.lock`), else `mlflow/promote.lock` in the project.
The lock only serialises processes that see the same file: a team sharing a tracking server must
point `STEPVIDEO_PROMOTE_LOCK` at one shared path (an NFS file) or run promotions from one place
(a Prefect work pool with a global concurrency limit of 1 on the promote task). Inside the lock
the aliases are read again: when another process moved `champion` meanwhile, the candidate is
judged again against the new champion, so no alias move is lost.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from stepvideo import tracking
from stepvideo.registry import CHALLENGER, CHAMPION, PREVIOUS
from stepvideo.errors import InputError, MissingError
EPS = 1e-9  # figures are rounded sums of passes: equal within this is a tie
SCORES_FILE = "promotion/{role}_scores.json"


# ------------------------------------------------------------------ the gates

@dataclass
class Decision:
    """What the gates said: `passed`, whether it was the first-model rule, every gate with both
    figures and its limit, and one line per failed gate."""

    passed: bool
    first_model: bool
    gates: list[dict] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        return ("first-model" if self.first_model else "promoted") if self.passed else "rejected"

    def to_dict(self) -> dict:
        return {**asdict(self), "outcome": self.outcome}


def _get(gates: Any, name: str) -> float:
    return float(gates[name] if isinstance(gates, Mapping) else getattr(gates, name))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def decide(candidate: Mapping, champion: Mapping | None, gates: Any) -> Decision:
    """The gates on two scorer summaries (`summary` of a results.json: overall, categories,
    consistency, flicker, color_noise). `gates`: `PromoteParams` or a mapping of its fields.
    No champion: the first-model rule (`min_overall`, `min_consistency`)."""
    rows: list[dict] = []

    def gate(name: str, cand: float | None, champ: float | None, limit: float, passed: bool, why: str) -> None:
        rows.append({"gate": name, "candidate": cand, "champion": champ, "limit": limit, "passed": bool(passed),
                     "reason": "" if passed else why})

    c_overall, c_cons = candidate.get("overall"), candidate.get("consistency")
    if champion is None:
        lim = _get(gates, "min_overall")
        gate("min_overall", c_overall, None, lim, c_overall is not None and c_overall >= lim - EPS,
             f"overall: candidate {_fmt(c_overall)} < minimum {lim:.4f} (no champion yet)")
        lim = _get(gates, "min_consistency")
        ok = c_cons is None or c_cons >= lim - EPS  # no EN/ZH pairs: nothing to hold against it
        gate("min_consistency", c_cons, None, lim, ok,
             f"consistency: candidate {_fmt(c_cons)} < minimum {lim:.4f} (no champion yet)")
    else:
        k_overall = champion.get("overall")
        lim = _get(gates, "min_overall_gain")
        if c_overall is None or k_overall is None:
            gate("overall", c_overall, k_overall, lim, False, "overall: no accuracy to compare (not judged)")
        else:
            gain = c_overall - k_overall
            ok = gain > EPS and gain >= lim - EPS  # a tie never promotes
            gate("overall", c_overall, k_overall, lim, ok,
                 f"overall: candidate {_fmt(c_overall)} vs champion {_fmt(k_overall)}: gain {gain:+.4f}, "
                 f"needs > 0 and >= {lim:+.4f}")
        lim = _get(gates, "max_category_drop")
        k_cats = champion.get("categories") or {}
        for cat, c in sorted((candidate.get("categories") or {}).items()):
            k = k_cats.get(cat)
            if c is None or k is None:
                continue
            gate(f"category.{cat}", c, k, lim, k - c <= lim + EPS,
                 f"{cat}: candidate {_fmt(c)} vs champion {_fmt(k)}: drop {k - c:.4f} > {lim:.4f}")
        for name, key in (("flicker", "max_flicker_increase"), ("color_noise", "max_color_noise_increase")):
            c, k, lim = candidate.get(name), champion.get(name), _get(gates, key)
            if c is None or k is None:
                continue
            gate(name, c, k, lim, c - k <= lim + EPS,
                 f"{name}: candidate {_fmt(c)} vs champion {_fmt(k)}: worse by {c - k:.4f} > {lim:.4f}")
        k_cons, lim = champion.get("consistency"), _get(gates, "max_consistency_drop")
        if c_cons is not None and k_cons is not None:
            gate("consistency", c_cons, k_cons, lim, k_cons - c_cons <= lim + EPS,
                 f"consistency: candidate {_fmt(c_cons)} vs champion {_fmt(k_cons)}: drop {k_cons - c_cons:.4f} "
                 f"> {lim:.4f}")
    reasons = [r.pop("reason") for r in rows if r["reason"]]
    for r in rows:
        r.pop("reason", None)
    return Decision(passed=not reasons, first_model=champion is None, gates=rows, reasons=reasons)


# ------------------------------------------------------------------ the evaluation key

def eval_spec(results: Mapping) -> dict:
    """What makes two benchmark runs comparable: every judged video's (prompt id, language, seed,
    text), the sampler settings that change the pixels (not fps or batch size), and the device type
    and dtype they were generated with (bf16 on a GPU and fp32 on the CPU give other videos)."""
    videos = sorted((str(v.get("prompt_id")), str(v.get("lang")), int(v.get("seed", 0)), str(v.get("prompt")))
                    for v in results.get("videos") or [])
    s = results.get("settings") or {}
    settings = {k: s.get(k) for k in ("frames", "height", "width", "seeds", "steps", "cfg", "shift", "device",
                                      "dtype")}
    return {"videos": videos, "settings": settings}


def eval_key(results: Mapping) -> str:
    """Hash (16 hex) of `eval_spec` and the scorer's code (`stepvideo.evaluation`)."""
    blob = json.dumps([eval_spec(results), tracking.code_version("stepvideo.evaluation")], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the registry

def aliases(name: str) -> dict[str, str]:
    """{alias: version} of registered model `name`."""
    import mlflow

    try:
        model = tracking.client().get_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        tracking.missing_or_raise(e, f"registered model {name}")
        raise MissingError(f"{name}: no such registered model in {tracking.tracking_uri()}") from None
    return {a: str(v) for a, v in (model.aliases or {}).items()}


def lock_path() -> Path:
    if os.environ.get("STEPVIDEO_PROMOTE_LOCK"):
        return Path(os.environ["STEPVIDEO_PROMOTE_LOCK"])
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///") + ".promote.lock")
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:")) / "promote.lock"
    return tracking.project_root() / "mlflow" / "promote.lock"


@contextlib.contextmanager
def registry_lock(timeout: float = 600.0) -> Iterator[None]:
    from filelock import FileLock

    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield


@contextlib.contextmanager
def _active_run(name: str, experiment: str, tags: dict) -> Iterator[Any]:
    """The active MLflow run (the stage's), else a new run `name`."""
    import mlflow

    if mlflow.active_run() is not None:
        yield mlflow.active_run()
        return
    with tracking.run(name, experiment=experiment, tags=tags) as run:
        yield run


def _own_run(name: str, experiment: str, tags: dict) -> Any:
    """A new run `name`, nested under the active run when there is one."""
    import mlflow

    active = mlflow.active_run()
    return tracking.run(name, experiment=experiment, tags=tags, parent_run_id=active.info.run_id if active else None)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _score_tags(summary: Mapping) -> dict[str, str]:
    from stepvideo.evaluation.runner import summary_metrics

    return {k: f"{v:.4f}" for k, v in summary_metrics(summary, "eval_").items() if "_chance_" not in k}


def _log_scores(run: Any, role: str, name: str, version: str, key: str, results: Mapping) -> str:
    """Log a version's scores to the run as promotion/<role>_scores.json; returns its runs:/ URI."""
    path = SCORES_FILE.format(role=role)
    data = {"model": f"{name}/{version}", "eval_key": key, "spec": eval_spec(results), "summary": results["summary"]}
    tracking.client().log_text(run.info.run_id, json.dumps(data, indent=1, ensure_ascii=False, default=float), path)
    return f"runs:/{run.info.run_id}/{path}"


def cached_scores(name: str, version: str, key: str) -> dict | None:
    """The summary logged for `name`/`version` under eval key `key`, or None."""
    import mlflow

    tags = tracking.client().get_model_version(name, version).tags or {}
    if tags.get("promotion_eval_key") != key or not tags.get("promotion_scores"):
        return None
    try:
        data = json.loads(mlflow.artifacts.load_text(tags["promotion_scores"]))
    except (mlflow.exceptions.MlflowException, OSError, ValueError):
        return None
    return data["summary"] if data.get("eval_key") == key else None


def _prompts_for(results: Mapping, prompts_file: str | None) -> list:
    from stepvideo.evaluation.runner import load_prompts

    wanted = list(dict.fromkeys(str(v["prompt_id"]) for v in results.get("videos") or []))
    by_id = {str(p["id"] if isinstance(p, dict) else p.id): p for p in load_prompts(prompts_file or None)}
    missing = [pid for pid in wanted if pid not in by_id]
    if missing:
        raise InputError(f"the candidate was judged on prompts the benchmark does not have ({', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}): set evaluate.prompts to the file it used")
    keep = set(wanted)
    return [p for pid, p in by_id.items() if pid in keep]


def champion_scores(name: str, version: str, results: Mapping, *, run: Any, work_dir: Path,
                    prompts_file: str | None = None, evaluate: Callable | None = None, batch_size: int = 16,
                    progress: bool = False) -> tuple[dict, str]:
    """The champion's summary on the candidate's prompts/seeds/settings: ('cache' when its version
    holds scores under the same eval key; else it is evaluated and its scores are logged and tagged)."""
    key = eval_key(results)
    summary = cached_scores(name, version, key)
    if summary is not None:
        return summary, "cache"
    if evaluate is None:
        from stepvideo.evaluation.runner import evaluate_model as evaluate
    s = results["settings"]
    out = Path(work_dir) / f"champion-{version}"
    judged = evaluate(f"models:/{name}/{version}", _prompts_for(results, prompts_file), out, seeds=int(s["seeds"]),
                      frames=s["frames"], height=s["height"], width=s["width"], steps=s["steps"], cfg=s["cfg"],
                      shift=s["shift"], fps=s.get("fps", 8), batch_size=batch_size, progress=progress)
    if eval_key(judged) != key:
        raise InputError(f"the champion {name}/{version} was judged on other videos than the candidate "
                         f"(eval key {eval_key(judged)} vs {key}): the benchmark file changed, or the candidate was "
                         "evaluated on another device type or dtype than this machine's?")
    uri = _log_scores(run, "champion", name, version, key, judged)
    if (out / "results.json").is_file():
        tracking.log_artifact(out / "results.json", "promotion/champion")
    tracking.tag_model_version(name, version, {"promotion_eval_key": key, "promotion_scores": uri,
                                               **_score_tags(judged["summary"])})
    return judged["summary"], "evaluated"


def promote(name: str, version: str, results: Mapping, gates: Any, *, work_dir: str | os.PathLike,
            prompts_file: str | None = None, evaluate: Callable | None = None, experiment: str = "stepvideo",
            batch_size: int = 16, progress: bool = False, max_attempts: int = 5) -> dict:
    """Judge registered version `name`/`version` (its benchmark `results`: a results.json dict)
    against the champion by `gates` and move the aliases (see the module docstring). Logs to the
    active MLflow run, or to a new `promote` run. Returns {decision, candidate, champion,
    champion_scores (cache | evaluated | none), aliases, eval_key, run_id}."""
    version = str(version)
    key = eval_key(results)
    with _active_run("promote", experiment, {"candidate": f"{name}/{version}"}) as run:
        cand_uri = _log_scores(run, "candidate", name, version, key, results)
        for attempt in range(max_attempts):
            champ = aliases(name).get(CHAMPION)
            if champ == version:
                return {"decision": None, "candidate": f"{name}/{version}", "champion": champ,
                        "champion_scores": "none", "aliases": aliases(name), "eval_key": key,
                        "run_id": run.info.run_id, "note": "already the champion"}
            source, champ_summary = "none", None
            if champ is not None:
                champ_summary, source = champion_scores(name, champ, results, run=run, work_dir=Path(work_dir),
                                                        prompts_file=prompts_file, evaluate=evaluate,
                                                        batch_size=batch_size, progress=progress)
            decision = decide(results["summary"], champ_summary, gates)
            with registry_lock():
                if aliases(name).get(CHAMPION) != champ:
                    continue  # another process moved the champion meanwhile: judge against the new one
                _apply(name, version, champ, decision, key, cand_uri, results["summary"], run, "gates")
                now = aliases(name)
            _log_decision(decision, source)
            return {"decision": decision.to_dict(), "candidate": f"{name}/{version}", "champion": champ,
                    "champion_scores": source, "aliases": now, "eval_key": key, "run_id": run.info.run_id,
                    "attempts": attempt + 1}
    raise RuntimeError(f"{name}: the champion moved {max_attempts} times while {version} was being judged")


def _gate_tag(g: dict) -> str:
    vs = "" if g["champion"] is None else f" vs champion {_fmt(g['champion'])}"
    return f"{'pass' if g['passed'] else 'fail'}: candidate {_fmt(g['candidate'])}{vs} (limit {g['limit']:g})"


def _apply(name: str, version: str, champ: str | None, decision: Decision, key: str, scores_uri: str,
           summary: Mapping, run: Any, by: str) -> None:
    """Under the lock: tag the candidate, move the aliases, then set `promotion` (written last)."""
    client = tracking.client()
    tags = {f"gate.{g['gate']}": _gate_tag(g) for g in decision.gates}
    tags.update({"promotion_reasons": "; ".join(decision.reasons) or "all gates passed",
                 "promotion_eval_key": key, "promotion_scores": scores_uri, "promotion_champion": champ or "none",
                 "promotion_run": run.info.run_id, "promotion_time": _now(), "promoted_by": by,
                 **_score_tags(summary)})
    tracking.tag_model_version(name, version, tags)
    if decision.passed:
        _make_champion(client, name, version, champ)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
    tracking.tag_model_version(name, version, {"promotion": decision.outcome})


def _make_champion(client: Any, name: str, version: str, old: str | None) -> None:
    """`champion` -> `version`, the old champion -> `previous`, in an order that a process killed
    between two calls leaves consistent: the tag naming what it replaces and `previous` come first
    (until `champion` moves, both aliases name the old champion), so no alias is lost and running
    the promotion again finishes it."""
    client.set_model_version_tag(name, version, "replaced_version", old or "none")
    if old is not None and old != version:
        client.set_registered_model_alias(name, PREVIOUS, old)
    client.set_registered_model_alias(name, CHAMPION, version)
    if aliases(name).get(CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)


def _log_decision(decision: Decision, source: str) -> None:
    metrics = {"promotion_passed": float(decision.passed), "promotion_first_model": float(decision.first_model)}
    for g in decision.gates:
        base = "gate_" + g["gate"].replace(".", "_")
        metrics[f"{base}_passed"] = float(g["passed"])
        for role in ("candidate", "champion"):
            if g[role] is not None:
                metrics[f"{base}_{role}"] = g[role]
    tracking.log_metrics(metrics)
    tracking.set_tags({"promotion": decision.outcome, "champion_scores": source,
                       "promotion_reasons": ("; ".join(decision.reasons) or "all gates passed")[:4900]})


# ------------------------------------------------------------------ a person's decision

def current_user() -> str:
    import getpass

    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _version_exists(name: str, version: str) -> None:
    import mlflow

    try:
        tracking.client().get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException as e:
        tracking.missing_or_raise(e, f"{name}/{version}")
        raise MissingError(f"{name}/{version}: not in the MLflow registry ({e.message})") from None


def promote_by_person(name: str, version: str, *, user: str | None = None, reason: str = "",
                      experiment: str = "stepvideo") -> dict:
    """`champion` = `name`/`version` by a person's decision (no gates); the old champion ->
    `previous`. Tagged `promotion=promoted`, `promoted_by=person:<user>`, `promotion_reason`."""
    version, by = str(version), f"person:{user or current_user()}"
    _version_exists(name, version)
    if aliases(name).get(CHAMPION) == version:  # a refusal leaves no FAILED run behind (checked again below)
        raise InputError(f"{name}/{version} is already the champion")
    with _own_run("registry_promote", experiment,
                  {"candidate": f"{name}/{version}", "promoted_by": by, "reason": reason}) as run:
        with registry_lock():
            old = aliases(name).get(CHAMPION)
            if old == version:
                raise InputError(f"{name}/{version} is already the champion")
            tracking.tag_model_version(name, version, {"promoted_by": by, "promotion_reason": reason or "(none given)",
                                                       "promotion_time": _now(), "promotion_run": run.info.run_id,
                                                       "promotion_champion": old or "none"})
            _make_champion(tracking.client(), name, version, old)
            tracking.tag_model_version(name, version, {"promotion": "promoted"})
            now = aliases(name)
    return {"candidate": f"{name}/{version}", "champion": old, "aliases": now, "promoted_by": by}


def rollback(name: str, *, user: str | None = None, reason: str = "", experiment: str = "stepvideo") -> dict:
    """`champion` back to `previous` (a person's decision); the rolled-back version is tagged
    `promotion=rolled-back`; `previous` becomes the version the restored one had replaced."""
    import mlflow

    by = f"person:{user or current_user()}"
    if aliases(name).get(PREVIOUS) is None:  # a refusal leaves no FAILED run behind (checked again below)
        raise InputError(f"{name} has no `previous` version to roll back to")
    with _own_run("registry_rollback", experiment, {"promoted_by": by, "reason": reason}) as run:
        with registry_lock():
            now = aliases(name)
            cur, prev = now.get(CHAMPION), now.get(PREVIOUS)
            if prev is None:
                raise InputError(f"{name} has no `previous` version to roll back to")
            client = tracking.client()
            client.set_registered_model_alias(name, CHAMPION, prev)
            before = (client.get_model_version(name, prev).tags or {}).get("replaced_version", "none")
            exists = True
            try:
                client.get_model_version(name, before)
            except mlflow.exceptions.MlflowException as e:
                tracking.missing_or_raise(e, f"{name}/{before}")
                exists = False
            if before not in ("none", cur, prev) and exists:
                client.set_registered_model_alias(name, PREVIOUS, before)
            else:
                client.delete_registered_model_alias(name, PREVIOUS)
            tracking.tag_model_version(name, prev, {"restored_by": by, "restored_time": _now()})
            if cur is not None and cur != prev:  # cur == prev: a rollback killed after its first move, finished now
                tracking.tag_model_version(name, cur, {"promotion": "rolled-back", "rolled_back_by": by,
                                                       "rollback_reason": reason or "(none given)",
                                                       "rollback_run": run.info.run_id})
            after = aliases(name)
    return {"rolled_back": cur, "champion": prev, "aliases": after, "by": by}
