"""Trigger-form schemas refuse hostile and impossible values before any task runs."""

import copy

import pytest
from airflow.sdk.exceptions import ParamValidationError

from include.validation import RULE_KEY, schema_bounds


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


FORMS = ("finetune_lifecycle", "prepare_dataset", "rollout_model")
EMPTY = (None, "", [], {})


def form_params(dags):
    for dag_id in FORMS:
        for name in dags[dag_id].params:
            yield dag_id, name, dags[dag_id].params.get_param(name)


def marked_required(schema: dict) -> bool:
    """What Airflow 3's trigger form shows with an asterisk: a `type` that does not admit null."""
    kind = schema.get("type")
    return bool(kind) and not (isinstance(kind, list) and "null" in kind)


def test_every_rule_is_stated_in_words(dags):
    for dag_id, name, param in form_params(dags):
        schema, text = param.schema, param.description or ""
        where = f"{dag_id}.{name}: {text!r}"
        for sub in (schema, schema.get("items") or {}):
            if "pattern" in sub:
                assert sub.get(RULE_KEY) or schema.get(RULE_KEY), f"{where}: a pattern without words"
                assert sub["pattern"] not in text, f"{where}: shows the regex"
        bounds = schema_bounds(schema)
        if any(k in schema for k in ("pattern", "enum")) or bounds or "pattern" in (schema.get("items") or {}):
            assert schema.get(RULE_KEY) and schema[RULE_KEY] in text, where
        for choice in schema.get("enum", []):
            assert str(choice) in text, f"{where}: does not name {choice!r}"
        for bound in ("minimum", "maximum", "exclusiveMinimum"):
            if bound in bounds:
                value = bounds[bound]
                assert (f"{value:,}" if isinstance(value, int) else f"{value:g}") in text, f"{where}: {bound}"


def test_no_number_field_is_clamped_by_the_form(dags):
    """Airflow's form maps a number field's top-level minimum/maximum onto the input's min/max, which
    clamp a typed value on blur (0 nodes silently became 1): every bound sits under allOf instead, and
    the schema still refuses the value."""
    for dag_id, name, param in form_params(dags):
        assert not {"minimum", "maximum"} & set(param.schema), f"{dag_id}.{name}: the form would clamp it"
    params = copy.deepcopy(dags["finetune_lifecycle"].params)
    with pytest.raises(ParamValidationError, match="0 is less than the minimum of 1"):
        params.update({"nodes": 0})


def test_optional_fields_are_not_marked_required_and_accept_empty(dags):
    for dag_id, name, param in form_params(dags):
        if param.value in EMPTY:
            assert not marked_required(param.schema), f"{dag_id}.{name} is optional but the form marks it required"
            param.resolve(None)  # clearing the field is accepted
            assert (param.description or "").startswith("Optional."), f"{dag_id}.{name}"
        else:
            assert param.value is not None, f"{dag_id}.{name}: a required field needs a default"


@pytest.mark.parametrize(("dag_id", "conf", "words"), [
    ("prepare_dataset", {"source_uris": ["file:///data/raw/../../etc/passwd"]}, "under raw/, no spaces, no '..'"),
    ("prepare_dataset", {"partition": "01/11/2026"}, "a date written YYYY-MM-DD"),
    ("finetune_lifecycle", {"dataset_version": "latest"}, "16 lowercase hex digits"),
    ("finetune_lifecycle", {"nodes": 0}, "A whole number from 1 to 64"),
    ("finetune_lifecycle", {"method": "qlora"}, "One of: lora, full"),
    ("rollout_model", {"model_version": "v3"}, "digits only"),
    ("rollout_model", {"steps": [0, 50]}, "above 0 and at most 100"),
])
def test_a_refused_value_is_explained_in_words(dags, dag_id, conf, words):
    with pytest.raises(ParamValidationError) as err:
        validate(dags[dag_id], conf)
    assert words in str(err.value)


def test_dags_survive_serialization_with_their_forms_and_links(dags):
    """What the scheduler and the API server load: the serialized DAG, its Params rebuilt from their schemas."""
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id in FORMS:
        loaded = DagSerialization.from_dict(DagSerialization.to_dict(dags[dag_id]))
        for name in dags[dag_id].params:
            assert loaded.params.get_param(name).schema == dags[dag_id].params.get_param(name).schema, name
        loaded.params.validate()
    loaded = DagSerialization.from_dict(DagSerialization.to_dict(dags["finetune_lifecycle"]))
    links = {t.task_id: sorted(t.extra_links) for t in loaded.tasks if t.extra_links}
    assert links == {"resolve_dataset": ["Dataset manifest"], "gate": ["Gate report", "MLflow run"],
                     "register": ["MLflow run", "Model version"], "reject": ["MLflow run"]}
