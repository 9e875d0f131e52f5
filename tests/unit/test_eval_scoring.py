"""Per-sample RAGAS scores: crafted answers score as they should, failures and n/a become None."""

from __future__ import annotations

import json
import math

import pytest

from include.evaluation.run import summarize, write_scores
from include.evaluation.scoring import (
    CONTEXT_METRICS,
    JUDGE_METRICS,
    LOCAL_METRICS,
    STRING_METRICS,
    clean,
    metric_names,
    score,
)
from include.settings import platform_file
from include.storage import files

REFERENCE = "Karpenter launches GPU nodes for pending pods and removes them when they are empty."
CONTEXTS = ["Karpenter watches unschedulable pods and launches right-sized nodes; empty nodes are consolidated."]


def sample(sid: str, response: str, contexts: list[str] | None = None) -> dict:
    return {"id": sid, "user_input": "What does Karpenter do with GPU nodes?", "reference": REFERENCE,
            "reference_contexts": CONTEXTS if contexts is None else contexts, "response": response}


@pytest.fixture(scope="module")
def crafted() -> list[dict]:
    samples = [
        sample("identical", REFERENCE),
        sample("paraphrase", "Karpenter starts GPU nodes for pending pods and deletes empty ones."),
        sample("unrelated", "Bananas are a yellow fruit that is rich in potassium."),
        sample("empty", ""),
        sample("no-contexts", REFERENCE, contexts=[]),
    ]
    return score(samples, "local")


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


def test_one_row_per_sample_in_order_with_every_metric(crafted):
    assert [r["id"] for r in crafted] == ["identical", "paraphrase", "unrelated", "empty", "no-contexts"]
    for row in crafted:
        assert set(row) == {"id", *LOCAL_METRICS}
        for name in LOCAL_METRICS:
            low = -1.0 if name == "semantic_similarity" else 0.0  # a cosine
            assert row[name] is None or (isinstance(row[name], float) and low <= row[name] <= 1.0), (name, row)


def test_identical_answer_scores_one(crafted):
    row = by_id(crafted)["identical"]
    for name in (*STRING_METRICS, "semantic_similarity"):
        assert row[name] == pytest.approx(1.0, abs=1e-6), name


def test_unrelated_answer_scores_lower_than_a_paraphrase(crafted):
    rows = by_id(crafted)
    for name in (*STRING_METRICS, "semantic_similarity"):
        assert rows["unrelated"][name] < rows["paraphrase"][name] < rows["identical"][name], name
    assert rows["unrelated"]["semantic_similarity"] < 0.5 < rows["paraphrase"]["semantic_similarity"]


def test_context_metrics_are_one_with_oracle_contexts_and_none_without(crafted):
    rows = by_id(crafted)
    for name in CONTEXT_METRICS:
        # retrieved_contexts = reference_contexts (the contexts the model was prompted with)
        assert rows["identical"][name] == 1.0 and rows["unrelated"][name] == 1.0
        assert rows["no-contexts"][name] is None  # not applicable: ragas would give 0.0 or NaN


def test_empty_answer_is_scored_not_dropped(crafted):
    row = by_id(crafted)["empty"]
    assert row["non_llm_string_similarity"] == 0.0 and row["bleu_score"] == 0.0 and row["rouge_score"] == 0.0


def test_nan_inf_and_junk_become_none():
    assert clean(float("nan")) is None and clean(math.inf) is None and clean(-math.inf) is None
    assert clean(None) is None and clean("n/a") is None
    assert clean(0.12345678) == 0.123457 and clean(1.0000000000000004) == 1.0 and clean(-0.0) == 0.0
    assert clean(0) == 0.0 and isinstance(clean(1), float)


def test_a_failing_judge_gives_none_for_its_metrics_only():
    from ragas.llms.base import BaseRagasLLM
    from ragas.run_config import RunConfig

    class DownJudge(BaseRagasLLM):
        def generate_text(self, *args, **kwargs):
            raise ConnectionError("judge unreachable")

        async def agenerate_text(self, *args, **kwargs):
            raise ConnectionError("judge unreachable")

        def is_finished(self, response):
            return True

    rows = score([sample("a", REFERENCE), sample("b", "Something else entirely.")], "eks", llm=DownJudge(),
                 run_config=RunConfig(max_retries=1, max_wait=1, timeout=30, max_workers=4))
    for row in rows:
        assert set(row) == {"id", *LOCAL_METRICS, *JUDGE_METRICS}
        assert row["faithfulness"] is None and row["answer_relevancy"] is None
        assert row["non_llm_string_similarity"] is not None and row["semantic_similarity"] is not None


def test_the_eks_profile_needs_a_judge():
    with pytest.raises(ValueError, match="judge"):
        score([sample("a", REFERENCE)], "eks")


def test_direct_and_ragas_evaluate_engines_agree(crafted):
    samples = [sample("identical", REFERENCE), sample("unrelated", "Bananas are a yellow fruit."),
               sample("no-contexts", REFERENCE, contexts=[])]
    direct = score(samples, "local", engine="direct")
    via_evaluate = score(samples, "local", engine="evaluate")
    assert direct == via_evaluate


def test_scores_are_deterministic(crafted):
    samples = [sample("paraphrase", "Karpenter starts GPU nodes for pending pods and deletes empty ones.")]
    assert score(samples, "local") == score(samples, "local") == [by_id(crafted)["paraphrase"]]


def test_summary_means_skip_none_and_count_what_is_missing():
    rows = [{"id": "a", "m": 1.0, "k": None}, {"id": "b", "m": 0.5, "k": None}, {"id": "c", "m": None, "k": None}]
    summary = summarize(rows, ["m", "k"])
    assert summary["n"] == 3 and summary["metrics"] == ["m", "k"]
    assert summary["means"] == {"m": 0.75, "k": None}
    assert summary["counts"] == {"m": 2, "k": 0} and summary["missing"] == {"m": 1, "k": 3}


def test_writer_stores_scores_then_summary(tmp_path):
    rows = [{"id": "a", "bleu_score": 0.5}, {"id": "b", "bleu_score": None}]
    out = write_scores((tmp_path / "eval").as_uri(), rows, ["bleu_score"], responses=[{"id": "a", "response": "x"}],
                       extra={"eval_digest": "abc"})
    lines = (tmp_path / "eval" / "scores.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["means"] == {"bleu_score": 0.5} and summary["n"] == 2 and summary["eval_digest"] == "abc"
    assert out["scores_uri"].endswith("/scores.jsonl") and out["summary_uri"].endswith("/summary.json")
    assert files.read_jsonl(out["scores_uri"]) == rows
    assert not list((tmp_path / "eval").glob(".*")), "temp files are renamed into place"


def test_metric_names_are_the_gate_policy_metrics():
    for profile in ("local", "eks"):  # each platform's gate section (include/platforms/<name>/platform.yaml)
        assert set(metric_names(profile)) == set(platform_file(profile)["gate"]["metrics"]), profile


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="metrics profile"):
        metric_names("gpu")
