"""URLs for what a run made: the MLflow run and model version, storage objects, the cluster's Job and pods.

Plain functions of a task's return value and settings (no Airflow, no network), so the extra
links on the tasks (plugins/llmops_operators/links.py) and their tests share one builder. Each
returns None when there is nothing to link to (a value without the key, no UI configured); the
link then shows disabled.

- MLflow UI: `LLMOPS_MLFLOW_UI_URL`, else the host of the Airflow connection `mlflow_default`
  (resolved by the caller), else the tracking URI when it is http(s); for a SQLite or file store,
  the address `mlflow ui` serves (http://127.0.0.1:5000).
- Storage: an s3:// object opens in the S3 console (`LLMOPS_S3_CONSOLE_URL`, a template with
  {bucket} and {key}: the AWS console by default, a MinIO console in docker compose); a file://
  object is linked as is.
- Cluster console: `LLMOPS_K8S_CONSOLE_URL`, a template with {resource} (jobsets or pods),
  {namespace}, {name} and {selector} (the label selector of the Job's pods, URL-encoded); unset:
  no cluster links.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"  # `mlflow ui --backend-store-uri sqlite:///.mlflow/mlflow.db`
AWS_S3_CONSOLE = "https://console.aws.amazon.com/s3/object/{bucket}?prefix={key}"


def mlflow_ui_base(settings, connection_url: str | None = None) -> str | None:
    """The MLflow UI a person opens: the setting, the connection, an http(s) tracking URI, or local `mlflow ui`."""
    for candidate in (settings.mlflow_ui_url, connection_url, settings.mlflow_tracking_uri):
        if candidate and candidate.startswith(("http://", "https://")):
            return candidate.rstrip("/")
    # A store without a server (SQLite, a file store) is browsed with `mlflow ui` on this machine.
    return LOCAL_MLFLOW_UI if settings.mlflow_tracking_uri.startswith(("sqlite:", "file:", "/")) else None


def mlflow_run_url(base: str | None, value: Mapping[str, Any] | None) -> str | None:
    """The run page, from a task value carrying `mlflow_run_id` (and `mlflow_experiment_id`)."""
    run, experiment = (value or {}).get("mlflow_run_id"), (value or {}).get("mlflow_experiment_id")
    if not base or not run or experiment is None:
        return None
    return f"{base}/#/experiments/{quote(str(experiment), safe='')}/runs/{quote(str(run), safe='')}"


def model_version_url(base: str | None, value: Mapping[str, Any] | None) -> str | None:
    """The registered version's page, from a task value carrying `model_name` and `version`."""
    name, version = (value or {}).get("model_name"), (value or {}).get("version")
    if not base or not name or version is None:
        return None
    return f"{base}/#/models/{quote(str(name), safe='')}/versions/{quote(str(version), safe='')}"


def object_url(uri: str | None, s3_console: str = AWS_S3_CONSOLE) -> str | None:
    """A browser URL for a storage object: the S3 console for s3://, the URI itself for file://."""
    if not uri:
        return None
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return None
    if scheme == "file":
        return uri
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            return None
        return (s3_console or AWS_S3_CONSOLE).format(bucket=quote(bucket, safe=""), key=quote(key, safe="/"))
    return None


def manifest_uri(value: Mapping[str, Any] | None) -> str | None:
    """The dataset manifest a task value names: publish's `manifest_uri`, or `<uri>/manifest.json`."""
    value = value or {}
    if value.get("manifest_uri"):
        return value["manifest_uri"]
    return f"{value['uri']}/manifest.json" if value.get("uri") and value.get("version") else None


def k8s_console_url(template: str | None, resource: str, namespace: str, name: str, selector: str = "") -> str | None:
    """The cluster console's page for a resource (`jobsets`) or a pod list (`pods` with a label selector)."""
    if not template:
        return None
    return template.format(resource=resource, namespace=quote(namespace, safe=""), name=quote(name, safe=""),
                           selector=quote(selector, safe=""))
