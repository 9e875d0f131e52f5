"""Trigger-form schemas refuse hostile and impossible values before any task runs."""

import copy

import pytest
from airflow.sdk.exceptions import ParamValidationError


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.test_dag_integrity import DAGS

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors
    return bag.dags


def validate(dag, conf: dict) -> dict:
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


HOSTILE = ["; rm -rf /", "$(reboot)", "`id`", "../../etc/passwd", "a\nb", "x" * 5000]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("key", ["base_model", "dataset_version", "method", "pool"])
def test_finetune_string_params_refuse_hostile_values(dags, key, value):
    with pytest.raises(ParamValidationError):
        validate(dags["finetune_lifecycle"], {key: value})


@pytest.mark.parametrize(
    "conf",
    [
        {"nodes": 10**12}, {"nodes": 0}, {"nodes": "2; reboot"}, {"max_steps": -1}, {"max_steps": 10**30},
        {"learning_rate": 0}, {"learning_rate": 1e9}, {"gpus_per_node": 3}, {"tensor_parallel": 3},
        {"lora_rank": 10**9}, {"dry_run": "yes; rm -rf /"}, {"checkpoint_interval": 1.5},
    ],
)
def test_finetune_numbers_are_bounded(dags, conf):
    with pytest.raises(ParamValidationError):
        validate(dags["finetune_lifecycle"], conf)


@pytest.mark.parametrize(
    "conf",
    [
        {"partition": "2026-11-01; rm -rf /"}, {"partition": "$(date)"}, {"partition": "../2026-11-01"},
        {"source_uris": ["file:///data/raw/../../etc/passwd"]}, {"source_uris": ["/etc/passwd"]},
        {"source_uris": ["s3://bucket/raw/x.jsonl; rm -rf /"]}, {"source_uris": "file:///data/raw"},
        {"dedup_threshold": 2}, {"dedup_threshold": "0.9"}, {"max_tokens": 10**12}, {"redact_pii": "no"},
    ],
)
def test_prepare_dataset_params_refuse_bad_values(dags, conf):
    with pytest.raises(ParamValidationError):
        validate(dags["prepare_dataset"], conf)


def test_good_values_pass(dags):
    assert validate(dags["prepare_dataset"], {"partition": "2026-11-01", "dedup_threshold": 0.9})["partition"]
    ok = validate(dags["finetune_lifecycle"], {"nodes": 4, "dataset_version": "0123456789abcdef", "pool": "experiment"})
    assert ok["nodes"] == 4


def test_no_promote_param_and_a_skipped_run_skips_the_gate(dags):
    dag = dags["finetune_lifecycle"]
    assert "promote" not in dag.params, "only the rollout moves champion (issue 9)"
    # The gate runs when the champion's evaluation skipped (scores on record), not when the whole run
    # skipped from resolve_dataset on (nothing new to train).
    assert dag.task_dict["gate"].trigger_rule == "none_failed_min_one_success"
