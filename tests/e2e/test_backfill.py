"""Backfill prepare_dataset over three days on a real scheduler, then reprocess one day.

A real deployment (dag-processor, scheduler with the LocalExecutor, API server for the execution
API; SQLite) runs `airflow backfill create` over 2026-11-01..03. Each run curates the partition
of its logical date and publishes one version; the reprocess of a completed day must not publish
anything new.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DAG_ID = "prepare_dataset"
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
SUBJECTS = {
    "2026-11-01": ["rivers", "granite", "owls", "lanterns", "harbors", "ferns"],
    "2026-11-02": ["satellites", "violins", "deserts", "bridges", "mushrooms", "comets"],
    "2026-11-03": ["glaciers", "printing presses", "octopuses", "windmills", "orchards", "lighthouses"],
}


def write_raw_partitions(root: Path) -> None:
    """Small JSONL partitions with distinct content per day (plus one malformed line each)."""
    for day in DAYS:
        part = root / "raw" / f"dt={day}"
        part.mkdir(parents=True)
        lines = [json.dumps({"instruction": f"On {day}, describe how {s} behave in one paragraph, item {i}.",
                             "output": f"Notes from {day}: {s} are studied here, observation {i * 7 + 3}, "
                                       f"and the {s} case differs from every other case in the set."})
                 for i, s in enumerate(SUBJECTS[day])]
        lines.append('{"prompt": "truncated record from ' + day)
        (part / "part-000.jsonl").write_text("\n".join(lines) + "\n")


def day(run: dict) -> str:
    return run["logical_date"].date().isoformat()


def published(root: Path) -> dict[str, dict]:
    """version -> manifest, for every directory under curated/ that has a manifest."""
    return {d.name: json.loads((d / "manifest.json").read_text())
            for d in sorted((root / "curated").iterdir())
            if not d.name.startswith("_") and (d / "manifest.json").exists()}


def test_backfill_three_days_then_reprocess_is_idempotent(airflow_stack, tmp_path):
    data = tmp_path / "data"
    write_raw_partitions(data)
    data_root = data.as_uri()
    stack = airflow_stack(
        env={"LLMOPS_DATA_ROOT": data_root, "LLMOPS_PROFILE": "local"},
        # Only the backfill may create runs: with the job schedule on, unpausing would also start
        # the latest nightly interval (catchup=False), whose raw partition does not exist here.
        config={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"},
    )
    stack.wait_for_dag(DAG_ID)
    stack.airflow("dags", "unpause", DAG_ID)

    stack.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", DAYS[0], "--to-date", DAYS[-1])
    runs = stack.wait_for_runs(DAG_ID, 3, timeout=360)

    assert [r["state"] for r in runs] == ["success"] * 3, stack.task_states(DAG_ID)
    assert {r["run_type"] for r in runs} == {"backfill"}
    assert [day(r) for r in runs] == list(DAYS)

    versions = published(data)
    assert len(versions) == 3
    sources = sorted(uri for m in versions.values() for uri in m["source_uris"])
    assert sources == [f"{data_root}/raw/dt={day}" for day in DAYS]
    for m in versions.values():
        assert len(m["source_uris"]) == 1
        assert m["counts"]["written"] == 6 and m["counts"]["quarantined"] == 1
        assert m["run_id"] in {r["run_id"] for r in runs}
    assert not list((data / "curated" / "_staging").glob("*"))

    events = stack.asset_events("curated_dataset")
    assert len(events) == 3
    assert {e["extra"]["version"] for e in events} == set(versions)
    assert {e["source_run_id"] for e in events} == {r["run_id"] for r in runs}
    for e in events:
        assert e["source_task_id"] == "publish"
        m = versions[e["extra"]["version"]]
        assert e["extra"]["uri"] == m["uri"] and e["extra"]["counts"] == m["counts"]

    # Reprocess one completed day. Only one backfill per dag may be active, and the scheduler marks
    # a backfill complete on a fixed 30 s timer, so wait for that first.
    stack.wait_until(lambda: stack.query("SELECT 1 FROM backfill WHERE completed_at IS NOT NULL"), timeout=90,
                     what="the first backfill to be marked complete")
    before = {v: (data / "curated" / v / "manifest.json").stat().st_mtime_ns for v in versions}
    stack.airflow("backfill", "create", "--dag-id", DAG_ID, "--from-date", DAYS[1], "--to-date", DAYS[1],
                  "--reprocess-behavior", "completed")
    rerun = stack.wait_for_runs(DAG_ID, 1, timeout=240,
                                where=lambda r: day(r) == DAYS[1] and r["clear_number"] >= 1)
    assert rerun[0]["state"] == "success", stack.task_states(DAG_ID)
    assert rerun[0]["run_id"] == next(r["run_id"] for r in runs if day(r) == DAYS[1])

    assert published(data) == versions  # no new version, no manifest rewritten
    assert {v: (data / "curated" / v / "manifest.json").stat().st_mtime_ns for v in versions} == before
    assert sorted(p.name for p in (data / "curated").iterdir() if not p.name.startswith("_")) == sorted(versions)
    assert not list((data / "curated" / "_staging").glob("*"))
    # A reprocessed run is a new attempt of the same run: it finds its version published and emits
    # no second event (a retry within the attempt would still emit it, see test_pipeline).
    assert stack.asset_events("curated_dataset") == events
