"""Canary analysis with Argo Rollouts' AnalysisRun semantics; pure (no I/O), unit-tested.

A step's analysis is an `AnalysisRun`: for each metric, `count` measurements `interval` seconds
apart after `initialDelay`. The caller (the deferrable trigger) asks which metrics are `due(now)`,
measures them (a Prometheus query: value, None for empty/NaN, or an exception), and `record`s the
result. The run is plain data (`to_dict` / `from_dict`), so a trigger or a restarted task can
carry it.

Measurement outcome: no value -> Inconclusive; a query error -> Error; successCondition true ->
Successful; else failureCondition true, or none given -> Failed; else Inconclusive.
Metric phase: Failed when failed > failureLimit; Error when consecutive errors >
consecutiveErrorLimit; Inconclusive when inconclusive > inconclusiveLimit; Successful after
`count` measurements. A terminal metric stops measuring; the run's phase is the worst of its
metrics (Failed > Error > Inconclusive > Running > Successful), and a Failed or Error metric
ends the run at once.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from include.validation import Rule, deep_merge

POLICY_PATH = Path(__file__).with_name("policy.yaml")
SUCCESSFUL, FAILED, INCONCLUSIVE, ERROR, RUNNING = "Successful", "Failed", "Inconclusive", "Error", "Running"
_SEVERITY = {FAILED: 4, ERROR: 3, INCONCLUSIVE: 2, RUNNING: 1, SUCCESSFUL: 0}
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_CONDITION = re.compile(r"^\s*result\s*(<=|>=|<|>)\s*(\{[a-z_]+\}|[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\s*$")
MIN_INTERVAL_S = 5


class PolicyError(ValueError):
    """The analysis policy cannot run; the message names the field and what it accepts."""


@dataclass(frozen=True)
class Condition:
    op: str
    threshold: float

    def __call__(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"result {self.op} {self.threshold:g}"


def parse_condition(field_name: str, text: str | None, thresholds: Mapping[str, float]) -> Condition | None:
    if text is None:
        return None
    m = _CONDITION.match(str(text))
    if not m:
        raise PolicyError(f"{field_name}={text!r}: expected 'result <op> <number or {{threshold}}>' with <, <=, >, >=")
    op, rhs = m.groups()
    if rhs.startswith("{"):
        key = rhs.strip("{}")
        if key not in thresholds:
            raise PolicyError(f"{field_name}: unknown threshold {rhs}; known: {', '.join(sorted(thresholds))}")
        rhs = thresholds[key]
    return Condition(op, float(rhs))


@dataclass(frozen=True)
class Metric:
    name: str
    query: str
    interval: float
    count: int
    initial_delay: float
    success: Condition
    failure: Condition | None
    failure_limit: int
    inconclusive_limit: int
    consecutive_error_limit: int
    needs_stable: bool = False

    def promql(self, canary: str, stable: str) -> str:
        window = f"{max(int(round(self.interval)), 1)}s"
        return self.query.replace("{canary}", canary).replace("{stable}", stable).replace("{window}", window)

    def outcome(self, value: float | None) -> str:
        if value is None or math.isnan(value):
            return INCONCLUSIVE
        if self.success(value):
            return SUCCESSFUL
        if self.failure is None or self.failure(value):
            return FAILED
        return INCONCLUSIVE


def _check(field_name: str, value: Any, low: float, high: float, *, kind: str) -> Any:
    """`value` by its field's `Rule`; a refusal is a PolicyError naming the field and the range."""
    return Rule(field_name, kind, low, high, error=PolicyError).check(value)


_int = partial(_check, kind="integer")
_num = partial(_check, kind="number")


def load_policy(overrides: Mapping[str, Any] | None = None, *, profile: str) -> dict[str, Any]:
    """policy.yaml, platform `profile`'s `analysis:` section (include/platforms/<profile>/platform.yaml),
    then the run's overrides, deep-merged and validated."""
    from include.settings import platform_file

    policy = deep_merge(yaml.safe_load(POLICY_PATH.read_text()), platform_file(profile).get("analysis") or {})
    policy = deep_merge(policy, overrides or {})
    metrics(policy)  # validates
    return policy


def metrics(policy: Mapping[str, Any]) -> list[Metric]:
    """The policy's metrics as `Metric`s; raises PolicyError naming the bad field."""
    defaults = policy.get("defaults") or {}
    thresholds = {k: _num(f"thresholds.{k}", v, -1e12, 1e12) for k, v in (policy.get("thresholds") or {}).items()}
    out = []
    for name, spec in (policy.get("metrics") or {}).items():
        if not isinstance(spec, Mapping) or not isinstance(spec.get("query"), str) or not spec["query"].strip():
            raise PolicyError(f"metrics.{name}.query: expected a PromQL string")
        merged = {**defaults, **spec}
        key = f"metrics.{name}"
        out.append(Metric(
            name=name,
            query=_fill_thresholds(f"{key}.query", spec["query"], thresholds),
            interval=_num(f"{key}.interval", merged.get("interval"), MIN_INTERVAL_S, 3600),
            count=_int(f"{key}.count", merged.get("count"), 1, 1000),
            initial_delay=_num(f"{key}.initialDelay", merged.get("initialDelay", 0), 0, 3600),
            success=parse_condition(f"{key}.successCondition", merged.get("successCondition"), thresholds)
            or _missing(f"{key}.successCondition"),
            failure=parse_condition(f"{key}.failureCondition", merged.get("failureCondition"), thresholds),
            failure_limit=_int(f"{key}.failureLimit", merged.get("failureLimit", 0), 0, 1000),
            inconclusive_limit=_int(f"{key}.inconclusiveLimit", merged.get("inconclusiveLimit", 0), 0, 1000),
            consecutive_error_limit=_int(f"{key}.consecutiveErrorLimit",
                                         merged.get("consecutiveErrorLimit", 4), 0, 1000),
            needs_stable=bool(merged.get("needsStable", False)),
        ))
    if not out:
        raise PolicyError("metrics: the analysis needs at least one metric")
    return out


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_QUERY_PLACEHOLDERS = {"canary", "stable", "window"}  # filled per step by Metric.promql


def _fill_thresholds(field_name: str, query: str, thresholds: Mapping[str, float]) -> str:
    def fill(m: re.Match) -> str:
        key = m.group(1)
        if key in _QUERY_PLACEHOLDERS:
            return m.group(0)
        if key not in thresholds:
            raise PolicyError(f"{field_name}: unknown placeholder {m.group(0)}; known: "
                              f"{', '.join(sorted(_QUERY_PLACEHOLDERS | set(thresholds)))}")
        return f"{thresholds[key]:g}"

    return _PLACEHOLDER.sub(fill, query)


def _missing(name: str) -> Condition:
    raise PolicyError(f"{name}: required")


@dataclass
class Measurement:
    metric: str
    at: float
    value: float | None
    phase: str
    message: str = ""


@dataclass
class MetricState:
    taken: int = 0
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    phase: str = RUNNING


@dataclass
class AnalysisRun:
    """One step's analysis: the metrics to measure from `started_at` on, and what was measured."""

    metrics: list[Metric]
    started_at: float
    state: dict[str, MetricState] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)

    def __post_init__(self) -> None:
        for m in self.metrics:
            self.state.setdefault(m.name, MetricState())

    def _metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def next_at(self, name: str) -> float:
        m, st = self._metric(name), self.state[name]
        return self.started_at + m.initial_delay + (st.taken + 1) * m.interval

    def due(self, now: float) -> list[Metric]:
        if self.done:
            return []
        return [m for m in self.metrics if self.state[m.name].phase == RUNNING and self.next_at(m.name) <= now]

    def wake_at(self) -> float | None:
        """When the next measurement is due (None when the run is over)."""
        pending = [self.next_at(m.name) for m in self.metrics if self.state[m.name].phase == RUNNING]
        return None if self.done or not pending else min(pending)

    def record(self, name: str, at: float, value: float | None = None, error: str | None = None) -> Measurement:
        m, st = self._metric(name), self.state[name]
        st.taken += 1
        if error is not None:
            phase, message = ERROR, error
            st.errors += 1
            st.consecutive_errors += 1
        else:
            phase, message = m.outcome(value), ""
            st.consecutive_errors = 0
            if phase == SUCCESSFUL:
                st.successful += 1
            elif phase == FAILED:
                st.failed += 1
            else:
                st.inconclusive += 1
        if st.failed > m.failure_limit:
            st.phase = FAILED
        elif st.consecutive_errors > m.consecutive_error_limit:
            st.phase = ERROR
        elif st.inconclusive > m.inconclusive_limit:
            st.phase = INCONCLUSIVE
        elif st.taken >= m.count and st.consecutive_errors == 0:
            st.phase = SUCCESSFUL
        elif st.taken >= m.count + m.consecutive_error_limit:
            st.phase = ERROR  # errors at the end leave no successful measurement to close on
        value = None if value is not None and math.isnan(value) else value
        out = Measurement(name, at, value, phase, message)
        self.measurements.append(out)
        return out

    @property
    def phase(self) -> str:
        phases = [st.phase for st in self.state.values()]
        worst = max(phases, key=_SEVERITY.__getitem__)
        if worst in (FAILED, ERROR):
            return worst
        return RUNNING if RUNNING in phases else worst

    @property
    def done(self) -> bool:
        return self.phase != RUNNING

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": [{**asdict(m), "success": asdict(m.success),
                             "failure": asdict(m.failure) if m.failure else None} for m in self.metrics],
                "started_at": self.started_at,
                "state": {k: asdict(v) for k, v in self.state.items()},
                "measurements": [asdict(x) for x in self.measurements]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisRun:
        ms = [Metric(**{**m, "success": Condition(**m["success"]),
                        "failure": Condition(**m["failure"]) if m["failure"] else None}) for m in data["metrics"]]
        return cls(ms, data["started_at"], {k: MetricState(**v) for k, v in data["state"].items()},
                   [Measurement(**x) for x in data["measurements"]])


def for_step(policy_metrics: list[Metric], canary_weight: int) -> list[Metric]:
    """The metrics that mean something at this weight: none comparing with stable at 100 %."""
    return [m for m in policy_metrics if not (m.needs_stable and canary_weight >= 100)]


def step_table(weight: int, run: AnalysisRun, probe: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows for the per-step record: weight, metric, time offset, value, outcome."""
    rows = [{"weight": weight, "metric": x.metric, "t": round(x.at - run.started_at, 1),
             "value": x.value, "outcome": x.phase, "message": x.message} for x in run.measurements]
    for name, res in ((probe or {}).get("metrics") or {}).items():
        rows.append({"weight": weight, "metric": f"probe:{name}", "t": None, "value": res.get("mean_diff"),
                     "outcome": res.get("outcome"), "message": res.get("message", "")})
    return rows


def format_table(rows: list[Mapping[str, Any]]) -> str:
    """A fixed-width table, readable at a glance in a task log."""
    head = f"{'weight':>6}  {'metric':<34} {'t(s)':>6}  {'value':>10}  {'outcome':<12} note"
    lines = [head, "-" * len(head)]
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.4g}"
        t = "" if r["t"] is None else f"{r['t']:.1f}"
        lines.append(f"{r['weight']:>6}  {r['metric']:<34} {t:>6}  {value:>10}  {r['outcome']:<12} {r['message'][:80]}")
    return "\n".join(lines)
