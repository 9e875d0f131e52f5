"""Extra links from a task to what it made: the MLflow run, the model version, the gate report, the
dataset manifest, and on eks the training JobSet and its pods in the cluster console.

Airflow 3 computes an operator's links once, when the task ends, in the task's own process
(`get_link(operator, ti_key=<the running task instance>)`), stores each under its `xcom_key`, and
the UI reads them back from XCom. So a link here reads the task's return value with
`XCom.get_value` and builds the URL with include/links.py; the URL bases come from settings or the
`mlflow_default` connection. A link with nothing to point at returns "" and is not shown. The UI
shows only http(s) and same-origin links, so a file under a file:// data root is linked through
the api-server's read-only file view (files_app.py), an s3:// one through the S3 console.

Most producing tasks are TaskFlow functions: `linked_task(*links, ...)` is `@task` with links (a
thin `_PythonDecoratedOperator` subclass); custom operators list theirs in `operator_extra_links`.
The link classes are also registered through the `llmops` plugin (plugins/llmops_plugin.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk import BaseOperatorLink
from airflow.sdk.bases.decorator import task_decorator_factory

MLFLOW_CONN_ID = "mlflow_default"


def _return_value(ti_key) -> Any:
    from airflow.sdk.execution_time.xcom import XCom  # the configured XCom backend

    return XCom.get_value(ti_key=ti_key, key="return_value")


def _connection_url(conn_id: str) -> str | None:
    """The connection's host as a URL (a full http(s) URL in host, or host + port + schema)."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - no such connection: the other sources decide
        return None
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        return None
    if host.startswith(("http://", "https://")):
        return host
    scheme = conn.schema if conn.schema in ("http", "https") else "https"
    return f"{scheme}://{host}{f':{conn.port}' if conn.port else ''}"


def mlflow_base() -> str | None:
    from include.links import mlflow_ui_base
    from include.settings import get_settings

    settings = get_settings()
    return mlflow_ui_base(settings, None if settings.mlflow_ui_url else _connection_url(MLFLOW_CONN_ID))


class _ValueLink(BaseOperatorLink):
    """A link built from the task's return value."""

    label: ClassVar[str] = ""

    @property
    def name(self) -> str:
        return self.label

    def url(self, value: Any) -> str | None:
        raise NotImplementedError

    def get_link(self, operator, *, ti_key) -> str:
        value = _return_value(ti_key)
        return (self.url(value) if isinstance(value, dict) else None) or ""


class MlflowRunLink(_ValueLink):
    label = "MLflow run"

    def url(self, value: dict) -> str | None:
        from include.links import mlflow_run_url

        return mlflow_run_url(mlflow_base(), value)


class ModelVersionLink(_ValueLink):
    label = "Model version"

    def url(self, value: dict) -> str | None:
        from include.links import model_version_url

        return model_version_url(mlflow_base(), value)


def storage_url(uri: str | None) -> str | None:
    """A storage object's browser URL: the S3 console, or the api-server's file view (files_app.py)."""
    from airflow.sdk.configuration import conf

    from include.links import object_url
    from include.settings import get_settings

    settings = get_settings()
    return object_url(uri, settings.s3_console_url, data_root=settings.data_root,
                      airflow_base=conf.get("api", "base_url", fallback="") or "")


class GateReportLink(_ValueLink):
    label = "Gate report"

    def url(self, value: dict) -> str | None:
        return storage_url(value.get("report_uri"))


class DatasetManifestLink(_ValueLink):
    label = "Dataset manifest"

    def url(self, value: dict) -> str | None:
        from include.links import manifest_uri

        return storage_url(manifest_uri(value))


class _TrainingJobLink(BaseOperatorLink):
    """The run's training JobSet (named from dag_id and run_id, as the launcher names it) or its pods."""

    label: ClassVar[str] = ""
    resource: ClassVar[str] = "jobsets"

    @property
    def name(self) -> str:
        return self.label

    def get_link(self, operator, *, ti_key) -> str:
        from include.links import k8s_console_url
        from include.settings import get_settings
        from include.training.k8s_job import JOB_LABEL, jobset_name

        settings = get_settings()
        name = jobset_name(ti_key.dag_id, ti_key.run_id)
        return k8s_console_url(settings.k8s_console_url, self.resource, settings.training_namespace, name,
                               selector=f"{JOB_LABEL}={name}") or ""


class TrainingJobLink(_TrainingJobLink):
    label = "Training JobSet"


class TrainingPodsLink(_TrainingJobLink):
    label = "Training pods"
    resource = "pods"


ALL_LINKS: tuple[type[BaseOperatorLink], ...] = (MlflowRunLink, ModelVersionLink, GateReportLink, DatasetManifestLink,
                                                 TrainingJobLink, TrainingPodsLink)


class LinkedPythonOperator(_PythonDecoratedOperator):
    """`@task` with extra links: the links are per task, given to `linked_task`."""

    def __init__(self, *, links: tuple[type[BaseOperatorLink], ...] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.operator_extra_links = tuple(link() for link in links)


def linked_task(*links: type[BaseOperatorLink], **kwargs) -> Callable:
    """`@task(**kwargs)` whose task shows `links` (classes above) in the UI."""
    return task_decorator_factory(decorated_operator_class=LinkedPythonOperator, links=links, **kwargs)
