"""The analysis engine's Argo Rollouts semantics, measurement by measurement."""

from __future__ import annotations

import math

import pytest

from include.serving import analysis as an


def _metric(**kw):
    base = dict(name="m", query="q{canary}{stable}[{window}]", interval=5.0, count=3, initial_delay=0.0,
                success=an.Condition("<=", 0.05), failure=an.Condition(">", 0.05), failure_limit=0,
                inconclusive_limit=0, consecutive_error_limit=4)
    base.update(kw)
    return an.Metric(**base)


def test_outcomes_of_single_values():
    m = _metric()
    assert m.outcome(0.01) == an.SUCCESSFUL
    assert m.outcome(0.2) == an.FAILED
    assert m.outcome(None) == an.INCONCLUSIVE
    assert m.outcome(math.nan) == an.INCONCLUSIVE
    # with both conditions false the value is inconclusive (Argo)
    between = _metric(success=an.Condition("<", 1.0), failure=an.Condition(">", 2.0))
    assert between.outcome(1.5) == an.INCONCLUSIVE
    # with no failure condition a value that is not a success fails
    assert _metric(failure=None).outcome(0.2) == an.FAILED


def test_successful_after_count_measurements_and_schedule():
    run = an.AnalysisRun([_metric()], started_at=100.0)
    assert run.due(104.9) == [] and run.wake_at() == 105.0
    for k in range(3):
        assert [m.name for m in run.due(105.0 + 5 * k)] == ["m"]
        run.record("m", 105.0 + 5 * k, 0.0)
    assert run.phase == an.SUCCESSFUL and run.done and run.wake_at() is None


def test_failure_limit_zero_fails_on_first_failure_and_stops():
    run = an.AnalysisRun([_metric(), _metric(name="other")], started_at=0.0)
    run.record("other", 5.0, 0.0)
    run.record("m", 5.0, 0.5)
    assert run.phase == an.FAILED and run.done and run.due(100.0) == []


def test_failure_limit_tolerates_that_many():
    run = an.AnalysisRun([_metric(failure_limit=1)], started_at=0.0)
    run.record("m", 5.0, 0.5)
    assert run.phase == an.RUNNING
    run.record("m", 10.0, 0.5)
    assert run.phase == an.FAILED


def test_inconclusive_past_limit():
    run = an.AnalysisRun([_metric(inconclusive_limit=1)], started_at=0.0)
    run.record("m", 5.0, None)
    assert run.phase == an.RUNNING
    run.record("m", 10.0, math.nan)
    assert run.phase == an.INCONCLUSIVE and run.done


def test_errors_abort_only_past_consecutive_limit_and_reset_on_a_value():
    run = an.AnalysisRun([_metric(count=2)], started_at=0.0)
    for k in range(4):
        run.record("m", 5.0 * (k + 1), error="connection refused")
    assert run.phase == an.RUNNING  # 4 consecutive errors: at the limit, not past it
    run.record("m", 25.0, 0.0)  # Prometheus is back: the streak resets
    assert run.state["m"].consecutive_errors == 0 and run.phase == an.SUCCESSFUL
    run2 = an.AnalysisRun([_metric()], started_at=0.0)
    for k in range(5):
        run2.record("m", 5.0 * (k + 1), error="connection refused")
    assert run2.phase == an.ERROR


def test_worst_phase_wins_and_round_trip():
    run = an.AnalysisRun([_metric(), _metric(name="b", inconclusive_limit=0)], started_at=0.0)
    run.record("b", 5.0, None)
    assert run.phase == an.RUNNING  # b is Inconclusive but m still runs
    for k in range(3):
        run.record("m", 5.0 * (k + 1), 0.0)
    assert run.phase == an.INCONCLUSIVE
    again = an.AnalysisRun.from_dict(run.to_dict())
    assert again.phase == an.INCONCLUSIVE and len(again.measurements) == 4


def test_promql_placeholders():
    q = _metric().promql("llm-v2", "llm-v1")
    assert q == "qllm-v2llm-v1[5s]"


def test_policy_defaults_load_and_validate():
    policy = an.load_policy(profile="local")
    ms = {m.name: m for m in an.metrics(policy)}
    assert set(ms) == {"error-rate", "latency-p95-ratio", "ttft-p95-ratio", "queue-depth"}
    assert ms["error-rate"].success == an.Condition("<=", policy["thresholds"]["max_error_rate"])
    assert ms["error-rate"].consecutive_error_limit == 4 and ms["error-rate"].failure_limit == 0
    assert [m.name for m in an.for_step(list(ms.values()), 100)] == ["error-rate", "queue-depth"]
    eks = an.load_policy(profile="eks")
    assert "http_requests_total" in eks["metrics"]["error-rate"]["query"]
    # the latency floor (a threshold) is filled into both sides of the ratio, per profile
    for profile, floor in (("local", "0.1"), ("eks", "0.02")):
        q = {m.name: m for m in an.metrics(an.load_policy(profile=profile))}["latency-p95-ratio"].promql("c", "s")
        assert q.count(f"), {floor})") == 2 and "{" + "min_latency_s}" not in q
    over = an.load_policy({"thresholds": {"max_error_rate": 0.2}, "metrics": {"queue-depth": None}}, profile="local")
    assert "queue-depth" not in over["metrics"]
    assert {m.name: m for m in an.metrics(over)}["error-rate"].success.threshold == 0.2


@pytest.mark.parametrize("override, field", [
    ({"defaults": {"interval": 2}}, "interval"),
    ({"defaults": {"count": 0}}, "count"),
    ({"metrics": {"error-rate": {"successCondition": "__import__('os')"}}}, "successCondition"),
    ({"metrics": {"error-rate": {"successCondition": "result < {nope}"}}}, "unknown threshold"),
    ({"metrics": {"x": {"query": ""}}}, "metrics.x.query"),
    ({"metrics": {"x": {"query": "up > {nope}", "successCondition": "result < 1"}}}, "unknown placeholder"),
])
def test_policy_refuses_what_cannot_run(override, field):
    with pytest.raises(an.PolicyError, match=field.replace("(", r"\(")):
        an.load_policy(override, profile="local")


def test_step_table_is_readable():
    run = an.AnalysisRun([_metric()], started_at=0.0)
    run.record("m", 5.0, 0.01)
    run.record("m", 10.0, error="boom")
    text = an.format_table(an.step_table(25, run, {"metrics": {"rouge": {"mean_diff": -0.3, "outcome": "Failed"}}}))
    assert "Successful" in text and "Error" in text and "probe:rouge" in text and "25" in text
