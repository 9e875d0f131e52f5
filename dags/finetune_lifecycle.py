"""finetune_lifecycle: a curated dataset version -> a fine-tuned, evaluated, registered model.

Starts nightly, when prepare_dataset publishes a new curated version (asset event), or from the UI
trigger form. Bad params are refused by the form's schema, then by `validate_params`, before
anything is planned or launched. On eks the trainer is a NeMo Indexed Job on a Karpenter GPU pool;
on local the same entrypoint runs as local ranks. The candidate then answers the evaluation set and
RAGAS scores it; the gate compares it with floors and with the champion's per-sample scores, and
only a passing candidate is registered in MLflow (weights stay where training wrote them). Task ids
and XComs are the same on both profiles.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from llmops_operators.evaluation import evaluation_operator
from llmops_operators.notifiers import GateRejectionNotifier
from llmops_operators.training import training_job_operator

from include.assets import CURATED_DATASET
from include.scheduling.requests import hold_if_stopped
from include.settings import get_settings
from include.training.nemo_backend import NEMO_MODELS

LOCAL = get_settings().is_local
DEFAULTS = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(seconds=20 if LOCAL else 300),
}


def section(name: str, **params: Param) -> dict[str, Param]:
    for p in params.values():
        p.schema["section"] = name
    return params


PARAMS = {
    **section(
        "Model and data",
        base_model=Param("llama32_1b" if LOCAL else "llama31_8b", enum=sorted(NEMO_MODELS), title="Base model",
                         description="NeMo recipe to fine-tune (the local profile trains a tiny byte-level model)."),
        dataset_version=Param(None, type=["null", "string"], pattern=r"^[0-9a-f]{16}$", title="Dataset version",
                              description="Curated version to train on. Empty: the triggering asset event's, "
                                          "else the latest published."),
        method=Param("lora", enum=["lora", "full"], title="Method", description="LoRA adapters or full fine-tuning."),
        lora_rank=Param(16, type="integer", minimum=1, maximum=512, title="LoRA rank"),
    ),
    **section(
        "Training",
        max_steps=Param(240 if LOCAL else 1000, type="integer", minimum=1, maximum=1_000_000, title="Max steps"),
        learning_rate=Param(3e-3 if LOCAL else 1e-4, type="number", exclusiveMinimum=0, maximum=1,
                            title="Learning rate"),
        checkpoint_interval=Param(60 if LOCAL else 200, type="integer", minimum=1, maximum=1_000_000,
                                  title="Checkpoint every N steps"),
    ),
    **section(
        "Compute",
        nodes=Param(2 if LOCAL else 1, type="integer", minimum=1, maximum=64, title="Nodes",
                    description="Indexed Job completions (local: ranks)."),
        gpus_per_node=Param(1 if LOCAL else 8, enum=[1, 2, 4, 8], title="GPUs per node"),
        tensor_parallel=Param(1, enum=[1, 2, 4, 8], title="Tensor parallel"),
        pipeline_parallel=Param(1, type="integer", minimum=1, maximum=16, title="Pipeline parallel"),
        pool=Param("production", enum=["production", "experiment"], title="Pool",
                   description="production: on-demand gpu-training-pool; experiment: spot gpu-experiment-pool."),
        dry_run=Param(False, type="boolean", title="Dry run",
                      description="Plan and preflight only; launch nothing."),
        window=Param("now", enum=["now", "off-hours"], title="When to train",
                     description="off-hours: queue the priced plan; the offhours DAG admits it in a window."),
        priority=Param(0, type="integer", minimum=0, maximum=100, title="Off-hours priority"),
    ),
    **section(
        "Gate and registry",
        gate_policy=Param({}, type="object", title="Gate policy overrides",
                          description="Merged over include/evaluation/policy.yaml, e.g. "
                                      '{"confidence": 0.9, "metrics": {"rouge_score": {"floor": 0.1}}}.'),
        promote=Param(LOCAL, type="boolean", title="Promote to champion",
                      description="Move the champion alias to the new version (until the canary stage decides)."),
    ),
}


@dag(
    dag_id="finetune_lifecycle",
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
    @task(retries=0, multiple_outputs=False)
    def validate_params(params: dict) -> dict:
        from include.training.planning import validate_params

        return validate_params(params, get_settings())

    @task(multiple_outputs=False)
    def resolve_dataset(params: dict, triggering_asset_events=None) -> dict:
        from include.data.catalog import resolve_version

        versions = [e.extra.get("version") for events in (triggering_asset_events or {}).values()
                    for e in events if e.extra.get("version")]
        manifest = resolve_version(get_settings().data_root, params["dataset_version"], versions)
        return {"version": manifest["version"], "uri": manifest["uri"], "splits": manifest["splits"]}

    @task(multiple_outputs=True)
    def plan(dataset: dict, params: dict, dag_run=None) -> dict:
        from include.training.planning import build_plan

        return build_plan(params, dataset, get_settings(), dag_run.dag_id, dag_run.run_id)

    @task(multiple_outputs=False)
    def preflight(plan: dict) -> dict:
        from include.training.planning import preflight

        return preflight(plan, get_settings())

    @task.short_circuit
    def launch_unless_dry_run(params: dict) -> bool:
        return not params["dry_run"]

    @task.short_circuit
    def run_now_or_queue(plan: dict, estimate: dict, params: dict, dag_run=None) -> bool:
        from include.scheduling.requests import run_now_or_queue

        return run_now_or_queue(plan, estimate, params, dag_run.run_id, get_settings())

    @task(multiple_outputs=False)
    def log_actual_cost(plan: dict, estimate: dict, result: dict) -> dict:
        from include.scheduling.cost import log_actual_cost

        return log_actual_cost(plan, estimate, result, get_settings())

    @task(multiple_outputs=False)
    def setup_rendezvous(plan: dict) -> dict:
        from include.compute import setup_rendezvous

        return setup_rendezvous(plan)

    @task
    def teardown_rendezvous(plan: dict) -> None:
        from include.compute import teardown_rendezvous

        teardown_rendezvous(plan)

    @task(multiple_outputs=False)
    def collect_result(plan: dict) -> dict:
        from include.compute import read_result

        return read_result(plan)

    @task(multiple_outputs=True)
    def evaluation_jobs(plan: dict, result: dict, dataset: dict) -> dict:
        from include.registry.stages import eval_jobs

        return eval_jobs(plan, result, dataset, get_settings())

    @task(multiple_outputs=False, trigger_rule="none_failed")
    def gate(plan: dict, dataset: dict, jobs: dict, params: dict) -> dict:
        from include.registry.stages import gate

        return gate(plan, dataset, jobs, params["gate_policy"], get_settings())

    @task.branch
    def gate_decision(decision: dict) -> str:
        return "register" if decision["passed"] else "reject"

    @task(multiple_outputs=False)
    def register(plan: dict, result: dict, dataset: dict, decision: dict, params: dict) -> dict:
        from include.registry.stages import register

        return register(plan, result, dataset, decision, params["promote"], get_settings())

    @task(multiple_outputs=False, on_success_callback=[GateRejectionNotifier()])
    def reject(decision: dict) -> dict:
        from include.registry.stages import reject

        return reject(decision)

    dataset = resolve_dataset()
    validate_params() >> dataset
    planned = plan(dataset)
    checked = preflight(planned["plan"])
    rendezvous = setup_rendezvous(planned["plan"])
    train = training_job_operator(task_id="launch_training", plan=planned["plan"], pre_execute=hold_if_stopped,
                                  execution_timeout=timedelta(hours=2 if LOCAL else 72))
    checked >> launch_unless_dry_run() >> run_now_or_queue(planned["plan"], planned["estimate"]) >> rendezvous >> train
    train >> teardown_rendezvous(planned["plan"]).as_teardown(setups=rendezvous)
    result = collect_result(planned["plan"])
    train >> result
    log_actual_cost(planned["plan"], planned["estimate"], result)

    jobs = evaluation_jobs(planned["plan"], result, dataset)
    candidate = evaluation_operator(task_id="evaluate_candidate", job=jobs["candidate"])
    champion = evaluation_operator(task_id="evaluate_champion", job=jobs["champion"])
    decision = gate(planned["plan"], dataset, jobs)
    [candidate, champion] >> decision
    gate_decision(decision) >> [register(planned["plan"], result, dataset, decision), reject(decision)]


finetune_lifecycle()
