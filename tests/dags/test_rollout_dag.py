"""rollout_model: the form refuses what cannot run (schema and validator agree), and the graph is the
rollout's: deferrable waits, the approval branch defaulting to abort, one run at a time."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from airflow.sdk.exceptions import ParamValidationError

from include.lifecycle.rollout import RolloutError, validate_params


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.test_dag_integrity import DAGS

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors
    return bag.dags["rollout_model"]


def form(dag, conf: dict) -> dict:
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


BAD = [
    ({"steps": [0, 50]}, "steps"), ({"steps": [10, 150]}, "steps"), ({"steps": []}, "steps"),
    ({"steps": ["10"]}, "steps"), ({"interval_s": 4}, "interval_s"), ({"interval_s": 2.5}, "interval_s"),
    ({"count": 0}, "count"), ({"max_error_rate": 1.5}, "max_error_rate"), ({"max_latency_ratio": 0.5},
                                                                           "max_latency_ratio"),
    ({"probe_size": -1}, "probe_size"), ({"action": "delete"}, "action"),
    ({"model_version": "1; rm -rf /"}, "model_version"), ({"model_version": "$(id)"}, "model_version"),
]


@pytest.mark.parametrize("conf, field", BAD)
def test_form_and_validator_both_refuse(dag, conf, field):
    with pytest.raises(ParamValidationError):
        form(dag, conf)
    with pytest.raises(RolloutError, match=field):
        validate_params({**dag.params.dump(), **conf})


def test_steps_must_increase_the_validator_says_so():
    """JSON Schema cannot order items: validate_params (the first task, no retries) refuses it by name."""
    for steps in ([50, 25, 100], [10, 10, 100]):
        with pytest.raises(RolloutError, match="strictly increase"):
            validate_params({"steps": steps})


def test_defaults_pass_both(dag):
    req = validate_params(form(dag, {}))
    assert req["steps"] == [10, 25, 50, 100] and req["action"] == "rollout" and req["model_version"] == ""
    assert validate_params({"steps": [20, 60]})["steps"] == [20, 60, 100]  # full traffic closes every rollout


def test_graph_and_waits(dag):
    from llmops_operators.canary import CanaryReadyOperator, CanaryStepsOperator, ScaleDownOperator

    assert dag.max_active_runs == 1  # a second trigger queues; a foreign writer is refused by the route lock
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["registered_model"]
    tasks = {t.task_id: t for t in dag.tasks}
    assert isinstance(tasks["wait_ready"], CanaryReadyOperator)
    assert isinstance(tasks["analyse"], CanaryStepsOperator)
    assert isinstance(tasks["scale_down"], ScaleDownOperator)
    approve = tasks["approve"]
    # The timeout's choice is the operator's, not the request's defaults: an unanswered request stays
    # unanswered in the UI ("No Response Received"), and the task says it timed out (test_approval.py).
    assert approve.options == ["promote", "abort"] and approve.timeout_default == "abort" and not approve.defaults
    assert approve.response_timeout and approve.response_timeout <= timedelta(hours=1)
    assert tasks["approve"].downstream_task_ids == {"promote", "abort"}
    assert tasks["decide"].downstream_task_ids == {"promote", "abort", "approve", "scale_down"}
    assert tasks["scale_down"].upstream_task_ids == {"promote", "abort", "decide", "resolve", "validate_params"}
    assert "sync_aliases" in tasks["scale_down"].downstream_task_ids
    chain = ["validate_params", "resolve", "deploy_canary", "wait_ready", "analyse", "decide"]
    for up, down in zip(chain, chain[1:], strict=False):
        assert down in tasks[up].downstream_task_ids, (up, down)


def test_registered_model_event_extra():
    from include.assets import REGISTERED_MODEL, registered_model_extra

    assert REGISTERED_MODEL.name == "registered_model"
    extra = registered_model_extra(model_name="m", version=3, source_uri="s3://b/m", dataset_version="ab",
                                   run_id="r1")
    assert extra == {"model_name": "m", "version": "3", "source_uri": "s3://b/m", "dataset_version": "ab",
                     "run_id": "r1"}
    with pytest.raises(ValueError, match="source_uri"):
        registered_model_extra(model_name="m", version=3, source_uri="", dataset_version=None, run_id="r")


def test_form_defaults_come_from_the_platform():
    """The DAG does not branch on the profile: its per-profile defaults are the platform bundle's own."""
    from include.platforms import get_platform
    from include.platforms.eks import EksPlatform
    from include.platforms.local import LocalPlatform
    from include.settings import Settings

    assert get_platform(Settings(profile="local")).rollout_defaults == LocalPlatform.rollout_defaults
    eks = get_platform(Settings(profile="eks", data_root="s3://bucket/llmops")).rollout_defaults
    assert eks == EksPlatform.rollout_defaults
    assert eks["ready_timeout_s"] > LocalPlatform.rollout_defaults["ready_timeout_s"]
    assert set(eks) == set(LocalPlatform.rollout_defaults)
