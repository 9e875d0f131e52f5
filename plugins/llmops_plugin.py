"""The `llmops` Airflow plugin: the project's operator extra links, the read-only file view they
open, and the listener that writes `airflow dags test` task logs where the UI reads them.

The operators and `linked_task` carry their links themselves (Airflow 3 computes a link when the
task ends and stores it in XCom, where the UI reads it); registering them here makes them known to
the plugin manager (`airflow plugins` lists them). Their `operators` lists stay empty, so the
plugin never attaches a link to a task that did not ask for it.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from llmops_operators import dag_test_logs
from llmops_operators.files_app import FILES_PREFIX, app
from llmops_operators.links import ALL_LINKS


class LlmopsPlugin(AirflowPlugin):
    name = "llmops"
    operator_extra_links = [link() for link in ALL_LINKS]
    # The gate report and dataset manifest of a file:// data root, served on the api-server (links.py).
    fastapi_apps = [{"app": app, "url_prefix": FILES_PREFIX, "name": "llmops run files"}]
    listeners = [dag_test_logs]
