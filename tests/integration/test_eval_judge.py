"""The LLM-judge path over real HTTP: an Airflow connection -> JudgeConfig -> ChatOpenAI -> a stub
OpenAI-compatible judge on 127.0.0.1 (the benchmark's) -> ragas Faithfulness and ResponseRelevancy.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from benchmarks.eval import StubJudge
from include import tinylm
from include.evaluation.judge import API_KEY_ENV, judge_from_connection
from include.evaluation.run import run_job
from include.evaluation.scoring import JUDGE_METRICS, LOCAL_METRICS, score
from include.storage import files

SECRET = "sk-judge-secret-never-logged"
CONTEXT = "Karpenter launches GPU nodes for pending pods. It removes empty nodes after consolidateAfter."


@pytest.fixture(scope="module")
def stub():
    with StubJudge(latency_ms=5, lifetime_s=120) as judge:
        yield judge


@pytest.fixture
def judge_conn(stub, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LLM_JUDGE", json.dumps({
        "conn_type": "openai", "host": stub.base_url, "password": SECRET,
        "extra": {"model": "stub-judge", "max_workers": 4, "timeout_s": 20}}))
    return judge_from_connection("llm_judge")


def test_judge_metrics_score_each_sample(judge_conn, caplog):
    samples = [
        {"id": "grounded", "user_input": "What does Karpenter do?", "reference": CONTEXT,
         "reference_contexts": [CONTEXT], "response": "Karpenter launches GPU nodes for pending pods."},
        {"id": "made-up", "user_input": "What does Karpenter do?", "reference": CONTEXT,
         "reference_contexts": [CONTEXT], "response": "Bananas grow on tall herbs in tropical climates."},
        {"id": "no-contexts", "user_input": "What does Karpenter do?", "reference": CONTEXT,
         "reference_contexts": [], "response": "Karpenter launches GPU nodes."},
    ]
    with caplog.at_level(logging.DEBUG):
        rows = {r["id"]: r for r in score(samples, "eks", judge=judge_conn)}
    assert set(rows["grounded"]) == {"id", *LOCAL_METRICS, *JUDGE_METRICS}
    assert rows["grounded"]["faithfulness"] == 1.0 and rows["made-up"]["faithfulness"] == 0.0
    assert rows["no-contexts"]["faithfulness"] is None  # nothing to be faithful to
    for row in rows.values():
        assert 0.0 < row["answer_relevancy"] <= 1.0
    assert SECRET not in caplog.text


def test_run_job_with_the_judge_key_from_the_environment(stub, tmp_path, monkeypatch):
    """The pod's path: the job carries the judge's public part, the key comes from the environment."""
    torch.manual_seed(3)
    model = tinylm.export_model(tinylm.TinyByteLM(tinylm.TinyConfig(max_position_embeddings=32)), tmp_path / "model")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "eval.jsonl").write_text("".join(json.dumps(
        {"id": f"q{i}", "user_input": f"Question {i}?", "reference": CONTEXT, "reference_contexts": [CONTEXT]}) + "\n"
        for i in range(3)))
    monkeypatch.setenv(API_KEY_ENV, SECRET)
    job = {"model_uri": model.as_uri(), "eval_uri": (tmp_path / "ds").as_uri(),
           "output_uri": (tmp_path / "out").as_uri(), "generator": "tiny", "metrics_profile": "eks",
           "max_new_tokens": 8,
           "judge": {"provider": "openai", "model": "stub-judge", "base_url": stub.base_url, "max_workers": 2}}
    before = stub.requests()
    result = run_job(job)
    assert result["n"] == 3 and result["metrics"] == [*LOCAL_METRICS, *JUDGE_METRICS]
    assert stub.requests() - before >= 3 * 2  # faithfulness: statements (+ verdicts when there are any)
    summary = files.read_json(result["summary_uri"])
    assert summary["judge"]["model"] == "stub-judge" and SECRET not in json.dumps(summary)
    assert SECRET not in (tmp_path / "out" / "result.json").read_text()
