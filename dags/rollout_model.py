"""rollout_model: serve a registered version beside the champion, shift traffic step by step, promote or roll back.

Scheduled on the `registered_model` asset (the lifecycle's `register` emits it) and triggerable
from the form. The HTTPRoute is the single source of truth for the split and for the rollout's
state (annotations), so a retried task continues at the step the route records. Each step sets
the canary's weight, then analyses it in the triggerer (Prometheus, Argo Rollouts semantics) and
probes its answers against stable's. Failed/Error aborts (canary weight 0 first); Inconclusive asks
a person (`approve`), and no answer in time aborts. `champion` follows what serves.

One rollout per model at a time: max_active_runs=1 QUEUES a second trigger of this DAG; any other
writer finds the route claimed by the running rollout and is REFUSED (`RolloutBusy`).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from llmops_operators.approval import TimedChoiceOperator
from llmops_operators.canary import CanaryReadyOperator, CanaryStepsOperator, ScaleDownOperator
from llmops_operators.notifiers import RolloutAbortNotifier

from include.assets import REGISTERED_MODEL
from include.platforms import get_platform
from include.serving.rollout import ACTION, RULES, STEP
from include.serving.rollout import DEFAULTS as RULE_DEFAULTS
from include.settings import get_settings
from include.validation import form_params, with_words

DEFAULTS = get_platform().rollout_defaults  # this platform's
APPROVAL_TIMEOUT = timedelta(seconds=get_settings().approval_timeout_seconds)

PARAMS = form_params({
    "action": Param(RULE_DEFAULTS["action"], **ACTION.schema(), title="Action",
                    description="rollout: the version below as canary; rollback: back to the previous champion."),
    "model_version": with_words(Param(
        "", type=["null", "string"], pattern=r"^[0-9]*$", title="Model version",
        description="Optional. Registered version to roll out (e.g. 3). Empty: the asset event's, else "
                    "'challenger'."),
        "Empty, or a version number (digits only)."),
    "steps": with_words(Param(
        RULE_DEFAULTS["steps"], type="array", items=STEP.schema(),
        minItems=1, title="Steps (canary weight %)",
        description="Canary weights in percent, e.g. 10, 25, 50, 100."),
        "Increasing weights in %, each above 0, at most 100."),
    **{key: Param(DEFAULTS.get(key, RULE_DEFAULTS[key]), title=title, **RULES[key].schema())
       for key, title in (("interval_s", "Analysis interval (s)"), ("count", "Measurements per step"),
                          ("max_error_rate", "Max canary error rate"), ("max_latency_ratio", "Max p95 latency ratio"),
                          ("probe_size", "Quality probe sample size"),
                          ("traffic_rate", "Load generator rate (req/s, local; 0 = off)"),
                          ("ready_timeout_s", "Canary readiness deadline (s)"),
                          ("scale_down_delay_s", "Scale-down delay (s)"))},
    "analysis_policy": Param({}, type=["null", "object"], title="Analysis policy overrides",
                             description="Optional. Deep-merged over include/serving/policy.yaml."),
})


@dag(
    dag_id="rollout_model",
    schedule=[REGISTERED_MODEL],
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "ml-platform", "retries": 2, "retry_delay": timedelta(seconds=DEFAULTS["retry_delay_s"])},
    params=PARAMS,
    tags=["llmops", "serving"],
    doc_md=__doc__,
)
def rollout_model():
    @task(retries=0, multiple_outputs=False)
    def validate_params(params: dict, triggering_asset_events=None) -> dict:
        from include.lifecycle.rollout import validate_params

        req = validate_params(params)
        versions = [e.extra.get("version") for events in (triggering_asset_events or {}).values()
                    for e in events if e.extra.get("version")]
        if not req["model_version"] and versions:
            req["model_version"] = str(versions[-1])
        return req

    @task(multiple_outputs=False)
    def resolve(req: dict, dag_run=None) -> dict:
        from include.lifecycle.rollout import resolve

        return resolve(req, dag_run.run_id)

    @task
    def deploy_canary(plan: dict) -> str | None:
        from include.lifecycle.rollout import deploy

        # The model loads while `wait_ready` waits deferred; this task holds no slot meanwhile.
        return None if plan["noop"] else deploy(plan, wait_ready=False)

    @task.branch
    def decide(outcome: dict) -> str:
        return {"promote": "promote", "abort": "abort", "inconclusive": "approve"}.get(outcome["decision"],
                                                                                       "scale_down")

    @task(trigger_rule="none_failed_min_one_success", multiple_outputs=False)
    def promote(plan: dict) -> dict:
        from include.lifecycle.rollout import promote

        return promote(plan)

    @task(trigger_rule="none_failed_min_one_success", multiple_outputs=False,
          on_success_callback=[RolloutAbortNotifier(plan_task_id="resolve", outcome_task_id="analyse")])
    def abort(plan: dict, outcome: dict) -> dict:
        from include.lifecycle.rollout import abort

        return abort(plan, outcome.get("reason") or "aborted by the approver or the approval timeout")

    @task(trigger_rule="none_failed_min_one_success", multiple_outputs=False)
    def sync_aliases(plan: dict) -> dict:
        from include.lifecycle.rollout import sync_aliases

        if plan["noop"]:
            return {"phase": "noop"}
        return sync_aliases(plan)  # logs "rollout of <model> v<N>: <phase>; champion ..., challenger ..."

    req = validate_params()
    plan = resolve(req)
    ready = CanaryReadyOperator(task_id="wait_ready", plan=plan, request=req)
    steps = CanaryStepsOperator(task_id="analyse", plan=plan, request=req, execution_timeout=timedelta(hours=6))
    # No answer in time takes "abort", and the request and the task log say so (TimedChoiceOperator).
    approve = TimedChoiceOperator(
        task_id="approve", subject="Canary analysis inconclusive: promote or abort?",
        body="The analysis of {{ ti.xcom_pull(task_ids='resolve')['canary']['service'] }} had no usable data. "
             "{{ ti.xcom_pull(task_ids='analyse')['reason'] }}",
        options=["promote", "abort"], timeout_default="abort", response_timeout=APPROVAL_TIMEOUT)
    outcome = steps.output
    promoted, aborted = promote(plan), abort(plan, outcome)
    scale_down = ScaleDownOperator(task_id="scale_down", plan=plan, request=req,
                                   trigger_rule="none_failed_min_one_success")
    deploy_canary(plan) >> ready >> steps
    decide(outcome) >> [promoted, aborted, approve, scale_down]
    approve >> [promoted, aborted]
    [promoted, aborted] >> scale_down >> sync_aliases(plan)


rollout_model()
