"""The gate's decision as one self-contained HTML page: verdict, reasons, table and plots.

Plots are drawn with matplotlib's Agg canvas on `Figure` objects (no pyplot, no global state, safe
in a worker thread) and inlined as base64 PNG data URIs, so the page has no external references and
can be logged as a single MLflow artifact or opened from S3.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

CANDIDATE_COLOR = "#1f77b4"
CHAMPION_COLOR = "#ff7f0e"
FAIL_COLOR = "#c0392b"
PASS_COLOR = "#1e8449"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;max-width:1200px}
h1{margin-bottom:.2rem} .verdict{display:inline-block;padding:.3rem .8rem;border-radius:.3rem;color:#fff;
font-weight:600} .pass{background:#1e8449} .fail{background:#c0392b}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem} th,td{border:1px solid #ccc;padding:.3rem .6rem;
text-align:right} th{background:#f4f4f4} td.name{text-align:left;font-family:monospace}
td.bad{color:#c0392b;font-weight:600} td.good{color:#1e8449} dl{display:grid;grid-template-columns:max-content auto;
gap:.2rem 1rem} dt{font-weight:600} pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:.8rem}
img{max-width:100%;height:auto}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _values(scores: Iterable[Mapping[str, Any]] | None, metric: str) -> list[float]:
    out = []
    for row in scores or ():
        v = row.get(metric)
        if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def distribution_figure(decision: Mapping[str, Any], candidate, champion):
    """One histogram per metric: candidate vs champion scores, with the floor and both means."""
    import numpy as np
    from matplotlib.figure import Figure

    names = list(decision["metrics"])
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes, names, strict=False):
        m = decision["metrics"][name]
        cand, champ = _values(candidate, name), _values(champion, name)
        both = cand + champ
        if not both:
            ax.text(0.5, 0.5, "not scored", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=9)
            continue
        low, high = min(both + [0.0]), max(both + [1.0])
        bins = np.linspace(low, high, 21)
        if champ:
            ax.hist(champ, bins=bins, alpha=0.5, color=CHAMPION_COLOR, label=f"champion (n={len(champ)})")
        if cand:
            ax.hist(cand, bins=bins, alpha=0.5, color=CANDIDATE_COLOR, label=f"candidate (n={len(cand)})")
        if m.get("candidate_mean") is not None:
            ax.axvline(m["candidate_mean"], color=CANDIDATE_COLOR, linestyle="-", linewidth=1.5)
        if m.get("champion_mean") is not None:
            ax.axvline(m["champion_mean"], color=CHAMPION_COLOR, linestyle="-", linewidth=1.5)
        if m.get("floor") is not None:
            ax.axvline(m["floor"], color=FAIL_COLOR, linestyle="--", linewidth=1.2, label=f"floor {m['floor']:g}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return fig


def forest_figure(decision: Mapping[str, Any]):
    """Paired mean difference (candidate - champion) per metric with its bootstrap interval."""
    from matplotlib.figure import Figure

    rows = [(n, m) for n, m in decision["metrics"].items() if m.get("ci_low") is not None]
    fig = Figure(figsize=(7.5, 0.55 * max(len(rows), 1) + 1.4), layout="constrained")
    ax = fig.subplots()
    if not rows:
        ax.text(0.5, 0.5, "no champion comparison", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    conf = decision.get("policy", {}).get("confidence", 0.95)
    for y, (_name, m) in enumerate(rows):
        color = FAIL_COLOR if m.get("regressed") else PASS_COLOR
        ax.plot([m["ci_low"], m["ci_high"]], [y, y], color=color, linewidth=2.5)
        ax.plot([m["delta"]], [y], "o", color=color, markersize=7)
        margin = m.get("margin") or 0.0
        if margin:
            ax.plot([-margin], [y], "|", color="#555", markersize=14)
    ax.axvline(0.0, color="#555", linewidth=1)
    ax.set_yticks(range(len(rows)), [n for n, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"candidate - champion (paired mean, {conf:.0%} bootstrap CI; | marks -margin)", fontsize=8)
    ax.set_title("Difference from the champion", fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    return fig


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec)
    return html.escape(str(value))


def _table(decision: Mapping[str, Any]) -> str:
    head = ("metric", "candidate mean", "champion mean", "delta", "CI low", "CI high", "floor", "floor ok",
            "regressed", "pairs", "dropped", "status")
    out = ["<table id='decision-table'><thead><tr>", *(f"<th>{h}</th>" for h in head), "</tr></thead><tbody>"]
    for name, m in decision["metrics"].items():
        if not m.get("gated", True):
            status, cls = "skipped", ""
        elif m.get("floor_ok") is False or m.get("regressed") or (
                decision.get("champion_present") and m.get("ci_low") is None):
            status, cls = "fail", "bad"
        else:
            status, cls = "pass", "good"
        out.append("<tr>")
        out.append(f"<td class='name'>{html.escape(name)}</td>")
        for key in ("candidate_mean", "champion_mean"):
            out.append(f"<td>{_fmt(m.get(key))}</td>")
        for key in ("delta", "ci_low", "ci_high"):
            out.append(f"<td>{_fmt(m.get(key), '+.4f')}</td>")
        out.append(f"<td>{_fmt(m.get('floor'), 'g')}</td>")
        floor_cls = "bad" if m.get("floor_ok") is False else ""
        out.append(f"<td class='{floor_cls}'>{_fmt(m.get('floor_ok'))}</td>")
        out.append(f"<td class='{'bad' if m.get('regressed') else ''}'>{_fmt(m.get('regressed'))}</td>")
        out.append(f"<td>{_fmt(m.get('n_pairs'))}</td><td>{_fmt(m.get('n_dropped'))}</td>")
        out.append(f"<td class='{cls}'>{status}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _items(title: str, items: list[str], element_id: str) -> str:
    if not items:
        return f"<h2>{title}</h2><p id='{element_id}'>none</p>"
    lis = "".join(f"<li>{html.escape(str(i))}</li>" for i in items)
    return f"<h2>{title}</h2><ul id='{element_id}'>{lis}</ul>"


def render_html(decision: Mapping[str, Any], candidate: Iterable[Mapping[str, Any]],
                champion: Iterable[Mapping[str, Any]] | None, *, title: str = "Evaluation gate",
                context: Mapping[str, Any] | None = None) -> str:
    """The decision report as a self-contained HTML document (inline CSS and PNG plots).

    `context` is shown as a key/value list at the top (model, dataset version, run ids...).
    """
    candidate = list(candidate)
    champion = list(champion) if champion is not None else None
    passed = bool(decision["passed"])
    verdict = "<span class='verdict pass'>PASSED</span>" if passed else "<span class='verdict fail'>REJECTED</span>"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{verdict} ",
        "compared with the champion" if decision.get("champion_present") else "no champion: floors only",
        f" &middot; {len(candidate)} candidate samples</p>",
    ]
    if context:
        parts.append("<dl id='context'>")
        for k, v in context.items():
            parts.append(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>")
        parts.append("</dl>")
    parts.append(_items("Reasons", list(decision.get("reasons") or []), "reasons"))
    parts.append("<h2>Metrics</h2>" + _table(decision))
    parts.append(_items("Notes", list(decision.get("notes") or []), "notes"))
    parts.append("<h2>Score distributions</h2>")
    parts.append(f"<img id='distributions' alt='score distributions' "
                 f"src='{_png(distribution_figure(decision, candidate, champion))}'>")
    parts.append("<h2>Difference from the champion</h2>")
    parts.append(f"<img id='forest' alt='paired differences with confidence intervals' "
                 f"src='{_png(forest_figure(decision))}'>")
    parts.append("<h2>Policy</h2><pre id='policy'>"
                 + html.escape(json.dumps(decision.get("policy", {}), indent=2, sort_keys=True, default=str))
                 + "</pre></body></html>")
    return "".join(parts)
