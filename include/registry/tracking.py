"""MLflow tracking for the lifecycle: the client, one run per DAG run, training metrics, artifacts.

Safe to call again from a retried or rerun task; conventions in mlflow_registry.py.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from mlflow import MlflowClient

DAG_ID_TAG = "airflow.dag_id"
RUN_ID_TAG = "airflow.run_id"
RUN_KEY_TAG = "airflow.run_key"
DATASET_TAG = "llmops.dataset_version"
GIT_COMMIT_TAG = "llmops.git_commit"
BASE_MODEL_TAG = "llmops.base_model"
METHOD_TAG = "llmops.method"
IMAGE_TAG_PREFIX = "llmops.image."
DECISION_TAG = "llmops.decision"
REASONS_TAG = "llmops.reasons"
PREVIOUS_CHAMPION_TAG = "llmops.previous_champion"
EVAL_SCORES_TAG_PREFIX = "eval_scores."
CHAMPION = "champion"
CHALLENGER = "challenger"

# MLflow's limits (mlflow.utils.validation): params 6000 chars, run tags 8000, keys 250, batches of
# 100 params/tags or 1000 metrics.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")
_SERIES_SKIP = {"step", "time", "timestamp", "epoch_time"}


# --------------------------------------------------------------------------- client and helpers

def get_client(tracking_uri: str | None = None) -> MlflowClient:
    """A client for `tracking_uri` (default: settings); creates a local SQLite store's directory."""
    from include.logs import quiet_libraries

    quiet_libraries()  # before MLflow's first import: its messages go through logging, no progress bars
    from mlflow import MlflowClient

    if tracking_uri is None:
        from include.settings import get_settings

        tracking_uri = get_settings().mlflow_tracking_uri
    db = _sqlite_path(tracking_uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _client(client: MlflowClient | None) -> MlflowClient:
    return client if client is not None else get_client()


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(unquote(uri[len("sqlite:///"):]))
    return None


def _error_code(exc: Exception) -> str | None:
    return getattr(exc, "error_code", None)


def quote_filter_value(value: str) -> str:
    """A string literal for an MLflow search filter.

    MLflow's filter parser strips the surrounding quotes and un-escapes nothing, so a value is safe
    only inside a quote character it does not contain. Airflow ids never contain quotes; refuse the
    rest instead of building a filter that matches something else.
    """
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot express {value!r} in an MLflow filter: it contains both quote characters")


def safe_key(key: str) -> str:
    """An MLflow param/metric/tag key: invalid characters become '_', at most 250 characters."""
    parts = [p for p in _BAD_KEY_CHARS.sub("_", str(key)).split("/") if p not in ("", ".")]
    return "/".join("__" if p == ".." else p for p in parts)[:MAX_KEY].rstrip("/") or "_"


def run_key(dag_id: str, run_id: str) -> str:
    return f"{dag_id}/{run_id}"


def lineage_tags(*, dag_id: str, run_id: str, dataset_version: str | None = None, base_model: str | None = None,
                 method: str | None = None, git_commit: str | None = None,
                 images: Mapping[str, str] | None = None, **extra: Any) -> dict[str, str]:
    """The lineage a run and a model version carry, under the project's tag names (None values are left out)."""
    tags = {DAG_ID_TAG: dag_id, RUN_ID_TAG: run_id, RUN_KEY_TAG: run_key(dag_id, run_id), DATASET_TAG: dataset_version,
            BASE_MODEL_TAG: base_model, METHOD_TAG: method, GIT_COMMIT_TAG: git_commit}
    for name, ref in (images or {}).items():
        tags[IMAGE_TAG_PREFIX + safe_key(name)] = ref
    tags.update({safe_key(k): v for k, v in extra.items()})
    return {k: str(v) for k, v in tags.items() if v is not None}


# --------------------------------------------------------------------------- runs

def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        if artifact_location is None:
            db = _sqlite_path(client.tracking_uri)
            if db is not None:  # else MLflow defaults to ./mlruns under whatever the task's cwd is
                artifact_location = (db.parent / "artifacts" / safe_key(name).replace("/", "_")).as_uri()
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:  # created concurrently by another task
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _find_runs(client: MlflowClient, experiment_id: str, dag_id: str, run_id: str) -> list:
    from mlflow.entities import ViewType

    flt = (f"tags.`{DAG_ID_TAG}` = {quote_filter_value(dag_id)} and "
           f"tags.`{RUN_ID_TAG}` = {quote_filter_value(run_id)}")
    runs = client.search_runs([experiment_id], filter_string=flt, run_view_type=ViewType.ACTIVE_ONLY,
                              max_results=100, order_by=["attributes.start_time ASC"])
    runs = [r for r in runs if r.data.tags.get(DAG_ID_TAG) == dag_id and r.data.tags.get(RUN_ID_TAG) == run_id]
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def get_or_create_run(experiment: str, dag_id: str, run_id: str, tags: Mapping[str, Any] | None = None, *,
                      run_name: str | None = None, artifact_location: str | None = None,
                      client: MlflowClient | None = None) -> str:
    """The MLflow run id of this DAG run: found by its tags, or created once.

    A rerun or retry finds the same run, sets it RUNNING again and updates changed tags. Two tasks
    racing to create it both keep the oldest run and the loser deletes its own.
    """
    client = _client(client)
    exp_id = _experiment_id(client, experiment, artifact_location)
    all_tags = {**{safe_key(k): str(v) for k, v in (tags or {}).items() if v is not None},
                DAG_ID_TAG: dag_id, RUN_ID_TAG: run_id, RUN_KEY_TAG: run_key(dag_id, run_id)}
    found = _find_runs(client, exp_id, dag_id, run_id)
    if found:
        run = found[0]
        for key, value in all_tags.items():
            if run.data.tags.get(key) != value:
                client.set_tag(run.info.run_id, key, value[:MAX_TAG_VALUE])
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id

    created = client.create_run(exp_id, tags={k: v[:MAX_TAG_VALUE] for k, v in all_tags.items()},
                                run_name=run_name or f"{dag_id}.{run_id}")
    winner = _find_runs(client, exp_id, dag_id, run_id)[0]
    if winner.info.run_id != created.info.run_id:
        client.delete_run(created.info.run_id)
    return winner.info.run_id


def decided_runs(experiment: str, dataset_version: str, *, base_model: str | None = None,
                 method: str | None = None, client: MlflowClient | None = None) -> list:
    """Runs whose gate decided (accepted or rejected) on a candidate trained on `dataset_version`, newest first.

    The record of "this dataset was already trained on": one MLflow run per DAG run, tagged with the
    dataset version and, once registered or rejected, `llmops.decision`. `base_model` and `method`
    narrow it to the same recipe (a run without those tags matches any).
    """
    from mlflow.entities import ViewType

    client = _client(client)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    flt = f"tags.`{DATASET_TAG}` = {quote_filter_value(dataset_version)}"
    runs = client.search_runs([exp.experiment_id], filter_string=flt, run_view_type=ViewType.ACTIVE_ONLY,
                              max_results=1000, order_by=["attributes.start_time DESC"])
    wanted = {BASE_MODEL_TAG: base_model, METHOD_TAG: method}
    return [r for r in runs
            if r.data.tags.get(DATASET_TAG) == dataset_version
            and r.data.tags.get(DECISION_TAG) in ("accepted", "rejected")
            and all(v is None or r.data.tags.get(k) in (None, v) for k, v in wanted.items())]


def experiment_of(run_id: str, *, client: MlflowClient | None = None) -> str:
    """The experiment id a run belongs to (for links to the run's page)."""
    return _client(client).get_run(run_id).info.experiment_id


def finish_run(run_id: str, status: str = "FINISHED", *, client: MlflowClient | None = None) -> None:
    """Mark the run terminated (FINISHED, FAILED or KILLED); a later retry sets it RUNNING again."""
    _client(client).set_terminated(run_id, status=status)


# --------------------------------------------------------------------------- training

def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings become dotted keys; lists and other values become strings (JSON for lists)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, list | tuple):
            out[safe_key(name)] = json.dumps(list(value), default=str, sort_keys=True)[:MAX_PARAM_VALUE]
        else:
            out[safe_key(name)] = str(value)[:MAX_PARAM_VALUE]
    return out


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def log_training(run_id: str, plan: Mapping[str, Any], metrics_series: Iterable[Mapping[str, Any]],
                 summary_metrics: Mapping[str, Any] | None = None, *,
                 client: MlflowClient | None = None) -> dict[str, int]:
    """Log the plan as params, the per-step series as step metrics and the summary; idempotent.

    - params: the plan flattened; a param already logged with the same value is skipped, one logged
      with a different value is an error (MLflow params are immutable), raised before anything is logged;
    - series: every numeric key but `step`/`time`/`timestamp` of each point becomes a metric at that
      step (a point's `time`/`timestamp` in seconds is kept); steps already in the metric's history
      are skipped, and a step repeated in the input (a resumed trainer) keeps its last value;
    - summary: logged at step 0 unless the metric's latest value is already that value.

    Returns how many params and metric points were written this call.
    """
    from mlflow.entities import Metric, Param

    client = _client(client)
    run = client.get_run(run_id)
    params = flatten(plan)
    existing = run.data.params
    conflicts = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
    if conflicts:
        details = ", ".join(f"{k}: logged {existing[k]!r}, now {params[k]!r}" for k in conflicts[:10])
        raise ValueError(f"MLflow run {run_id} already has different values for params ({details}); "
                         "params are immutable: a changed plan needs a new DAG run")
    new_params = [Param(k, v) for k, v in sorted(params.items()) if k not in existing]
    for chunk in _chunks(new_params, PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)

    now_ms = int(time.time() * 1000)
    points: dict[str, dict[int, tuple[float, int]]] = {}
    for point in metrics_series:
        step = point.get("step")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise ValueError(f"metrics_series: point {dict(point)!r} has no integer 'step'")
        ts = _finite(point.get("timestamp", point.get("time")))
        ts_ms = int(ts * 1000) if ts is not None else now_ms
        for key, value in point.items():
            v = _finite(value)
            if key in _SERIES_SKIP or v is None:
                continue
            points.setdefault(safe_key(key), {})[int(step)] = (v, ts_ms)
    new_metrics: list = []
    for key, by_step in sorted(points.items()):
        logged = {m.step for m in client.get_metric_history(run_id, key)} if key in run.data.metrics else set()
        new_metrics += [Metric(key, v, ts, step) for step, (v, ts) in sorted(by_step.items()) if step not in logged]
    for key, value in sorted((summary_metrics or {}).items()):
        v, key = _finite(value), safe_key(key)
        if v is None:
            continue
        latest = run.data.metrics.get(key)
        if latest is None or not math.isclose(latest, v, rel_tol=1e-12, abs_tol=1e-12):
            new_metrics.append(Metric(key, v, now_ms, 0))
    for chunk in _chunks(new_metrics, METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)
    return {"params": len(new_params), "metrics": len(new_metrics)}


# --------------------------------------------------------------------------- artifacts

def _relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or str(path) in (".", ""):
        raise ValueError(f"artifact name {name!r}: expected a relative path without '..'")
    return path


def log_artifacts(run_id: str, files: Mapping[str, bytes | str], *, artifact_path: str | None = None,
                  client: MlflowClient | None = None) -> dict[str, str]:
    """Upload in-memory files to the run's artifact store (under `artifact_path`); names may contain '/'.

    Re-uploading a name overwrites it, so a retry leaves one copy. Returns name -> `runs:/` URI.
    """
    client = _client(client)
    if artifact_path is not None:
        _relative(artifact_path)
    rels = {name: _relative(name) for name in files}
    with tempfile.TemporaryDirectory(prefix="mlflow-artifacts-") as tmp:
        for name, content in files.items():
            target = Path(tmp, *rels[name].parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                target.write_text(content, encoding="utf-8")
            else:
                target.write_bytes(bytes(content))
        if files:
            client.log_artifacts(run_id, tmp, artifact_path=artifact_path)
    prefix = f"{artifact_path.strip('/')}/" if artifact_path else ""
    return {name: f"runs:/{run_id}/{prefix}{rels[name]}" for name in files}


def read_artifact_text(uri: str, *, client: MlflowClient | None = None) -> str:
    """The text of one artifact file at an MLflow artifact URI (`runs:/`, `mlflow-artifacts:/`, s3://, file://)."""
    from mlflow.artifacts import download_artifacts

    client = _client(client)
    with tempfile.TemporaryDirectory(prefix="mlflow-download-") as tmp:
        local = download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=client.tracking_uri)
        return Path(local).read_text(encoding="utf-8")
