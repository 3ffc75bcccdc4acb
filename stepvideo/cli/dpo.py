"""`stepvideo dpo candidates` and `stepvideo label ...`: Video-DPO's candidates to label, and the human
preference labels (serve the labeling page, import labels, agreement)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stepvideo.cli._common import PARAMS, load_params_file, project_root, user_errors

dpo_app = typer.Typer(help="Video-DPO: candidates to label (the dpo stage does the rest).", no_args_is_help=True)
label_app = typer.Typer(help="Human preference labels for Video-DPO: serve the labeling page, import labels, agreement.",
                        no_args_is_help=True)


@dpo_app.command("candidates")
@user_errors
def dpo_candidates(
    out: Path = typer.Option(Path("labels/candidates"), help="candidates folder (resumes when it exists)"),
    model: Optional[str] = typer.Option(None, help="a bundle folder or models:/ URI [default: the project's SFT "
                                                   "DiT with its VAE and text encoders]"),
    per_prompt: Optional[int] = typer.Option(None, help="videos per prompt [params: dpo.candidates_per_prompt]"),
    params: Path = PARAMS,
):
    """Generate N videos per prompt (training captions + benchmark-style prompts, never benchmark
    prompts) with their seeds and latents, for `stepvideo label serve` and the dpo stage."""
    from stepvideo.stages.dpo import make_candidates

    p = load_params_file(params)
    if per_prompt is not None:
        p.dpo.candidates_per_prompt = per_prompt
    rows = make_candidates(p, project_root(), out, model)
    typer.echo(f"{out}: {len(rows)} candidates for {len({(r['prompt_id'], r['lang']) for r in rows})} prompts; "
               f"label them with: stepvideo label serve --candidates {out}")

CANDIDATES = typer.Option(..., "--candidates", help="candidates folder (holds candidates.jsonl and the videos)")
LABELS = typer.Option(None, "--labels", help="labels JSONL (default: CANDIDATES/labels.jsonl)")


def _labels_path(candidates: Path, labels: Optional[Path]) -> Path:
    from stepvideo.preference.labeling import LABELS_FILE

    return labels if labels is not None else candidates / LABELS_FILE


@label_app.command("serve")
@user_errors
def serve(
    candidates: Path = CANDIDATES,
    labels: Optional[Path] = LABELS,
    port: int = typer.Option(8765, min=0, max=65535, help="port to listen on (0: any free port)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: reachable from other machines)"),
):
    """Serve the labeling page: two videos of one prompt side by side, the annotator picks the better one.
    The page opens only at the printed URL: it carries a token made anew at each start."""
    import socket

    from stepvideo.preference.labeling import make_server
    from stepvideo.preference.labeling_http import is_loopback

    server = make_server(candidates, _labels_path(candidates, labels), host=host, port=port)
    state = server.state
    typer.echo(f"labeling {len(state.pairs)} pairs of {len(state.candidates)} candidates; answers go to "
               f"{state.labels_path}")
    if not is_loopback(host):
        typer.secho(f"warning: --host {host!r} makes the labeling page reachable from the network; the token in the "
                    "printed URL is its only guard: give the URL to the annotators only", fg="yellow", err=True)
    if server.guard.wildcard:
        typer.echo(f"from other machines: {server.guard.url(socket.gethostname())} (or this machine's address)")
    typer.echo(f"open {server.url}  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()


@label_app.command("import")
@user_errors
def import_(
    file: Path = typer.Argument(..., help='JSONL of {"prompt", "chosen", "rejected", "annotator"?} lines; '
                                          "chosen/rejected: a candidate id or its video path"),
    candidates: Path = CANDIDATES,
    labels: Optional[Path] = LABELS,
):
    """Import preferences labelled elsewhere; every line is checked before any is appended."""
    from stepvideo.preference.labeling import import_labels

    path = _labels_path(candidates, labels)
    n = import_labels(file, candidates, path)
    typer.echo(f"imported {n} label{'s' * (n != 1)} from {file} into {path}")


@label_app.command("stats")
@user_errors
def stats(candidates: Path = CANDIDATES, labels: Optional[Path] = LABELS):
    """Answers per annotator, answers by kind, inter-annotator agreement, the human preference pairs."""
    from collections import Counter, defaultdict

    from stepvideo.preference.labeling import ANSWERS, agreement, human_pairs, label_pairs, load_candidates, read_labels

    cands = load_candidates(candidates)
    path = _labels_path(candidates, labels)
    rows = read_labels(path)
    pairs = label_pairs(cands)
    per: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        per[r["annotator"]][r["answer"]] += 1
    groups = len({(c["prompt_id"], c["lang"]) for c in cands})
    typer.echo(f"{len(cands)} candidates in {groups} prompt groups: {len(pairs)} pairs; "
               f"{len(rows)} answer(s) from {len(per)} annotator(s) in {path}")
    if not rows:
        return
    width = max(9, *(len(a) for a in per))
    typer.echo(f"{'annotator':{width}}  answers  " + "  ".join(f"{a:>5}" for a in ANSWERS))
    total: Counter = Counter()
    for name in sorted(per):
        total.update(per[name])
        typer.echo(f"{name:{width}}  {sum(per[name].values()):7d}  " + "  ".join(f"{per[name][a]:5d}" for a in ANSWERS))
    typer.echo(f"{'all':{width}}  {sum(total.values()):7d}  " + "  ".join(f"{total[a]:5d}" for a in ANSWERS))
    done = {"|".join(sorted((r["left"], r["right"]))) for r in rows if r["answer"] != "skip"}
    typer.echo(f"pairs with a non-skip answer: {sum(p['pair_id'] in done for p in pairs)} of {len(pairs)}")
    ag = agreement(rows)
    if ag["pairs_multi"]:
        kappa = "n/a (one answer only)" if ag["fleiss_kappa"] is None else f"{ag['fleiss_kappa']:.3f}"
        typer.echo(f"agreement: {ag['pairs_multi']} pairs answered by 2+ annotators; pairwise agreement "
                   f"{ag['pairwise_agreement']:.3f}; Fleiss' kappa {kappa}")
    else:
        typer.echo("agreement: no pair answered (tie or preference) by two or more annotators yet")
    hp = human_pairs(rows, cands)
    typer.echo(f"human preference pairs (majority vote; ties and split votes dropped): {len(hp)}")


if __name__ == "__main__":  # pragma: no cover
    label_app()
