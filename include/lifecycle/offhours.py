"""What the off-hours DAG does on each tick: the scheduling stage (windows, admission, requests,
cleanup rules) joined with the capacity seam (the platform's `capacity()`), the registry (which
checkpoints a registered version still needs) and the training stage's run names.

Each tick: reconcile admitted runs with their DAG runs; for each pool, if its window is open,
restore its capacity and admit waiting requests (triggering finetune_lifecycle); if it is about
to close or closed, stop experiment runs that would overrun (re-queued to resume next window)
and, once per close, scale the experiment pool to zero and clean up leftovers; then write the
window's report. Every step is idempotent: a retried or repeated tick changes nothing more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from include.cluster.pools import EXPERIMENT
from include.dag_ids import FINETUNE_LIFECYCLE
from include.platforms import get_platform
from include.platforms.runs import run_names
from include.platforms.seams import Capacity
from include.scheduling import cleanup
from include.scheduling.admission import PoolBudget, Request, admit, overruns
from include.scheduling.requests import RequestStore, admitted_run_id
from include.scheduling.windows import Schedule, window_state

_log = logging.getLogger(__name__)

# Experiment runs are stopped this long before close so their checkpoint is flushed inside the window.
CLOSE_MARGIN = timedelta(minutes=5)
# The pools scaled to zero at window close, and so the only ones restored at open. Production
# capacity is never scaled down (its runs continue past a window), so its NodePool is never read
# here: the ClusterRole in k8s/airflow/offhours-rbac.yaml names exactly these pools' NodePools
# (resourceNames), and a tick that read one more would get 403 Forbidden.
SCALED_AT_CLOSE = (EXPERIMENT,)
FINISHED = {"success": "done", "failed": "failed"}


def reconcile(store: RequestStore, dagrun_state: Callable[[str], str | None], log=print) -> list[str]:
    """Admitted requests whose triggered run ended become done/failed (unless the cost task did already)."""
    changed = []
    for record in store.in_state("admitted"):
        rid = record["request"]["id"]
        state = dagrun_state(admitted_run_id(rid))
        if state in FINISHED:
            store.transition(rid, FINISHED[state], f"finetune_lifecycle run {admitted_run_id(rid)} {state}")
            log(f"request {rid}: run {state}")
            changed.append(rid)
    return changed


def budgets(schedule: Schedule, windows: dict[str, dict], cluster: Capacity,
            store: RequestStore) -> dict[str, PoolBudget]:
    running = store.in_state("admitted")
    out = {}
    for kind, w in windows.items():
        mine = [r for r in running if cluster.shared_gpu_budget() or r["request"]["pool"] == kind]
        committed = [r for r in running + store.in_state("done", "failed", "stopped")
                     if r["request"]["pool"] == kind and w["opened"] and (r.get("admitted_at") or "") >= w["opened"]]
        out[kind] = PoolBudget(
            gpu_limit=cluster.gpu_limit(kind), gpus_in_use=sum(int(r["request"]["gpus"]) for r in mine),
            remaining_hours=w["remaining_h"], window_hours=w["longest_h"],
            cost_budget_usd=float(schedule.admission["cost_budget_usd_per_window"]),
            cost_committed_usd=sum(float(r["request"]["cost_usd"]) for r in committed))
    return out


def admit_waiting(now: datetime, schedule: Schedule, cluster: Capacity, store: RequestStore,
                  settings, log=print) -> list[dict[str, Any]]:
    """One admission pass; returns TriggerDagRunOperator kwargs for every request admitted now."""
    windows = window_state(schedule, now)
    waiting = store.in_state("waiting")
    if not waiting:
        return []
    verdicts = admit([Request.from_dict(r["request"]) for r in waiting], budgets(schedule, windows, cluster, store))
    triggers = []
    for v in verdicts:
        rid = v.request.id
        log(f"request {rid} ({v.request.pool}, {v.request.gpus} GPUs, {v.request.gpu_hours:.2f} GPU-h, "
            f"${v.request.cost_usd:,.2f}): {v.outcome}: {v.reason}")
        if v.outcome == "admitted":
            record = store.get(rid)
            cluster.release_hold(record)  # a stopped run resumes from its checkpoint
            store.transition(rid, "admitted", v.reason, admitted_at=now.isoformat(), waiting_reason=None,
                             window_opened=windows[v.request.pool]["opened"])
            triggers.append({"trigger_run_id": admitted_run_id(rid), "conf": v.request.conf})
        elif v.outcome == "refused":
            store.transition(rid, "refused", v.reason, refused_at=now.isoformat())
        else:
            store.put({**store.get(rid), "waiting_reason": v.reason})
    return triggers


def stop_overruns(now: datetime, schedule: Schedule, cluster: Capacity, store: RequestStore,
                  dry_run: bool, log=print) -> list[dict[str, Any]]:
    """Experiment runs that would run past the close: stopped gracefully and queued again."""
    pool = schedule.pools.get(EXPERIMENT)
    if pool is None:
        return []
    window = pool.open_window(now)
    close = window[1] if window else None
    if close is not None and close - now > CLOSE_MARGIN:
        return []
    running = [{"id": r["request"]["id"], "pool": r["request"]["pool"], "hours": r["request"]["hours"],
                "started_at": r.get("admitted_at") or now.isoformat(), "record": r}
               for r in store.in_state("admitted")]
    stopped = []
    for run in overruns(running, now, close or now):
        actions = cleanup.apply(cluster.stop_run(run["record"]), dry_run, log)
        if not dry_run and all(a.done for a in actions):
            store.transition(run["id"], "waiting", "stopped at window close; resumes from its checkpoint "
                                                   "in the next window", stopped_at=now.isoformat(),
                             stops=int(run["record"].get("stops", 0)) + 1)
        stopped.append({"id": run["id"], **run_names(run["record"]), "actions": [a.to_dict() for a in actions]})
    return stopped


def registered_runs(model_name: str, client=None) -> dict[str, str]:
    """Run name -> why kept, for every registered version of the model (the champion and challenger
    named as such). The run name is the `/models/<run name>` segment of the version's source."""
    from mlflow.exceptions import MlflowException

    from include.registry import mlflow_registry as reg

    client = client or reg.get_client()
    try:
        versions = client.search_model_versions(f"name = {reg.quote_filter_value(model_name)}")
    except MlflowException:
        return {}
    aliases = {}
    for alias in ("champion", "challenger"):
        v = reg.get_alias(model_name, alias, client=client)
        if v is not None:
            aliases[str(v.version)] = alias
    out = {}
    for v in versions:
        parts = str(v.source).rstrip("/").split("/")
        if "models" in parts and parts.index("models") + 1 < len(parts):
            run = parts[parts.index("models") + 1]
            why = f"{aliases[str(v.version)]} v{v.version}" if str(v.version) in aliases else f"registered v{v.version}"
            out.setdefault(run, why)
            if str(v.version) in aliases:
                out[run] = why
    return out


def rollout_leftovers(settings, now: datetime, ttl_hours: float, log=print, *, router=None,
                      servers=None) -> list[cleanup.Action]:
    """Model servers an aborted or crashed rollout left at weight 0, read through the serving seams: the
    route's weights and rollout state (router), the running servers (servers)."""
    from include.serving import route as rt

    try:
        router = router or get_platform(settings).router()
        servers = servers or get_platform(settings).servers()
        route = router.get(rt.route_name(settings.registered_model_name))
        deployed = servers.deployed()
    except Exception as exc:  # noqa: BLE001 - the rest of the cleanup still runs; the log says why
        log(f"rollout leftovers: could not read the route or the model servers: {type(exc).__name__}: {exc}")
        return []
    if route is None:  # nothing says which version serves: touch nothing
        if deployed:
            log(f"rollout leftovers: no HTTPRoute for {settings.registered_model_name}; "
                f"{len(deployed)} model servers left alone")
        return []
    weights = rt.weights(route)
    protected = set()
    if rt.in_progress(route):
        st = rt.state(route)
        protected = {rt.served_name(settings.registered_model_name, v) for v in (st.get("canary"), st.get("stable"))
                     if v}
    return cleanup.rollout_leftovers(deployed, weights, protected, rt.updated_at(route),
                                     now=now.timestamp(), ttl_hours=ttl_hours, kind=servers.workload_kind,
                                     namespace=servers.namespace, scale_down=servers.scale_down)


def close_cleanup(now: datetime, schedule: Schedule, cluster: Capacity, store: RequestStore, settings,
                  dry_run: bool, log=print) -> dict[str, Any]:
    """Scale the SCALED_AT_CLOSE pools to zero (window closed), then leftovers and stale data."""
    running = {run_names(r)["run_name"] for r in store.in_state("admitted")}
    actions = []
    for kind in SCALED_AT_CLOSE:
        if kind in schedule.pools and schedule.pools[kind].open_window(now) is None:
            actions += cluster.scale_to_zero(kind)
    actions += cluster.leftovers(now, running)
    actions += rollout_leftovers(settings, now, schedule.cleanup["rollout_leftover_hours"], log)
    actions += cleanup.data_actions(settings, registered=registered_runs(settings.registered_model_name),
                                    running=running, days=schedule.cleanup["checkpoint_days"],
                                    staging_hours=schedule.cleanup["staging_hours"], now=now.timestamp())
    cleanup.apply(actions, dry_run, log)
    result = cleanup.summary(actions, dry_run)
    log(result["summary"])
    return result


def open_restore(now: datetime, schedule: Schedule, cluster: Capacity, dry_run: bool,
                 log=print) -> list[dict[str, Any]]:
    """Window open: the limits of the pools the close scaled to zero come back from k8s/ (no other pool's)."""
    actions = []
    for kind in SCALED_AT_CLOSE:
        if kind in schedule.pools and schedule.pools[kind].open_window(now) is not None:
            actions += cluster.restore_limits(kind)
    return [a.to_dict() for a in cleanup.apply(actions, dry_run, log)]


# ---- phase memory: close actions once per close, in a small state document ----

def _state_path(settings):
    from include.storage.objectstore import storage_path

    return storage_path(f"{settings.data_root}/offhours/state.json")


def load_state(settings) -> dict[str, Any]:
    path = _state_path(settings)
    return json.loads(path.read_bytes()) if path.exists() else {}


def save_state(settings, state: dict[str, Any]) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(state, indent=2, sort_keys=True).encode())


def tick(now: datetime, schedule: Schedule, cluster: Capacity, store: RequestStore, settings,
         dagrun_state: Callable[[str], str | None], dry_run: bool = False, log=print) -> dict[str, Any]:
    """One pass of the off-hours DAG; returns what it did (and the triggers to fire)."""
    now = now.astimezone(UTC)
    windows = window_state(schedule, now)
    state = load_state(settings)
    reconcile(store, dagrun_state, log)
    restored = open_restore(now, schedule, cluster, dry_run, log)
    stopped = stop_overruns(now, schedule, cluster, store, dry_run, log)
    triggers = admit_waiting(now, schedule, cluster, store, settings, log) if not dry_run else []
    closed_now = [k for k, w in windows.items() if not w["open"] and state.get(k, {}).get("phase") != "closed"]
    freed = close_cleanup(now, schedule, cluster, store, settings, dry_run, log) if closed_now else None
    for kind, w in windows.items():
        previous = state.get(kind, {})
        entry = {"phase": "open" if w["open"] else "closed",
                 "window": w["opened"] or previous.get("window"), "closes": w["closes"] or previous.get("closes")}
        if freed is not None and kind in closed_now:
            entry["cleanup"] = freed
        elif previous.get("window") == entry["window"]:
            entry["cleanup"] = previous.get("cleanup")
        state[kind] = entry
    if not dry_run:
        save_state(settings, state)
    return {"now": now.isoformat(), "windows": windows, "restored": restored, "stopped": stopped,
            "triggers": triggers, "cleanup": freed, "state": state}


# ---- the DAG's task bodies: build the real parts from settings and tick ----

def dagrun_state(run_id: str, dag_id: str = FINETUNE_LIFECYCLE) -> str | None:
    """State of a finetune_lifecycle run through the task SDK; None when it does not exist (yet)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    try:
        return str(RuntimeTaskInstance.get_dagrun_state(dag_id, run_id))
    except Exception:  # noqa: BLE001 - a missing run is an API error here; it is simply not finished
        return None


def run_tick(dry_run: bool, now: datetime | None = None, state_of=dagrun_state) -> dict[str, Any]:
    from include.scheduling.requests import RequestStore
    from include.scheduling.windows import load
    from include.settings import get_settings

    settings = get_settings()
    schedule = load()
    result = tick(now or datetime.now(UTC), schedule, get_platform(settings).capacity(schedule),
                  RequestStore.for_settings(settings), settings, state_of, dry_run=dry_run)
    phases = [f"{k} " + (f"open until {v['closes']}" if v["open"] else f"closed, next {v['next_open']}")
              for k, v in result["windows"].items()]
    _log.info(f"windows: {'; '.join(phases)}; admitted {len(result['triggers'])}, stopped {len(result['stopped'])}")
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
    _log.info(f"window {built['window']}: admitted {len(built['admitted'])}, waiting {len(built['waiting'])}, "
          f"refused {len(built['refused'])}; estimated {t['estimated_gpu_hours']} GPU-h ${t['estimated_cost_usd']}, "
          f"actual {t['actual_gpu_hours']} GPU-h ${t['actual_cost_usd']}; report {uris['html']}")
    return {**uris, "totals": t}
