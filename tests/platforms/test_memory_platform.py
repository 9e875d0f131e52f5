"""A second backend is one folder: the in-memory platform in tests/platforms/memory/, found through
LLMOPS_PLATFORM_PATH and chosen by LLMOPS_PROFILE like the shipped ones, runs the lifecycle's task
functions (the rollout's state machine, an off-hours tick, the training tasks' platform side) with
nothing started, and they drive only its seams."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MODEL = "llmops-assistant"


@pytest.fixture
def memory(monkeypatch, tmp_path):
    from include.settings import get_settings

    monkeypatch.setenv("LLMOPS_PLATFORM_PATH", str(HERE))
    monkeypatch.setenv("LLMOPS_PROFILE", "memory")
    monkeypatch.setenv("LLMOPS_DATA_ROOT", f"file://{tmp_path}")
    get_settings.cache_clear()
    from include.platforms import get_platform

    platform = get_platform()
    world = type(platform.router()).__module__  # the bundle's module, loaded from its folder
    import sys

    state = sys.modules[world].WORLD
    state.__init__()
    yield platform, state
    get_settings.cache_clear()


def plan(stable: str | None, canary: str, steps=(10, 50, 100)) -> dict:
    def version(service):
        return {"version": service.rsplit("v", 1)[1], "service": service, "source": f"file:///models/{service}"}

    return {"model": MODEL, "run_id": "manual__1", "action": "rollout", "noop": False,
            "canary": {**version(canary), "mlflow_run_id": None, "dataset_version": None},
            "stable": version(stable) if stable else None, "steps": list(steps), "direct": stable is None}


def test_the_settings_and_the_picker_find_the_folder(memory):
    from include.settings import get_settings, platforms

    platform, _ = memory
    assert platform.name == "memory" and "memory" in platforms()
    assert get_settings().approval_timeout_seconds == 60  # the bundle's platform.yaml default
    assert type(platform.jobs()).__name__ == "MemoryJobs"


def test_a_canary_rollout_runs_on_the_memory_seams(memory):
    from include.lifecycle import rollout
    from include.serving import route as rt

    _, world = memory
    first = plan(None, "llmops-assistant-v1")
    rollout.deploy(first)
    rollout.promote(first, note="first rollout")
    assert rt.weights(world.routes[rt.route_name(MODEL)]) == {"llmops-assistant-v1": 100}

    second = {**plan("llmops-assistant-v1", "llmops-assistant-v2"), "run_id": "manual__2"}
    rollout.deploy(second)
    assert world.servers["llmops-assistant-v2"]["replicas"] == 1
    for index, weight in enumerate(second["steps"][:-1]):
        state = rollout.begin_step(second, index)
        assert state["weight"] == weight
        assert rt.weights(world.routes[rt.route_name(MODEL)])["llmops-assistant-v2"] == weight
    assert rollout.current_step(second) == 1
    rollout.promote(second)
    assert rollout.scale_down_loser(second) == "llmops-assistant-v1"
    assert world.servers["llmops-assistant-v1"]["replicas"] == 0
    assert rt.weights(world.routes[rt.route_name(MODEL)]) == {"llmops-assistant-v2": 100}

    deploys = [c for c in world.calls if c[0] == "deploy"]
    rollout.deploy(second)  # the finished run cleared and run again: nothing starts, the loser stays at 0
    assert [c for c in world.calls if c[0] == "deploy"] == deploys
    assert world.servers["llmops-assistant-v1"]["replicas"] == 0


def test_an_aborted_canary_leaves_the_stable_at_full_weight(memory):
    from include.lifecycle import rollout
    from include.serving import route as rt

    _, world = memory
    first = plan(None, "llmops-assistant-v1")
    rollout.deploy(first)
    rollout.promote(first)
    second = {**plan("llmops-assistant-v1", "llmops-assistant-v2"), "run_id": "manual__2"}
    rollout.deploy(second)
    rollout.begin_step(second, 0)
    assert rollout.abort(second, "error rate")["phase"] == "Aborted"
    assert rt.weights(world.routes[rt.route_name(MODEL)])["llmops-assistant-v1"] == 100
    assert rollout.scale_down_loser(second) == "llmops-assistant-v2"


def test_an_offhours_tick_uses_the_memory_capacity(memory):
    from include.lifecycle import offhours

    result = offhours.run_tick(dry_run=False, now=datetime(2026, 12, 8, 12, tzinfo=UTC), state_of=lambda _: None)
    assert set(result["windows"]) == {"production", "experiment"}
    assert result["triggers"] == [] and result["stopped"] == []


def test_the_training_tasks_rendezvous_on_the_memory_jobs(memory):
    from include.lifecycle import training

    _, world = memory
    run = {"run_name": "ft-memory-1", "checkpoint_dir": "/nowhere", "dag_id": "finetune_lifecycle", "run_id": "r1"}
    assert training.setup_rendezvous(run) == {"kind": "memory", "master_addr": "memory"}
    assert world.rendezvous == {"ft-memory-1"}
    training.teardown_rendezvous(run)
    assert world.rendezvous == set()
