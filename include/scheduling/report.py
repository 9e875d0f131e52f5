"""The per-window report: JSON for machines, HTML with an inline SVG chart for people.

No plotting dependency: the chart (estimated vs actual GPU-hours per admitted request) is a few
SVG rectangles, so the report renders the same in the Airflow image and here.
"""

from __future__ import annotations

import html
import json
from typing import Any


def build(records: list[dict[str, Any]], window: str | None, closes: str | None,
          cleanup: dict[str, Any] | None) -> dict[str, Any]:
    """Admitted (in this window), waiting and refused (since it opened) requests, with the totals."""
    since = window or ""

    def row(r: dict[str, Any]) -> dict[str, Any]:
        q = r["request"]
        actual = r.get("actual") or {}
        return {"id": q["id"], "pool": q["pool"], "state": r["state"], "priority": q["priority"], "gpus": q["gpus"],
                "estimated_gpu_hours": q["gpu_hours"], "estimated_cost_usd": q["cost_usd"],
                "actual_gpu_hours": actual.get("gpu_hours"), "actual_cost_usd": actual.get("cost_usd"),
                "reason": r.get("waiting_reason") or (r["history"][-1][2] if r.get("history") else ""),
                "stops": r.get("stops", 0)}

    admitted = [row(r) for r in records if r.get("window_opened") and r["window_opened"] == window]
    waiting = [row(r) for r in records if r["state"] == "waiting"]
    refused = [row(r) for r in records if r["state"] == "refused" and (r.get("refused_at") or "") >= since]
    measured = [a for a in admitted if a["actual_gpu_hours"] is not None]
    totals = {
        "estimated_gpu_hours": round(sum(a["estimated_gpu_hours"] for a in admitted), 4),
        "estimated_cost_usd": round(sum(a["estimated_cost_usd"] for a in admitted), 2),
        "actual_gpu_hours": round(sum(a["actual_gpu_hours"] for a in measured), 4),
        "actual_cost_usd": round(sum(a["actual_cost_usd"] or 0 for a in measured), 2),
        "measured_runs": len(measured),
    }
    cleanup = cleanup or {}
    return {"window": window, "closes": closes, "admitted": admitted, "waiting": waiting, "refused": refused,
            "totals": totals, "cleanup": cleanup.get("freed"), "cleanup_summary": cleanup.get("summary")}


def svg_chart(admitted: list[dict[str, Any]], width: int = 560, bar_h: int = 14) -> str:
    """Horizontal bars: estimated (grey) and actual (blue) GPU-hours per admitted request."""
    if not admitted:
        return "<p>No request admitted in this window.</p>"
    top = max(max(a["estimated_gpu_hours"], a["actual_gpu_hours"] or 0) for a in admitted) or 1.0
    label_w, rows = 150, []
    scale = (width - label_w - 70) / top
    for i, a in enumerate(admitted):
        y = 10 + i * (2 * bar_h + 10)
        est, act = a["estimated_gpu_hours"], a["actual_gpu_hours"]
        rows.append(f'<text x="0" y="{y + bar_h}" font-size="11">{html.escape(a["id"])}</text>')
        rows.append(f'<rect x="{label_w}" y="{y}" width="{est * scale:.1f}" height="{bar_h}" fill="#bbb">'
                    f'<title>estimated {est} GPU-h</title></rect>')
        rows.append(f'<text x="{label_w + est * scale + 4:.1f}" y="{y + 11}" font-size="10">est {est:g}</text>')
        if act is not None:
            rows.append(f'<rect x="{label_w}" y="{y + bar_h}" width="{act * scale:.1f}" height="{bar_h}" '
                        f'fill="#3b78c4"><title>actual {act} GPU-h</title></rect>')
            rows.append(f'<text x="{label_w + act * scale + 4:.1f}" y="{y + bar_h + 11}" font-size="10">'
                        f'actual {act:g}</text>')
    height = 20 + len(admitted) * (2 * bar_h + 10)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="GPU-hours, estimated vs actual">{"".join(rows)}</svg>')


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: dict[str, Any]) -> str:
    cols = ("id", "pool", "state", "priority", "gpus", "estimated_gpu_hours", "estimated_cost_usd",
            "actual_gpu_hours", "actual_cost_usd", "stops", "reason")
    t = report["totals"]
    window, closes = html.escape(str(report["window"])), html.escape(str(report["closes"]))
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Off-hours window {window}</title>
<style>{style}</style></head><body>
<h1>Off-hours window {window}</h1>
<p>Closes {closes}. Estimated {t['estimated_gpu_hours']} GPU-h, ${t['estimated_cost_usd']:,.2f};
actual {t['actual_gpu_hours']} GPU-h, ${t['actual_cost_usd']:,.2f} over {t['measured_runs']} measured runs.</p>
<h2>GPU-hours, estimated vs actual</h2>{svg_chart(report['admitted'])}
<h2>Admitted</h2>{_table(report['admitted'], cols)}
<h2>Waiting</h2>{_table(report['waiting'], cols)}
<h2>Refused</h2>{_table(report['refused'], cols)}
<h2>Cleanup</h2><p>{html.escape(str(report.get('cleanup_summary') or 'no cleanup in this window yet'))}</p>
</body></html>"""


def write(report: dict[str, Any], settings) -> dict[str, str]:
    """<data_root>/offhours/reports/<window>/report.{json,html}; rewritten on each tick of the window."""
    from include.storage.objectstore import storage_path

    key = (report["window"] or "no-window").replace(":", "").replace("+", "Z")
    base = f"{settings.data_root}/offhours/reports/{key}"
    out = storage_path(base)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_bytes(json.dumps(report, indent=2, sort_keys=True).encode())
    (out / "report.html").write_bytes(render_html(report).encode())
    return {"json": f"{base}/report.json", "html": f"{base}/report.html"}
