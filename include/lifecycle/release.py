"""The lifecycle's stages after training: what to evaluate, the gate, and registration or rejection.

Each function is one DAG task's body. All read their inputs from storage and MLflow (not from large
XComs) and are idempotent: one MLflow run per DAG run, one model version per DAG run, and the
champion's scores on an eval set are computed once and kept on its model version.
"""

from __future__ import annotations

import logging
import os
import subprocess

from include.lifecycle import summaries
from include.lifecycle.failfast import fail_fast
from include.platforms import get_platform
from include.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)


def evaluation_uri(settings: Settings, plan: dict, role: str) -> str:
    return f"{settings.data_root}/evaluations/{plan['run_name']}/{role}"


def git_commit() -> str:
    """The commit the DAGs run from: baked into images as LLMOPS_GIT_COMMIT, else asked of git."""
    if os.environ.get("LLMOPS_GIT_COMMIT"):
        return os.environ["LLMOPS_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def lineage(plan: dict, dataset: dict, settings: Settings) -> dict[str, str]:
    from include.registry.mlflow_registry import lineage_tags

    return lineage_tags(dag_id=plan["dag_id"], run_id=plan["run_id"], dataset_version=dataset["version"],
                        base_model=plan["base_model"], method=plan["method"], git_commit=git_commit(),
                        images={"trainer": plan["image"], "evaluator": settings.evaluator_image},
                        backend=plan["backend"])


@fail_fast
def eval_jobs(plan: dict, result: dict, dataset: dict, settings: Settings) -> dict[str, dict | None]:
    """The candidate's evaluation job, and the champion's when its scores on this set are not on record."""
    from include.registry.mlflow_registry import champion_scores

    make = get_platform(settings).jobs().evaluation_job
    jobs = {"candidate": make(result["model_uri"], dataset["uri"], evaluation_uri(settings, plan, "candidate")),
            "champion": None}
    champion, scores = champion_scores(settings.registered_model_name, dataset["version"])
    if champion is not None and scores is None:
        jobs["champion"] = make(champion.source, dataset["uri"],
                                evaluation_uri(settings, plan, f"champion-v{champion.version}"))
    log.info("evaluation: candidate %s%s", result["model_uri"],
             "" if champion is None else f"; champion v{champion.version} " + (
                 "scores on record for this dataset" if jobs["champion"] is None else "to be scored too"))
    return jobs


def _scores(output_uri: str) -> list[dict]:
    from include.evaluation.run import read_result
    from include.storage import files

    return files.read_jsonl(read_result(output_uri)["scores_uri"])


@fail_fast
def gate(plan: dict, dataset: dict, jobs: dict, policy: dict, settings: Settings) -> dict:
    """Decide on per-sample evidence; the JSON and HTML reports go to storage and the MLflow run.

    `policy` is the run's gate policy as `validate_params` resolved and checked it (its XCom): trusted.
    """
    import json

    from include.evaluation.gate import GatePolicy, decide
    from include.evaluation.report import render_html
    from include.registry import mlflow_registry as reg
    from include.storage import files

    candidate = _scores(jobs["candidate"]["output_uri"])
    if jobs["champion"] is not None:
        champion = _scores(jobs["champion"]["output_uri"])
    else:
        champion = reg.champion_scores(settings.registered_model_name, dataset["version"])[1]
    decision = decide(candidate, champion, GatePolicy.from_dict(policy))
    report = render_html(decision, candidate, champion, context={"dataset": dataset["version"],
                                                                  "run": plan["run_id"]})
    out = evaluation_uri(settings, plan, "gate")
    files.write_json(f"{out}/decision.json", decision)
    files.write_bytes(f"{out}/report.html", report.encode())

    run = reg.get_or_create_run(settings.mlflow_experiment, plan["dag_id"], plan["run_id"],
                                lineage(plan, dataset, settings), run_name=plan["run_name"])
    manifest = files.read_bytes(f"{dataset['uri']}/manifest.json")
    reg.log_artifacts(run, {"data/manifest.json": manifest, "eval/decision.json": json.dumps(decision, indent=2),
                            "eval/report.html": report, "eval/policy.json": json.dumps(decision["policy"], indent=2),
                            "eval/candidate_scores.jsonl": "\n".join(json.dumps(r) for r in candidate)})
    means = {f"eval.{m}": v["candidate_mean"] for m, v in decision["metrics"].items()
             if v["candidate_mean"] is not None}
    reg.log_training(run, {}, [], means)
    champion = reg.champion(settings.registered_model_name) if decision["champion_present"] else None
    log.info("%s", summaries.gate(decision, f"{out}/report.html", champion.version if champion else None))
    return {"passed": decision["passed"], "reasons": decision["reasons"], "means": means,
            "champion_present": decision["champion_present"], "mlflow_run_id": run,
            "mlflow_experiment_id": reg.experiment_of(run), "report_uri": f"{out}/report.html"}


def register(plan: dict, result: dict, dataset: dict, decision: dict, settings: Settings) -> dict:
    """Log the training to the run, register the weights where they lie, alias them `challenger`.

    `champion` never moves here: only the rollout (rollout_model) promotes, once the canary has proved
    the version under real traffic.
    """
    from include.registry import mlflow_registry as reg
    from include.storage import files

    run = decision["mlflow_run_id"]
    metrics = files.read_json(f"{plan['output_uri']}/metrics.json")
    series = [{"step": p["step"], "train_loss": p["loss"]} for p in metrics.get("history", [])]
    summary = {f"train.{k}": v for k, v in result["metrics"].items() if isinstance(v, int | float)}
    reg.log_training(run, plan, series, summary)
    name = settings.registered_model_name
    version = reg.register_candidate(name, result["model_uri"], run, lineage(plan, dataset, settings))
    scores = _scores(evaluation_uri(settings, plan, "candidate"))
    reg.set_eval_scores(name, version, dataset["version"], reg.log_eval_scores(run, dataset["version"], scores))
    reg.tag_accepted(run)
    reg.finish_run(run)
    champion = reg.champion(name)
    out = {"model_name": name, "version": version, "source": result["model_uri"],
           "champion": champion.version if champion else None, "mlflow_run_id": run,
           "mlflow_experiment_id": decision.get("mlflow_experiment_id")}
    log.info("%s", summaries.registered(out))
    return out


def reject(decision: dict) -> dict:
    from include.registry import mlflow_registry as reg

    reg.tag_rejected(decision["mlflow_run_id"], decision["reasons"])
    reg.finish_run(decision["mlflow_run_id"])
    out = {"rejected": True, "reasons": decision["reasons"], "mlflow_run_id": decision["mlflow_run_id"],
           "mlflow_experiment_id": decision.get("mlflow_experiment_id")}
    log.info("%s", summaries.rejected(out))
    return out
