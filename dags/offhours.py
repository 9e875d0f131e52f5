"""offhours: admit queued training into off-hours windows, stop what would overrun, clean up.

Windows, budgets and cleanup ages live in include/scheduling/windows.yaml (the NodePools'
disruption budgets are generated from it). Every few minutes one tick:
- reconciles admitted requests with their finetune_lifecycle runs;
- at window open restores the experiment pool's GPU limit (from k8s/) and admits waiting requests
  by priority then age, within the pool's GPU budget, the window's remaining time and its cost
  budget; refuses at once what can never fit; triggers each admitted request as
  finetune_lifecycle run `offhours__<request id>` (the same run id on a resume, so it resumes
  from its checkpoint);
- near close stops experiment runs that would overrun (SIGTERM, checkpoint within the grace
  period) and queues them again; production runs continue;
- once per close scales the experiment pool to zero and removes leftovers and stale data;
- writes the window's report (JSON + HTML) under <data root>/offhours/reports/.
Requests come from finetune_lifecycle runs triggered with `window: off-hours`.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronTriggerTimetable, Param, dag, task

from include.dag_ids import FINETUNE_LIFECYCLE
from include.settings import get_settings


@dag(
    dag_id="offhours",
    schedule=CronTriggerTimetable(get_settings().offhours_cron, timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "ml-platform", "retries": 1},
    params={"dry_run": Param(False, type="boolean", title="Dry run",
                             description="List what cleanup and stops would do; change nothing, admit nothing.")},
    tags=["llmops", "scheduling"],
    doc_md=__doc__,
)
def offhours():
    @task(multiple_outputs=False)
    def tick(params: dict) -> dict:
        from include.lifecycle.offhours import run_tick

        return run_tick(params["dry_run"])

    @task(multiple_outputs=False)
    def admitted(result: dict) -> list[dict]:
        return result["triggers"]

    @task(multiple_outputs=False, trigger_rule="all_done")
    def report(result: dict) -> dict:
        from include.lifecycle.offhours import write_report

        return write_report(result)

    result = tick()
    TriggerDagRunOperator.partial(
        task_id="trigger_admitted", trigger_dag_id=FINETUNE_LIFECYCLE, reset_dag_run=True,
        wait_for_completion=False,
    ).expand_kwargs(admitted(result)) >> report(result)


offhours()
