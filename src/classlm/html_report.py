"""One self-contained HTML page for an evaluation, a training run or a comparison of methods.

Inline CSS and inline SVG charts, no script, no font or image fetched: the file opens the same offline, attached to an
e-mail or from a CI artefact. It shows the headline metrics (several evaluations side by side: zero-shot and trained,
before and after temperature), each evaluation's per-class table, confusion matrix as a heat map, reliability
diagram and per-class calibration ratio, the training curves of ``metrics.jsonl`` rows, a comparison chart of
``classlm bench`` rows, the prompt and class tokens, and the model, method and command behind it.

Pure: stdlib only. Its inputs are plain data: :class:`~classlm.reports.EvalReport`, metrics rows, describe() dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from classlm.io import write_text_atomic
from classlm.reports import PER_CLASS_HEADER, EvalReport, logged_baseline, multi_label_tables, per_class_rows

__all__ = ["classifier_context", "render_html", "write_html"]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d232b;max-width:1080px;margin:24px auto;
padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2e8;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px}.sub{color:#5b6673;margin:0 0 16px}
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #dde2e8;padding:3px 8px;text-align:right}
th{background:#f3f5f8}td:first-child,th:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{border:1px solid #dde2e8;border-radius:6px;padding:8px 14px}
.card b{display:block;font-size:20px}.card span{color:#5b6673;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}figure{margin:0}
figcaption{color:#5b6673;font-size:12px;max-width:420px}pre{background:#f3f5f8;padding:8px;white-space:pre-wrap;
word-break:break-word;font-size:12px}code{font-size:12px}svg text{font-family:system-ui,sans-serif}
.note{border-left:4px solid #3b6fb6;background:#f3f5f8;padding:6px 10px;margin:8px 0}
.note.warn{border-color:#c8412c;background:#fbeeec}
"""
BLUE, RED, GREY = "#3b6fb6", "#c8412c", "#8a94a0"
SERIES = ("#3b6fb6", "#c8412c", "#2e8b57", "#b8860b", "#7b4fa0", "#1f8a99", "#a0522d", "#556b2f")
HEADLINE = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("nll", "NLL"), ("ece", "ECE"))
# A multi-label evaluation's headline: the same four places, its own metrics (no argmax accuracy, NLL or ECE).
MULTI_LABEL_HEADLINE = (("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("bce", "BCE"), ("per_class_ece_mean",
                        "per-class ECE"))  # fmt: skip


def _f(v: Any, fmt: str = ".3f") -> str:
    return "–" if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) else format(v, fmt)


def _t(x: Any) -> str:
    return escape(str(x), quote=True)


def _svg(w: int, h: int, body: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{_t(label)}">' + "".join(body) + "</svg>"
    )


def _axes(x0: int, y0: int, w: int, h: int, ymax: float, yticks: Sequence[float], ylabel: str) -> list[str]:
    """A y axis with ticks and grid lines over a plot box (x0, y0) top-left of w x h."""
    out = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#c5ccd4"/>']
    for t in yticks:
        y = y0 + h - h * t / ymax
        out.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef1f4"/>')
        out.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{t:g}</text>')
    out.append(
        f'<text x="12" y="{y0 + h / 2}" font-size="11" transform="rotate(-90 12 {y0 + h / 2})" '
        f'text-anchor="middle">{_t(ylabel)}</text>'
    )
    return out


def reliability_svg(bins: Sequence[Mapping[str, Any]], pooled: bool = False) -> str:
    """Accuracy per confidence bin (bars) against the diagonal, each bin's mean confidence (red) and count;
    ``pooled`` (multi-label): the share of (text, class) pairs with the label per probability bin."""
    x0, y0, s = 44, 12, 300
    what, unit = ("share with the label", "(text, class) pairs") if pooled else ("accuracy", "texts")
    out = _axes(x0, y0, s, s, 1.0, (0, 0.25, 0.5, 0.75, 1.0), what)
    out.append(f'<line x1="{x0}" y1="{y0 + s}" x2="{x0 + s}" y2="{y0}" stroke="{GREY}" stroke-dasharray="4 3"/>')
    for b in bins:
        if not b.get("count"):
            continue
        lo, hi, acc, conf = float(b["lo"]), float(b["hi"]), float(b.get("accuracy") or 0), b.get("confidence")
        x, w, hgt = x0 + lo * s, (hi - lo) * s, acc * s
        out.append(
            f'<rect x="{x:.1f}" y="{y0 + s - hgt:.1f}" width="{max(w - 1, 1):.1f}" height="{hgt:.1f}" '
            f'fill="{BLUE}" opacity="0.85"><title>{lo:.2f}–{hi:.2f}: {what} {acc:.3f}, {b["count"]} {unit}'
            "</title></rect>"
        )
        if conf is not None:
            cy = y0 + s - float(conf) * s
            out.append(
                f'<line x1="{x:.1f}" x2="{x + w:.1f}" y1="{cy:.1f}" y2="{cy:.1f}" stroke="{RED}" stroke-width="2"/>'
            )
        ty = max(y0 + s - hgt - 3, y0 + 10)
        out.append(f'<text x="{x + w / 2:.1f}" y="{ty:.1f}" font-size="9" text-anchor="middle">{b["count"]}</text>')
    for t in (0, 0.5, 1.0):
        out.append(f'<text x="{x0 + t * s:.1f}" y="{y0 + s + 14}" font-size="10" text-anchor="middle">{t:g}</text>')
    out.append(
        f'<text x="{x0 + s / 2}" y="{y0 + s + 30}" font-size="11" text-anchor="middle">'
        "confidence (top-class probability)</text>"
    )
    return _svg(x0 + s + 10, y0 + s + 38, out, "reliability diagram")


def confusion_svg(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """Heat map of the confusion matrix (rows: true, columns: predicted), shaded by each row's share, with counts."""
    k = len(classes)
    cell = max(14, min(40, 520 // max(k, 1)))
    short = [c if len(c) <= 16 else c[:15] + "…" for c in classes]
    pad = 8 + 7 * max(len(c) for c in short)
    out = []
    for i, row in enumerate(confusion):
        total = sum(row) or 1
        for j, n in enumerate(row):
            share = n / total
            x, y = pad + j * cell, pad + i * cell
            fill = f"rgba(59,111,182,{share:.3f})" if i != j else f"rgba(46,139,87,{share:.3f})"
            out.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff">'
                f"<title>true {_t(classes[i])}, predicted {_t(classes[j])}: {n} ({share:.0%} of the row)</title></rect>"
            )
            if n and cell >= 22:
                colour = "#fff" if share > 0.55 else "#1d232b"
                out.append(
                    f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" font-size="10" text-anchor="middle" '
                    f'fill="{colour}">{n}</text>'
                )
    for i, c in enumerate(short):
        mid = pad + i * cell + cell / 2
        out.append(f'<text x="{pad - 4}" y="{mid + 4}" font-size="10" text-anchor="end">{_t(c)}</text>')
        out.append(
            f'<text x="{mid}" y="{pad - 4}" font-size="10" transform="rotate(-45 {mid} {pad - 4})">{_t(c)}</text>'
        )
    # The column names lean up and to the right past the last column: room for them on the right.
    return _svg(pad + k * cell + pad, pad + k * cell + 10, out, "confusion matrix")


def ratio_svg(ratios: Mapping[str, float | None]) -> str:
    """Each class's calibration ratio sum(p)/sum(y) as a bar from 1 (the calibrated value), on a log scale."""
    names = list(ratios)
    row, label_w, w = 18, 8 + 7 * min(24, max((len(n) for n in names), default=4)), 300
    span = max([abs(math.log2(v)) for v in ratios.values() if v and v > 0] + [1.0])
    mid = label_w + w / 2
    out = [f'<line x1="{mid}" x2="{mid}" y1="0" y2="{row * len(names) + 4}" stroke="{GREY}"/>']
    for i, name in enumerate(names):
        v = ratios[name]
        y = i * row + 4
        out.append(f'<text x="{label_w - 4}" y="{y + 12}" font-size="10" text-anchor="end">{_t(name[:24])}</text>')
        if not v or v <= 0:
            out.append(f'<text x="{mid + 4}" y="{y + 12}" font-size="10">–</text>')
            continue
        d = math.log2(v) / span * (w / 2 - 30)
        x, colour = (mid, RED) if d >= 0 else (mid + d, BLUE)
        out.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{max(abs(d), 1):.1f}" height="{row - 6}" fill="{colour}"/>')
        tx = mid + d + (4 if d >= 0 else -4)
        anchor = "start" if d >= 0 else "end"
        out.append(f'<text x="{tx:.1f}" y="{y + 12}" font-size="10" text-anchor="{anchor}">{v:.2f}</text>')
    return _svg(label_w + w + 10, row * len(names) + 8, out, "calibration ratio per class")


def lines_svg(
    steps: Sequence[float], series: Mapping[str, Sequence[float | None]], ylabel: str, xlabel: str = "step"
) -> str:
    """Lines of ``series`` against ``steps`` (None: a gap), with a legend; y from 0 to at least 1."""
    x0, y0, w, h = 44, 12, 380, 200
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    ymax = max([1.0, *values])
    ymax = 1.0 if ymax <= 1.0 else float(math.ceil(ymax * 1.05))  # whole numbers: ticks read 0, 1.5, 3 …
    out = _axes(x0, y0, w, h, ymax, [ymax * t / 4 for t in range(5)], ylabel)
    lo, hi = (min(steps), max(steps)) if steps else (0, 1)
    span = (hi - lo) or 1

    def xy(s: float, v: float) -> str:
        return f"{x0 + (s - lo) / span * w:.1f},{y0 + h - v / ymax * h:.1f}"

    for n, (name, vs) in enumerate(series.items()):
        colour = SERIES[n % len(SERIES)]
        pts = [xy(s, v) for s, v in zip(steps, vs) if v is not None and math.isfinite(v)]
        if pts:
            out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="2"/>')
            out += [f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2.5" fill="{colour}"/>' for p in pts]
        ly = y0 + 14 + 14 * n
        out.append(f'<rect x="{x0 + w + 10}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x0 + w + 24}" y="{ly + 1}" font-size="11">{_t(name)}</text>')
    for s in (lo, hi):
        out.append(
            f'<text x="{xy(s, 0).split(",")[0]}" y="{y0 + h + 14}" font-size="10" text-anchor="middle">{s:g}</text>'
        )
    out.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 28}" font-size="11" text-anchor="middle">{_t(xlabel)}</text>')
    return _svg(x0 + w + 130, y0 + h + 36, out, ylabel)


def bars_svg(rows: Sequence[tuple[str, float | None]], label: str) -> str:
    """Horizontal bars, one per row (a method), scaled to the largest value."""
    row, label_w, w = 20, 8 + 7 * min(28, max((len(n) for n, _ in rows), default=4)), 300
    top = max([v for _, v in rows if v is not None and math.isfinite(v)] + [1e-9])
    out = []
    for i, (name, v) in enumerate(rows):
        y = i * row + 4
        out.append(f'<text x="{label_w - 4}" y="{y + 13}" font-size="11" text-anchor="end">{_t(name[:28])}</text>')
        if v is None or not math.isfinite(v):
            out.append(f'<text x="{label_w + 4}" y="{y + 13}" font-size="11">–</text>')
            continue
        bw = max(v / top * w, 1)
        out.append(f'<rect x="{label_w}" y="{y + 2}" width="{bw:.1f}" height="{row - 6}" fill="{BLUE}"/>')
        out.append(f'<text x="{label_w + bw + 4:.1f}" y="{y + 13}" font-size="11">{v:.3f}</text>')
    return _svg(label_w + w + 60, row * len(rows) + 8, out, label)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{_t(caption)}</figcaption></figure>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_t(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_t(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _evaluation(name: str, report: EvalReport) -> str:
    m = report.metrics
    parts = [f"<h2>{_t(name)}: {m.get('n', '?')} texts, {len(report.classes)} classes</h2>"]
    per_class = m.get("per_class") or {}
    if m.get("multi_label"):
        parts += [_table(header, rows) for header, rows in multi_label_tables(m, num=_f)]
    else:
        parts.append(_table(PER_CLASS_HEADER, per_class_rows(per_class, num=_f)))  # _f: NaN and missing read "–"
    charts = []
    confusion = m.get("confusion")
    if confusion and len(confusion) == len(report.classes):
        charts.append(
            _figure(
                confusion_svg(confusion, report.classes),
                "Confusion matrix: rows true, columns predicted; shade = share of the row (green: correct).",
            )
        )
    if m.get("reliability"):
        charts.append(
            _figure(
                reliability_svg(m["reliability"], pooled=bool(m.get("multi_label"))),
                "Reliability, pooled over every text and class: how often the label is there per probability bin "
                "(bars) against the diagonal; red = the bin's mean probability; numbers = (text, class) pairs per bin."
                if m.get("multi_label")
                else "Reliability: accuracy per confidence bin (bars) "
                "against the diagonal; red = the bin's mean confidence; numbers = texts per bin.",
            )
        )
    if per_class:
        ratios = {c: pc.get("calibration_ratio") for c, pc in per_class.items()}
        charts.append(
            _figure(
                ratio_svg(ratios),
                "Calibration ratio sum(p)/sum(y) per class: 1 is calibrated; red "
                "bars = probability mass above the class's share, blue = below (log scale).",
            )
        )
    oos = m.get("out_of_scope")
    if oos:
        scores = oos["scores"]
        covered = [r["coverage"] for r in next(iter(scores.values()))["coverage_curve"]]
        curves = {s: [r["accuracy"] for r in v["coverage_curve"]] for s, v in scores.items()}
        caption = (
            f"Out of scope ({oos['n_out_of_scope']} of {oos['n']} rows labelled {oos['label']}): accuracy over the "
            "rows answered when abstaining on those each score ranks most out of scope."
        )
        charts.append(_figure(lines_svg(covered, curves, "accuracy", xlabel="share answered"), caption))
        parts.append(f"<h3>Out of scope: {_t(oos['n_out_of_scope'])} rows labelled {_t(oos['label'])}</h3>")
        parts.append(_table(["score", "AUROC", "accuracy at 90% answered"],
                            [[s, _f(v["auroc"]), _f(v["accuracy_at_90"])] for s, v in scores.items()]))  # fmt: skip
    parts.append(f'<div class="charts">{"".join(charts)}</div>')
    return "".join(parts)


def _training(rows: Sequence[Mapping[str, Any]]) -> str:
    baseline = logged_baseline(rows)
    rows = [r for r in rows if isinstance(r.get("eval"), Mapping)]
    if not rows:
        return ""
    steps = [float(r["step"]) for r in rows]
    ev = [r["eval"] for r in rows]
    quality = {"accuracy": [e.get("accuracy") for e in ev], "macro-F1": [e.get("macro_f1") for e in ev]}
    if baseline is not None and baseline.get("macro_f1") is not None:  # a level line: it trains in one go
        quality["TF-IDF + LR macro-F1"] = [baseline["macro_f1"]] * len(steps)
    if any(e.get("class_mass") is not None for e in ev):
        quality["class mass"] = [e.get("class_mass") for e in ev]
    # No training loss before the first step (its row holds a placeholder 0).
    train_loss = [r.get("train_loss") if r.get("examples_seen") else None for r in rows]
    loss = {"eval NLL": [e.get("nll") for e in ev], "train loss": train_loss}
    return (
        '<h2>Training curves (held-out evaluation during training)</h2><div class="charts">'
        + _figure(
            lines_svg(steps, quality, "score"),
            "Accuracy and macro-F1 on the evaluation rows; class mass = "
            "the probability the whole vocabulary puts on the class tokens"
            + ("; TF-IDF + LR's macro-F1 on the same rows, trained on the same rows." if baseline else "."),
        )
        + _figure(
            lines_svg(steps, loss, "loss"),
            "Negative log-likelihood on the evaluation rows, and the mean training loss since the previous evaluation.",
        )
        + "</div>"
    )


def _comparison(rows: Sequence[Mapping[str, Any]]) -> str:
    names = [str(r.get("name", "?")) for r in rows]
    f1 = [(n, r.get("macro_f1")) for n, r in zip(names, rows)]
    nll = [(n, r.get("nll")) for n, r in zip(names, rows)]
    table = _table(
        ["method", "accuracy", "macro-F1", "NLL", "ECE", "note"],
        [
            [n, _f(r.get("accuracy")), _f(r.get("macro_f1")), _f(r.get("nll")), _f(r.get("ece")), r.get("note", "")]
            for n, r in zip(names, rows)
        ],
    )
    return (
        "<h2>Methods compared (after temperature)</h2>"
        + table
        + '<div class="charts">'
        + _figure(bars_svg(f1, "macro-F1"), "macro-F1 per method (higher is better).")
        + _figure(
            bars_svg(nll, "NLL"),
            "Negative log-likelihood per method (lower is better: it punishes confident mistakes).",
        )
        + "</div>"
    )


def _about(about: Mapping[str, Any], describe: Mapping[str, Any] | None, command: str | None) -> str:
    parts = ["<h2>Classifier and run</h2>", _table(["", ""], [[k, v] for k, v in about.items() if v is not None])]
    if describe and "answers" in describe:
        rows = [
            [c, repr(a), " ".join(t), " ".join(map(str, i))]
            for c, a, t, i in zip(
                describe.get("classes", describe["answers"]),
                describe["answers"],
                describe["tokens"],
                describe["token_ids"],
            )
        ]
        parts += ["<h3>Classes and their tokens</h3>", _table(["class", "answer", "tokens", "ids"], rows)]
    if describe and "prompt_head" in describe:
        prompt = f"{describe['prompt_head']}<text>{describe['prompt_tail']}"
        parts += ["<h3>The prompt (the text goes where &lt;text&gt; is)</h3>", f"<pre>{_t(prompt)}</pre>"]
    if command:
        parts += ["<h3>Command</h3>", f"<pre>{_t(command)}</pre>"]
    return "".join(parts)


def render_html(
    title: str,
    reports: Sequence[tuple[str, EvalReport]] = (),
    *,
    subtitle: str = "",
    training: Sequence[Mapping[str, Any]] | None = None,
    comparison: Sequence[Mapping[str, Any]] | None = None,
    about: Mapping[str, Any] | None = None,
    describe: Mapping[str, Any] | None = None,
    command: str | None = None,
    notes: Sequence[tuple[str, str]] = (),
) -> str:
    """The page as a string. ``reports``: named evaluations (the first is the headline; all get a headline row and
    their own section); ``training``: metrics.jsonl rows; ``comparison``: rows with name, accuracy, macro_f1, nll,
    ece, note; ``about``: model, method, temperature …; ``describe``: a method's describe() (class tokens, prompt);
    ``notes``: ``(level, text)`` boxes under the title, ``level`` ``"warn"`` or ``"info"``."""
    body = [f"<h1>{_t(title)}</h1>", f'<p class="sub">{_t(subtitle)}</p>' if subtitle else ""]
    body += [f'<p class="note{" warn" if level == "warn" else ""}">{_t(text)}</p>' for level, text in notes]
    if reports:
        first = reports[0][1].metrics
        headline = MULTI_LABEL_HEADLINE if first.get("multi_label") else HEADLINE
        cards = "".join(
            f'<div class="card"><b>{_f(first.get(k))}</b><span>{label}</span></div>' for k, label in headline
        )
        body.append(f'<div class="cards">{cards}</div>')
        extra = [("calibration ratio", "calibration_ratio_min", "calibration_ratio_max")]
        rows = [
            [
                name,
                *(_f(r.metrics.get(k)) for k, _ in headline),
                *(f"{_f(r.metrics.get(lo), '.2f')} – {_f(r.metrics.get(hi), '.2f')}" for _, lo, hi in extra),
            ]
            for name, r in reports
        ]
        body.append(_table(["evaluation", *(label for _, label in headline), "calibration ratio"], rows))
    if comparison:
        body.append(_comparison(comparison))
    if training:
        body.append(_training(training))
    body += [_evaluation(name, r) for name, r in reports]
    if about or describe or command:
        body.append(_about(about or {}, describe, command))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_t(title)}</title>'
        f"<style>{CSS}</style></head><body>" + "".join(body) + "</body></html>\n"
    )


def write_html(path: str | Path, title: str, reports: Sequence[tuple[str, EvalReport]] = (), **kw: Any) -> Path:
    """:func:`render_html` written to ``path`` atomically; returns the path."""
    return write_text_atomic(path, render_html(title, reports, **kw))


def classifier_context(clf: Any) -> dict[str, Any]:
    """``about`` and ``describe`` for :func:`render_html` from a fitted classifier (read by attribute: no import
    of the classifier here): model, method, scoring, temperature, dtype; class tokens and prompt where it has them."""
    run = clf.run_info() if callable(getattr(clf, "run_info", None)) else {}
    about = {
        "model": getattr(clf, "model", None),
        "method": getattr(clf, "method", None),
        "scoring": getattr(clf, "scoring_", getattr(clf, "scoring", None)),  # resolved where there is one
        "temperature": _f(getattr(clf, "temperature_", None)),
        "dtype": (run.get("dtype") or {}).get("dtype"),
        "classes": ", ".join(map(str, getattr(clf, "classes_", []))),
    }
    method = getattr(clf, "method_", None)
    describe = dict(method.describe()) if method is not None and callable(getattr(method, "describe", None)) else {}
    describe["classes"] = [str(c) for c in getattr(clf, "classes_", [])]
    return {"about": about, "describe": describe}
