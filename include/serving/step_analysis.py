"""One step's analysis around the trigger: build the AnalysisRun, measure, judge the step.

The trigger (plugins/llmops_operators/canary.py) only schedules: it asks the `AnalysisRun` what is
due, calls `measure` (a Prometheus query through the platform's metrics client) and records. Before it starts,
`start` builds the run from the policy and the route's analysis start; after it ends, `verdict`
turns the run and the quality probe's result (include/lifecycle/probe.py, run by
include/lifecycle/rollout.py, which also records the step table) into what happens next: next
step, promote, abort or ask a person.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.serving import analysis as an
from include.serving.metrics import MetricsError, PrometheusClient

NEXT, PROMOTE, ABORT, ASK = "next", "promote", "abort", "inconclusive"


def start(plan: Mapping[str, Any], policy: Mapping[str, Any], weight: int, started_at: float) -> an.AnalysisRun:
    return an.AnalysisRun(an.for_step(an.metrics(policy), weight), started_at=started_at)


def measure(run: an.AnalysisRun, metric: an.Metric, plan: Mapping[str, Any], at: float,
            metrics: PrometheusClient) -> an.Measurement:
    """Query one metric and record its outcome (an unreachable Prometheus or bad query is an Error)."""
    canary = plan["canary"]["service"]
    stable = (plan["stable"] or {}).get("service", "")
    try:
        value = metrics.scalar(metric.promql(canary, stable))
    except MetricsError as exc:
        return run.record(metric.name, at, error=str(exc)[:300])
    return run.record(metric.name, at, value)


def verdict(plan: Mapping[str, Any], index: int, run_data: Mapping[str, Any],
            probe: Mapping[str, Any] | None) -> dict[str, Any]:
    """The step's verdict and table: {"decision", "reason", "table", "rows", "phase"}.

    `probe` is the quality probe's result, or None when it did not run (the analysis failed first).
    """
    run = an.AnalysisRun.from_dict(run_data)
    weight = plan["steps"][index]
    phase = run.phase
    result = probe
    rows = an.step_table(weight, run, result)
    table = an.format_table(rows)
    reason = ""
    if phase in (an.FAILED, an.ERROR):
        bad = [m for m in run.measurements if m.phase == phase]
        last = bad[-1] if bad else None
        reason = f"step {index + 1} ({weight} %): {last.metric if last else '?'} {phase}"
        if last is not None:
            value = "no value" if last.value is None else f"value {last.value:.4g}"
            reason += f" ({value}{', ' + last.message if last.message else ''})"
        decision = ABORT
    elif phase == an.INCONCLUSIVE:
        decision, reason = ASK, f"step {index + 1} ({weight} %): inconclusive (no data or between conditions)"
    elif result is not None and result["phase"] in (an.FAILED, an.ERROR):
        failed = [k for k, v in result["metrics"].items() if v["outcome"] == an.FAILED]
        decision = ABORT
        reason = (f"step {index + 1} ({weight} %): quality probe {result['phase']}: "
                  f"{', '.join(failed) or result.get('skipped', '')}")
    elif result is not None and result["phase"] == an.INCONCLUSIVE:
        decision, reason = ASK, f"step {index + 1} ({weight} %): quality probe inconclusive"
    else:
        decision = PROMOTE if index == len(plan["steps"]) - 1 else NEXT
    return {"decision": decision, "reason": reason, "table": table, "rows": rows, "phase": phase}
