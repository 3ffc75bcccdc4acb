"""`stepvideo registry ...`: the MLflow model registry (show, a person's promote, rollback)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from stepvideo.cli._common import setup_logging, user_errors
from stepvideo.errors import MissingError

registry_app = typer.Typer(help="The MLflow model registry: versions, aliases, scores, lineage; promote and roll "
                                "back by a person's decision.", no_args_is_help=True)


@registry_app.callback()
def _quiet() -> None:
    """(every registry command: no MLflow 'Creating tables' chatter on a fresh store)"""
    setup_logging()


SCORES = ("overall", "lang_en", "lang_zh", "consistency", "flicker", "color_noise")
LINEAGE = ("parent_model_version", "data_version", "dit_weights", "weights_hash", "pairs_version", "cascade_params",
           "git_commit")
PROMOTION = ("promotion", "promoted_by", "promotion_champion", "replaced_version", "promotion_reason",
             "promotion_reasons", "rolled_back_by", "rollback_reason", "restored_by")


def registry_listing(name: str | None = None) -> list[dict]:
    """Every registered model (or `name`): its aliases and versions (newest first) with their tags."""
    import mlflow

    from stepvideo import tracking

    client = tracking.client()
    if name:
        try:
            models = [client.get_registered_model(name)]
        except mlflow.exceptions.MlflowException as e:
            tracking.missing_or_raise(e, f"registered model {name}")
            raise MissingError(f"{name}: no such registered model") from None
    else:
        models = sorted(client.search_registered_models(), key=lambda m: m.name)
    out = []
    for m in models:
        by_version: dict[str, list[str]] = {}
        for alias, v in (m.aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        versions = sorted(client.search_model_versions(f"name = '{m.name}'"), key=lambda v: -int(v.version))
        out.append({"name": m.name, "aliases": {a: str(v) for a, v in (m.aliases or {}).items()},
                    "versions": [{"version": str(v.version), "aliases": sorted(by_version.get(str(v.version), [])),
                                  "created": v.creation_timestamp, "run_id": v.run_id, "tags": dict(v.tags or {})}
                                 for v in versions]})
    return out


def _version_lines(v: dict) -> list[str]:
    tags = v["tags"]
    head = f"  v{v['version']:<4}" + (f" [{', '.join(v['aliases'])}]" if v["aliases"] else "")
    scores = [f"{k} {tags['eval_' + k]}" for k in SCORES if f"eval_{k}" in tags]
    lines = [head + ("  " + ", ".join(scores) if scores else "  (no scores)")]
    cats = {k.removeprefix("eval_"): t for k, t in tags.items() if k.startswith("eval_")
            and k.removeprefix("eval_") not in SCORES and not k.startswith(("eval_lang_", "eval_user_", "eval_chance"))}
    if cats:
        lines.append("        categories: " + ", ".join(f"{k} {t}" for k, t in sorted(cats.items())))
    lineage = [f"{k}={tags[k][:40]}" for k in LINEAGE if tags.get(k)]
    if lineage:
        lines.append("        lineage: " + " ".join(lineage))
    promo = [f"{k}={tags[k]}" for k in PROMOTION if tags.get(k)]
    if promo:
        lines.append("        " + "; ".join(promo))
    gates = sorted((k, t) for k, t in tags.items() if k.startswith("gate.") and t.startswith("fail"))
    lines += [f"        {k}: {t}" for k, t in gates]
    return lines


@registry_app.command("show")
@user_errors
def show(
    name: Optional[str] = typer.Argument(None, help="one registered model (default: all)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (every tag of every version)"),
):
    """Every registered model with its versions, aliases, scores, lineage and promotion decisions."""
    from stepvideo import tracking

    if not name and not tracking.registry_exists():
        typer.echo("no MLflow registry here (no mlflow/mlflow.db and no MLFLOW_TRACKING_URI)")
        return
    listing = registry_listing(name)
    if as_json:
        typer.echo(json.dumps(listing, indent=2, sort_keys=True))
        return
    if not listing:
        typer.echo(f"no registered models in {tracking.tracking_uri()}")
    for m in listing:
        aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(m["aliases"].items()))
        typer.echo(f"{m['name']}: {len(m['versions'])} version(s)" + (f"; aliases: {aliases}" if aliases else ""))
        for v in m["versions"]:
            for line in _version_lines(v):
                typer.echo(line)


@registry_app.command("promote")
@user_errors
def promote_cmd(
    name: str = typer.Argument(..., help="registered model, e.g. stepvideo-t2v"),
    version: str = typer.Argument(..., help="the version to make champion"),
    reason: str = typer.Option("", "--reason", help="why (recorded on the version)"),
):
    """Make VERSION the champion by a person's decision (no gates); the old champion becomes `previous`."""
    from stepvideo.registry.promotion import promote_by_person

    r = promote_by_person(name, version, reason=reason)
    old = f" (was v{r['champion']}, now previous)" if r["champion"] else ""
    typer.echo(f"{name}: champion -> v{version}{old}; recorded as promoted_by={r['promoted_by']}")


@registry_app.command("rollback")
@user_errors
def rollback_cmd(
    name: str = typer.Argument(..., help="registered model, e.g. stepvideo-t2v"),
    reason: str = typer.Option("", "--reason", help="why (recorded on the rolled-back version)"),
):
    """Put the `previous` version back as champion (a person's decision, recorded on both versions)."""
    from stepvideo.registry.promotion import rollback

    r = rollback(name, reason=reason)
    typer.echo(f"{name}: champion -> v{r['champion']} (v{r['rolled_back']} rolled back by {r['by']})")
