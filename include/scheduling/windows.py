"""Off-hours windows: read windows.yaml, answer "is a window open, until when", and turn the
windows into Karpenter v1 disruption budgets.

Window times are evaluated in their own timezone (zoneinfo), so a window at 20:00 New York opens
at 01:00 UTC in winter and 00:00 UTC in summer. Karpenter budgets are UTC cron only and a
NodePool file cannot change with the season, so the budgets cover a week in UTC minutes: the
"in window" set is the union of the window at every UTC offset its zone takes in a year (never
narrower than the real window), the "outside" set is the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import CroniterBadDateError, croniter

from include.cluster.pools import PLAN_POOLS
from include.validation import Rule

WINDOWS_FILE = Path(__file__).with_name("windows.yaml")
WEEK_MIN = 7 * 24 * 60
REASONS = ("Drifted", "Underutilized", "Empty")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?$")
_NODES = re.compile(r"^((100|[0-9]{1,2})%|[0-9]+)$")


class WindowError(ValueError):
    """windows.yaml has a value the scheduler cannot use; the message names the field."""


def parse_duration(field: str, value: Any) -> timedelta:
    m = _DURATION.match(str(value))
    if not m or not any(m.groups()):
        raise WindowError(f"{field}={value!r}: expected hours and/or minutes like 10h, 90m or 1h30m")
    minutes = int(m.group(1) or 0) * 60 + int(m.group(2) or 0)
    Rule(field, "number", 0, WEEK_MIN / 60, open_low=True, error=WindowError).check(minutes / 60, f"{field} in hours")
    return timedelta(minutes=minutes)


def format_duration(minutes: int) -> str:
    """Karpenter's duration syntax: 10h, 45m or 1h30m."""
    h, m = divmod(minutes, 60)
    return f"{h}h{m}m" if h and m else (f"{h}h" if h else f"{m}m")


@dataclass(frozen=True)
class Window:
    name: str
    cron: str
    duration: timedelta
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def occurrences(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """(open, close) in UTC of every occurrence overlapping [start, end).

        The cron runs over naive local wall-clock times, then each is placed in the zone: a DST
        change moves the UTC instant, not the local time of the opening. The stated rule for the
        two days a year a local time is not one instant: a start in the spring-forward gap (02:30
        that never happens) opens when the gap ends (03:00), and a start in the fall-back overlap
        (01:30 twice) opens at its first occurrence. Either way it lasts its duration.
        """
        zone = self.zone
        local = (start - self.duration).astimezone(zone).replace(tzinfo=None) - timedelta(minutes=1)
        it = croniter(self.cron, local)
        out = []
        while True:
            opened = _local_instant(it.get_next(datetime), zone)
            if opened >= end:
                return out
            closed = opened + self.duration
            if closed > start:
                out.append((opened, closed))


def _local_instant(naive: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time: the first occurrence of an ambiguous one (fold 0),
    the end of the gap for one that does not exist."""
    while (aware := naive.replace(tzinfo=zone)).astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        naive = naive.replace(second=0, microsecond=0) + timedelta(minutes=1)  # in the gap: the next minute
    return aware.astimezone(UTC)


@dataclass(frozen=True)
class PoolWindows:
    kind: str  # a plan's pool: production | experiment
    windows: tuple[Window, ...]
    budgets: dict[str, tuple[dict[str, Any], ...]]

    def intervals(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """The windows' occurrences overlapping [start, end), merged where they overlap or touch."""
        spans = sorted(s for w in self.windows for s in w.occurrences(start, end))
        merged: list[list[datetime]] = []
        for opened, closed in spans:
            if merged and opened <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], closed)
            else:
                merged.append([opened, closed])
        return [(a, b) for a, b in merged]

    def open_window(self, at: datetime) -> tuple[datetime, datetime] | None:
        """The merged window containing `at` (open <= at < close), or None when closed."""
        for opened, closed in self.intervals(at - timedelta(days=8), at + timedelta(days=8)):
            if opened <= at < closed:
                return opened, closed
        return None

    def next_open(self, at: datetime) -> datetime | None:
        """When the next window opens after `at` (`at` itself inside a window); None within a year."""
        if self.open_window(at):
            return at
        for start in range(0, 370, 15):
            begin = at + timedelta(days=start)
            opens = [o for o, _ in self.intervals(begin, begin + timedelta(days=15)) if o >= at]
            if opens:
                return min(opens)
        return None

    def longest(self, at: datetime) -> timedelta:
        """The longest (merged) window around `at`, and never less than any single window."""
        merged = [b - a for a, b in self.intervals(at - timedelta(days=8), at + timedelta(days=15))]
        return max([*merged, *(w.duration for w in self.windows)])

    def remaining(self, at: datetime) -> timedelta:
        window = self.open_window(at)
        return (window[1] - at) if window else timedelta(0)

    # ---- UTC week for Karpenter ----
    def utc_week(self) -> list[bool]:
        """Minutes of a UTC week (Monday 00:00 = 0) inside the window at any offset of its zone."""
        week = [False] * WEEK_MIN
        for w in self.windows:
            for offset in zone_offsets(w.timezone):
                for start in local_week_starts(w.cron):
                    first = start - offset
                    for m in range(first, first + int(w.duration.total_seconds() // 60)):
                        week[m % WEEK_MIN] = True
        return week


@lru_cache(maxsize=32)
def zone_offsets(timezone: str, year: int = 2026) -> tuple[int, ...]:
    """Every UTC offset (minutes) `timezone` takes in `year`, sampled daily at noon."""
    zone = ZoneInfo(timezone)
    day = datetime(year, 1, 1, 12, tzinfo=zone)
    offsets = {int((day + timedelta(days=d)).utcoffset().total_seconds() // 60) for d in range(366)}
    return tuple(sorted(offsets))


@lru_cache(maxsize=32)
def local_week_starts(cron: str) -> tuple[int, ...]:
    """Minutes of a local week (Monday 00:00 = 0) at which the cron fires."""
    monday = datetime(2024, 1, 1)  # a Monday, no zone: wall-clock minutes
    it = croniter(cron, monday - timedelta(minutes=1))
    starts = []
    while (t := it.get_next(datetime)) < monday + timedelta(days=7):
        starts.append(int((t - monday).total_seconds() // 60))
    return tuple(starts)


def week_runs(week: list[bool]) -> list[tuple[int, int]]:
    """Maximal circular runs of True as (start minute, length); [(0, WEEK_MIN)] when all True."""
    if all(week):
        return [(0, WEEK_MIN)]
    if not any(week):
        return []
    pivot = week.index(False)  # start scanning at a False so no run wraps the scan
    runs, start = [], None
    for i in range(1, WEEK_MIN + 1):
        m = (pivot + i) % WEEK_MIN
        if week[m] and start is None:
            start = m
        elif not week[m] and start is not None:
            runs.append((start, (m - start) % WEEK_MIN))
            start = None
    return sorted(runs)


def schedules(week: list[bool]) -> list[tuple[str, str]]:
    """(UTC cron, duration) pairs covering exactly the True minutes; same time+length share a cron."""
    grouped: dict[tuple[int, int], list[int]] = {}
    for start, length in week_runs(week):
        day, minute = divmod(start, 1440)
        grouped.setdefault((minute, length), []).append((day + 1) % 7)  # cron: 0 = Sunday
    out = []
    for (minute, length), days in sorted(grouped.items(), key=lambda kv: (min(kv[1]), kv[0])):
        dow = ",".join(str(d) for d in sorted(days)) if len(days) < 7 else "*"
        out.append((f"{minute % 60} {minute // 60} * * {dow}", format_duration(length)))
    return out


def _budget(field: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or set(raw) - {"nodes", "reasons"} or "nodes" not in raw:
        raise WindowError(f"{field}={raw!r}: expected {{nodes: \"0\" | \"N%\" | \"N\", reasons: [...]}}")
    nodes = str(raw["nodes"])
    if not _NODES.match(nodes):
        raise WindowError(f"{field}.nodes={nodes!r}: expected a count like \"0\" or a percentage like \"25%\"")
    budget: dict[str, Any] = {"nodes": nodes}
    if "reasons" in raw:
        bad = [r for r in raw["reasons"] or () if r not in REASONS]
        if bad or not raw["reasons"]:
            raise WindowError(f"{field}.reasons={raw['reasons']!r}: expected some of {', '.join(REASONS)}")
        budget["reasons"] = list(raw["reasons"])
    return budget


def _window(field: str, raw: dict) -> Window:
    if not isinstance(raw, dict):
        raise WindowError(f"{field}: expected a mapping with cron, duration and timezone, got {raw!r}")
    for key in ("cron", "duration", "timezone"):
        if key not in raw:
            raise WindowError(f"{field}.{key} is missing")
    if not croniter.is_valid(str(raw["cron"])) or len(str(raw["cron"]).split()) != 5:
        raise WindowError(f"{field}.cron={raw['cron']!r}: expected 5 cron fields (minute hour dom month dow)")
    if str(raw["cron"]).split()[2:4] != ["*", "*"]:
        raise WindowError(f"{field}.cron={raw['cron']!r}: day-of-month and month must be '*': windows and the "
                          "NodePools' disruption budgets built from them repeat every week; choose days with "
                          "the day-of-week field")
    try:
        croniter(str(raw["cron"]), datetime(2026, 1, 1)).get_next(datetime)
    except (CroniterBadDateError, ValueError):
        raise WindowError(f"{field}.cron={raw['cron']!r}: never fires") from None
    try:
        ZoneInfo(str(raw["timezone"]))
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"{field}.timezone={raw['timezone']!r}: expected an IANA zone like UTC or "
                          "America/New_York") from None
    return Window(str(raw.get("name", field)), str(raw["cron"]),
                  parse_duration(f"{field}.duration", raw["duration"]), str(raw["timezone"]))


@dataclass(frozen=True)
class Schedule:
    pools: dict[str, PoolWindows]
    admission: dict[str, float]
    cleanup: dict[str, float]

    def pool(self, kind: str) -> PoolWindows:
        if kind not in self.pools:
            raise WindowError(f"pool {kind!r} has no windows; windows.yaml defines {sorted(self.pools)}")
        return self.pools[kind]


def _number(section: str, key: str, low: float, high: float) -> Rule:
    return Rule(f"{section}.{key}", "number", low, high, error=WindowError)


SECTIONS: dict[str, dict[str, Rule]] = {
    section: {key: _number(section, key, low, high) for key, (low, high) in bounds.items()}
    for section, bounds in {
        "admission": {"cost_budget_usd_per_window": (0, 1e7), "local_gpu_slots": (1, 1024),
                      "local_seconds_per_step": (0, 3600), "local_stop_grace_s": (1, 3600)},
        "cleanup": {"checkpoint_days": (0, 3650), "staging_hours": (0, 8760), "finished_job_ttl_hours": (0, 8760),
                    "rollout_leftover_hours": (0, 8760)},
    }.items()
}
OPTIONAL = {("cleanup", "rollout_leftover_hours"): 1}  # a windows file written before the key existed


def parse(doc: dict, source: str = "windows.yaml") -> Schedule:
    pools = {}
    for kind, spec in (doc.get("pools") or {}).items():
        if kind not in PLAN_POOLS:
            raise WindowError(f"{source}: pools.{kind}: expected production or experiment")
        if not isinstance(spec, dict):
            raise WindowError(f"{source}: pools.{kind}: expected a mapping with windows and budgets, got {spec!r}")
        windows = tuple(_window(f"pools.{kind}.windows[{i}]", w) for i, w in enumerate(spec.get("windows") or ()))
        if not windows:
            raise WindowError(f"{source}: pools.{kind}.windows is empty")
        budgets = {}
        for part in ("always", "in_window", "outside_window"):
            budgets[part] = tuple(_budget(f"pools.{kind}.budgets.{part}[{i}]", b)
                                  for i, b in enumerate((spec.get("budgets") or {}).get(part) or ()))
        pools[kind] = PoolWindows(kind, windows, budgets)
    sections: dict[str, dict[str, float]] = {}
    for section, rules in SECTIONS.items():
        sections[section] = {}
        for key, rule in rules.items():
            value = (doc.get(section) or {}).get(key, OPTIONAL.get((section, key)))
            sections[section][key] = rule.check(value, label=f"{source}: {rule.field}")
    return Schedule(pools, **sections)


def load(path: str | Path | None = None) -> Schedule:
    """The schedule from `path`, else settings.windows_file, else the windows.yaml beside this module."""
    if path is None:
        from include.settings import get_settings

        path = getattr(get_settings(), "windows_file", "") or WINDOWS_FILE
    path = Path(path)
    return parse(yaml.safe_load(path.read_text()) or {}, path.name)


def disruption_budgets(pool: PoolWindows) -> list[dict[str, Any]]:
    """The NodePool's spec.disruption.budgets for these windows, in a stable order."""
    week = pool.utc_week()
    out = [dict(b) for b in pool.budgets["always"]]
    for part, minutes in (("in_window", week), ("outside_window", [not m for m in week])):
        for cron, duration in schedules(minutes):
            for b in pool.budgets[part]:
                out.append({**b, "schedule": cron, "duration": duration})
    return out


def window_state(schedule: Schedule, now: datetime) -> dict[str, dict[str, Any]]:
    out = {}
    for kind, pool in schedule.pools.items():
        window = pool.open_window(now)
        nxt = pool.next_open(now)
        longest = pool.longest(now)
        out[kind] = {"open": window is not None, "opened": window[0].isoformat() if window else None,
                     "closes": window[1].isoformat() if window else None,
                     "remaining_h": round(pool.remaining(now).total_seconds() / 3600, 4),
                     "next_open": nxt.isoformat() if nxt else None,
                     "longest_h": round(longest.total_seconds() / 3600, 4)}
    return out
