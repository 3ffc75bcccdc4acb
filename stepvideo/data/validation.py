"""The validation gate: a Great Expectations suite over a manifest and what its files really hold.

Every file is probed (opened and fully decoded) and every caption's language detected here, so the
suite checks facts, not the manifest's claims. `fail` stops on any bad row; `quarantine` moves bad
rows to `quarantine.jsonl` (with reasons) and goes on when the clean share is high enough. A failed
table-level expectation (a missing column) always fails.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from stepvideo.config import ValidateParams
from stepvideo.data.manifest import COLUMNS, media_path, read_manifest, write_manifest
from stepvideo.data.synth import check_attributes
from stepvideo.data.video_io import VideoReadError, probe
from stepvideo.errors import InputError, StepVideoError

REQUIRED = ("id", "path", "kind", "split", "caption")
# a broad set of major languages to identify among (restricting the set keeps short Mandarin
# captions from being labelled as regional varieties)
_LANG_SET = ["en", "zh", "ja", "ko", "fr", "de", "es", "it", "pt", "ru", "ar", "hi", "nl", "sv", "pl", "tr", "vi",
             "th", "id", "uk", "cs", "el", "he", "fa"]


class ValidationFailed(StepVideoError, RuntimeError):
    """The gate stopped the pipeline; `report` holds the details."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass
class ValidationResult:
    clean_manifest: Path
    quarantine_manifest: Path
    report_path: Path
    rows: int
    bad_rows: int
    seconds: float
    failed_expectations: list[str] = field(default_factory=list)

    @property
    def clean_fraction(self) -> float:
        return (self.rows - self.bad_rows) / self.rows if self.rows else 0.0

    def metrics(self) -> dict[str, float]:
        return {"rows": self.rows, "bad_rows": self.bad_rows, "clean_fraction": self.clean_fraction,
                "failed_expectations": len(self.failed_expectations), "validate_seconds": self.seconds}


_identifier = None


def detect_language(text: str) -> str:
    global _identifier
    if _identifier is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        ident = LanguageIdentifier.from_model_file(MODEL_FILE)
        ident.set_languages(_LANG_SET)
        _identifier = ident
    text = (text or "").strip()
    return _identifier.classify(text)[0] if text else ""


def _facts(manifest: Path, rows: list[dict], progress: bool) -> pd.DataFrame:
    """The manifest plus what the files and captions really are."""
    out = []
    for n, row in enumerate(tqdm(rows, desc="validate", unit="row", disable=not progress), 1):
        fact = dict(row)
        fact["_row"] = n
        fact["media_error"] = ""
        fact["probed_frames"] = fact["probed_height"] = fact["probed_width"] = None
        fact["probed_fps"] = None
        if row.get("probe_error"):
            fact["media_error"] = str(row["probe_error"])
        else:
            try:
                p = probe(media_path(manifest, row))
                fact.update(probed_frames=p.frames, probed_height=p.height, probed_width=p.width, probed_fps=p.fps)
            except VideoReadError as e:
                fact["media_error"] = str(e)
        caption = row.get("caption")
        caption = caption if isinstance(caption, str) else ""
        fact["caption_chars"] = len(caption.strip())
        fact["lang_detected"] = detect_language(caption)
        fact["attributes_error"] = ""
        if row.get("source") == "synth":
            try:
                fact["attributes_error"] = check_attributes(json.loads(row.get("attributes") or "null"))
            except json.JSONDecodeError:
                fact["attributes_error"] = "attributes are not valid JSON"
        out.append(fact)
    df = pd.DataFrame(out)
    for col in ("probed_frames", "probed_height", "probed_width"):
        df[col] = df[col].astype("Int64")
    df["probed_fps"] = df["probed_fps"].astype("Float64")
    return df


def build_suite(p: ValidateParams, columns: list[str]):
    import great_expectations as gx

    E = gx.expectations
    video = {"row_condition": 'kind=="video"', "condition_parser": "pandas"}
    frames_ok = [1] + list(range(17, p.max_frames + 1, 17))
    frames_ok = [f for f in frames_ok if p.min_frames <= f <= p.max_frames]
    heights = [h for h in range(p.min_height, p.max_height + 1) if h % p.multiple_of == 0]
    widths = [w for w in range(p.min_width, p.max_width + 1) if w % p.multiple_of == 0]
    suite = gx.ExpectationSuite(name="stepvideo_manifest")
    for col in REQUIRED:
        suite.add_expectation(E.ExpectColumnToExist(column=col))
    if not set(REQUIRED) <= set(columns):
        return suite  # nothing row-level can run without the schema
    for e in (
        E.ExpectColumnValuesToBeUnique(column="id"),
        E.ExpectColumnValuesToNotBeNull(column="path"),
        E.ExpectColumnValuesToBeInSet(column="kind", value_set=["video", "image"]),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "heldout"]),
        E.ExpectColumnValuesToBeInSet(column="media_error", value_set=[""]),
        E.ExpectColumnValuesToBeInSet(column="probed_frames", value_set=frames_ok),
        E.ExpectColumnValuesToBeBetween(column="probed_fps", min_value=p.min_fps, max_value=p.max_fps, **video),
        E.ExpectColumnValuesToBeInSet(column="probed_height", value_set=heights),
        E.ExpectColumnValuesToBeInSet(column="probed_width", value_set=widths),
        E.ExpectColumnValuesToBeBetween(column="caption_chars", min_value=p.caption_min_chars,
                                        max_value=p.caption_max_chars),
        E.ExpectColumnValuesToNotMatchRegex(column="caption", regex="\ufffd"),
        E.ExpectColumnValuesToBeInSet(column="lang_detected", value_set=list(p.languages)),
        E.ExpectColumnValuesToBeInSet(column="attributes_error", value_set=[""]),
    ):
        suite.add_expectation(e)
    return suite


def _reason(exp_type: str, column: str | None, value: object) -> str:
    return f"{exp_type}({column}): {value!r}" if column else exp_type


def validate(manifest: str | os.PathLike, params: ValidateParams, out_dir: str | os.PathLike | None = None,
             progress: bool = True) -> ValidationResult:
    """Run the suite; write clean.jsonl, quarantine.jsonl and report.json to `out_dir`."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if params.policy not in ("fail", "quarantine"):
        raise InputError(f"validate.policy must be 'fail' or 'quarantine', got {params.policy!r}")
    t0 = time.perf_counter()
    manifest = Path(manifest)
    out_dir = Path(out_dir) if out_dir else manifest.parent / "validated"
    rows = read_manifest(manifest)
    if not rows:
        raise ValidationFailed(f"{manifest}: manifest has no rows", {"manifest": str(manifest), "rows": 0})
    df = _facts(manifest, rows, progress)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = build_suite(params, list(df.columns))
    asset = ctx.data_sources.add_pandas("manifest").add_dataframe_asset("rows")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["_row"]})

    bad: dict[int, list[str]] = {}
    expectations, failed, table_failures = [], [], []
    for r in result.results:
        cfg = r.expectation_config
        column = cfg.kwargs.get("column")
        name = f"{cfg.type}({column})" if column else cfg.type
        entry = {"expectation": cfg.type, "column": column, "success": bool(r.success), "rows": []}
        if not r.success:
            failed.append(name)
            unexpected = (r.result or {}).get("unexpected_index_list") or []
            if not unexpected:
                table_failures.append(name)
            for u in unexpected:
                n = int(u["_row"])
                detail = df.loc[n - 1, "media_error"] if column == "media_error" else u.get(column)
                bad.setdefault(n, []).append(_reason(cfg.type, column, detail))
                entry["rows"].append({"row": n, "id": rows[n - 1].get("id"), "value": str(detail)})
        expectations.append(entry)

    clean = [r for n, r in enumerate(rows, 1) if n not in bad]
    quarantined = [{**{c: r.get(c) for c in COLUMNS}, "row": n, "reasons": bad[n]}
                   for n, r in enumerate(rows, 1) if n in bad]
    report = {
        "manifest": str(manifest), "policy": params.policy, "rows": len(rows), "bad_rows": len(bad),
        "clean_fraction": (len(rows) - len(bad)) / len(rows), "min_clean_fraction": params.min_clean_fraction,
        "failed_expectations": failed, "table_failures": table_failures, "expectations": expectations,
        "bad": [{"row": n, "id": rows[n - 1].get("id"), "path": rows[n - 1].get("path"), "reasons": bad[n]}
                for n in sorted(bad)],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    # media paths stay valid: rewrite them relative to the output folder
    rebase = lambda r: {**r, "path": os.path.relpath(media_path(manifest, r), out_dir.resolve())}  # noqa: E731
    clean_path = write_manifest(out_dir / "clean.jsonl", [rebase(r) for r in clean])
    q_path = write_manifest(out_dir / "quarantine.jsonl", [rebase(r) for r in quarantined])
    report_path = out_dir / "report.json"
    tmp = report_path.with_name(f".report.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, report_path)
    res = ValidationResult(clean_path, q_path, report_path, len(rows), len(bad), time.perf_counter() - t0, failed)
    if table_failures:
        raise ValidationFailed(f"{manifest}: table-level expectation(s) failed: {', '.join(table_failures)}", report)
    if bad and params.policy == "fail":
        raise ValidationFailed(f"{manifest}: {len(bad)} bad row(s) (policy=fail); see {report_path}", report)
    if res.clean_fraction < params.min_clean_fraction:
        raise ValidationFailed(f"{manifest}: clean share {res.clean_fraction:.3f} is below "
                               f"validate.min_clean_fraction={params.min_clean_fraction}; see {report_path}", report)
    return res


def format_report(report: dict, limit: int = 50) -> str:
    """Human-readable summary naming each bad row and each failed expectation."""
    lines = [f"{report['manifest']}: {report['rows']} rows, {report['bad_rows']} bad "
             f"(clean share {report['clean_fraction']:.3f}, policy {report['policy']})"]
    for name in report["failed_expectations"]:
        lines.append(f"  FAILED {name}")
    for b in report["bad"][:limit]:
        lines.append(f"  row {b['row']} id={b['id']!r} path={b['path']!r}: " + "; ".join(b["reasons"]))
    if len(report["bad"]) > limit:
        lines.append(f"  ... and {len(report['bad']) - limit} more (see the JSON report)")
    return "\n".join(lines)
