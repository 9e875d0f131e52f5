"""The MLflow adapter for the lifecycle (tracking in tracking.py, the model registry here).

Safe to call again from a retried or rerun task.

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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from include.registry.tracking import (  # noqa: F401 - the adapter's one import surface
    BASE_MODEL_TAG,
    CHALLENGER,
    CHAMPION,
    DAG_ID_TAG,
    DATASET_TAG,
    DECISION_TAG,
    EVAL_SCORES_TAG_PREFIX,
    GIT_COMMIT_TAG,
    IMAGE_TAG_PREFIX,
    MAX_KEY,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    METHOD_TAG,
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    PREVIOUS_CHAMPION_TAG,
    REASONS_TAG,
    RUN_ID_TAG,
    RUN_KEY_TAG,
    _client,
    _error_code,
    decided_runs,
    experiment_of,
    finish_run,
    flatten,
    get_client,
    get_or_create_run,
    lineage_tags,
    log_artifacts,
    log_training,
    quote_filter_value,
    read_artifact_text,
    run_key,
    safe_key,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion


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
