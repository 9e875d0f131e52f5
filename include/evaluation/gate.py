"""The evaluation gate: absolute floors plus a paired-bootstrap no-regression rule.

Inputs are per-sample scores, one dict per eval sample: ``{"id": str, "<metric>": float | None}``.
Metric names are opaque strings taken from the policy (include/evaluation/policy.yaml).

For every metric in the policy:
- floor: the candidate's mean over its scored samples must be >= floor;
- no regression (only with a champion): pair candidate and champion by id, drop pairs where either
  score is missing (None or NaN), resample the paired differences (candidate - champion) with
  replacement ``n_bootstrap`` times, and take the percentile interval at ``confidence``. The metric
  regressed when the whole interval lies below ``-margin``.

Everything is deterministic: the bootstrap draws come from ``seed`` and the metric's name, so a
metric's result does not depend on which other metrics are in the policy or in what order.
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from include.errors import InputError
from include.validation import Rule, deep_merge

POLICY_PATH = Path(__file__).with_name("policy.yaml")
TOP_KEYS = {"version", "confidence", "n_bootstrap", "seed", "margin", "min_pairs", "metrics", "profile"}
METRIC_KEYS = {"floor", "margin", "required"}
# Upper bound on one bootstrap draw (resamples x samples) so memory stays flat on large eval sets.
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class MetricGate:
    floor: float | None
    margin: float
    required: bool


@dataclass(frozen=True)
class GatePolicy:
    """A resolved, valid gate policy. Only `validate_policy` (which `load_policy` calls) builds one from
    untrusted values; `from_dict` reads back what `to_dict` wrote (an XCom) and trusts it, and so
    does `decide`: the policy is checked once per run, when the run starts."""

    version: int
    profile: str | None
    confidence: float
    n_bootstrap: int
    seed: int
    margin: float
    min_pairs: int
    metrics: dict[str, MetricGate]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GatePolicy:
        return cls(**{**data, "metrics": {name: MetricGate(**spec) for name, spec in data["metrics"].items()}})


def load_policy(overrides: Mapping[str, Any] | None = None, *, profile: str,
                path: str | Path | None = None) -> GatePolicy:
    """The repo policy with platform `profile`'s `gate:` section (include/platforms/<profile>/platform.yaml)
    and then `overrides` merged over it.

    Returns a validated, fully specified policy: every metric has floor, margin and required.
    Overrides may only tighten the reviewed policy; anything else is an InputError naming the field.
    """
    from include.settings import platform_file

    raw = yaml.safe_load(Path(path or POLICY_PATH).read_text()) or {}
    if not isinstance(raw, Mapping):
        raise InputError(f"gate policy {path or POLICY_PATH}: expected a mapping at the top level")
    try:
        section = platform_file(profile).get("gate") or {}
    except ValueError as exc:
        raise InputError(f"gate policy: {exc}") from None
    resolved = {**deep_merge(raw, section), "profile": profile}
    base = validate_policy(resolved)  # the reviewed policy
    if not overrides:
        return base
    if not isinstance(overrides, Mapping):
        raise InputError(f"gate policy override: expected a mapping, got {type(overrides).__name__}")
    if "profiles" in overrides or "profile" in overrides:
        raise InputError("gate policy override: set keys of the resolved policy, not 'profiles'/'profile'")
    unknown = [f"gate_policy.{key}: not a key a trigger may set (allowed: {sorted(OVERRIDE_KEYS)})"
               for key in overrides if key not in OVERRIDE_KEYS]
    if unknown:
        raise InputError("\n".join(unknown))
    merged = validate_policy(deep_merge(resolved, overrides))  # the run's policy
    problems = loosenings(base, overrides, merged, profile)
    if problems:
        raise InputError("gate_policy may only tighten the reviewed policy (include/evaluation/policy.yaml; "
                         "loosening it is a reviewed change there):\n  - " + "\n  - ".join(problems))
    return merged


# Keys a trigger may set, and which way is tighter. Raising `confidence` widens the bootstrap
# interval, so fewer regressions are caught: only a lower (or equal) confidence is tighter here.
_NOT_ABOVE = ("margin", "confidence")
_NOT_BELOW = ("n_bootstrap", "min_pairs")
OVERRIDE_KEYS = {"metrics", *_NOT_ABOVE, *_NOT_BELOW}


def loosenings(base: GatePolicy, overrides: Mapping[str, Any], merged: GatePolicy, profile: str) -> list[str]:
    """Every way `overrides` loosens `base` (both validated), each naming the gate_policy field."""
    problems: list[str] = []
    for key in _NOT_ABOVE:
        if key in overrides and getattr(merged, key) > getattr(base, key):
            problems.append(f"gate_policy.{key}={overrides[key]!r}: may not exceed the policy's "
                            f"{getattr(base, key)}")
    for key in _NOT_BELOW:
        if key in overrides and getattr(merged, key) < getattr(base, key):
            problems.append(f"gate_policy.{key}={overrides[key]!r}: may not be below the policy's "
                            f"{getattr(base, key)}")
    metrics = overrides.get("metrics", {})
    if not isinstance(metrics, Mapping):
        return [*problems, f"gate_policy.metrics={metrics!r}: expected a mapping of metric -> {{floor, margin, "
                           "required}"]
    from include.evaluation.scoring import METRICS_BY_PROFILE

    known = METRICS_BY_PROFILE.get(profile, ())
    for name in metrics:
        field = f"gate_policy.metrics.{name}"
        if name not in base.metrics and name not in known:
            problems.append(f"{field}: not a metric the {profile} evaluator scores ({', '.join(known)})")
        if name not in base.metrics:
            continue
        if name not in merged.metrics:
            problems.append(f"{field}: may not be removed from the gate")
            continue
        was, now = base.metrics[name], merged.metrics[name]
        if was.floor is not None and (now.floor is None or now.floor < was.floor):
            problems.append(f"{field}.floor={now.floor!r}: may not be below the policy's {was.floor}")
        if now.margin > was.margin:
            problems.append(f"{field}.margin={now.margin!r}: may not exceed the policy's {was.margin}")
        if was.required and not now.required:
            problems.append(f"{field}.required=false: the policy requires this metric")
    return problems


# Each number's accepted range: validate_policy checks with it, override_schema states it.
NUMBERS: dict[str, Rule] = {
    "confidence": Rule("confidence", "number", 0, 1, open_low=True, open_high=True),
    "n_bootstrap": Rule("n_bootstrap", "integer", 100, 100_000),
    "seed": Rule("seed", "integer", 0, 2**63 - 1),
    "margin": Rule("margin", "number", 0, 1e9),
    "min_pairs": Rule("min_pairs", "integer", 2, 10**9),
}
METRIC_NUMBERS: dict[str, Rule] = {"floor": Rule("floor", "number", -1e9, 1e9),
                                   "margin": Rule("margin", "number", 0, 1e9)}
DEFAULTS = {"confidence": 0.95, "n_bootstrap": 2000, "seed": 0, "margin": 0.0, "min_pairs": 10}


def _checked(problems: list[str], rule: Rule, value: Any, label: str) -> Any:
    """`rule.check`, its refusal collected into `problems`: a policy's errors are reported together."""
    try:
        return rule.check(value, label)
    except InputError as exc:
        problems.append(str(exc))
        return value


def validate_policy(policy: Mapping[str, Any]) -> GatePolicy:
    """Check a resolved policy and fill per-metric defaults; an InputError lists every problem."""
    problems: list[str] = []
    unknown = set(policy) - TOP_KEYS
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)} (known: {sorted(TOP_KEYS)})")
    top = {key: _checked(problems, NUMBERS[key], policy.get(key, default), key) for key, default in DEFAULTS.items()}
    metrics = policy.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        problems.append("metrics: expected a non-empty mapping of metric name -> {floor, margin, required}")
        metrics = {}
    gates: dict[str, MetricGate] = {}
    for name, spec in metrics.items():
        if not isinstance(name, str) or not name or name == "id":
            problems.append(f"metrics: {name!r} is not a metric name")
            continue
        spec = {} if spec is None else spec
        if not isinstance(spec, Mapping):
            problems.append(f"metrics.{name}: expected a mapping, got {spec!r}")
            continue
        extra = set(spec) - METRIC_KEYS
        if extra:
            problems.append(f"metrics.{name}: unknown keys {sorted(extra)} (known: {sorted(METRIC_KEYS)})")
        floor = spec.get("floor")
        if floor is not None:
            floor = _checked(problems, METRIC_NUMBERS["floor"], floor, f"metrics.{name}.floor")
        margin = _checked(problems, METRIC_NUMBERS["margin"], spec.get("margin", top["margin"]),
                          f"metrics.{name}.margin")
        required = spec.get("required", True)
        if not isinstance(required, bool):
            problems.append(f"metrics.{name}.required={required!r}: expected true or false")
        gates[name] = MetricGate(floor=floor, margin=margin, required=required)
    if problems:
        raise InputError("invalid gate policy:\n  - " + "\n  - ".join(problems))
    return GatePolicy(version=policy.get("version", 1), profile=policy.get("profile"), metrics=gates, **top)


def override_schema(profile: str, *, path: str | Path | None = None) -> dict[str, Any]:
    """The JSON schema of a trigger's `gate_policy` for `profile`, derived from the rules load_policy
    applies: the keys a trigger may set (OVERRIDE_KEYS, METRIC_KEYS, the profile's metrics), each number's
    range (NUMBERS, METRIC_NUMBERS) narrowed to the tightening side of the resolved policy (_NOT_ABOVE,
    _NOT_BELOW, a metric's floor and margin), a required metric staying required and present. No other
    key: a typo ({"flor": 0.1}) is refused like a loosening, by the form and the REST API, before a run
    exists. load_policy still checks at validate_params (a run started another way, a policy file edit).
    """
    from include.evaluation.scoring import METRICS_BY_PROFILE
    from include.validation import RULE_KEY, num_words

    base = load_policy(profile=profile, path=path)
    top: dict[str, Any] = {}
    for key in sorted(OVERRIDE_KEYS - {"metrics"}):
        value = getattr(base, key)
        top[key] = _range(NUMBERS[key], **({"at_most": value} if key in _NOT_ABOVE else {"at_least": value}))
    metrics: dict[str, Any] = {}
    addable = [m for m in METRICS_BY_PROFILE.get(base.profile, ()) if m not in base.metrics]
    for name in [*base.metrics, *addable]:
        was = base.metrics.get(name)
        floor = _range(METRIC_NUMBERS["floor"], at_least=was.floor if was else None)
        if not was or was.floor is None:
            floor["type"] = ["number", "null"]
        margin = _range(METRIC_NUMBERS["margin"], at_most=was.margin if was else None)
        required = {"const": True} if was and was.required else {"type": "boolean"}
        words = ", ".join(part for part in (
            f"floor at least {num_words(was.floor)}" if was and was.floor is not None else "",
            f"margin at most {num_words(was.margin)}" if was else "",
            "stays required" if was and was.required else "") if part) or "may be added to the gate"
        metrics[name] = {"type": "object" if was else ["object", "null"], "additionalProperties": False,
                         "properties": {"floor": floor, "margin": margin, "required": required}, RULE_KEY: words}
    top["metrics"] = {"type": "object", "additionalProperties": False, "properties": metrics,
                      RULE_KEY: "Metrics: " + ", ".join(metrics) + "."}
    words = "; ".join(f"{k} {'at most' if k in _NOT_ABOVE else 'at least'} {num_words(getattr(base, k))}"
                      for k in sorted(OVERRIDE_KEYS - {"metrics"}))
    return {"type": ["null", "object"], "additionalProperties": False, "properties": top,
            RULE_KEY: f"May only tighten it: {words}; per metric a floor no lower, a margin no higher. "
                     "No other keys."}


def _range(rule: Rule, *, at_least: float | None = None, at_most: float | None = None) -> dict[str, Any]:
    """A NUMBERS rule as JSON schema, narrowed to the resolved policy's value on the tightening side
    (a valid policy's value lies inside the rule's range, so it is the tighter bound)."""
    out: dict[str, Any] = {"type": rule.kind}
    if at_least is not None:
        out["minimum"] = at_least
    else:
        out["exclusiveMinimum" if rule.open_low else "minimum"] = rule.low
    if at_most is not None:
        out["maximum"] = at_most
    else:
        out["exclusiveMaximum" if rule.open_high else "maximum"] = rule.high
    return out


def gated_metrics(policy: GatePolicy) -> list[str]:
    """The metric names the evaluator has to produce for this policy."""
    return list(policy.metrics)


def _score(value: Any) -> float | None:
    """A usable score or None: missing, None, NaN/inf, bools and non-numbers all count as missing."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _index(scores: Iterable[Mapping[str, Any]], who: str) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for i, row in enumerate(scores):
        sid = row.get("id") if isinstance(row, Mapping) else None
        if not isinstance(sid, str) or not sid:
            raise ValueError(f"{who} scores: row {i} has no string 'id'")
        if sid in out:
            raise ValueError(f"{who} scores: id {sid!r} appears more than once")
        out[sid] = row
    return out


def paired_bootstrap_ci(diffs, *, confidence: float, n_bootstrap: int, seed: int,
                        key: str = "") -> tuple[float, float]:
    """Percentile interval of the mean of `diffs` under resampling with replacement (vectorised)."""
    import numpy as np

    d = np.asarray(diffs, dtype=np.float64)
    n = d.size
    if n == 0:
        raise ValueError("paired_bootstrap_ci: no differences")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(key.encode())]))
    means = np.empty(n_bootstrap, dtype=np.float64)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_bootstrap, rows):
        stop = min(n_bootstrap, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def decide(candidate: Iterable[Mapping[str, Any]], champion: Iterable[Mapping[str, Any]] | None,
           policy: GatePolicy) -> dict[str, Any]:
    """Gate a candidate's per-sample scores, against the champion's on the same eval set if there is one.

    Returns the decision report::

        {"passed": bool, "reasons": [why it failed, one line each], "notes": [informational],
         "champion_present": bool, "policy": {the resolved policy},
         "metrics": {name: {"candidate_mean", "champion_mean", "delta", "ci_low", "ci_high", "floor",
                            "floor_ok", "regressed", "n_pairs", "n_candidate", "n_champion",
                            "n_dropped", "margin", "gated"}}}

    `delta` and the interval are over paired samples (candidate - champion); the two means are over
    each side's own scored samples. `n_dropped` counts ids present on both sides where either score
    is missing. Metrics without a champion have champion_mean/delta/ci/regressed = None.

    `policy` is valid already (`load_policy`, `validate_policy`): it is not checked again.
    """
    if not isinstance(policy, GatePolicy):
        raise TypeError(f"decide takes a GatePolicy (load_policy's or validate_policy's), not {type(policy).__name__}")
    cand = _index(candidate, "candidate")
    champ = _index(champion, "champion") if champion is not None else None
    reasons: list[str] = []
    notes: list[str] = []
    metrics: dict[str, dict[str, Any]] = {}
    if not cand:
        reasons.append("candidate: no scored samples")
    if champ is not None:
        only_cand, only_champ = len(cand.keys() - champ.keys()), len(champ.keys() - cand.keys())
        if only_cand or only_champ:
            notes.append(f"eval sets differ: {only_cand} ids only in the candidate, {only_champ} only in the "
                         "champion; only shared ids are compared")

    for name, spec in policy.metrics.items():
        floor, margin = spec.floor, spec.margin
        cand_values = {sid: _score(row.get(name)) for sid, row in cand.items()}
        cand_scored = [v for v in cand_values.values() if v is not None]
        cand_mean = _mean(cand_scored)
        m: dict[str, Any] = {
            "candidate_mean": cand_mean, "champion_mean": None, "delta": None, "ci_low": None, "ci_high": None,
            "floor": floor, "floor_ok": None, "regressed": None, "n_pairs": 0, "n_candidate": len(cand_scored),
            "n_champion": 0, "n_dropped": 0, "margin": margin, "gated": True,
        }
        metrics[name] = m
        missing = len(cand_values) - len(cand_scored)
        if not cand_scored:
            m["floor_ok"] = False
            if spec.required:
                reasons.append(f"{name}: the candidate has no scores for this metric")
            else:
                m["gated"] = False
                notes.append(f"{name}: not scored; skipped (required: false)")
            continue
        if missing:
            notes.append(f"{name}: {missing} of {len(cand_values)} candidate samples have no score")
        m["floor_ok"] = floor is None or cand_mean >= floor
        if not m["floor_ok"]:
            reasons.append(f"{name}: candidate mean {cand_mean:.4f} is below the floor {floor:g}")
        if champ is None:
            continue

        champ_values = {sid: _score(row.get(name)) for sid, row in champ.items()}
        champ_scored = [v for v in champ_values.values() if v is not None]
        m["champion_mean"], m["n_champion"] = _mean(champ_scored), len(champ_scored)
        shared = sorted(cand.keys() & champ.keys())
        pairs = [(cand_values[s], champ_values[s]) for s in shared
                 if cand_values[s] is not None and champ_values[s] is not None]
        m["n_pairs"], m["n_dropped"] = len(pairs), len(shared) - len(pairs)
        if m["n_dropped"]:
            notes.append(f"{name}: {m['n_dropped']} shared samples dropped from the comparison (a score is missing)")
        if len(pairs) < policy.min_pairs:
            reasons.append(f"{name}: only {len(pairs)} paired samples with the champion (min_pairs "
                           f"{policy.min_pairs}); score the champion on this eval set to compare")
            continue
        diffs = [c - h for c, h in pairs]
        m["delta"] = _mean(diffs)
        m["ci_low"], m["ci_high"] = paired_bootstrap_ci(
            diffs, confidence=policy.confidence, n_bootstrap=policy.n_bootstrap, seed=policy.seed, key=name)
        m["regressed"] = m["ci_high"] < -margin
        if m["regressed"]:
            reasons.append(
                f"{name}: regressed against the champion: mean difference {m['delta']:+.4f} over {len(pairs)} "
                f"pairs, {policy.confidence:.0%} CI [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}] lies below "
                f"-{margin:g}")

    return {"passed": not reasons, "reasons": reasons, "notes": notes, "metrics": metrics,
            "policy": policy.to_dict(), "champion_present": champ is not None}
