"""MLflow tracking and registry for the lifecycle, safe to call again from a retried or rerun task.

Every function takes an optional `client`; without one it talks to the tracking URI from settings
(`LLMOPS_MLFLOW_TRACKING_URI`: a `sqlite:///` store locally, the tracking server on eks).
Credentials never appear here: MLflow reads MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD and
boto3 its usual AWS chain from the environment.

Conventions
- One MLflow run per DAG run, tagged `airflow.dag_id`, `airflow.run_id` and `airflow.run_key`
  (`<dag_id>/<run_id>`) and found again by those tags on every retry and rerun.
- Model weights stay where training wrote them (S3 or the data root): a model version's `source` is
  that URI; nothing is copied into MLflow's artifact store.
- A model version is created once per DAG run: its `airflow.run_key` tag finds it again.
- Aliases: `challenger` on a freshly registered version, `champion` on the promoted one.
- The per-sample eval scores a version got on a dataset version are referenced from the model
  version tag `eval_scores.<dataset_version>` (a `runs:/` URI of a JSON artifact), so the next
  candidate on the same eval set is compared with exactly those scores.
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
    from mlflow.entities.model_registry import ModelVersion

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


# --------------------------------------------------------------------------- registry

def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        client.create_registered_model(name, description="Fine-tuned LLM; weights stay in object storage.")
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise


def _versions_for_key(client: MlflowClient, model_name: str, key: str) -> list[ModelVersion]:
    flt = f"name = {quote_filter_value(model_name)} and tags.`{RUN_KEY_TAG}` = {quote_filter_value(key)}"
    found = [v for v in client.search_model_versions(filter_string=flt)
             if v.name == model_name and v.tags.get(RUN_KEY_TAG) == key]
    return sorted(found, key=lambda v: int(v.version))


def register_candidate(model_name: str, source_uri: str, run_id: str, tags: Mapping[str, Any], *,
                       client: MlflowClient | None = None) -> str:
    """Register the weights at `source_uri` as a version of `model_name`, once per DAG run; alias it `challenger`.

    `run_id` is the MLflow run that produced them. `tags` must carry `airflow.dag_id` and
    `airflow.run_id` (see `lineage_tags`); the version is tagged `airflow.run_key` and a second call
    for the same DAG run returns the version the first one made. Returns the version number.
    """
    client = _client(client)
    tags = {safe_key(k): str(v) for k, v in tags.items() if v is not None}
    key = tags.get(RUN_KEY_TAG)
    if key is None:
        if DAG_ID_TAG not in tags or RUN_ID_TAG not in tags:
            raise ValueError(f"register_candidate: tags need {DAG_ID_TAG!r} and {RUN_ID_TAG!r} (or {RUN_KEY_TAG!r})")
        key = tags[RUN_KEY_TAG] = run_key(tags[DAG_ID_TAG], tags[RUN_ID_TAG])
    _ensure_registered_model(client, model_name)
    found = _versions_for_key(client, model_name, key)
    if found:
        version = found[0]
    else:
        created = client.create_model_version(model_name, source=source_uri, run_id=run_id, tags=tags)
        found = _versions_for_key(client, model_name, key)
        version = found[0]
        if version.version != created.version:  # lost a race: keep the older version, drop ours
            client.delete_model_version(model_name, created.version)
    if version.source != source_uri:
        raise ValueError(f"model {model_name} v{version.version} for {key} points at {version.source}, "
                         f"not {source_uri}: the DAG run trained different weights than it registered")
    aliases = _aliases(client, model_name)
    if str(version.version) not in (aliases.get(CHAMPION), aliases.get(CHALLENGER)):
        client.set_registered_model_alias(model_name, CHALLENGER, version.version)
    return str(version.version)


def _aliases(client: MlflowClient, model_name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in (client.get_registered_model(model_name).aliases or {}).items()}


def get_alias(model_name: str, alias: str, *, client: MlflowClient | None = None) -> ModelVersion | None:
    """The version behind `alias`, or None when the alias or the model does not exist."""
    from mlflow.exceptions import MlflowException

    # Not get_model_version_by_alias: for a missing alias the server answers INVALID_PARAMETER_VALUE,
    # the same code as a malformed request, so read the model's alias map instead.
    client = _client(client)
    try:
        version = _aliases(client, model_name).get(alias)
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return client.get_model_version(model_name, version) if version is not None else None


def champion(model_name: str, *, client: MlflowClient | None = None) -> ModelVersion | None:
    return get_alias(model_name, CHAMPION, client=client)


def challenger(model_name: str, *, client: MlflowClient | None = None) -> ModelVersion | None:
    return get_alias(model_name, CHALLENGER, client=client)


def promote(model_name: str, version: str | int, *, client: MlflowClient | None = None) -> str | None:
    """Move `champion` to `version` and drop `challenger` if it points there; idempotent.

    The replaced champion is remembered on the new one (tag `llmops.previous_champion`, written once)
    and returned, so a rollback knows where to go; None when there was none.
    """
    client = _client(client)
    version = str(version)
    mv = client.get_model_version(model_name, version)
    previous = mv.tags.get(PREVIOUS_CHAMPION_TAG)
    current = champion(model_name, client=client)
    if current is not None and str(current.version) != version and previous is None:
        previous = str(current.version)
        client.set_model_version_tag(model_name, version, PREVIOUS_CHAMPION_TAG, previous)
    if current is None or str(current.version) != version:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    if _aliases(client, model_name).get(CHALLENGER) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)
    if mv.tags.get(DECISION_TAG) != "champion":
        client.set_model_version_tag(model_name, version, DECISION_TAG, "champion")
    return previous


# --------------------------------------------------------------------------- eval scores and decisions

def eval_scores_tag(dataset_version: str) -> str:
    return safe_key(EVAL_SCORES_TAG_PREFIX + str(dataset_version).replace("/", "_"))


def log_eval_scores(run_id: str, dataset_version: str, scores: list[Mapping[str, Any]], *,
                    client: MlflowClient | None = None) -> str:
    """Store per-sample scores as the run artifact `eval/<dataset_version>/scores.json`; returns its runs:/ URI."""
    ds = str(dataset_version).replace("/", "_")
    uris = log_artifacts(run_id, {f"eval/{ds}/scores.json": json.dumps(list(scores), sort_keys=True)},
                         client=client)
    return next(iter(uris.values()))


def set_eval_scores(model_name: str, version: str | int, dataset_version: str, scores_uri: str, *,
                    client: MlflowClient | None = None) -> None:
    """Point the version's `eval_scores.<dataset_version>` tag at its per-sample scores."""
    _client(client).set_model_version_tag(model_name, str(version), eval_scores_tag(dataset_version), scores_uri)


def eval_scores_uri(version: ModelVersion, dataset_version: str) -> str | None:
    return (version.tags or {}).get(eval_scores_tag(dataset_version))


def load_eval_scores(uri: str, *, client: MlflowClient | None = None) -> list[dict]:
    return json.loads(read_artifact_text(uri, client=client))


def champion_scores(model_name: str, dataset_version: str, *,
                    client: MlflowClient | None = None) -> tuple[ModelVersion | None, list[dict] | None]:
    """(champion, its per-sample scores on `dataset_version`); scores None when not recorded for that set."""
    client = _client(client)
    mv = champion(model_name, client=client)
    if mv is None:
        return None, None
    uri = eval_scores_uri(mv, dataset_version)
    return mv, (load_eval_scores(uri, client=client) if uri else None)


def _tag_decision(run_id: str, decision: str, reasons: list[str], client: MlflowClient | None) -> None:
    from mlflow.entities import RunTag

    text = json.dumps(list(reasons), ensure_ascii=False)
    while len(text) > MAX_TAG_VALUE and reasons:  # keep valid JSON: drop reasons from the end
        reasons = reasons[:-1]
        text = json.dumps(list(reasons) + ["... truncated"], ensure_ascii=False)
    _client(client).log_batch(run_id, tags=[RunTag(DECISION_TAG, decision), RunTag(REASONS_TAG, text)])


def tag_rejected(run_id: str, reasons: list[str], *, client: MlflowClient | None = None) -> None:
    """Mark the run's candidate as rejected by the gate: `llmops.decision=rejected`, `llmops.reasons=<json>`."""
    _tag_decision(run_id, "rejected", [str(r) for r in reasons], client)


def tag_accepted(run_id: str, *, client: MlflowClient | None = None) -> None:
    _tag_decision(run_id, "accepted", [], client)
