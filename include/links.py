"""URLs for what a run made: the MLflow run and model version, storage objects, the cluster's Job and pods.

Plain functions of a task's return value and settings (no Airflow, no network), so the extra
links on the tasks (plugins/llmops_operators/links.py) and their tests share one builder. Each
returns None when there is nothing to link to (a value without the key, no UI configured); the
UI then leaves the link out.

- MLflow UI: `LLMOPS_MLFLOW_UI_URL`, else the host of the Airflow connection `mlflow_default`
  (resolved by the caller), else the tracking URI when it is http(s); for a SQLite or file store,
  the address `mlflow ui` serves (http://127.0.0.1:5000).
- Storage: an s3:// object opens in the S3 console (`LLMOPS_S3_CONSOLE_URL`, a template with
  {bucket} and {key}: the AWS console by default, a MinIO console in docker compose). A file://
  object under a file:// data root opens through the api-server (`FILES_PREFIX`, the `llmops`
  plugin's read-only file view): the UI drops file:// links, and a browser may not open them anyway.
  That view serves only the files these links name (`LINKED_FILES`), never the raw data or the
  quarantine (unredacted records), and nothing outside the data root (`served_file`).
- Cluster console: `LLMOPS_K8S_CONSOLE_URL`, a template with {resource} (jobsets or pods),
  {namespace}, {name} and {selector} (the label selector of the Job's pods, URL-encoded); unset:
  no cluster links.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote

from include.dag_ids import FINETUNE_LIFECYCLE, PREPARE_DATASET

LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"  # `mlflow ui --backend-store-uri sqlite:///.mlflow/mlflow.db`
AWS_S3_CONSOLE = "https://console.aws.amazon.com/s3/object/{bucket}?prefix={key}"
FILES_PREFIX = "/llmops"  # where the plugin's file view is mounted on the api-server
FILES_ROUTE = "/files"
# What the file view serves, relative to the data root, and the DAGs whose runs link it (a user needs
# read access to one of them). One segment per `*`: no pattern reaches into raw/ or a quarantine.
LINKED_FILES: dict[str, tuple[str, ...]] = {
    "curated/*/manifest.json": (PREPARE_DATASET, FINETUNE_LIFECYCLE),
    "evaluations/*/gate/report.html": (FINETUNE_LIFECYCLE,),
}


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


def object_url(uri: str | None, s3_console: str = AWS_S3_CONSOLE, *, data_root: str | None = None,
               airflow_base: str = "") -> str | None:
    """A browser URL for a storage object: the S3 console for s3://; for a file:// object under the
    file:// `data_root`, the api-server's file view (root-relative, or under `airflow_base`, the
    `[api] base_url`); None for anything else (a file:// URL the UI would drop)."""
    if not uri:
        return None
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return None
    if scheme == "file":
        relative = data_root_relative(uri, data_root)
        if relative is None or linked_dags(relative) is None:
            return None
        return f"{(airflow_base or '').rstrip('/')}{FILES_PREFIX}{FILES_ROUTE}/{quote(relative, safe='/')}"
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            return None
        return (s3_console or AWS_S3_CONSOLE).format(bucket=quote(bucket, safe=""), key=quote(key, safe="/"))
    return None


def data_root_relative(uri: str, data_root: str | None) -> str | None:
    """`uri`'s path below the file:// `data_root` ('evaluations/ft-1/gate/report.html'), or None when
    either is not file:// or the object is not under the root."""
    if not data_root or not uri.startswith("file://") or not data_root.startswith("file://"):
        return None
    root = PurePosixPath(unquote(data_root.removeprefix("file://")))
    path = PurePosixPath(unquote(uri.removeprefix("file://")))
    if ".." in path.parts or not path.is_relative_to(root) or path == root:
        return None
    return path.relative_to(root).as_posix()


def linked_dags(relative: str) -> tuple[str, ...] | None:
    """The DAGs whose links name this data-root-relative path; None when no link does."""
    parts = PurePosixPath(relative).parts
    for pattern, dags in LINKED_FILES.items():
        wanted = PurePosixPath(pattern).parts
        if len(parts) == len(wanted) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True)):
            return dags
    return None


def served_file(root: Path, relative: str) -> tuple[Path, tuple[str, ...]] | None:
    """The file the view may serve for `relative` (a URL path below `root`, the data root on this disk)
    and the DAGs that link it; None for anything else: a pattern no link names, '..', an absolute or
    empty path, a symlink out of the root, a directory, a missing file."""
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/"):
        return None
    parts = PurePosixPath(relative).parts
    if any(part in ("..", ".") for part in parts) or relative != PurePosixPath(relative).as_posix():
        return None
    dags = linked_dags(relative)
    if dags is None:
        return None
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path, dags


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
