"""finetune_lifecycle: a curated dataset version -> a fine-tuned, evaluated, registered model.

Starts nightly, when prepare_dataset publishes a new curated version (asset event), or from the UI
trigger form. A nightly, asset-triggered or backfill run with nothing new (no version published, or
the version already decided for the same base model and method) skips at resolve_dataset; a manual
trigger is the explicit ask and trains (a missing version fails it). Bad params are refused by the
form's schema, then by `validate_params` (from the same rules), before anything is planned or launched;
the tasks after it receive its checked values and trust them. On eks the trainer
is a NeMo JobSet (one Indexed Job, all-or-nothing restarts) on a Karpenter GPU pool; on local the
same entrypoint runs as local ranks. The candidate then answers the evaluation set and RAGAS scores
it; the gate compares it with floors and with the champion's per-sample scores, and only a passing
candidate is registered in MLflow (weights stay where training wrote them). Task ids and XComs are
the same on both profiles.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from llmops_operators.evaluation import evaluation_operator
from llmops_operators.links import DatasetManifestLink, GateReportLink, MlflowRunLink, ModelVersionLink, linked_task
from llmops_operators.notifiers import GateRejectionNotifier
from llmops_operators.training import training_job_operator

from include.assets import CURATED_DATASET, REGISTERED_MODEL
from include.dag_ids import FINETUNE_LIFECYCLE
from include.evaluation.gate import override_schema
from include.lifecycle.training import hold_if_stopped
from include.platforms import get_platform
from include.settings import get_settings
from include.training.params import PARAM_DEFAULTS, param_schemas
from include.validation import form_params

JOBS = get_platform().jobs()  # this platform's container jobs: its defaults, timeouts and trainer backend
DEFAULT = PARAM_DEFAULTS[JOBS.trainer_backend]
RULES = param_schemas()  # the same rules validate_params and the trainer check
DEFAULTS = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(seconds=JOBS.retry_delay_s),
}


def section(name: str, **params: Param) -> dict[str, Param]:
    for p in params.values():
        p.schema["section"] = name
    return params


def ruled(name: str, default, **ui) -> Param:
    """A Param whose schema is the field's rule (include/training/params.py), its words included."""
    return Param(default, **RULES[name], **ui)


PARAMS = form_params({
    **section(
        "Model and data",
        base_model=ruled("base_model", DEFAULT["base_model"], title="Base model",
                         description="NeMo recipe to fine-tune (the local profile trains a tiny byte-level model)."),
        dataset_version=ruled("dataset_version", None, title="Dataset version",
                              description="Optional. Curated version to train on, as prepare_dataset prints "
                                          "it (e.g. 0123456789abcdef). Empty: the triggering asset event's, else "
                                          "the latest published. A manual run trains it even if it was trained "
                                          "before; nightly and asset-triggered runs skip then."),
        method=ruled("method", "lora", title="Method", description="LoRA adapters or full fine-tuning."),
        lora_rank=ruled("lora_rank", 16, title="LoRA rank"),
    ),
    **section(
        "Training",
        max_steps=ruled("max_steps", DEFAULT["max_steps"], title="Max steps"),
        learning_rate=ruled("learning_rate", DEFAULT["learning_rate"], title="Learning rate"),
        checkpoint_interval=ruled("checkpoint_interval", DEFAULT["checkpoint_interval"],
                                  title="Checkpoint every N steps"),
    ),
    **section(
        "Compute",
        nodes=ruled("nodes", DEFAULT["nodes"], title="Nodes", description="Nodes: one pod each (local: ranks)."),
        gpus_per_node=ruled("gpus_per_node", DEFAULT["gpus_per_node"], title="GPUs per node"),
        tensor_parallel=ruled("tensor_parallel", 1, title="Tensor parallel"),
        pipeline_parallel=ruled("pipeline_parallel", 1, title="Pipeline parallel"),
        pool=ruled("pool", "production", title="Pool",
                   description="production: on-demand gpu-training-pool; experiment: spot gpu-experiment-pool."),
        dry_run=Param(False, type="boolean", title="Dry run",
                      description="Plan and preflight only; launch nothing."),
        window=Param("now", enum=["now", "off-hours"], title="When to train",
                     description="off-hours: queue the priced plan; the offhours DAG admits it in a window."),
        priority=Param(0, type="integer", minimum=0, maximum=100, title="Off-hours priority",
                       description="Higher is admitted first within a window."),
    ),
    **section(
        "Gate and registry",
        # The schema is the gate's own override rules (include/evaluation/gate.py): a typo or a
        # loosening is refused by the form and the REST API, before a run exists.
        gate_policy=Param({}, title="Gate policy overrides", **override_schema(get_platform().name),
                          description="Optional. Merged over include/evaluation/policy.yaml, "
                                      'e.g. {"confidence": 0.9, "metrics": {"rouge_score": {"floor": 0.3}}}.'),
    ),
})


@dag(
    dag_id=FINETUNE_LIFECYCLE,
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
                                 assets=CURATED_DATASET),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULTS,
    params=PARAMS,
    tags=["llmops", "training"],
    doc_md=__doc__,
)
def finetune_lifecycle():
    # The one check of the trigger's params: the tasks after it read its output, already valid.
    @task(retries=0, multiple_outputs=False)
    def validate_params(params: dict) -> dict:
        from include.lifecycle.training import validate_params

        return validate_params(params)

    @linked_task(DatasetManifestLink, multiple_outputs=False)
    def resolve_dataset(validated: dict, triggering_asset_events=None, dag_run=None) -> dict:
        from include.lifecycle.training import resolve_dataset

        return resolve_dataset(validated["training"], triggering_asset_events, run_type=dag_run.run_type)

    @task(multiple_outputs=True)
    def plan(validated: dict, dataset: dict, dag_run=None) -> dict:
        from include.lifecycle.training import plan

        return plan(validated, dataset, dag_run.dag_id, dag_run.run_id)

    @task(multiple_outputs=False)
    def preflight(plan: dict) -> dict:
        from include.lifecycle.training import preflight

        return preflight(plan)

    @task.short_circuit
    def launch_unless_dry_run(params: dict) -> bool:
        return not params["dry_run"]

    @task.short_circuit
    def run_now_or_queue(plan: dict, estimate: dict, params: dict, dag_run=None) -> bool:
        from include.lifecycle.training import run_now_or_queue

        return run_now_or_queue(plan, estimate, params, dag_run.run_id, get_settings())

    @task(multiple_outputs=False)
    def log_actual_cost(plan: dict, estimate: dict, result: dict) -> dict:
        from include.lifecycle.training import log_actual_cost

        return log_actual_cost(plan, estimate, result, get_settings())

    @task(multiple_outputs=False)
    def setup_rendezvous(plan: dict) -> dict:
        from include.lifecycle.training import setup_rendezvous

        return setup_rendezvous(plan)

    @task
    def teardown_rendezvous(plan: dict) -> None:
        from include.lifecycle.training import teardown_rendezvous

        teardown_rendezvous(plan)

    @task(multiple_outputs=False)
    def collect_result(plan: dict) -> dict:
        from include.lifecycle.training import collect_result

        return collect_result(plan)

    @task(multiple_outputs=True)
    def evaluation_jobs(plan: dict, result: dict, dataset: dict) -> dict:
        from include.lifecycle.release import eval_jobs

        return eval_jobs(plan, result, dataset, get_settings())

    # Runs when the champion's evaluation was skipped (scores on record), not when everything before
    # it was (a run with nothing to train skips from resolve_dataset on).
    @linked_task(MlflowRunLink, GateReportLink, multiple_outputs=False, trigger_rule="none_failed_min_one_success")
    def gate(plan: dict, dataset: dict, jobs: dict, policy: dict) -> dict:
        from include.lifecycle.release import gate

        return gate(plan, dataset, jobs, policy, get_settings())

    @task.branch
    def gate_decision(decision: dict) -> str:
        return "register" if decision["passed"] else "reject"

    @linked_task(ModelVersionLink, MlflowRunLink, multiple_outputs=False, outlets=[REGISTERED_MODEL])
    def register(plan: dict, result: dict, dataset: dict, decision: dict, outlet_events=None) -> dict:
        from include.assets import registered_model_extra
        from include.lifecycle.release import register

        out = register(plan, result, dataset, decision, get_settings())
        # The rollout (rollout_model) is scheduled on this event: it serves the new version as a canary.
        outlet_events[REGISTERED_MODEL].extra = registered_model_extra(
            model_name=out["model_name"], version=out["version"], source_uri=out["source"],
            dataset_version=dataset["version"], run_id=plan["run_id"])
        return out

    @linked_task(MlflowRunLink, multiple_outputs=False,
                 on_success_callback=[GateRejectionNotifier(decision_task_id="gate")])
    def reject(decision: dict) -> dict:
        from include.lifecycle.release import reject

        return reject(decision)

    validated = validate_params()
    dataset = resolve_dataset(validated)
    planned = plan(validated, dataset)
    checked = preflight(planned["plan"])
    rendezvous = setup_rendezvous(planned["plan"])
    train = training_job_operator(task_id="launch_training", plan=planned["plan"], pre_execute=hold_if_stopped,
                                  execution_timeout=timedelta(hours=JOBS.training_timeout_h))
    checked >> launch_unless_dry_run() >> run_now_or_queue(planned["plan"], planned["estimate"]) >> rendezvous >> train
    train >> teardown_rendezvous(planned["plan"]).as_teardown(setups=rendezvous)
    result = collect_result(planned["plan"])
    train >> result
    log_actual_cost(planned["plan"], planned["estimate"], result)

    jobs = evaluation_jobs(planned["plan"], result, dataset)
    candidate = evaluation_operator(task_id="evaluate_candidate", job=jobs["candidate"], role="candidate")
    champion = evaluation_operator(task_id="evaluate_champion", job=jobs["champion"], role="champion")
    decision = gate(planned["plan"], dataset, jobs, planned["gate_policy"])
    [candidate, champion] >> decision
    gate_decision(decision) >> [register(planned["plan"], result, dataset, decision), reject(decision)]


finetune_lifecycle()
