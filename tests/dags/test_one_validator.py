"""One validator: every hostile value is refused at every entry point, by the same rules.

Entry points: the trigger form's Param schema, `validate_params` (the first task; the tasks after it
trust its output, tests/unit/test_validated_once.py counts that) and the trainer's own validator in
the image (`validate_plan` and the entrypoint's exit code), which crosses a process and image
boundary. Each gives an InputError that names the field and the accepted range; none gives a
KeyError, ZeroDivisionError or any other Python exception.
"""

from __future__ import annotations

import copy
import json

import pytest
from airflow.sdk.exceptions import AirflowFailException, ParamValidationError

from include.container import USER_ERROR_EXIT_CODE
from include.errors import InputError
from include.lifecycle.training import validate_params
from include.settings import Settings
from include.training import entrypoint
from include.training.params import PARAM_RULES, base_model_rule, param_schemas
from include.training.plan import validate_plan

LOCAL = Settings(profile="local", data_root="file:///tmp/llmops")
EKS = Settings(profile="eks", data_root="s3://bucket/llmops")
DATASET_URI = "s3://bucket/llmops/curated/0123456789abcdef"

# (field, hostile value, what the message must say about the accepted values)
HOSTILE = [
    ("nodes", 0, "1 <= value <= 64"),
    ("nodes", 10000, "1 <= value <= 64"),
    ("nodes", -1, "1 <= value <= 64"),
    ("nodes", True, "1 <= value <= 64"),
    ("tensor_parallel", 0, "one of 1, 2, 4, 8"),
    ("base_model", "gpt-17", "one of "),
    ("learning_rate", -0.1, "0 < value <= 1"),
    ("method", "full; id", "one of 'lora', 'full'"),
]


def trigger(**over):
    base = {"base_model": "llama31_8b", "method": "lora", "lora_rank": 16, "max_steps": 1000, "learning_rate": 1e-4,
            "nodes": 1, "gpus_per_node": 8, "tensor_parallel": 1, "pipeline_parallel": 1, "pool": "production",
            "checkpoint_interval": 200, "dry_run": False, "dataset_version": None}
    return base | over


def trainer_plan(**over):
    base = {"run_name": "ft-1", "backend": "nemo", "base_model": "llama31_8b", "dataset_uri": DATASET_URI,
            "output_uri": "s3://bucket/llmops/models/ft-1", "checkpoint_dir": "/checkpoints/ft-1"}
    return base | over


def refused(exc: BaseException, field: str, accepted: str) -> None:
    assert isinstance(exc, InputError), f"{type(exc).__name__}: {exc}"
    assert field in str(exc) and accepted in str(exc), str(exc)


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.test_dag_integrity import DAGS

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors
    return bag.dags["finetune_lifecycle"]


@pytest.mark.parametrize(("field", "value", "accepted"), HOSTILE, ids=lambda v: repr(v))
def test_the_trigger_form_refuses(dag, field, value, accepted):
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match=field):
        params.update({field: value})  # the form validates each value as it is set
        params.validate()


@pytest.mark.parametrize(("field", "value", "accepted"), HOSTILE, ids=lambda v: repr(v))
@pytest.mark.parametrize("settings", [LOCAL, EKS], ids=["local", "eks"])
def test_validate_params_refuses(field, value, accepted, settings):
    with pytest.raises(Exception) as info:
        validate_params(trigger(**{field: value}), settings)
    refused(info.value, field, accepted)
    assert isinstance(info.value, AirflowFailException), "a DAG task fails at once: no retry fixes a value"


@pytest.mark.parametrize(("field", "value", "accepted"), HOSTILE, ids=lambda v: repr(v))
def test_the_trainer_in_its_container_refuses(field, value, accepted, capsys):
    with pytest.raises(Exception) as info:
        validate_plan(trainer_plan(**{field: value}))
    refused(info.value, field, accepted)
    assert entrypoint.main(["--plan", json.dumps(trainer_plan(**{field: value}))]) == USER_ERROR_EXIT_CODE
    assert field in capsys.readouterr().err


def test_one_step_past_each_bound_is_refused_everywhere_and_the_bound_itself_accepted(dag):
    """The same bounds at the form and in the image: the rules are one object, read by both."""
    for field in ("nodes", "lora_rank", "max_steps", "checkpoint_interval", "pipeline_parallel"):
        rule = PARAM_RULES[field]
        shape = {"nodes": 2, "gpus_per_node": 8}  # room for pipeline_parallel=16
        params = copy.deepcopy(dag.params)
        params.update({field: rule.high})
        params.validate()
        assert validate_plan(trainer_plan(**shape | {field: rule.high}))[field] == rule.high
        with pytest.raises(ParamValidationError):
            params.update({field: rule.high + 1})
            params.validate()
        with pytest.raises(InputError, match=field):
            validate_plan(trainer_plan(**shape | {field: rule.high + 1}))


def test_the_param_schema_is_the_rules_schema(dag):
    schemas = param_schemas()
    assert set(PARAM_RULES) | {"base_model", "dataset_version"} == set(schemas)
    for name, schema in schemas.items():
        declared = {k: v for k, v in dag.params.get_param(name).schema.items() if k in schema}
        assert declared == schema, name
    assert dag.params.get_param("base_model").schema["enum"] == list(base_model_rule().choices)
