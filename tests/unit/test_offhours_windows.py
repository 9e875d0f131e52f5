"""windows.yaml: window arithmetic across DST, and the NodePools' budgets generated from it."""

from __future__ import annotations

import bisect
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from croniter import croniter

from include.scheduling import budgets_file, windows
from include.scheduling.windows import WindowError, parse
from tests.k8s_schemas import REPO_ROOT, require_crds, validate

NODEPOOLS = REPO_ROOT / "k8s" / "karpenter" / "nodepools.yaml"
NY = {"name": "nights", "cron": "0 20 * * 1-5", "duration": "10h", "timezone": "America/New_York"}
CLEANUP = {"checkpoint_days": 14, "staging_hours": 24, "finished_job_ttl_hours": 96}
ADMISSION = {"cost_budget_usd_per_window": 100, "local_gpu_slots": 2, "local_seconds_per_step": 1,
             "local_stop_grace_s": 30}


def schedule(*wins, budgets=None):
    return parse({"pools": {"experiment": {"windows": list(wins), "budgets": budgets or {}}},
                  "admission": ADMISSION, "cleanup": CLEANUP})


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def nodepools() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in yaml.safe_load_all(NODEPOOLS.read_text())
            if d and d["kind"] == "NodePool"}


def active_spans(budget: dict, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """Karpenter's rule: a scheduled budget is active from each UTC cron firing for `duration`."""
    if "schedule" not in budget:
        return [(start, end)]
    length = windows.parse_duration("duration", budget["duration"])
    it = croniter(budget["schedule"], (start - timedelta(days=8)).replace(tzinfo=None))
    spans = []
    while (fired := it.get_next(datetime).replace(tzinfo=UTC)) < end:
        spans.append((fired, fired + length))
    return spans


def merged(spans, pad: timedelta = timedelta(0)) -> list[tuple[datetime, datetime]]:
    out: list[list[datetime]] = []
    for a, b in sorted((a - pad, b + pad) for a, b in spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def covered(spans: list[tuple[datetime, datetime]], at: datetime) -> bool:
    """`spans` merged and sorted: a binary search instead of a scan."""
    i = bisect.bisect_right(spans, (at, datetime.max.replace(tzinfo=UTC))) - 1
    return i >= 0 and spans[i][0] <= at < spans[i][1]


def test_the_window_opens_at_local_time_on_both_sides_of_a_dst_change():
    pool = schedule(NY).pool("experiment")
    # US DST began Sunday 2026-03-08: 20:00 in New York is 01:00 UTC before, 00:00 UTC after.
    assert pool.open_window(utc(2026, 3, 6, 1, 30)) == (utc(2026, 3, 6, 1), utc(2026, 3, 6, 11))
    assert pool.open_window(utc(2026, 3, 10, 0, 30)) == (utc(2026, 3, 10, 0), utc(2026, 3, 10, 10))
    assert pool.open_window(utc(2026, 3, 10, 10, 30)) is None  # 06:30 EDT: closed
    assert pool.open_window(utc(2026, 3, 6, 10, 30)) == (utc(2026, 3, 6, 1), utc(2026, 3, 6, 11))  # 05:30 EST
    # Fall back (2026-11-01): the Monday window opens an hour later in UTC.
    assert pool.next_open(utc(2026, 11, 2, 12)) == utc(2026, 11, 3, 1)
    assert pool.next_open(utc(2026, 10, 26, 12)) == utc(2026, 10, 27, 0)
    assert pool.remaining(utc(2026, 3, 10, 8)) == timedelta(hours=2)


def test_overlapping_windows_merge_into_one():
    weekend = {"cron": "0 6 * * 6", "duration": "48h", "timezone": "America/New_York"}
    pool = schedule(NY, weekend).pool("experiment")
    # Friday 20:00 EDT -> Monday 06:00 EDT is one window.
    assert pool.open_window(utc(2026, 6, 6, 12)) == (utc(2026, 6, 6, 0), utc(2026, 6, 8, 10))


def test_budgets_cover_every_window_minute_all_year_and_leave_the_rest_to_outside():
    """Sampled every 15 min over 2026: inside a real window the in-window budget is active and no
    outside budget is; well outside every window (an hour away, the DST shift) the outside one is."""
    doc = yaml.safe_load(windows.WINDOWS_FILE.read_text())
    sched = parse(doc)
    for kind in ("production", "experiment"):
        pool = sched.pool(kind)
        budgets = windows.disruption_budgets(pool)
        inside = [b for b in budgets if "schedule" in b and b in
                  [{**x, "schedule": b["schedule"], "duration": b["duration"]} for x in pool.budgets["in_window"]]]
        outside = [b for b in budgets if "schedule" in b and b not in inside]
        assert inside and outside
        year = (utc(2026, 1, 1), utc(2027, 1, 1))
        spans = merged(pool.intervals(*year))
        nearby = merged(spans, timedelta(hours=1))
        inside_spans = merged(s for b in inside for s in active_spans(b, *year))
        outside_spans = merged(s for b in outside for s in active_spans(b, *year))
        t, checked = year[0], 0
        while t < year[1]:
            in_window = covered(spans, t)
            near = covered(nearby, t)
            if in_window:
                assert covered(inside_spans, t) and not covered(outside_spans, t), (kind, t)
                checked += 1
            elif not near:
                assert covered(outside_spans, t) and not covered(inside_spans, t), (kind, t)
            t += timedelta(minutes=15)
        assert checked > 10_000


def test_k8s_nodepools_agree_with_windows_yaml():
    current = NODEPOOLS.read_text()
    sched = windows.load(windows.WINDOWS_FILE)
    assert budgets_file.render(current, sched, budgets_file.pool_names()) == current, \
        "k8s/karpenter/nodepools.yaml budgets differ from windows.yaml: run scripts/gen_disruption_budgets.py"
    pools = nodepools()
    for kind, name in budgets_file.pool_names().items():
        assert pools[name]["spec"]["disruption"]["budgets"] == windows.disruption_budgets(sched.pool(kind))
    # The production pool is never drifted/consolidated while busy, at any hour.
    assert {"nodes": "0", "reasons": ["Drifted", "Underutilized"]} in pools["gpu-training-pool"]["spec"][
        "disruption"]["budgets"]


def test_a_hand_edit_of_the_budgets_is_caught_and_the_generator_restores_it(tmp_path):
    edited = NODEPOOLS.read_text().replace('duration: 11h', 'duration: 9h', 1)
    assert edited != NODEPOOLS.read_text()
    sched = windows.load(windows.WINDOWS_FILE)
    assert budgets_file.render(edited, sched, budgets_file.pool_names()) == NODEPOOLS.read_text()
    out = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gen_disruption_budgets.py"), "--check"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr


def test_a_changed_window_changes_the_budgets():
    doc = yaml.safe_load(windows.WINDOWS_FILE.read_text())
    doc["pools"]["experiment"]["windows"] = [{"cron": "0 22 * * *", "duration": "4h", "timezone": "UTC"}]
    budgets = windows.disruption_budgets(parse(doc).pool("experiment"))
    assert {"nodes": "0", "reasons": ["Drifted", "Underutilized"], "schedule": "0 22 * * *",
            "duration": "4h"} in budgets
    assert {"nodes": "100%", "schedule": "0 2 * * *", "duration": "20h"} in budgets
    rendered = budgets_file.render(NODEPOOLS.read_text(), parse(doc), budgets_file.pool_names())
    assert rendered != NODEPOOLS.read_text()


def test_generated_nodepools_validate_against_the_karpenter_crd():
    require_crds()
    for pool in nodepools().values():
        validate(pool)


@pytest.mark.parametrize("patch, message", [
    ({"duration": "10x"}, r"windows\[0\]\.duration='10x'"),
    ({"duration": "200h"}, r"duration in hours=200.0: expected a number with 0 < value <= 168"),
    ({"timezone": "Mars/Olympus"}, r"timezone='Mars/Olympus'"),
    ({"cron": "0 20 * *"}, r"cron='0 20 \* \*'"),
])
def test_bad_windows_name_the_field(patch, message):
    with pytest.raises(WindowError, match=message):
        schedule({**NY, **patch})


def test_bad_budgets_and_admission_name_the_field():
    with pytest.raises(WindowError, match=r"in_window\[0\]\.reasons"):
        schedule(NY, budgets={"in_window": [{"nodes": "0", "reasons": ["Expired"]}]})
    with pytest.raises(WindowError, match=r"nodes='lots'"):
        schedule(NY, budgets={"always": [{"nodes": "lots"}]})
    with pytest.raises(WindowError, match=r"admission\.local_gpu_slots=0"):
        parse({"pools": {}, "admission": {**ADMISSION, "local_gpu_slots": 0}, "cleanup": CLEANUP})


def test_the_nightly_finetune_schedule_falls_inside_the_production_window():
    """finetune_lifecycle's own cron (read from the DAG file) fires inside a window all year, DST included."""
    import re

    source = (REPO_ROOT / "dags" / "finetune_lifecycle.py").read_text()
    cron, tz = re.search(r'CronTriggerTimetable\("([^"]+)", timezone="([^"]+)"\)', source).groups()
    assert tz == "UTC"
    pool = windows.load(windows.WINDOWS_FILE).pool("production")
    spans = merged(pool.intervals(utc(2026, 1, 1), utc(2027, 1, 2)))
    it = croniter(cron, datetime(2026, 1, 1))
    fired = 0
    while (t := it.get_next(datetime).replace(tzinfo=UTC)) < utc(2027, 1, 1):
        assert covered(spans, t), f"the nightly run at {t} is outside every production window"
        fired += 1
    assert fired == 365


@pytest.mark.parametrize("cron", ["0 20 15 * *", "0 0 1 1 *", "0 0 30 2 *", "0 20 * 12 1-5"])
def test_a_day_of_month_or_monthly_window_is_refused(cron):
    """Budgets repeat weekly: `0 20 15 * *` rendered 100 % all week, silently. Now it is refused."""
    with pytest.raises(WindowError, match=rf"cron='{cron.replace('*', '[*]')}': day-of-month and month must be"):
        schedule({"cron": cron, "duration": "8h", "timezone": "UTC"})


def test_a_null_pool_section_or_window_names_itself():
    with pytest.raises(WindowError, match=r"pools\.experiment: expected a mapping with windows and budgets, got None"):
        parse({"pools": {"experiment": None}, "admission": ADMISSION, "cleanup": CLEANUP})
    with pytest.raises(WindowError, match=r"pools\.experiment\.windows\[0\]: expected a mapping"):
        schedule(None)


def test_dst_gap_and_overlap_starts_follow_the_stated_rule():
    """New York: 2026-03-08 02:30 does not exist (opens when the gap ends, 03:00 EDT = 07:00 UTC, not an
    hour late at 07:30); 2026-11-01 01:30 happens twice (opens at the first, 01:30 EDT = 05:30 UTC)."""
    gap = schedule({"cron": "30 2 * * *", "duration": "2h", "timezone": "America/New_York"}).pool("experiment")
    assert gap.intervals(utc(2026, 3, 8, 0), utc(2026, 3, 8, 12)) == [(utc(2026, 3, 8, 7), utc(2026, 3, 8, 9))]
    assert gap.intervals(utc(2026, 3, 9, 0), utc(2026, 3, 9, 12))[0][0] == utc(2026, 3, 9, 6, 30)  # EDT after
    twice = schedule({"cron": "30 1 * * *", "duration": "1h", "timezone": "America/New_York"}).pool("experiment")
    assert twice.intervals(utc(2026, 11, 1, 0), utc(2026, 11, 1, 12)) == [(utc(2026, 11, 1, 5, 30),
                                                                             utc(2026, 11, 1, 6, 30))]
