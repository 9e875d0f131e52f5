"""Tell people when the gate rejects a candidate.

Posts a JSON message to the webhook in the Airflow connection `llmops_alerts` (its host holds the
full URL, e.g. a Slack or Teams incoming webhook; the URL is the secret, so it lives only there). With
no such connection the message is logged, so a rejection is never silent.
"""

from __future__ import annotations

import json
import logging
import urllib.request

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


class GateRejectionNotifier(BaseNotifier):
    template_fields = ("conn_id",)

    def __init__(self, decision_task_id: str, conn_id: str = "llmops_alerts", timeout_s: float = 10):
        super().__init__()
        self.decision_task_id = decision_task_id  # the task whose XCom holds the gate's decision
        self.conn_id = conn_id
        self.timeout_s = timeout_s

    def message(self, context) -> dict:
        decision = context["ti"].xcom_pull(task_ids=self.decision_task_id) or {}
        return {
            "text": f"{context['dag'].dag_id} {context['run_id']}: candidate rejected by the evaluation gate",
            "reasons": decision.get("reasons", []),
            "report_uri": decision.get("report_uri"),
            "mlflow_run_id": decision.get("mlflow_run_id"),
        }

    def notify(self, context) -> None:
        from airflow.sdk import BaseHook

        body = self.message(context)
        log.warning("%s: %s", body["text"], "; ".join(body["reasons"]))
        try:
            conn = BaseHook.get_connection(self.conn_id)
        except Exception:  # no connection configured: the log line above is the notification
            return
        url = (conn.host or "").strip()
        if not url.startswith(("https://", "http://")):
            log.warning("connection %s: host must be the webhook's full URL; not posting", self.conn_id)
            return
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - URL from a connection
            log.info("rejection posted to %s: HTTP %s", self.conn_id, response.status)


class RolloutAbortNotifier(GateRejectionNotifier):
    """A rolled-back canary: the same webhook connection, the rollout's reason."""

    def __init__(self, plan_task_id: str, outcome_task_id: str, **kwargs) -> None:
        super().__init__(decision_task_id=outcome_task_id, **kwargs)
        self.plan_task_id = plan_task_id  # the task whose XCom holds the resolved versions

    def message(self, context) -> dict:
        plan = context["ti"].xcom_pull(task_ids=self.plan_task_id) or {}
        outcome = context["ti"].xcom_pull(task_ids=self.decision_task_id) or {}
        canary = plan.get("canary") or {}
        return {
            "text": f"{context['dag'].dag_id} {context['run_id']}: canary {canary.get('service')} rolled back",
            "reasons": [outcome.get("reason") or "aborted by the approver or the approval timeout"],
            "model": plan.get("model"),
            "version": canary.get("version"),
        }
