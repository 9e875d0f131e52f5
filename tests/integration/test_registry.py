"""MLflow tracking and registry against a real tracking server whose artifacts live in (moto) S3.

The server is `mlflow server` on 127.0.0.1 with a SQLite backend and `--artifacts-destination s3://...`;
what lands in the bucket is checked with a plain boto3 client, not through MLflow.
"""

from __future__ import annotations

import json
import uuid

import pytest

from include.registry import mlflow_registry as reg

pytestmark = pytest.mark.slow

DAG = "finetune_lifecycle"
RUN = "manual__2026-11-29T02:00:00+00:00"


@pytest.fixture
def client(mlflow_server):
    return mlflow_server.client()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_a_dag_run_gets_one_mlflow_run_found_again_by_its_tags(client):
    exp = unique("exp")
    first = reg.get_or_create_run(exp, DAG, RUN, {"llmops.dataset_version": "ds1"}, client=client)
    reg.finish_run(first, "FAILED", client=client)  # the task failed; Airflow retries it
    again = reg.get_or_create_run(exp, DAG, RUN, {"llmops.dataset_version": "ds1", "llmops.try": "2"},
                                  client=client)
    assert again == first
    run = client.get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.tags[reg.RUN_KEY_TAG] == f"{DAG}/{RUN}" and run.data.tags["llmops.try"] == "2"
    exp_id = client.get_experiment_by_name(exp).experiment_id
    assert len(client.search_runs([exp_id])) == 1

    other = reg.get_or_create_run(exp, DAG, "scheduled__2026-11-30T02:00:00+00:00", client=client)
    quoted = reg.get_or_create_run(exp, DAG, "it's a run", client=client)  # quoted with " instead of '
    assert len({first, other, quoted}) == 3
    assert reg.get_or_create_run(exp, DAG, "it's a run", client=client) == quoted
    assert len(client.search_runs([exp_id])) == 3


def test_training_params_and_loss_series_are_logged_once(client):
    run_id = reg.get_or_create_run(unique("exp"), DAG, RUN, client=client)
    plan = {"base_model": "tiny-byte", "method": "full", "max_steps": 4, "learning_rate": 3e-3,
            "dataset": {"version": "ds1", "uri": "s3://llmops-it/curated/ds1"}, "ranks": [0, 1]}
    series = [{"step": s, "loss": 3.0 - 0.5 * s, "lr": 3e-3, "time": 1_790_000_000 + s} for s in range(4)]
    first = reg.log_training(run_id, plan, series, {"final_loss": 1.5, "train_seconds": 12.5}, client=client)
    assert first == {"params": 7, "metrics": 10}
    retry = reg.log_training(run_id, plan, series, {"final_loss": 1.5, "train_seconds": 12.5}, client=client)
    assert retry == {"params": 0, "metrics": 0}

    params = client.get_run(run_id).data.params
    assert params["dataset.version"] == "ds1" and params["max_steps"] == "4" and params["ranks"] == "[0, 1]"
    history = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 3.0), (1, 2.5), (2, 2.0), (3, 1.5)]
    assert {m.timestamp for m in history if m.step == 2} == {1_790_000_002_000}

    # a resumed trainer reports from its checkpoint on: only the new steps are added
    resumed = [{"step": s, "loss": 3.0 - 0.5 * s} for s in range(2, 6)]
    assert reg.log_training(run_id, plan, resumed, client=client)["metrics"] == 2
    assert [m.step for m in sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)] == list(range(6))

    with pytest.raises(ValueError, match="max_steps: logged '4', now '8'"):
        reg.log_training(run_id, {**plan, "max_steps": 8}, series, client=client)


def test_artifacts_land_in_s3_through_the_server(client, mlflow_server):
    exp = unique("exp")
    run_id = reg.get_or_create_run(exp, DAG, RUN, client=client)
    manifest = {"version": "ds1", "splits": {"train": 10, "test": 3}}
    files = {"data_manifest.json": json.dumps(manifest), "eval/report.html": "<html>ok</html>",
             "eval/scores.jsonl": b'{"id": "a", "bleu_score": 0.1}\n'}
    uris = reg.log_artifacts(run_id, files, client=client)
    assert uris["eval/report.html"] == f"runs:/{run_id}/eval/report.html"
    reg.log_artifacts(run_id, files, client=client)  # a retry overwrites, it does not duplicate

    exp_id = client.get_experiment_by_name(exp).experiment_id
    prefix = f"{mlflow_server.artifact_prefix}/{exp_id}/{run_id}/artifacts/"
    keys = mlflow_server.s3.keys(prefix)
    assert set(keys) == {prefix + name for name in files}
    s3 = mlflow_server.s3.client()
    body = s3.get_object(Bucket=mlflow_server.s3.bucket, Key=prefix + "data_manifest.json")["Body"].read()
    assert json.loads(body) == manifest
    assert reg.read_artifact_text(uris["eval/report.html"], client=client) == "<html>ok</html>"
    with pytest.raises(ValueError, match="relative path"):
        reg.log_artifacts(run_id, {"../escape.txt": "x"}, client=client)


def test_registering_twice_makes_one_version_pointing_at_the_s3_weights(client, mlflow_server):
    model = unique("llm-assistant")
    run_id = reg.get_or_create_run(unique("exp"), DAG, RUN, client=client)
    source = f"s3://{mlflow_server.s3.bucket}/models/ft-0123456789ab"
    tags = reg.lineage_tags(dag_id=DAG, run_id=RUN, dataset_version="ds1", base_model="llama31_8b", method="lora",
                            git_commit="abc1234", images={"trainer": "ghcr.io/x/nemo-trainer:0.1.0"})
    v1 = reg.register_candidate(model, source, run_id, tags, client=client)
    assert reg.register_candidate(model, source, run_id, tags, client=client) == v1 == "1"
    versions = client.search_model_versions(f"name = '{model}'")
    assert len(versions) == 1
    mv = versions[0]
    assert mv.source == source and mv.run_id == run_id
    assert mv.tags[reg.RUN_KEY_TAG] == f"{DAG}/{RUN}" and mv.tags[reg.DATASET_TAG] == "ds1"
    assert mv.tags["llmops.image.trainer"] == "ghcr.io/x/nemo-trainer:0.1.0"
    assert mv.tags[reg.GIT_COMMIT_TAG] == "abc1234" and mv.tags[reg.METHOD_TAG] == "lora"
    assert reg.challenger(model, client=client).version == "1"
    with pytest.raises(ValueError, match="points at"):
        reg.register_candidate(model, source + "-other", run_id, tags, client=client)
    with pytest.raises(ValueError, match="airflow.dag_id"):
        reg.register_candidate(model, source, run_id, {"llmops.method": "lora"}, client=client)


def test_challenger_and_champion_aliases(client, mlflow_server):
    model = unique("llm-assistant")
    exp = unique("exp")
    assert reg.champion(model, client=client) is None  # no such model yet
    versions = []
    for i, dag_run in enumerate(("scheduled__2026-11-28T02:00:00+00:00", "scheduled__2026-11-29T02:00:00+00:00")):
        run_id = reg.get_or_create_run(exp, DAG, dag_run, client=client)
        versions.append(reg.register_candidate(model, f"s3://{mlflow_server.s3.bucket}/models/m{i}", run_id,
                                               reg.lineage_tags(dag_id=DAG, run_id=dag_run), client=client))
        if i == 0:
            assert reg.champion(model, client=client) is None  # the model exists, the alias does not
            assert reg.promote(model, versions[0], client=client) is None
            assert reg.champion(model, client=client).version == "1"
            assert reg.challenger(model, client=client) is None
    assert reg.challenger(model, client=client).version == "2" and reg.champion(model, client=client).version == "1"
    assert reg.promote(model, "2", client=client) == "1"
    assert reg.promote(model, "2", client=client) == "1"  # a retry: same answer, nothing moves
    assert dict(client.get_registered_model(model).aliases) == {"champion": "2"}
    assert client.get_model_version(model, "2").tags[reg.PREVIOUS_CHAMPION_TAG] == "1"


def test_champion_scores_are_found_by_dataset_version(client, mlflow_server):
    model = unique("llm-assistant")
    run_id = reg.get_or_create_run(unique("exp"), DAG, RUN, client=client)
    version = reg.register_candidate(model, f"s3://{mlflow_server.s3.bucket}/models/m", run_id,
                                     reg.lineage_tags(dag_id=DAG, run_id=RUN), client=client)
    reg.promote(model, version, client=client)
    assert reg.champion_scores(model, "ds1", client=client)[1] is None
    scores = [{"id": "a", "semantic_similarity": 0.5}, {"id": "b", "semantic_similarity": None}]
    uri = reg.log_eval_scores(run_id, "ds1", scores, client=client)
    reg.set_eval_scores(model, version, "ds1", uri, client=client)
    mv, loaded = reg.champion_scores(model, "ds1", client=client)
    assert mv.version == version and loaded == scores
    assert reg.champion_scores(model, "ds2", client=client)[1] is None
    assert any(k.endswith(f"/{run_id}/artifacts/eval/ds1/scores.json") for k in mlflow_server.s3.keys("mlflow/"))


def test_a_rejected_candidate_is_tagged_on_its_run(client):
    run_id = reg.get_or_create_run(unique("exp"), DAG, RUN, client=client)
    reasons = ["semantic_similarity: regressed against the champion", "rouge_score: below the floor 0.2"]
    reg.tag_rejected(run_id, reasons, client=client)
    tags = client.get_run(run_id).data.tags
    assert tags[reg.DECISION_TAG] == "rejected" and json.loads(tags[reg.REASONS_TAG]) == reasons
    reg.tag_rejected(run_id, ["x" * 3000] * 5, client=client)  # too long for one tag: truncated, still JSON
    stored = json.loads(client.get_run(run_id).data.tags[reg.REASONS_TAG])
    assert stored[-1] == "... truncated" and len(stored) < 5


def test_the_local_profile_store_keeps_artifacts_beside_its_database(tmp_path, monkeypatch):
    """sqlite:/// without a server: artifacts go next to the DB, not into the task's working directory."""
    monkeypatch.chdir(tmp_path)
    db_dir = tmp_path / "store"
    client = reg.get_client(f"sqlite:///{db_dir / 'mlflow.db'}")
    run_id = reg.get_or_create_run("local-exp", DAG, RUN, client=client)
    reg.log_artifacts(run_id, {"data_manifest.json": "{}"}, client=client)
    weights = tmp_path / "data" / "models" / "ft-1"
    weights.mkdir(parents=True)
    version = reg.register_candidate("tiny", weights.as_uri(), run_id, reg.lineage_tags(dag_id=DAG, run_id=RUN),
                                     client=client)
    assert client.get_model_version("tiny", version).source == weights.as_uri()
    assert list((db_dir / "artifacts" / "local-exp").rglob("data_manifest.json"))
    assert not (tmp_path / "mlruns").exists()
