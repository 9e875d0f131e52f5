"""The rollout's approval (plugins/llmops_operators/approval.py): an unanswered request says it timed out
and which default it took, in the request a person reads and in the task log."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest


@pytest.fixture
def approve(monkeypatch):
    from airflow.providers.standard.operators.hitl import HITLBranchOperator
    from llmops_operators.approval import TimedChoiceOperator

    monkeypatch.setattr(HITLBranchOperator, "do_branch", lambda self, context, branches_to_execute: branches_to_execute)
    return TimedChoiceOperator(task_id="approve", subject="Canary analysis inconclusive: promote or abort?",
                               body="No usable data.", options=["promote", "abort"], timeout_default="abort",
                               response_timeout=timedelta(minutes=2))


def test_a_timeout_takes_the_default_and_the_log_says_it_timed_out(approve, caplog):
    # What the scheduler's timeout sweep sends for a request without defaults (Airflow 3.3).
    event = {"error": "The Human-in-the-loop response timeout has passed without a response.", "error_type": "timeout"}
    with caplog.at_level(logging.INFO):
        assert approve.execute_complete({}, event) == ["abort"]
    assert "approval timed out: no answer within 2 min 00 s; took the default: abort" in caplog.text


def test_an_answer_is_taken_and_logged_with_who_gave_it(approve, caplog):
    from datetime import UTC, datetime

    event = {"chosen_options": ["promote"], "params_input": {}, "responded_at": datetime.now(UTC),
             "responded_by_user": {"id": "7", "name": "ada"}}
    with caplog.at_level(logging.INFO):
        assert approve.execute_complete({}, event) == ["promote"]
    assert "answered by ada: promote" in caplog.text and "timed out" not in caplog.text


def test_the_request_says_by_when_and_what_no_answer_takes(approve, monkeypatch):
    from airflow.providers.standard.operators import hitl
    from airflow.sdk.exceptions import TaskAwaitingInput

    written = {}
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: written.update(kw))
    with pytest.raises(TaskAwaitingInput):  # Airflow 3.3 parks the task until an answer or the timeout
        approve.execute({"task_instance": type("TI", (), {"id": "ti-1"})()})
    assert written["defaults"] is None, "no defaults: the timeout must not read as a response received"
    assert written["body"].startswith("No usable data.")
    assert "UTC** (2 min 00 s from the request) **takes the default: abort**" in written["body"]


def test_the_default_must_be_an_option_and_not_given_twice():
    from llmops_operators.approval import TimedChoiceOperator

    with pytest.raises(ValueError, match="not one of the options"):
        TimedChoiceOperator(task_id="a", subject="s", options=["promote", "abort"], timeout_default="rollback",
                            response_timeout=timedelta(minutes=2))
    with pytest.raises(ValueError, match="timeout_default"):
        TimedChoiceOperator(task_id="b", subject="s", options=["promote", "abort"], timeout_default="abort",
                            defaults=["abort"], response_timeout=timedelta(minutes=2))
