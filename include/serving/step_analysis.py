"""One step's analysis around the trigger: build the AnalysisRun, measure, close the step.

The trigger (plugins/llmops_operators/canary.py) only schedules: it asks the `AnalysisRun` what is
due, calls `measure` (a Prometheus query through the metrics seam) and records. Before it starts,
`start` builds the run from the policy and the route's analysis start; after it ends, `finish`
adds the quality probe, writes the step table to the task log and the canary's MLflow run, and
says what happens next: next step, promote, abort or ask a person.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from include.serving import analysis as an
from include.serving import probe
from include.serving.metrics import MetricsError, get_metrics
from include.settings import Settings, get_settings

log = logging.getLogger(__name__)
NEXT, PROMOTE, ABORT, ASK = "next", "promote", "abort", "inconclusive"


def start(plan: Mapping[str, Any], policy: Mapping[str, Any], weight: int, started_at: float) -> an.AnalysisRun:
    return an.AnalysisRun(an.for_step(an.metrics(policy), weight), started_at=started_at)


def measure(run: an.AnalysisRun, metric: an.Metric, plan: Mapping[str, Any], at: float,
            settings: Settings | None = None) -> an.Measurement:
    """Query one metric and record its outcome (an unreachable Prometheus or bad query is an Error)."""
    canary = plan["canary"]["service"]
    stable = (plan["stable"] or {}).get("service", "")
    try:
        value = get_metrics(settings).scalar(metric.promql(canary, stable))
    except MetricsError as exc:
        return run.record(metric.name, at, error=str(exc)[:300])
    return run.record(metric.name, at, value)


def eval_uri(plan: Mapping[str, Any], settings: Settings | None = None) -> str | None:
    """The curated eval set the canary was gated on (its dataset version)."""
    version = plan["canary"].get("dataset_version")
    if not version:
        return None
    return f"{(settings or get_settings()).data_root}/curated/{version}/eval.jsonl"


def run_probe(plan: Mapping[str, Any], policy: Mapping[str, Any], settings: Settings | None = None) -> dict:
    from include.serving.servers import get_servers

    cfg = policy.get("quality_probe") or {}
    uri = eval_uri(plan, settings)
    if not plan.get("stable") or not cfg.get("sample_size") or uri is None:
        return {"phase": an.SUCCESSFUL, "metrics": {}, "skipped": "no stable, sample size 0 or no eval set"}
    servers = get_servers(settings)
    canary = (servers.url(plan["canary"]["service"]), plan["canary"]["service"])
    stable = (servers.url(plan["stable"]["service"]), plan["stable"]["service"])
    try:
        return probe.run(cfg, uri, canary, stable)
    except (RuntimeError, OSError) as exc:
        return {"phase": an.ERROR, "metrics": {}, "skipped": f"probe could not run: {exc}"}


def finish(plan: Mapping[str, Any], policy: Mapping[str, Any], index: int, run_data: Mapping[str, Any],
           settings: Settings | None = None, *, with_probe: bool = True) -> dict[str, Any]:
    """The step's verdict and record: {"decision", "reason", "table", "probe"}."""
    run = an.AnalysisRun.from_dict(run_data)
    weight = plan["steps"][index]
    phase = run.phase
    result = run_probe(plan, policy, settings) if with_probe and phase == an.SUCCESSFUL else None
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
    log.info("step %d/%d at %d %%: analysis %s -> %s\n%s", index + 1, len(plan["steps"]), weight, phase,
             decision, table)
    _log_to_mlflow(plan, index, table, rows)
    return {"decision": decision, "reason": reason, "table": table, "rows": rows, "phase": phase}


def _log_to_mlflow(plan: Mapping[str, Any], index: int, table: str, rows: list[dict]) -> None:
    """The step table as an artifact of the canary version's MLflow run (best effort: never fails a step)."""
    run_id = plan["canary"].get("mlflow_run_id")
    if not run_id:
        return
    try:
        import json

        from include.registry import mlflow_registry as reg

        safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in plan["run_id"])
        reg.log_artifacts(run_id, {f"step-{index + 1}.txt": table, f"step-{index + 1}.json": json.dumps(rows)},
                          artifact_path=f"rollout/{safe_run}")
    except Exception as exc:  # noqa: BLE001 - the record must not decide the rollout
        log.warning("could not log step %d to MLflow run %s: %s", index + 1, run_id, exc)
