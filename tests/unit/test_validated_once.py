"""Each trigger parameter is validated once per run before the trainer's container, and once inside it.

One run of finetune_lifecycle's task bodies on the local platform, in process, handing each task what
the DAG hands it (through JSON, as XCom does): validate_params, resolve_dataset, plan, preflight,
run_now_or_queue, setup_rendezvous, launch_training (the local operator; each rank's entrypoint runs
in process, its training stubbed), teardown_rendezvous and the gate. Counters wrap the validators:
`Rule.check` (every field's rule, per field), the dataset version's check, and the gate policy's
`load_policy` and `validate_policy`, each counted per task. Each rank is a container of its own
(one process, one image), so the trainer's fields are checked once per rank there.

`test_a_second_check_is_counted` adds a second check where one used to be and expects the count to fail.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from unittest import mock

import pytest

from include.evaluation import gate as gate_policy
from include.settings import Settings
from include.training import entrypoint, local_launcher, planning
from include.training import params as training_params
from include.training.params import PARAM_RULES, PLAN_RULES
from include.validation import Rule

TRIGGER_FIELDS = ("base_model", *PARAM_RULES)
# What the trainer's validator checks by its rule: not pool (the launcher's), nor base_model on the tiny
# backend (any plain name: it trains its own tiny model; the nemo backend checks its rule).
TRAINER_FIELDS = tuple(f for f in PLAN_RULES if f in TRIGGER_FIELDS)
VERSION = "0123456789abcdef"
PARAMS = {"base_model": "llama32_1b", "method": "full", "lora_rank": 8, "max_steps": 20, "learning_rate": 3e-3,
          "checkpoint_interval": 10, "nodes": 2, "gpus_per_node": 1, "tensor_parallel": 1, "pipeline_parallel": 1,
          "pool": "production", "dry_run": False, "dataset_version": VERSION, "window": "now", "priority": 0,
          "gate_policy": {"metrics": {"rouge_score": {"floor": 0.02}}}}
REAL_POPEN = subprocess.Popen


class Counts:
    """Validator calls per (task, what): `what` is a field name, "dataset_version", "load_policy" or
    "validate_policy"."""

    def __init__(self) -> None:
        self.task = "-"
        self.calls: Counter[tuple[str, str]] = Counter()

    def add(self, what: str) -> None:
        self.calls[(self.task, what)] += 1

    def where(self, what: str) -> dict[str, int]:
        return {task: n for (task, w), n in self.calls.items() if w == what}


@pytest.fixture
def counts(monkeypatch) -> Counts:
    counts = Counts()
    rule_check, is_version = Rule.check, training_params.is_dataset_version
    load, validate = gate_policy.load_policy, gate_policy.validate_policy

    def check(rule, value, label=None):
        counts.add(rule.field)
        return rule_check(rule, value, label)

    def version_check(value):
        counts.add("dataset_version")
        return is_version(value)

    def load_policy(*args, **kwargs):
        counts.add("load_policy")
        task, counts.task = counts.task, f"{counts.task} (in load_policy)"
        try:
            return load(*args, **kwargs)
        finally:
            counts.task = task

    def validate_policy(policy):
        counts.add("validate_policy")
        return validate(policy)

    monkeypatch.setattr(Rule, "check", check)
    monkeypatch.setattr(training_params, "is_dataset_version", version_check)
    monkeypatch.setattr(gate_policy, "load_policy", load_policy)
    monkeypatch.setattr(gate_policy, "validate_policy", validate_policy)
    return counts


def in_process_ranks(counts: Counts, monkeypatch) -> None:
    """The launcher's ranks: the entrypoint's main (its plan check) in this process, in the rank's
    environment, with the training stubbed; a real process that exits with main's code stands in
    for the rank itself."""

    def train(plan, env):
        if not env.is_main:
            return None
        return {"backend": plan["backend"], "checkpoint_uri": f"file://{plan['checkpoint_dir']}/step-20",
                "model_uri": f"{plan['output_uri']}/model", "metrics": {}}

    def popen(argv, *args, env=None, **kwargs):
        if argv[1:4] != ["-m", "include.training.entrypoint", "--plan"]:
            return REAL_POPEN(argv, *args, env=env, **kwargs)  # not a rank (the subprocess module is shared)
        task, counts.task = counts.task, "container"
        try:
            with mock.patch.dict(os.environ, env, clear=True):
                code = entrypoint.main(argv[3:])
        finally:
            counts.task = task
        return REAL_POPEN(["true"] if code == 0 else ["false"], stdout=kwargs.get("stdout"),
                          stderr=kwargs.get("stderr"))

    monkeypatch.setattr(entrypoint, "run", train)
    monkeypatch.setattr(local_launcher.subprocess, "Popen", popen)


def quiet_registry(monkeypatch) -> dict[str, str]:
    """The gate task's MLflow and storage calls, answered in memory; what it logs to MLflow."""
    from include.lifecycle import release
    from include.registry import mlflow_registry as reg
    from include.storage import files

    scores = [{"id": str(i), "non_llm_string_similarity": 0.5, "bleu_score": 0.1, "rouge_score": 0.3,
               "semantic_similarity": 0.6} for i in range(12)]
    monkeypatch.setattr(release, "_scores", lambda uri: scores)
    monkeypatch.setattr(release, "lineage", lambda *a: {})
    monkeypatch.setattr(reg, "champion_scores", lambda *a: (None, None))
    monkeypatch.setattr(reg, "get_or_create_run", lambda *a, **k: "run-1")
    monkeypatch.setattr(reg, "experiment_of", lambda run: "0")
    logged: dict[str, str] = {}
    monkeypatch.setattr(reg, "log_artifacts", lambda run, artifacts: logged.update(artifacts))
    monkeypatch.setattr(reg, "log_training", lambda *a: None)
    monkeypatch.setattr(files, "write_json", lambda *a: None)
    monkeypatch.setattr(files, "write_bytes", lambda *a: None)
    monkeypatch.setattr(files, "read_bytes", lambda uri: b"{}")
    return logged


def xcom(value):
    return json.loads(json.dumps(value))


def run_once(counts: Counts, tmp_path, monkeypatch) -> int:
    """One run's tasks, in the DAG's order, each given what the DAG gives it; the number of ranks."""
    from llmops_operators.training import LocalTrainingJobOperator

    from include.data import catalog
    from include.lifecycle import release, training

    settings = Settings(profile="local", data_root=(tmp_path / "data").as_uri(),
                        checkpoint_root=str(tmp_path / "checkpoints"))
    monkeypatch.setattr(catalog, "resolve_version", lambda root, version, events: {
        "version": version, "uri": f"{root}/curated/{version}", "splits": {"training": 10}})
    in_process_ranks(counts, monkeypatch)

    def task(name, call):
        counts.task = name
        try:
            return xcom(call())
        finally:
            counts.task = "-"

    validated = task("validate_params", lambda: training.validate_params(PARAMS, settings))
    dataset = task("resolve_dataset", lambda: training.resolve_dataset(validated["training"], settings=settings))
    planned = task("plan", lambda: training.plan(validated, dataset, "finetune_lifecycle", "manual__1", settings))
    plan = planned["plan"]
    task("preflight", lambda: training.preflight(plan, settings))
    assert task("run_now_or_queue", lambda: training.run_now_or_queue(plan, planned["estimate"], PARAMS,
                                                                    "manual__1", settings))
    task("setup_rendezvous", lambda: training.setup_rendezvous(plan))
    result = task("launch_training", lambda: LocalTrainingJobOperator(task_id="launch_training", plan=plan)
                  .execute({}))
    task("teardown_rendezvous", lambda: training.teardown_rendezvous(plan))
    logged = quiet_registry(monkeypatch)  # from here on: storage writes are dropped
    jobs = {"candidate": {"output_uri": "unused"}, "champion": None}
    decision = task("gate", lambda: release.gate(plan, dataset, jobs, planned["gate_policy"], settings))
    assert result["backend"] == "tiny" and decision["passed"]
    assert json.loads(logged["eval/policy.json"])["metrics"]["rouge_score"]["floor"] == 0.02  # the trigger's
    return plan["nodes"] * plan["gpus_per_node"]


def assert_validated_once(counts: Counts, ranks: int) -> None:
    for field in TRIGGER_FIELDS:
        outside = {task: n for task, n in counts.where(field).items() if task != "container"}
        assert outside == {"validate_params": 1}, f"{field} checked {outside} before the container"
    for field in TRAINER_FIELDS:
        assert counts.where(field).get("container") == ranks, f"{field}: once in each rank's container"
    assert counts.where("dataset_version") == {"validate_params": 1}
    assert counts.where("load_policy") == {"validate_params": 1}
    others = {task: n for task, n in counts.where("validate_policy").items() if not task.endswith("(in load_policy)")}
    assert others == {}, f"the gate policy validated again, outside load_policy: {others}"


def test_each_trigger_parameter_is_validated_once_plus_once_in_the_container(counts, tmp_path, monkeypatch):
    ranks = run_once(counts, tmp_path, monkeypatch)
    assert ranks == 2
    assert_validated_once(counts, ranks)


def _plan_checks_again(monkeypatch):
    build = planning.build_plan

    def build_plan(plan, *args, **kwargs):
        training_params.check_params(plan.params() | {"dataset_version": plan.dataset_version})
        return build(plan, *args, **kwargs)

    monkeypatch.setattr(planning, "build_plan", build_plan)


def _launcher_checks_again(monkeypatch):
    from include.training.plan import validate_plan

    launch = local_launcher.launch
    monkeypatch.setattr(local_launcher, "launch", lambda plan, *a, **k: launch(validate_plan(plan), *a, **k))


def _gate_checks_again(monkeypatch):
    decide = gate_policy.decide
    monkeypatch.setattr(gate_policy, "decide", lambda cand, champ, policy: decide(
        cand, champ, gate_policy.validate_policy(policy.to_dict())))


@pytest.mark.parametrize(("second_check", "message"), [
    (_plan_checks_again, r"\w+ checked \{'validate_params': 1, 'plan': 1\} before the container"),
    (_launcher_checks_again, r"\w+ checked \{'validate_params': 1, 'launch_training': 1\} before the container"),
    (_gate_checks_again, r"the gate policy validated again, outside load_policy: \{'gate': 1\}"),
], ids=["plan", "launcher", "gate"])
def test_a_second_check_is_counted(second_check, message, counts, tmp_path, monkeypatch):
    second_check(monkeypatch)
    ranks = run_once(counts, tmp_path, monkeypatch)
    with pytest.raises(AssertionError, match=message):
        assert_validated_once(counts, ranks)
