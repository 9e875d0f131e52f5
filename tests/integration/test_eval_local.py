"""The local evaluation task's job end to end (`get_platform().jobs().evaluation_job` + `run_job`): a tiny
model answers a small eval set, RAGAS scores
every answer, and the outputs land in storage (file:// and, through moto, s3://).

No training: the model is the tiny backend's architecture with fixed random weights, exported the
way the trainer exports it. Its answers are noise; what is checked is the contract around them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from include import tinylm
from include.evaluation.entrypoint import main as entrypoint_main
from include.evaluation.run import read_result, run_job
from include.evaluation.scoring import LOCAL_METRICS
from include.platforms import get_platform
from include.settings import Settings
from include.storage import files


def evaluate_model(model_uri: str, eval_uri: str, output_uri: str, settings: Settings, limit: int | None = None):
    """What the local evaluation task does: the profile's job, run in this process."""
    return run_job(get_platform(settings).jobs().evaluation_job(model_uri, eval_uri, output_uri, limit=limit))


RESULT_KEYS = {"scores_uri", "summary_uri", "responses_uri", "means", "n", "metrics", "eval_digest"}

EVAL = [
    {"id": "k1", "user_input": "How does a container request a GPU?",
     "reference": "It sets a limit on nvidia.com/gpu; a request, if set, must equal the limit.",
     "reference_contexts": ["GPUs are extended resources such as nvidia.com/gpu; requests must equal limits."]},
    {"id": "k2", "user_input": "What does Karpenter do with empty nodes?",
     "reference": "It consolidates them after consolidateAfter.",
     "reference_contexts": ["Karpenter removes empty nodes after consolidateAfter.", "Budgets limit disruption."]},
    {"id": "k3", "user_input": "Which port does vLLM serve on?", "reference": "Port 8000 by default.",
     "reference_contexts": ["vLLM's OpenAI-compatible server listens on port 8000 by default."]},
    {"id": "k4", "user_input": "What is LoRA?", "reference": "Low-rank adapters trained on a frozen base model.",
     "reference_contexts": []},
    {"id": "k5", "user_input": "What is EFA?", "reference": "Elastic Fabric Adapter, a network interface for HPC.",
     "reference_contexts": ["EFA is an network interface for EC2 instances that bypasses the OS for HPC traffic."]},
    {"id": "k6", "user_input": "What is a headless Service?",
     "reference": "A Service with clusterIP None that only publishes DNS records for its pods.",
     "reference_contexts": ["A headless Service has clusterIP: None and gives each selected pod a DNS record."]},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(7)
    model = tinylm.TinyByteLM(tinylm.TinyConfig(max_position_embeddings=64))
    return tinylm.export_model(model, tmp_path_factory.mktemp("run") / "model", run_name="eval-it")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("curated") / "0123456789abcdef"
    root.mkdir()
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVAL))
    return root


@pytest.fixture
def local_settings(tmp_path) -> Settings:
    return Settings(profile="local", data_root=(tmp_path / "data").as_uri())


def test_evaluate_model_scores_every_sample(model_dir, dataset_dir, local_settings, tmp_path):
    out = (tmp_path / "evaluations" / "candidate").as_uri()
    result = evaluate_model(model_dir.as_uri(), dataset_dir.as_uri(), out, local_settings)

    assert set(result) == RESULT_KEYS
    assert result["n"] == len(EVAL) and result["metrics"] == list(LOCAL_METRICS)
    assert result["scores_uri"] == f"{out}/scores.jsonl" and result["summary_uri"] == f"{out}/summary.json"
    rows = files.read_jsonl(result["scores_uri"])
    assert [r["id"] for r in rows] == [r["id"] for r in EVAL]  # one row per sample, in eval-set order
    for row in rows:
        assert set(row) == {"id", *LOCAL_METRICS}
        for name in LOCAL_METRICS:  # cosine similarity may go below 0 for noise
            low = -1.0 if name == "semantic_similarity" else 0.0
            assert row[name] is None or low <= row[name] <= 1.0, (name, row)
    no_ctx = next(r for r in rows if r["id"] == "k4")
    assert no_ctx["non_llm_context_recall"] is None and no_ctx["non_llm_string_similarity"] is not None

    summary = files.read_json(result["summary_uri"])
    assert summary["n"] == len(EVAL) and summary["metrics"] == list(LOCAL_METRICS)
    assert summary["means"] == result["means"] and summary["eval_digest"] == result["eval_digest"]
    assert summary["counts"]["non_llm_context_recall"] == len(EVAL) - 1
    assert summary["generation"]["generator"] == "tiny" and summary["generation"]["max_new_tokens"] == 64
    assert summary["model_uri"] == model_dir.as_uri() and summary["judge"] is None
    responses = files.read_jsonl(result["responses_uri"])
    assert [r["id"] for r in responses] == [r["id"] for r in EVAL]
    assert read_result(out) == result  # result.json: what the DAG reads back on either profile


def test_limit_and_determinism(model_dir, dataset_dir, local_settings, tmp_path):
    first = evaluate_model(model_dir.as_uri(), (dataset_dir / "eval.jsonl").as_uri(),
                           (tmp_path / "a").as_uri(), local_settings, limit=3)
    again = evaluate_model(model_dir.as_uri(), dataset_dir.as_uri(), (tmp_path / "b").as_uri(), local_settings,
                           limit=3)
    assert first["n"] == 3 and [r["id"] for r in files.read_jsonl(first["scores_uri"])] == ["k1", "k2", "k3"]
    assert (tmp_path / "a" / "scores.jsonl").read_bytes() == (tmp_path / "b" / "scores.jsonl").read_bytes()
    assert (tmp_path / "a" / "responses.jsonl").read_bytes() == (tmp_path / "b" / "responses.jsonl").read_bytes()
    assert first["means"] == again["means"] and first["eval_digest"] == again["eval_digest"]


def test_the_pod_entrypoint_runs_the_same_job(model_dir, dataset_dir, local_settings, tmp_path, monkeypatch):
    """The evaluator image's program, with the tiny generator standing in for vLLM."""
    job = get_platform(local_settings).jobs().evaluation_job(model_dir.as_uri(), dataset_dir.as_uri(),
                                                             (tmp_path / "pod").as_uri(), limit=2)
    xcom = tmp_path / "xcom" / "return.json"
    monkeypatch.setenv("LLMOPS_XCOM_PATH", str(xcom))
    monkeypatch.setenv("LLMOPS_EVAL_WORKDIR", str(tmp_path))
    assert entrypoint_main(["--job", json.dumps(job)]) == 0
    result = json.loads(xcom.read_text())
    assert result == read_result(job["output_uri"]) and result["n"] == 2


def test_evaluate_model_on_s3(s3_server, model_dir, dataset_dir, tmp_path):
    """Model staged from S3, eval set read from S3, outputs written to S3 (moto, through the connection)."""
    client = s3_server.client()
    bucket = s3_server.bucket
    for path in model_dir.iterdir():
        client.put_object(Bucket=bucket, Key=f"runs/eval-it/model/{path.name}", Body=path.read_bytes())
    client.put_object(Bucket=bucket, Key="curated/0123456789abcdef/eval.jsonl",
                      Body=(dataset_dir / "eval.jsonl").read_bytes())
    settings = Settings(profile="local", data_root=f"s3://{bucket}/data")
    out = f"s3://{bucket}/evaluations/eval-it/candidate"
    result = evaluate_model(f"s3://{bucket}/runs/eval-it/model", f"s3://{bucket}/curated/0123456789abcdef", out,
                            settings, limit=4)
    keys = s3_server.keys("evaluations/eval-it/candidate/")
    assert {k.rsplit("/", 1)[1] for k in keys} == {"responses.jsonl", "scores.jsonl", "summary.json", "result.json"}
    rows = [json.loads(line) for line in client.get_object(Bucket=bucket, Key="evaluations/eval-it/candidate/"
                                                           "scores.jsonl")["Body"].read().splitlines()]
    assert [r["id"] for r in rows] == ["k1", "k2", "k3", "k4"] and result["n"] == 4
    local = evaluate_model(model_dir.as_uri(), dataset_dir.as_uri(), (tmp_path / "same").as_uri(),
                           Settings(profile="local", data_root=(tmp_path / "d").as_uri()), limit=4)
    assert local["means"] == result["means"], "same model, same samples: same scores wherever they are stored"
    assert os.environ.get("AIRFLOW_CONN_AWS_DEFAULT")  # the fixture's connection was what reached moto
