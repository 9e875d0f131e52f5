"""The off-hours DAG's task bodies: build the real parts from settings and call offhours.py."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)


def dagrun_state(run_id: str, dag_id: str = "finetune_lifecycle") -> str | None:
    """State of a finetune_lifecycle run through the task SDK; None when it does not exist (yet)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    try:
        return str(RuntimeTaskInstance.get_dagrun_state(dag_id, run_id))
    except Exception:  # noqa: BLE001 - a missing run is an API error here; it is simply not finished
        return None


def run_tick(dry_run: bool, now: datetime | None = None, state_of=dagrun_state) -> dict[str, Any]:
    from include.scheduling.cluster import get_cluster
    from include.scheduling.offhours import tick
    from include.scheduling.requests import RequestStore
    from include.scheduling.windows import load
    from include.settings import get_settings

    settings = get_settings()
    schedule = load()
    result = tick(now or datetime.now(UTC), schedule, get_cluster(settings, schedule),
                  RequestStore.for_settings(settings), settings, state_of, dry_run=dry_run)
    phases = [f"{k} " + (f"open until {v['closes']}" if v["open"] else f"closed, next {v['next_open']}")
              for k, v in result["windows"].items()]
    log.info(f"windows: {'; '.join(phases)}; admitted {len(result['triggers'])}, stopped {len(result['stopped'])}")
    return result


def write_report(result: dict[str, Any]) -> dict[str, Any]:
    from include.scheduling import report
    from include.scheduling.requests import RequestStore
    from include.settings import get_settings

    settings = get_settings()
    state = result["state"]
    kind = max(state, key=lambda k: state[k].get("window") or "") if state else None
    entry = state.get(kind, {}) if kind else {}
    built = report.build(RequestStore.for_settings(settings).all(), entry.get("window"), entry.get("closes"),
                         entry.get("cleanup"))
    uris = report.write(built, settings)
    t = built["totals"]
    log.info(f"window {built['window']}: admitted {len(built['admitted'])}, waiting {len(built['waiting'])}, "
          f"refused {len(built['refused'])}; estimated {t['estimated_gpu_hours']} GPU-h ${t['estimated_cost_usd']}, "
          f"actual {t['actual_gpu_hours']} GPU-h ${t['actual_cost_usd']}; report {uris['html']}")
    return {**uris, "totals": t}
