"""The `llmops` Airflow plugin: registers the project's operator extra links (llmops_operators/links.py).

The operators and `linked_task` carry their links themselves (Airflow 3 computes a link when the
task ends and stores it in XCom, where the UI reads it); registering them here makes them known to
the plugin manager (`airflow plugins` lists them). Their `operators` lists stay empty, so the
plugin never attaches a link to a task that did not ask for it.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from llmops_operators.links import ALL_LINKS


class LlmopsPlugin(AirflowPlugin):
    name = "llmops"
    operator_extra_links = [link() for link in ALL_LINKS]
