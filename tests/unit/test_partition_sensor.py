"""The nightly run's wait for its partition: deferred in the triggerer, bounded by a deadline."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from airflow.exceptions import TaskDeferred
from llmops_operators.sensors import PartitionSensor, StoragePathTrigger

from include.errors import InputError


def first_event(trigger: StoragePathTrigger, timeout: float = 10) -> dict:
    async def run():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(asyncio.wait_for(run(), timeout))


def test_trigger_fires_when_the_partition_lands(tmp_path):
    partition = tmp_path / "raw" / "dt=2026-11-05"
    deadline = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    trigger = StoragePathTrigger(f"file://{partition}", deadline, poke_seconds=0.1)

    async def land_later():
        await asyncio.sleep(0.5)
        partition.mkdir(parents=True)

    async def both():
        lander = asyncio.create_task(land_later())
        async for event in trigger.run():
            await lander
            return event.payload

    assert asyncio.run(asyncio.wait_for(both(), 10)) == {"status": "found", "uri": f"file://{partition}"}


def test_trigger_gives_up_at_the_deadline(tmp_path):
    deadline = (datetime.now(UTC) + timedelta(seconds=0.3)).isoformat()
    trigger = StoragePathTrigger((tmp_path / "never").as_uri(), deadline, poke_seconds=0.1)
    assert first_event(trigger)["status"] == "deadline"
    classpath, kwargs = trigger.serialize()
    assert classpath == "llmops_operators.sensors.StoragePathTrigger"
    assert StoragePathTrigger(**kwargs).uri == trigger.uri


def context(run_type: str, params: dict | None = None):
    return {"dag_run": SimpleNamespace(run_type=run_type), "params": params or {"partition": None, "source_uris": []},
            "logical_date": datetime(2026, 11, 5, tzinfo=UTC)}


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    from include.settings import get_settings

    monkeypatch.setenv("LLMOPS_DATA_ROOT", tmp_path.as_uri())
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_a_scheduled_run_defers_until_its_partition_or_the_deadline(data_root):
    sensor = PartitionSensor(task_id="wait_for_partition", wait_seconds=600, poke_seconds=5)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context("scheduled"))
    trigger = deferred.value.trigger
    assert trigger.uri == f"{data_root.as_uri()}/raw/dt=2026-11-05"
    left = (datetime.fromisoformat(trigger.deadline) - datetime.now(UTC)).total_seconds()
    assert 590 < left <= 600
    with pytest.raises(InputError, match=r"no raw partition at .*dt=2026-11-05 \(waited 600 s\)"):
        sensor.execute_complete({}, {"status": "deadline", "uri": trigger.uri})

    (data_root / "raw" / "dt=2026-11-05").mkdir(parents=True)
    assert sensor.execute(context("scheduled")).endswith("dt=2026-11-05")


@pytest.mark.parametrize("run_type, params", [
    ("manual", None), ("backfill", None), ("asset_triggered", None),
    ("scheduled", {"partition": "2026-11-04", "source_uris": []}),
    ("scheduled", {"partition": None, "source_uris": ["file:///x/raw/a.jsonl"]}),
])
def test_other_runs_do_not_wait(data_root, run_type, params):
    assert PartitionSensor(task_id="w", wait_seconds=600).execute(context(run_type, params)) is None
