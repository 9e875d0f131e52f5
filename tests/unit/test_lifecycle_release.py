"""The champion is scored again on an eval set only when its scores for that set are not on record."""

import pytest

from include.lifecycle.release import eval_jobs
from include.registry import mlflow_registry as reg
from include.settings import get_settings


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_DATA_ROOT", f"file://{tmp_path / 'data'}")
    monkeypatch.setenv("LLMOPS_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_champion_scores_are_computed_once_per_eval_set(settings, tmp_path):
    data = settings.data_root
    plan = {"run_name": "ft-2", "dag_id": "finetune_lifecycle", "run_id": "r2"}
    result = {"model_uri": f"{data}/models/ft-2/model"}
    dataset = {"version": "0123456789abcdef", "uri": f"{data}/curated/0123456789abcdef"}

    jobs = eval_jobs(plan, result, dataset, settings)
    assert jobs["champion"] is None, "no champion yet: floors alone decide"
    assert jobs["candidate"]["model_uri"] == result["model_uri"]
    assert jobs["candidate"]["output_uri"] == f"{data}/evaluations/ft-2/candidate"

    name = settings.registered_model_name
    run = reg.get_or_create_run(settings.mlflow_experiment, "finetune_lifecycle", "r1")
    tags = reg.lineage_tags(dag_id="finetune_lifecycle", run_id="r1", dataset_version="older")
    version = reg.register_candidate(name, f"{data}/models/ft-1/model", run, tags)
    reg.promote(name, version)

    jobs = eval_jobs(plan, result, dataset, settings)
    assert jobs["champion"]["model_uri"] == f"{data}/models/ft-1/model"
    assert jobs["champion"]["eval_uri"] == dataset["uri"]
    assert jobs["champion"]["output_uri"] == f"{data}/evaluations/ft-2/champion-v{version}"

    uri = reg.log_eval_scores(run, dataset["version"], [{"id": "a", "rouge_score": 0.5}])
    reg.set_eval_scores(name, version, dataset["version"], uri)
    assert eval_jobs(plan, result, dataset, settings)["champion"] is None
