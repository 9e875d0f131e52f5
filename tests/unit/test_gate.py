"""The evaluation gate: floors, the paired-bootstrap no-regression rule, missing scores, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from include.errors import InputError
from include.evaluation import gate

METRIC = "semantic_similarity"
OTHER = "non_llm_string_similarity"


def policy(**over):
    base = {"confidence": 0.95, "n_bootstrap": 2000, "seed": 7, "margin": 0.0, "min_pairs": 10,
            "metrics": {METRIC: {"floor": 0.3}, OTHER: {"floor": 0.05}}}
    return gate.validate_policy(gate.deep_merge(base, over))


def champion_scores(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [{"id": f"q{i:03d}", METRIC: float(a), OTHER: float(b)}
            for i, (a, b) in enumerate(zip(rng.uniform(0.4, 0.8, n), rng.uniform(0.2, 0.6, n), strict=True))]


def shifted(rows, metric, shift, noise=0.0, seed=1, center=False):
    """A copy of `rows` with `metric` moved by `shift` plus per-sample noise (optionally zero-mean)."""
    eps = np.random.default_rng(seed).normal(0.0, noise, len(rows)) if noise else np.zeros(len(rows))
    if center:
        eps = eps - eps.mean()
    return [{**r, metric: r[metric] + shift + float(e)} for r, e in zip(rows, eps, strict=True)]


def test_a_clear_win_passes():
    champ = champion_scores()
    cand = shifted(champ, METRIC, +0.1, noise=0.03)
    d = gate.decide(cand, champ, policy())
    m = d["metrics"][METRIC]
    assert d["passed"] and d["reasons"] == [] and d["champion_present"]
    assert m["ci_low"] > 0 and m["regressed"] is False and m["n_pairs"] == 60
    assert m["delta"] == pytest.approx(m["candidate_mean"] - m["champion_mean"])


def test_a_clear_loss_fails_and_names_the_metric():
    champ = champion_scores()
    cand = shifted(champ, METRIC, -0.15, noise=0.05)
    d = gate.decide(cand, champ, policy())
    m = d["metrics"][METRIC]
    assert not d["passed"]
    assert m["regressed"] is True and m["ci_high"] < 0 and m["floor_ok"] is True  # still above the floor
    assert len(d["reasons"]) == 1 and d["reasons"][0].startswith(f"{METRIC}: regressed")
    assert d["metrics"][OTHER]["regressed"] is False


def test_noise_inside_the_interval_passes():
    champ = champion_scores()
    cand = shifted(champ, METRIC, 0.0, noise=0.1, center=True)  # big per-sample noise, no real change
    d = gate.decide(cand, champ, policy())
    m = d["metrics"][METRIC]
    assert d["passed"], d["reasons"]
    assert m["ci_low"] < 0 < m["ci_high"] and m["regressed"] is False


def test_a_small_noisy_loss_is_not_proven_and_passes():
    champ = champion_scores()
    cand = shifted(champ, METRIC, -0.01, noise=0.15, seed=3)
    m = gate.decide(cand, champ, policy())["metrics"][METRIC]
    assert m["delta"] < 0 and m["ci_high"] > 0 and m["regressed"] is False


def test_margin_tolerates_a_proven_small_loss():
    champ = champion_scores()
    cand = shifted(champ, METRIC, -0.01, noise=0.003)
    strict = gate.decide(cand, champ, policy())
    assert not strict["passed"] and strict["metrics"][METRIC]["ci_high"] < 0
    tolerant = gate.decide(cand, champ, policy(margin=0.02))
    assert tolerant["passed"] and tolerant["metrics"][METRIC]["margin"] == 0.02
    per_metric = gate.decide(cand, champ, policy(metrics={METRIC: {"margin": 0.02}}))
    assert per_metric["passed"]


def test_without_a_champion_floors_alone_decide():
    champ = champion_scores()
    good = gate.decide(shifted(champ, METRIC, -0.3), None, policy())  # a big drop, but nothing to compare with
    m = good["metrics"][METRIC]
    assert good["passed"] and not good["champion_present"]
    assert m["champion_mean"] is None and m["ci_low"] is None and m["regressed"] is None and m["n_pairs"] == 0
    low = [{"id": f"q{i}", METRIC: 0.2, OTHER: 0.5} for i in range(20)]
    bad = gate.decide(low, None, policy())
    assert not bad["passed"] and bad["metrics"][METRIC]["floor_ok"] is False
    assert bad["reasons"] == [f"{METRIC}: candidate mean 0.2000 is below the floor 0.3"]


def test_a_floor_fails_even_when_the_champion_is_worse():
    champ = [{"id": f"q{i}", METRIC: 0.1, OTHER: 0.5} for i in range(20)]
    cand = [{"id": f"q{i}", METRIC: 0.2, OTHER: 0.5} for i in range(20)]
    d = gate.decide(cand, champ, policy())
    assert not d["passed"] and d["metrics"][METRIC]["regressed"] is False and d["metrics"][METRIC]["floor_ok"] is False


def test_missing_scores_are_dropped_and_counted():
    champ = champion_scores(n=40)
    cand = shifted(champ, METRIC, 0.0)
    cand[0][METRIC] = None
    cand[1][METRIC] = float("nan")
    del cand[2][METRIC]
    champ[3][METRIC] = None
    champ[4][METRIC] = "n/a"  # not a number: missing
    d = gate.decide(cand, champ, policy())
    m = d["metrics"][METRIC]
    assert m["n_candidate"] == 37 and m["n_champion"] == 38
    assert m["n_pairs"] == 35 and m["n_dropped"] == 5
    assert m["delta"] == pytest.approx(0.0) and d["passed"]
    assert any("5 shared samples dropped" in n for n in d["notes"])
    assert any("3 of 40 candidate samples have no score" in n for n in d["notes"])
    assert d["metrics"][OTHER]["n_pairs"] == 40 and d["metrics"][OTHER]["n_dropped"] == 0


def test_a_required_metric_nobody_scored_fails_and_an_optional_one_is_skipped():
    champ = champion_scores()
    cand = [{k: v for k, v in r.items() if k != OTHER} for r in champ]
    d = gate.decide(cand, champ, policy())
    assert not d["passed"] and d["reasons"] == [f"{OTHER}: the candidate has no scores for this metric"]
    d = gate.decide(cand, champ, policy(metrics={OTHER: {"required": False}}))
    assert d["passed"] and d["metrics"][OTHER]["gated"] is False


def test_too_few_pairs_with_a_champion_fails_instead_of_guessing():
    champ = champion_scores(n=30)
    cand = [{**r, "id": "other-" + r["id"]} for r in champ[:25]] + champ[25:]  # 5 shared ids
    d = gate.decide(cand, champ, policy())
    assert not d["passed"]
    assert any(r.startswith(f"{METRIC}: only 5 paired samples") for r in d["reasons"])
    assert any("eval sets differ: 25 ids only in the candidate, 25 only in the champion" in n for n in d["notes"])


def test_the_decision_is_deterministic_and_independent_of_metric_order():
    champ = champion_scores()
    cand = shifted(shifted(champ, METRIC, -0.02, noise=0.1), OTHER, 0.01, noise=0.1, seed=9)
    a = gate.decide(cand, champ, policy())
    b = gate.decide(list(reversed(cand)), champ, policy())
    assert a == b
    only_one = gate.decide(cand, champ, policy(metrics={OTHER: None}))
    assert OTHER not in only_one["metrics"]
    assert only_one["metrics"][METRIC]["ci_low"] == a["metrics"][METRIC]["ci_low"]
    reseeded = gate.decide(cand, champ, policy(seed=8))
    assert reseeded["metrics"][METRIC]["ci_low"] != a["metrics"][METRIC]["ci_low"]
    assert reseeded["metrics"][METRIC]["ci_low"] == pytest.approx(a["metrics"][METRIC]["ci_low"], abs=0.01)


def test_bootstrap_interval_matches_the_normal_approximation_and_ignores_chunking(monkeypatch):
    d = np.random.default_rng(5).normal(0.05, 0.2, 400)
    low, high = gate.paired_bootstrap_ci(d, confidence=0.95, n_bootstrap=4000, seed=1, key="m")
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert low == pytest.approx(d.mean() - half, abs=0.004) and high == pytest.approx(d.mean() + half, abs=0.004)
    monkeypatch.setattr(gate, "_CHUNK_ELEMENTS", 1000)  # many small draws instead of one
    assert gate.paired_bootstrap_ci(d, confidence=0.95, n_bootstrap=4000, seed=1, key="m") == (low, high)


def test_bad_score_rows_are_refused():
    with pytest.raises(ValueError, match="appears more than once"):
        gate.decide([{"id": "a", METRIC: 1.0}, {"id": "a", METRIC: 1.0}], None, policy())
    with pytest.raises(ValueError, match="no string 'id'"):
        gate.decide([{METRIC: 1.0}], None, policy())


def test_the_repo_policy_resolves_per_profile_and_takes_overrides():
    local = gate.load_policy(profile="local").to_dict()
    eks = gate.load_policy(profile="eks").to_dict()
    assert local["profile"] == "local" and local["n_bootstrap"] == 2000 and local["confidence"] == 0.95
    assert "faithfulness" not in local["metrics"] and eks["metrics"]["faithfulness"]["floor"] == 0.7
    assert eks["metrics"]["answer_relevancy"]["margin"] == eks["margin"] == 0.01
    assert all(isinstance(s["floor"], float) for s in local["metrics"].values())
    over = gate.load_policy({"margin": 0.005, "metrics": {METRIC: {"floor": 0.9}}}, profile="eks")
    assert over.metrics[METRIC] == gate.MetricGate(floor=0.9, margin=0.005, required=True)
    assert gate.gated_metrics(over) == list(eks["metrics"])  # overrides tighten; they never drop a metric


def test_a_bad_policy_names_every_problem():
    with pytest.raises(InputError) as err:
        gate.validate_policy({**gate.load_policy(profile="local").to_dict(), "confidence": 1.5, "n_bootstrap": 10,
                              "margni": 0.1, "metrics": {METRIC: {"floor": "hi"}}})
    text = str(err.value)
    for needle in ("confidence=1.5", "n_bootstrap=10", "unknown keys ['margni']", "metrics.semantic_similarity.floor"):
        assert needle in text
    with pytest.raises(InputError, match="'gke': no such platform"):
        gate.load_policy(profile="gke")
    with pytest.raises(InputError, match="non-empty mapping"):
        gate.validate_policy({"metrics": {}})
