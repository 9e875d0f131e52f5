"""A trigger's gate_policy may only tighten the reviewed policy, at every entry point that reads it."""

from __future__ import annotations

import json

import pytest

from include.errors import InputError
from include.evaluation import gate
from include.lifecycle.training import validate_params
from include.settings import Settings
from tests.unit.test_planning import params as train_params

EKS = Settings(profile="eks", data_root="s3://bucket/llmops")
LOCAL = Settings(profile="local", data_root="file:///tmp/llmops")

# (profile, override, the field the refusal must name)
LOOSENINGS = [
    ("eks", {"metrics": {"faithfulness": {"floor": -1e9}}}, "gate_policy.metrics.faithfulness.floor"),
    ("eks", {"metrics": {"faithfulness": {"floor": 0.69}}}, "gate_policy.metrics.faithfulness.floor"),
    ("eks", {"metrics": {"faithfulness": {"floor": None}}}, "gate_policy.metrics.faithfulness.floor"),
    ("eks", {"metrics": {"faithfulness": {"required": False}}}, "gate_policy.metrics.faithfulness.required"),
    ("eks", {"metrics": {"faithfulness": None}}, "gate_policy.metrics.faithfulness: may not be removed"),
    ("eks", {"metrics": {"bleu_score": None}}, "gate_policy.metrics.bleu_score: may not be removed"),
    ("eks", {"metrics": {"rouge_score": {"margin": 1e6}}}, "gate_policy.metrics.rouge_score.margin"),
    ("eks", {"margin": 0.5}, "gate_policy.margin=0.5"),
    ("eks", {"confidence": 0.999}, "gate_policy.confidence=0.999"),
    ("eks", {"min_pairs": 2}, "gate_policy.min_pairs=2"),
    ("eks", {"n_bootstrap": 100}, "gate_policy.n_bootstrap=100"),
    ("eks", {"seed": 7}, "gate_policy.seed"),
    ("eks", {"version": 2}, "gate_policy.version"),
    ("local", {"metrics": {"rouge_score": {"flor": 0.1}}}, "metrics.rouge_score: unknown keys ['flor']"),
    ("local", {"metrics": {"rogue_score": {"floor": 0.1}}}, "gate_policy.metrics.rogue_score: not a metric"),
    ("local", {"metrcs": {}}, "gate_policy.metrcs"),
    ("local", {"metrics": "strict"}, "metrics"),
    ("local", {"profile": "eks"}, "'profiles'/'profile'"),
    ("local", ["confidence", 0.5], "expected a mapping"),
]
TIGHTENINGS = [
    ("eks", {"metrics": {"faithfulness": {"floor": 0.8}}}),
    ("eks", {"margin": 0.0, "confidence": 0.9, "n_bootstrap": 4000, "min_pairs": 50}),
    ("eks", {"metrics": {"bleu_score": {"required": True, "floor": 0.1}}}),
    ("local", {"metrics": {"rouge_score": {"floor": 0.1}}}),
    ("local", {"metrics": {"non_llm_context_recall": {"required": True}}}),
]


@pytest.mark.parametrize(("profile", "override", "field"), LOOSENINGS)
def test_load_policy_refuses_loosening(profile, override, field):
    with pytest.raises(InputError) as err:
        gate.load_policy(override, profile=profile)
    assert field in str(err.value)


@pytest.mark.parametrize(("profile", "override", "field"), LOOSENINGS)
def test_validate_params_refuses_loosening_before_any_gpu_time(profile, override, field):
    settings = EKS if profile == "eks" else LOCAL
    p = train_params(gate_policy=override, **({} if profile == "eks" else {"nodes": 2, "gpus_per_node": 1}))
    with pytest.raises(InputError) as err:
        validate_params(p, settings)
    assert field in str(err.value)


@pytest.mark.parametrize(("profile", "override"), TIGHTENINGS)
def test_tightening_is_applied(profile, override):
    base = gate.load_policy(profile=profile).to_dict()
    applied = gate.load_policy(override, profile=profile).to_dict()
    for name, spec in override.get("metrics", {}).items():
        for key, value in spec.items():
            assert applied["metrics"][name][key] == value
    for key in ("confidence", "n_bootstrap", "min_pairs"):
        assert applied[key] == override.get(key, base[key])
    settings = EKS if profile == "eks" else LOCAL
    extra = {} if profile == "eks" else {"nodes": 2, "gpus_per_node": 1}
    assert validate_params(train_params(gate_policy=override, **extra), settings)


def test_no_override_is_the_reviewed_policy():
    assert validate_params(train_params(gate_policy={}), EKS)
    assert gate.load_policy({}, profile="eks") == gate.load_policy(profile="eks")


def test_a_higher_confidence_would_pass_a_regression_a_lower_one_catches():
    """Why the confidence may only go down: the interval widens with it and hides a real loss."""
    metric = "rouge_score"
    champion = [{"id": str(i), metric: 0.5 + 0.01 * (i % 7)} for i in range(40)]
    candidate = [{"id": str(i), metric: 0.5 + 0.01 * (i % 7) - (0.03 if i % 3 else -0.03)} for i in range(40)]
    policy = {"seed": 1, "n_bootstrap": 2000, "min_pairs": 10, "margin": 0.0, "metrics": {metric: {"floor": 0.0}}}
    strict = gate.decide(candidate, champion, gate.validate_policy({**policy, "confidence": 0.8}))
    loose = gate.decide(candidate, champion, gate.validate_policy({**policy, "confidence": 0.9999}))
    assert strict["metrics"][metric]["regressed"] is True and loose["metrics"][metric]["regressed"] is False


def test_the_gate_logs_the_applied_policy_to_mlflow(monkeypatch):
    from include.lifecycle import release as stages
    from include.registry import mlflow_registry as reg
    from include.storage import files as artifacts

    logged: dict[str, str] = {}
    scores = [{"id": str(i), "rouge_score": 0.5} for i in range(12)]
    monkeypatch.setattr(stages, "_scores", lambda uri: scores)
    monkeypatch.setattr(stages, "lineage", lambda *a: {})
    monkeypatch.setattr(reg, "champion_scores", lambda *a: (None, None))
    monkeypatch.setattr(reg, "get_or_create_run", lambda *a, **k: "run-1")
    monkeypatch.setattr(reg, "experiment_of", lambda run: "0")
    monkeypatch.setattr(reg, "log_artifacts", lambda run, files: logged.update(files))
    monkeypatch.setattr(reg, "log_training", lambda *a: None)
    monkeypatch.setattr(artifacts, "write_json", lambda *a: None)
    monkeypatch.setattr(artifacts, "write_bytes", lambda *a: None)
    monkeypatch.setattr(artifacts, "read_bytes", lambda uri: b"{}")
    plan = {"run_name": "ft-1", "dag_id": "d", "run_id": "r"}
    override = {"metrics": {"rouge_score": {"floor": 0.4}}}
    policy = validate_params(train_params(gate_policy=override, nodes=2, gpus_per_node=1), LOCAL)["gate_policy"]
    stages.gate(plan, {"version": "v", "uri": "file:///x"}, {"candidate": {"output_uri": "u"}, "champion": None},
                policy, LOCAL)
    assert json.loads(logged["eval/policy.json"]) == gate.load_policy(override, profile="local").to_dict()
    assert json.loads(logged["eval/policy.json"])["metrics"]["rouge_score"]["floor"] == 0.4


# --------------------------------------------------------------------------- the trigger form's schema

TYPOS = [
    ("local", {"flor": 0.1}),
    ("local", {"metrics": {"rouge_score": {"flor": 0.1}}}),
    ("eks", {"confidance": 0.9}),
    ("local", {"metrics": {"rouge_score": {"floor": "0.3"}}}),
    ("local", {"n_bootstrap": True}),
]


def schema_accepts(profile: str, override) -> bool:
    import jsonschema

    try:
        jsonschema.validate(override, gate.override_schema(profile))
    except jsonschema.ValidationError:
        return False
    return True


@pytest.mark.parametrize(("profile", "override", "field"), LOOSENINGS)
def test_the_form_schema_refuses_every_loosening_load_policy_refuses(profile, override, field):
    assert not schema_accepts(profile, override)


@pytest.mark.parametrize(("profile", "override"), TYPOS)
def test_the_form_schema_refuses_typos_and_load_policy_agrees(profile, override):
    assert not schema_accepts(profile, override)
    with pytest.raises(InputError):
        gate.load_policy(override, profile=profile)


@pytest.mark.parametrize(("profile", "override"), [*TIGHTENINGS, ("local", {}), ("eks", None)])
def test_the_form_schema_accepts_every_tightening(profile, override):
    assert schema_accepts(profile, override)
    gate.load_policy(override, profile=profile)


@pytest.mark.parametrize("profile", ["local", "eks"])
def test_the_schema_bounds_are_the_resolved_policy_at_the_edge(profile):
    """Exactly the policy's value is accepted, one step looser refused: the bounds come from the policy."""
    base = gate.load_policy(profile=profile).to_dict()
    for name, spec in base["metrics"].items():
        if spec["floor"] is not None:
            assert schema_accepts(profile, {"metrics": {name: {"floor": spec["floor"]}}})
            assert not schema_accepts(profile, {"metrics": {name: {"floor": spec["floor"] - 0.001}}}), name
        assert not schema_accepts(profile, {"metrics": {name: {"margin": spec["margin"] + 0.001}}}), name
    assert schema_accepts(profile, {"confidence": base["confidence"], "n_bootstrap": base["n_bootstrap"]})
    assert not schema_accepts(profile, {"confidence": base["confidence"] + 0.001})
    assert not schema_accepts(profile, {"n_bootstrap": base["n_bootstrap"] - 1})
