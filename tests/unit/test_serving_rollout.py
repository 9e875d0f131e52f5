"""The rollout state machine over an in-memory router: one owner per route, one effect per step,
abort = canary weight 0 in one update, and nothing after a final phase."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from include.lifecycle import rollout
from include.serving import route as rt
from include.serving.rollout import new_state
from tests.memory_router import MemoryRouter

S, C = "llmops-assistant-v1", "llmops-assistant-v2"


@pytest.fixture
def router(monkeypatch):
    r = MemoryRouter()
    r.create(rt.attach(rt.new_route("llmops-assistant", "llm-serving", backends={S: 100}), S, C))
    monkeypatch.setattr(rollout, "get_platform", lambda settings=None: SimpleNamespace(router=lambda: r))
    return r


def plan(run="run-a", steps=(10, 50, 100)):
    return {"model": "llmops-assistant", "run_id": run, "action": "rollout", "noop": False, "direct": False,
            "canary": {"version": "2", "service": C, "source": "file:///m2"},
            "stable": {"version": "1", "service": S, "source": "file:///m1"}, "steps": list(steps)}


def claim(router, p):
    """What deploy writes: the run's state, with the weights beside the canary as they were."""
    router.update("llmops-assistant", lambda r: rt.with_state(
        r, new_state(p, phase="Deploying", step=-1, base=rt.base_weights(r, p["canary"]["service"]))))


def test_a_retried_step_changes_no_weight(router):
    p = plan()
    claim(router, p)
    rollout.begin_step(p, 0)
    weights_after_first = rt.weights(router.get("llmops-assistant"))
    assert weights_after_first[C] == 10
    rollout.begin_step(p, 0)  # the retry after a SIGKILL
    route = router.get("llmops-assistant")
    assert rt.weights(route) == weights_after_first and rt.state(route)["attempts"] == 2
    weight_writes = [rt.weights(w)[C] for w in router.writes]
    assert weight_writes.count(10) == 2 and rollout.current_step(p) == 0  # the second write: annotations only
    assert rt.weight_changes(router.writes[-2], router.writes[-1]) == []


def test_another_run_is_refused_while_one_is_in_progress(router):
    claim(router, plan("run-a"))
    with pytest.raises(rollout.RolloutBusy, match="run-a"):
        rollout.begin_step(plan("run-b"), 0)
    with pytest.raises(rollout.RolloutBusy):
        rollout.check_owner(router.get("llmops-assistant"), "run-b")


def test_abort_is_one_update_to_weight_zero_and_idempotent(router):
    p = plan()
    claim(router, p)
    rollout.begin_step(p, 1)
    n = len(router.writes)
    state = rollout.abort(p, "error-rate Failed")
    assert len(router.writes) == n + 1  # weight 0 and the Aborted state in the same write
    last = router.writes[-1]
    assert rt.weights(last)[C] == 0 and rt.weights(last)[S] == 100 and state["phase"] == "Aborted"
    assert not rt.in_progress(last) and state["reason"] == "error-rate Failed"
    rollout.abort(p, "again")
    assert len(router.writes) == n + 1  # rolling back again is a no-op
    with pytest.raises(rollout.RolloutError, match="aborted"):
        rollout.promote(p)
    with pytest.raises(rollout.RolloutError, match="Aborted"):
        rollout.begin_step(p, 2)


def test_promote_moves_all_traffic_and_releases_the_route(router):
    p = plan()
    claim(router, p)
    rollout.begin_step(p, 0)
    state = rollout.promote(p)
    route = router.get("llmops-assistant")
    assert rt.weights(route) == {S: 0, C: 100} and state["phase"] == "Promoted" and not rt.in_progress(route)
    # a new run may now claim the route
    rollout.check_owner(route, "run-next")


def test_a_server_started_without_waiting_returns_before_it_is_ready(tmp_path):
    """The DAG's deploy does not hold a worker slot while the model loads: the deferred readiness
    trigger waits. A server that would take a minute to listen returns at once."""
    import sys
    import time

    from include.serving import processes

    name = "model-slow-v1"
    started = time.monotonic()
    info = processes.ensure_running(name, lambda port: [sys.executable, "-c", "import time; time.sleep(60)",
                                                        f"--name={name}"], root=tmp_path, wait=False)
    try:
        assert time.monotonic() - started < 5
        assert processes.read(name, tmp_path) == info  # already findable: scrape targets and routes see it
        assert not processes.http_ok(info.url + "/v1/models")
    finally:
        processes.stop(name, tmp_path, grace_s=1)
