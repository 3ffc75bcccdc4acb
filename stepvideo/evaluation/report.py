"""One self-contained HTML page per evaluation: :func:`write_report`.

Everything is inline, so the page opens anywhere and can be attached or archived as one file: the
videos as base64 ``data:video/mp4`` URIs, the charts as SVG drawn here, a few lines of CSS and a
tiny script; nothing loads from the web. The page holds

- a header: model, date, commit, settings, overall accuracy, bilingual consistency, mean flicker and
  color noise, user-metric means (with the baseline's beside them when one is given);
- accuracy per benchmark category and per language as bar charts (candidate vs baseline) and a
  table with check counts; ``None`` accuracies (no checks) draw no bar and read "n/a";
- a video grid per category: each video with its prompt, lang/seed, every check's verdict
  (✓ / ✗ expected → observed) and its user metrics, the baseline's video for the same id beside it;
- loss curves, one SVG line plot per stage, when ``results["loss_curves"]`` is given.

A gallery run (official-format prompts: no checks, ``summary["categories"]`` empty) shows the
per-category gallery and user metrics and says "not judged" instead of drawing accuracy charts.

The script records each video's duration in its ``data-duration`` attribute on ``loadedmetadata``
and counts loaded videos into ``<span id="videos-loaded">``; ``data-ready="1"`` once the first frame
is decoded, ``data-error="1"`` when the video cannot be played (a headless browser's ``--dump-dom``
shows them: that is how the tests know every video decodes).
"""

from __future__ import annotations

import base64
import html
import math
import mimetypes
import os
from collections.abc import Mapping
from pathlib import Path

from stepvideo.evaluation.checks import CATEGORIES
from stepvideo.evaluation.official import OFFICIAL_CATEGORIES
from stepvideo.fileio import atomic_write_text

CANDIDATE_COLOR, BASELINE_COLOR = "#1f77b4", "#ff7f0e"
LANG_COLORS = {"en": "#2ca02c", "zh": "#9467bd"}
_MIME = {".mp4": "video/mp4", ".webm": "video/webm", ".png": "image/png", ".jpg": "image/jpeg",
         ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif"}

CSS = """
body{font:14px/1.4 system-ui,"Noto Sans CJK SC","PingFang SC","Microsoft YaHei",sans-serif;margin:16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:24px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#555}.tiles{display:flex;flex-wrap:wrap;gap:8px;margin:12px 0}
.tile{border:1px solid #ddd;border-radius:6px;padding:6px 10px;min-width:110px}
.tile b{display:block;font-size:18px}.tile small{color:#777}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:16px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}
.cell{border:1px solid #ddd;border-radius:6px;padding:6px}.pair{display:flex;gap:4px}
.pair figure{margin:0;flex:1}.pair figcaption{font-size:11px;color:#666}
video,img.still{width:100%;image-rendering:pixelated;background:#000}
.prompt{margin:4px 0;font-weight:500}.small{font-size:12px;color:#555}
ul.checks{list-style:none;padding:0;margin:4px 0;font-size:12px}
.ok{color:#1a7f37}.bad{color:#cf222e}.unk{color:#888}.missing{padding:20px;background:#eee;color:#a00}
"""

SCRIPT = """
(function(){var out=document.getElementById('videos-loaded'),n=0;
document.querySelectorAll('video').forEach(function(v){
 function done(){if(v.dataset.duration!==undefined)return;v.dataset.duration=String(v.duration);
  n+=1;out.textContent=String(n);}
 v.addEventListener('loadedmetadata',done);
 v.addEventListener('loadeddata',function(){v.dataset.ready='1';});
 v.addEventListener('error',function(){v.dataset.error='1';});
 if(v.readyState>=1)done();if(v.readyState>=2)v.dataset.ready='1';});})();
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(x) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(x, digits: int = 3) -> str:
    f = _num(x)
    return "n/a" if f is None else f"{f:.{digits}f}"


def _pct(x) -> str:
    f = _num(x)
    return "n/a" if f is None else f"{100 * f:.1f}%"


# ---------------------------------------------------------------- charts (inline SVG)

def bar_chart(title: str, groups: list[str], series: list[tuple[str, str, Mapping]], height: int = 220) -> str:
    """Grouped bars, values 0-1: one group per label, one bar per (name, color, {group: value})."""
    bw, gap, left, top, bottom = 18, 16, 40, 28, 70
    gw = bw * max(1, len(series)) + gap
    width = left + gw * max(1, len(groups)) + 20 + 120
    ph = height - top - bottom
    out = [f'<svg class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="600">{_e(title)}</text>']
    for t in (0, 0.25, 0.5, 0.75, 1):
        y = top + ph * (1 - t)
        out.append(f'<line x1="{left}" x2="{left + gw * len(groups)}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{t:g}</text>')
    for gi, g in enumerate(groups):
        x0 = left + gi * gw + gap / 2
        for si, (name, color, values) in enumerate(series):
            x, v = x0 + si * bw, _num(values.get(g)) if values else None
            if v is None:
                out.append(f'<text font-size="9" fill="#888" transform="translate({x + bw / 2 + 3:.1f},{top + ph - 3}) '
                           f'rotate(-90)"><title>{_e(name)} {_e(g)}: no checks</title>n/a</text>')
                continue
            h = ph * min(max(v, 0.0), 1.0)
            out.append(f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bw - 2}" height="{h:.1f}" fill="{color}">'
                       f'<title>{_e(name)} {_e(g)}: {_fmt(v)}</title></rect>')
        cx = x0 + bw * len(series) / 2
        out.append(f'<text font-size="11" text-anchor="end" transform="translate({cx:.1f},{top + ph + 12}) '
                   f'rotate(-40)">{_e(g)}</text>')
    lx = left + gw * len(groups) + 20
    for si, (name, color, _) in enumerate(series):
        out.append(f'<rect x="{lx}" y="{top + si * 18}" width="12" height="12" fill="{color}"/>'
                   f'<text x="{lx + 16}" y="{top + si * 18 + 10}" font-size="11">{_e(name)}</text>')
    return "".join(out) + "</svg>"


def line_chart(title: str, points, width: int = 420, height: int = 200) -> str:
    """A line plot of [(step, loss), ...] with the axes' ranges labelled."""
    pts = [(x, y) for x, y in ((_num(p[0]), _num(p[1])) for p in points if len(p) >= 2)
           if x is not None and y is not None]
    out = [f'<svg class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
           f'<text x="50" y="16" font-size="13" font-weight="600">{_e(title)}</text>']
    left, right, top, bottom = 50, 10, 26, 30
    if not pts:
        return "".join(out) + '<text x="50" y="60" font-size="12" fill="#888">no points</text></svg>'
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - left - right) / ((x1 - x0) or 1)
    sy = (height - top - bottom) / ((y1 - y0) or 1)
    coords = " ".join(f"{left + (x - x0) * sx:.1f},{height - bottom - (y - y0) * sy:.1f}" for x, y in pts)
    out.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
               f'fill="none" stroke="#ccc"/><polyline points="{coords}" fill="none" stroke="{CANDIDATE_COLOR}" '
               f'stroke-width="1.5"/>')
    for y, v in ((top + 4, y1), (height - bottom, y0)):
        out.append(f'<text x="{left - 4}" y="{y + 4}" font-size="10" text-anchor="end">{v:.4g}</text>')
    out.append(f'<text x="{left}" y="{height - bottom + 14}" font-size="10">{x0:g}</text>'
               f'<text x="{width - right}" y="{height - bottom + 14}" font-size="10" text-anchor="end">{x1:g}</text>'
               f'<text x="{(left + width) / 2}" y="{height - 4}" font-size="10" text-anchor="middle">step '
               f'({len(pts)} points, last {ys[-1]:.4g})</text>')
    return "".join(out) + "</svg>"


# ---------------------------------------------------------------- pieces

def _inside(path_value, root: Path) -> Path | None:
    """The file a results entry names, resolved (symlinks followed), when it lies inside the evaluated
    folder `root`; None for a path that leaves it (`..`, an absolute path elsewhere, a symlink out)."""
    try:
        base = root.resolve()
        path = (base / str(path_value)).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
        return None
    return path if path.is_relative_to(base) else None


def _media(path_value, root: Path, label: str) -> str:
    """The video (or still) a results entry names, inline; only files inside `root` are embedded: a
    results file is user input, and the page must not carry /etc/passwd or ../secret.mp4 along."""
    if not path_value:
        return f'<div class="missing">{_e(label)}: no video</div>'
    path = _inside(path_value, root)
    if path is None:
        return (f'<div class="missing refused">{_e(label)}: refused {_e(path_value)} (outside the evaluated '
                f'folder; only files inside it are embedded)</div>')
    try:
        data = path.read_bytes()
    except OSError as e:
        return f'<div class="missing">{_e(label)}: cannot read {_e(path_value)} ({_e(e.strerror or e)})</div>'
    mime = _MIME.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "video/mp4"
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    if mime.startswith("image/"):
        return f'<img class="still" alt="{_e(label)}" title="{_e(path_value)}" src="{uri}">'
    return (f'<video muted loop autoplay playsinline controls preload="auto" data-src="{_e(path_value)}" '
            f'title="{_e(label)}: {_e(path_value)}" src="{uri}"></video>')


def _checks_html(video: Mapping) -> str:
    items = []
    for c in video.get("checks") or []:
        obj = c.get("object")
        what = _e(c.get("category")) + (f"[{_e(obj)}]" if obj is not None else "")
        if c.get("pass") is True:
            items.append(f'<li class="ok">✓ {what}: {_e(c.get("expected"))}</li>')
        else:
            cls, mark = ("bad", "✗") if c.get("pass") is False else ("unk", "?")
            observed = c.get("observed")
            items.append(f'<li class="{cls}">{mark} {what}: {_e(c.get("expected"))} → '
                         f'{_e("—" if observed is None else observed)}</li>')
    return f'<ul class="checks">{"".join(items)}</ul>' if items else ""


def _scores_html(video: Mapping) -> str:
    parts = [f"{_e(k)} {_fmt(video.get(k))}" for k in ("flicker", "color_noise") if video.get(k) is not None]
    parts += [f"{_e(k)} {_fmt(v)}" for k, v in (video.get("user_metrics") or {}).items()]
    return f'<div class="small">{" · ".join(parts)}</div>' if parts else ""


def _verdict(video: Mapping) -> str:
    if video.get("passed") is True:
        return '<span class="ok">✓ passed</span>'
    if video.get("passed") is False:
        return '<span class="bad">✗ failed</span>'
    return ""


def _cell(video: Mapping, base: Mapping | None, root: Path) -> str:
    vid = video.get("id", "")
    head = " · ".join(_e(x) for x in (vid, video.get("lang"), f"seed {video.get('seed')}" if "seed" in video else None)
                      if x)
    if base is not None:
        media = (f'<div class="pair"><figure>{_media(video.get("video"), root, f"{vid} candidate")}'
                 f'<figcaption>candidate {_verdict(video)}</figcaption></figure>'
                 f'<figure>{_media(base.get("video"), root, f"{vid} baseline")}'
                 f'<figcaption>baseline {_verdict(base)}</figcaption></figure></div>')
    else:
        media = _media(video.get("video"), root, str(vid))
    out = [f'<div class="cell" id="v-{_e(vid)}">{media}<div class="prompt">{_e(video.get("prompt"))}</div>',
           f'<div class="small">{head} {"" if base is not None else _verdict(video)}</div>',
           _checks_html(video), _scores_html(video)]
    if base is not None and (base.get("checks") or base.get("user_metrics")):
        out.append(f'<details><summary class="small">baseline checks</summary>{_checks_html(base)}'
                   f'{_scores_html(base)}</details>')
    return "".join(out) + "</div>"


def _ordered_categories(videos: list[Mapping]) -> list[str]:
    seen = list(dict.fromkeys(str(v.get("category") or "uncategorized") for v in videos))
    known = [c for c in (*CATEGORIES, *OFFICIAL_CATEGORIES) if c in seen]
    return known + [c for c in seen if c not in known]


def _mean(values) -> float | None:
    vals = [f for f in (_num(v) for v in values) if f is not None]
    return sum(vals) / len(vals) if vals else None


def _metric_means(summary: Mapping, videos: list[Mapping]) -> dict[str, float | None]:
    given = summary.get("user_metrics")
    if given:
        return dict(given)
    names = list(dict.fromkeys(k for v in videos for k in (v.get("user_metrics") or {})))
    return {k: _mean((v.get("user_metrics") or {}).get(k) for v in videos) for k in names}


def _tile(label: str, value: str, base: str | None = None) -> str:
    """A figure: `label` is escaped here; `value` and `base` are markup, already escaped or formatted."""
    extra = f"<small>baseline {base}</small>" if base is not None else ""
    return f'<div class="tile">{_e(label)}<b>{value}</b>{extra}</div>'


def _header(results: Mapping, title: str, gallery: bool) -> str:
    s, settings = results.get("summary") or {}, results.get("settings") or {}
    baseline = results.get("baseline") or None
    bs = (baseline or {}).get("summary") or {}
    b = (lambda v: v) if baseline else (lambda v: None)
    videos = results.get("videos") or []
    meta = [f"model <b>{_e(results.get('model', '?'))}</b>", f"date {_e(results.get('created', '?'))}"]
    if results.get("git_commit"):
        meta.append(f"commit <code>{_e(str(results['git_commit'])[:12])}</code>")
    if baseline:
        meta.append(f"baseline <b>{_e(baseline.get('model', '?'))}</b>")
    n_base = bs.get("videos", len((baseline or {}).get("videos") or []))
    tiles = [_tile("videos", _e(s.get("videos", len(videos))), b(_e(n_base)))]
    if gallery:
        tiles.append(_tile("accuracy", "not judged"))
    else:
        tiles.append(_tile("overall accuracy", _pct(s.get("overall")), b(_pct(bs.get("overall")))))
        tiles.append(_tile("bilingual consistency", _pct(s.get("consistency")), b(_pct(bs.get("consistency")))))
    tiles.append(_tile(f"mean flicker ({s.get('flicker_videos', '?')} videos with an object)",
                       _fmt(s.get("flicker")), b(_fmt(bs.get("flicker")))))
    tiles.append(_tile("mean color noise", _fmt(s.get("color_noise")), b(_fmt(bs.get("color_noise")))))
    base_means = _metric_means(bs, (baseline or {}).get("videos") or [])
    for k, v in _metric_means(s, videos).items():
        tiles.append(_tile(f"{k} (mean)", _fmt(v), b(_fmt(base_means.get(k)))))
    sets = " · ".join(f"{_e(k)} {_e(v)}" for k, v in settings.items())
    return (f"<header><h1>{_e(title)}</h1><div class='meta'>{' · '.join(meta)}</div>"
            f"<div class='meta'>settings: {sets or 'n/a'}</div><div class='tiles'>{''.join(tiles)}</div></header>")


def _accuracy_section(results: Mapping, categories: list[str]) -> str:
    s = results.get("summary") or {}
    baseline = results.get("baseline") or None
    bs = (baseline or {}).get("summary") or {}
    cats = list(dict.fromkeys([c for c in CATEGORIES if c in (s.get("categories") or {})]
                              + list(s.get("categories") or {}) + [c for c in categories if c in CATEGORIES]))
    series = [("candidate", CANDIDATE_COLOR, s.get("categories") or {})]
    if baseline:
        series.append(("baseline", BASELINE_COLOR, bs.get("categories") or {}))
    charts = [bar_chart("Accuracy per category", cats, series)]
    langs = list(dict.fromkeys(["en", "zh"] + list(s.get("languages") or {})))
    lseries = [("candidate", CANDIDATE_COLOR, s.get("languages") or {})]
    if baseline:
        lseries.append(("baseline", BASELINE_COLOR, bs.get("languages") or {}))
    charts.append(bar_chart("Accuracy per language", langs, lseries))
    lc = s.get("language_categories") or {}
    if lc:
        charts.append(bar_chart("Accuracy per language and category", cats,
                                [(lang, LANG_COLORS.get(lang, "#8c564b"), vals or {}) for lang, vals in lc.items()]))
    head = "<tr><th>category</th><th>checks</th><th>candidate</th>" + (
        "<th>baseline</th><th>Δ</th>" if baseline else "") + "</tr>"
    rows = []
    for c in cats:
        cand, base = _num((s.get("categories") or {}).get(c)), _num((bs.get("categories") or {}).get(c))
        row = f"<tr><td>{_e(c)}</td><td>{_e((s.get('checks') or {}).get(c, ''))}</td><td>{_pct(cand)}</td>"
        if baseline:
            delta = "n/a" if cand is None or base is None else f"{100 * (cand - base):+.1f}"
            row += f"<td>{_pct(base)}</td><td>{delta}</td>"
        rows.append(row + "</tr>")
    return (f"<section id='accuracy'><h2>Accuracy</h2><div class='charts'>{''.join(charts)}</div>"
            f"<table>{head}{''.join(rows)}</table></section>")


def _gallery_table(videos: list[Mapping], categories: list[str]) -> str:
    names = list(dict.fromkeys(k for v in videos for k in (v.get("user_metrics") or {})))
    head = "<tr><th>category</th><th>videos</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    rows = []
    for c in categories:
        vs = [v for v in videos if str(v.get("category") or "uncategorized") == c]
        means = "".join(f"<td>{_fmt(_mean((v.get('user_metrics') or {}).get(n) for v in vs))}</td>" for n in names)
        rows.append(f"<tr><td>{_e(c)}</td><td>{len(vs)}</td>{means}</tr>")
    return (f"<section id='accuracy'><h2>Gallery</h2><p>Accuracy: not judged (these prompts carry no checks); "
            f"user metrics per category:</p><table>{head}{''.join(rows)}</table></section>")


def _preference_section(pref: Mapping) -> str:
    """Video-DPO against its SFT parent on the same prompts and seeds: the reward win rate with its
    interval, the artifact scores, and the DPO training curves."""
    w, c = pref.get("win_rate") or {}, pref.get("win_rate_by_checks") or {}
    tiles = [_tile("DPO wins by the reward", _pct(w.get("win_rate")) + f" ({_pct(w.get('ci_low'))}–"
                   f"{_pct(w.get('ci_high'))})"),
             _tile("wins / ties / losses", " / ".join(_e(w.get(k, "?")) for k in ("wins", "ties", "losses"))),
             _tile("where the checks decide", _pct(c.get("win_rate")) + f" of {_e(c.get('n', '?'))}"),
             _tile("mean reward", _fmt(pref.get("reward_candidate")), _fmt(pref.get("reward_baseline"))),
             _tile(f"mean flicker (over {pref.get('flicker_videos_candidate', '?')} / "
                   f"{pref.get('flicker_videos_baseline', '?')} videos with an object)",
                   _fmt(pref.get("flicker_candidate")), _fmt(pref.get("flicker_baseline"))),
             _tile("mean color noise", _fmt(pref.get("color_noise_candidate")), _fmt(pref.get("color_noise_baseline")))]
    for key, label in (("flicker_change", "flicker change (videos where both show an object)"),
                       ("color_noise_change", "color noise change")):
        ch = pref.get(key)
        if ch:  # DPO - SFT per video: mean [95% bootstrap interval], videos up / down / equal
            tiles.append(_tile(label, f"{_fmt(ch.get('mean'))} [{_fmt(ch.get('ci_low'))}, {_fmt(ch.get('ci_high'))}]"
                                      f" · {_e(ch.get('up', '?'))} up / {_e(ch.get('down', '?'))} down / "
                                      f"{_e(ch.get('equal', '?'))} ="))
    curves = pref.get("curves") or {}
    plots = "".join(line_chart(f"DPO: {name}", [[i + 1, v] for i, v in enumerate(vals) if v == v])
                    for name, vals in curves.items())
    return (f"<section id='preference'><h2>Video-DPO vs SFT</h2><p class='small'>the DPO model against its SFT "
            f"parent (the baseline) on the same prompts and seeds; reward weights {_e(pref.get('weights'))}; 95% "
            f"Wilson interval</p><div class='tiles'>{''.join(tiles)}</div><div class='charts'>{plots}</div></section>")


def _promotion_section(promotion: Mapping) -> str:
    """The promote stage's decision: the verdict, then every gate with both figures and its limit."""
    d = promotion.get("decision") or {}
    rows = "".join(f"<tr><td>{_e(g.get('gate'))}</td><td>{_fmt(g.get('candidate'), 4)}</td>"
                   f"<td>{_fmt(g.get('champion'), 4)}</td><td>{_fmt(g.get('limit'), 4)}</td>"
                   f"<td class='{'ok' if g.get('passed') else 'bad'}'>{'pass' if g.get('passed') else 'FAIL'}</td></tr>"
                   for g in d.get("gates") or [])
    reasons = "".join(f"<li>{_e(r)}</li>" for r in d.get("reasons") or [])
    champ = promotion.get("champion")
    against = f"against champion version {_e(champ)}" if champ else "no champion yet: the first-model minimums"
    return (f"<section id='promotion'><h2>Promotion: {_e(d.get('outcome', 'no decision'))}</h2>"
            f"<p class='small'>{_e(promotion.get('candidate'))} {against}</p>"
            f"<table><tr><th>gate</th><th>candidate</th><th>champion</th><th>limit</th><th></th></tr>{rows}</table>"
            + (f"<ul>{reasons}</ul>" if reasons else "") + "</section>")


# ---------------------------------------------------------------- the page

def render_report(results: Mapping, root: str | os.PathLike, title: str | None = None) -> str:
    """The report page as a string (see the module docstring); video paths resolve against root."""
    root = Path(root)
    videos = list(results.get("videos") or [])
    summary = results.get("summary") or {}
    baseline = results.get("baseline") or None
    base_by_id = {v.get("id"): v for v in (baseline or {}).get("videos") or []}
    gallery = not summary.get("categories") and not any(v.get("checks") for v in videos)
    title = title or f"Evaluation: {results.get('model', 'unknown model')}"
    categories = _ordered_categories(videos)
    body = [_header(results, title, gallery)]
    if results.get("promotion"):  # the promote stage's copy of the page leads with its decision
        body.append(_promotion_section(results["promotion"]))
    body.append(_gallery_table(videos, categories) if gallery else _accuracy_section(results, categories))
    nav = " · ".join(f'<a href="#cat-{_e(c)}">{_e(c)}</a>' for c in categories)
    body.append(f"<section id='videos'><h2>Videos</h2><p class='small'>{nav} — videos loaded: "
                f"<span id='videos-loaded'>0</span> / <span id='videos-total'>?</span></p>")
    n_media = 0
    for c in categories:
        vs = [v for v in videos if str(v.get("category") or "uncategorized") == c]
        acc = (summary.get("categories") or {}).get(c)
        label = f"{len(vs)} videos" + ("" if gallery or c not in (summary.get("categories") or {}) else
                                       f", accuracy {_pct(acc)}")
        cells = []
        for v in vs:
            base = base_by_id.get(v.get("id")) if baseline else None
            n_media += 1 + (base is not None)
            cells.append(_cell(v, base, root))
        body.append(f"<h3 id='cat-{_e(c)}'>{_e(c)} <span class='small'>({_e(label)})</span></h3>"
                    f"<div class='grid'>{''.join(cells)}</div>")
    body.append("</section>")
    pref = results.get("preference")
    if pref:
        body.append(_preference_section(pref))
    curves = results.get("loss_curves") or {}
    if curves:
        plots = "".join(line_chart(f"loss: {stage}", pts or []) for stage, pts in curves.items())
        body.append(f"<section id='loss'><h2>Loss curves</h2><div class='charts'>{plots}</div></section>")
    page = "".join(body).replace("<span id='videos-total'>?</span>", f"<span id='videos-total'>{n_media}</span>", 1)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{CSS}</style></head>"
            f"<body>{page}<script>{SCRIPT}</script></body></html>\n")


def write_report(results: dict, root: Path, out: Path | None = None, title: str | None = None) -> Path:
    """Write the report for `results` (the scorer's results dict) as one self-contained HTML file;
    video paths are relative to `root` (or absolute). Default out: root / "report.html". Atomic:
    a temporary file beside it, then os.replace. Returns the path written."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report.html"
    return atomic_write_text(out, render_report(results, root, title))
