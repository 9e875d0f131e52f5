"""Waiting for a raw partition without holding a worker slot: the wait runs in the triggerer.

The nightly prepare_dataset run starts when its day closes, but the day's data may land later. It
defers until `<data root>/raw/dt=<day>/` exists, up to a deadline (`LLMOPS_PARTITION_WAIT_SECONDS`),
and only then fails with the same message a missing partition gives at once on a manual run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent


def _exists(uri: str) -> bool:
    from include.storage.objectstore import storage_path

    return storage_path(uri).exists()


class StoragePathTrigger(BaseTrigger):
    """Fires once `uri` exists (file:// or s3://, through the project's storage), or at `deadline`."""

    def __init__(self, uri: str, deadline: str, poke_seconds: float = 60.0) -> None:
        super().__init__()
        self.uri, self.deadline, self.poke_seconds = uri, deadline, poke_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"uri": self.uri, "deadline": self.deadline, "poke_seconds": self.poke_seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        deadline = datetime.fromisoformat(self.deadline)
        while True:
            try:
                if await sync_to_async(_exists)(self.uri):
                    yield TriggerEvent({"status": "found", "uri": self.uri})
                    return
            except Exception as exc:  # storage briefly unreachable: keep waiting, say why
                self.log.warning("could not check %s: %s", self.uri, exc)
            remaining = (deadline - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                yield TriggerEvent({"status": "deadline", "uri": self.uri})
                return
            self.log.info("waiting for %s (%.0f s left before the deadline)", self.uri, remaining)
            await asyncio.sleep(min(self.poke_seconds, remaining))


class PartitionSensor(BaseOperator):
    """A scheduled run waits (deferred) for its day's raw partition; any other run passes straight on:
    explicit sources, a partition asked for by hand, and data announced by an asset event fail or
    proceed at once in resolve_sources."""

    template_fields: Sequence[str] = ()
    ui_color = "#f5f0e1"

    def __init__(self, *, wait_seconds: int, poke_seconds: float = 60.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.wait_seconds, self.poke_seconds = wait_seconds, poke_seconds

    def execute(self, context) -> str | None:
        from include.data.sources import partition_uri
        from include.settings import get_settings

        dag_run, params = context["dag_run"], context["params"]
        if dag_run.run_type != "scheduled" or params.get("partition") or params.get("source_uris"):
            self.log.info("%s run: no wait for a partition", dag_run.run_type)
            return None
        uri = partition_uri(get_settings().data_root, context["logical_date"].date().isoformat())
        if _exists(uri):
            return uri
        deadline = datetime.now(UTC) + timedelta(seconds=self.wait_seconds)
        self.log.info("waiting for %s until %s (deferred: no worker slot is held)", uri, deadline.isoformat())
        self.defer(trigger=StoragePathTrigger(uri, deadline.isoformat(), self.poke_seconds),
                   method_name="execute_complete")

    def execute_complete(self, context, event: dict[str, Any]) -> str:
        from include.errors import InputError

        if event["status"] != "found":
            raise InputError(f"no raw partition at {event['uri']} (waited {self.wait_seconds} s)")
        self.log.info("partition %s landed", event["uri"])
        return event["uri"]
