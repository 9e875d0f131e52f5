"""The HTTPRoute: the traffic split, and the rollout's state.

Pure functions over the `gateway.networking.k8s.io/v1` HTTPRoute dict, used by every router (a file
and Envoy locally, the Kubernetes API on eks), so an edit is the same object on every platform.

A route may be shared: other models' rules (matched by a header or a path) sit beside this model's,
and other backends beside its versions. The edits here touch only the backendRefs of the rules that
route the model (route_read.py says which, and `read` refuses a route the rollout cannot edit); every
other rule comes out byte-identical. The names and the reading are re-exported here, so callers
import one module.

A backend's share is its weight over the sum of its rule's weights, a missing weight counting 1
(Gateway API). Setting the canary to X % writes each of those rules to a total that is a multiple of
100: the canary at exactly X % of it, every other backend sharing the rest in the proportions it had
before the rollout (recorded in the state as `base`, so steps never drift); 0 % writes those weights
back as they were.

The rollout's state lives in annotations on the route (`STATE_ANNOTATION`, JSON), so a restarted
task reads where it was from the route itself: run, phase, versions, steps, current step and weight.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Mapping
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

from include.serving.route_read import (
    GROUP,
    SERVICE_PORT,
    backend_refs,
    filter_problem,
    rules_of,
    version_base,
    weight_of,
)
from include.serving.route_read import RouteError as RouteError
from include.serving.route_read import foreign_namespaces as foreign_namespaces
from include.serving.route_read import granted as granted
from include.serving.route_read import model_rules as model_rules
from include.serving.route_read import read as read
from include.serving.route_read import route_name as route_name
from include.serving.route_read import selector as selector
from include.serving.route_read import served_name as served_name
from include.validation import Rule

API_VERSION = f"{GROUP}/v1"
ANNOTATION_PREFIX = "rollout.llmops.io/"
STATE_ANNOTATION = ANNOTATION_PREFIX + "state"
IN_PROGRESS_ANNOTATION = ANNOTATION_PREFIX + "in-progress"
UPDATED_AT_ANNOTATION = ANNOTATION_PREFIX + "updated-at"  # epoch seconds of the last state change
PHASES = ("Deploying", "Progressing", "Paused", "Promoted", "Aborted")
# The totals a rule's weights are written to: the first keeps weights readable as percentages; the
# last is the largest weight the HTTPRoute CRD accepts.
TOTALS = (100, 1_000, 10_000, 100_000, 1_000_000)


def new_route(model_name: str, namespace: str, *, gateway: str = "llm-gateway",
              backends: Mapping[str, int] | None = None, path_prefix: str = "/v1") -> dict[str, Any]:
    """A route for `model_name`: one rule on `path_prefix` to `backends` (service -> weight)."""
    refs = [{"name": svc, "port": SERVICE_PORT, "weight": int(w)} for svc, w in (backends or {}).items()]
    return {
        "apiVersion": API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {"name": route_name(model_name), "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "llmops-finetune",
                                "llmops.io/model": route_name(model_name)},
                     "annotations": {}},
        "spec": {
            "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path_prefix}}], "backendRefs": refs}],
        },
    }


def _key(ref: Mapping[str, Any]) -> str:
    return f"{ref.get('namespace', '')}/{ref.get('name')}:{ref.get('port', '')}"


# ---- the edits ----

def _model_rules(route: Mapping[str, Any], canary: str, match: Mapping[str, Any] | None,
                 what: str) -> tuple[dict[str, Any], list[dict], list[int]]:
    """A copy of the route, its rules, and the indexes of those that route the canary's model."""
    out = copy.deepcopy(dict(route))
    base = version_base(canary)
    chosen = rules_of(out, base, match)
    if not chosen:
        raise RouteError(f"no rule routes {base}: nowhere to {what} for {canary}")
    return out, out["spec"].get("rules") or [], chosen


def attach(route: Mapping[str, Any], stable: str | None, canary: str, *,
           match: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A copy with `canary` at weight 0 in every rule that routes its model (a no-op where it is).

    Its backendRef is the servers': the Service in the route's own namespace on SERVICE_PORT (never a
    copy of the stable's namespace), with the stable's backendRef filters of that rule.
    """
    out, rules, chosen = _model_rules(route, canary, match, "attach it")
    for i in chosen:
        refs = rules[i].setdefault("backendRefs", [])
        if any(ref.get("name") == canary for ref in refs):
            continue
        ref: dict[str, Any] = {"name": canary, "port": SERVICE_PORT, "weight": 0}
        if stable is not None:
            template = next((r for r in refs if r.get("name") == stable), None)
            if template is None:
                raise RouteError(f"rule {i} routes {version_base(canary)} but has no backendRef {stable} "
                                 f"to put {canary} beside")
            for filt in template.get("filters") or []:
                if problem := filter_problem(filt, stable):
                    raise RouteError(f"rule {i}: backendRef {stable} has {problem}")
            if template.get("filters"):
                ref["filters"] = copy.deepcopy(template["filters"])
        refs.append(ref)
    return out


def base_weights(route: Mapping[str, Any], canary: str, *,
                 match: Mapping[str, Any] | None = None) -> dict[str, list[list[Any]]]:
    """The weights of the backends beside `canary` in the model's rules, as written (None when missing):
    what the rollout records when it claims the route, and what `set_weights` shares the rest by."""
    rules = route["spec"].get("rules") or []
    return {str(i): [[_key(ref), ref.get("weight")] for ref in backend_refs(rules[i]) if ref.get("name") != canary]
            for i in rules_of(route, version_base(canary), match)}


def _recorded(route: Mapping[str, Any], canary: str) -> dict[str, list[list[Any]]]:
    st = state(route)
    if st.get("canary") is None or f"{version_base(canary)}-v{st['canary']}" != canary:
        return {}
    return st.get("base") or {}


def _apportion(total: int, parts: list[int]) -> list[int]:
    """`total` split in proportion to `parts` (largest remainder; a tie goes to the earlier backend)."""
    whole = sum(parts)
    exact = [Fraction(total * p, whole) for p in parts]
    out = [int(e) for e in exact]
    for j in sorted(range(len(parts)), key=lambda j: (out[j] - exact[j], j))[:total - sum(out)]:
        out[j] += 1
    return out


def _split(percent: int, others: list[int], where: str) -> tuple[int, list[int]]:
    """The canary's weight and the others' at `percent`: over a total of 100 (1,000, ... when a backend
    that takes traffic would otherwise round to 0), the canary exactly `percent` of it."""
    if percent == 100:
        return 100, [0] * len(others)
    whole = sum(others)
    if whole == 0:
        raise RouteError(f"{where}: no backend besides the canary takes traffic, so none can take the other "
                         f"{100 - percent} %")
    total = next((t for t in TOTALS if all(w == 0 or (t - percent * t // 100) * w >= whole for w in others)),
                 TOTALS[-1])
    canary = percent * total // 100
    return canary, _apportion(total - canary, others)


def _put(ref: dict[str, Any], weight: int | None) -> None:
    if weight is None:
        ref.pop("weight", None)
    else:
        ref["weight"] = weight


def set_weights(route: Mapping[str, Any], stable: str | None, canary: str, canary_weight: int, *,
                match: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A copy with `canary` at `canary_weight` % of every rule that routes its model.

    The other backends of those rules share the rest in the proportions they had when the rollout
    claimed the route (the state's `base`), else in their current ones; when none of them takes
    traffic, `stable` takes it. At 0 % they get their recorded weights back as they were written.
    """
    Rule("canary weight", "integer", 0, 100, error=RouteError).check(canary_weight)
    out, rules, chosen = _model_rules(route, canary, match, "set its weight")
    recorded = _recorded(out, canary)
    for i in chosen:
        refs = backend_refs(rules[i])
        mine = [ref for ref in refs if ref.get("name") == canary]
        if not mine and canary_weight == 0:
            continue  # nothing of the canary's to take back here
        if len(mine) != 1:
            raise RouteError(f"rule {i} has {len(mine) or 'no'} backendRef {canary}"
                             + ("" if mine else ": attach it first"))
        others = [ref for ref in refs if ref is not mine[0]]
        entry = recorded.get(str(i))
        if entry and [k for k, _ in entry] == [_key(ref) for ref in others]:
            raw = [w for _, w in entry]
            if canary_weight == 0:  # back as they were
                mine[0]["weight"] = 0
                for ref, w in zip(others, raw, strict=True):
                    _put(ref, w)
                continue
        else:
            raw = [ref.get("weight") for ref in others]
        counted = [1 if w is None else int(w) for w in raw]
        if not any(counted) and stable is not None:  # after a promotion: the stable takes the rest
            counted = [1 if ref.get("name") == stable else 0 for ref in others]
        if not any(counted) and canary_weight == 0:  # nothing else to give the traffic back to
            mine[0]["weight"] = 0
            continue
        mine[0]["weight"], split = _split(canary_weight, counted, f"rule {i}")
        for ref, w in zip(others, split, strict=True):
            ref["weight"] = w
    return out


def detach(route: Mapping[str, Any], service: str) -> dict[str, Any]:
    """A copy without `service`'s backendRefs (the scaled-down loser); refuses one that still takes
    traffic. Rules that do not name it stay as they are."""
    out = copy.deepcopy(dict(route))
    for rule in out["spec"].get("rules") or []:
        refs = backend_refs(rule)
        if not any(ref.get("name") == service for ref in refs):
            continue
        for ref in refs:
            if ref.get("name") == service and weight_of(ref) != 0:
                raise RouteError(f"{service!r} still has weight {weight_of(ref)}: set it to 0 first")
        rule["backendRefs"] = [ref for ref in refs if ref.get("name") != service]
    return out


def weights(route: Mapping[str, Any]) -> dict[str, int]:
    """service -> weight, from the first rule that references each. Use it for zero or not: the rollout
    gives a version the same share in every rule of the model, but not always the same weight."""
    out: dict[str, int] = {}
    for rule in route["spec"].get("rules") or []:
        for ref in backend_refs(rule):
            out.setdefault(ref["name"], weight_of(ref))
    return out


def shares(rule: Mapping[str, Any]) -> dict[str, float]:
    """backend -> its share of the rule's traffic: its weight over the sum of the rule's (0 when that is 0)."""
    whole = sum(weight_of(ref) for ref in backend_refs(rule))
    return {ref.get("name"): (weight_of(ref) / whole if whole else 0.0) for ref in backend_refs(rule)}


def state(route: Mapping[str, Any]) -> dict[str, Any]:
    """The rollout state recorded on the route ({} when none)."""
    raw = ((route.get("metadata") or {}).get("annotations") or {}).get(STATE_ANNOTATION)
    return json.loads(raw) if raw else {}


def updated_at(route: Mapping[str, Any]) -> float | None:
    """When the rollout last changed the route's state (and so its weights); None if it never did."""
    raw = ((route.get("metadata") or {}).get("annotations") or {}).get(UPDATED_AT_ANNOTATION)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def in_progress(route: Mapping[str, Any]) -> bool:
    return ((route.get("metadata") or {}).get("annotations") or {}).get(IN_PROGRESS_ANNOTATION) == "true"


def with_state(route: Mapping[str, Any], new_state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy carrying `new_state`; in progress unless the phase is final."""
    if new_state.get("phase") not in PHASES:
        raise RouteError(f"phase {new_state.get('phase')!r}: expected one of {', '.join(PHASES)}")
    out = copy.deepcopy(dict(route))
    ann = out["metadata"].setdefault("annotations", {})
    ann[STATE_ANNOTATION] = json.dumps(dict(new_state), sort_keys=True, separators=(",", ":"))
    ann[IN_PROGRESS_ANNOTATION] = "false" if new_state["phase"] in ("Promoted", "Aborted") else "true"
    ann[UPDATED_AT_ANNOTATION] = str(int(time.time()))
    return out


def weight_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[int, str, int, int]]:
    """(rule index, backend, old weight, new weight) for every changed weight; raises on any other change.

    What a step's edit may change: weights and annotations only (the tests check steps' writes with it).
    """
    a, b = copy.deepcopy(dict(before)), copy.deepcopy(dict(after))
    changes = []
    rules_a, rules_b = a["spec"].get("rules") or [], b["spec"].get("rules") or []
    if len(rules_a) != len(rules_b):
        raise RouteError("the number of rules changed")
    for i, (ra, rb) in enumerate(zip(rules_a, rules_b, strict=True)):
        refs_a, refs_b = backend_refs(ra), backend_refs(rb)
        if [r.get("name") for r in refs_a] != [r.get("name") for r in refs_b]:
            raise RouteError(f"rule {i}: the backendRefs changed, not only their weights")
        for x, y in zip(refs_a, refs_b, strict=True):
            if x.get("weight") != y.get("weight"):
                changes.append((i, x["name"], int(x.get("weight", 1)), int(y.get("weight", 1))))
            x.pop("weight", None)
            y.pop("weight", None)
    for doc in (a, b):
        (doc.get("metadata") or {}).pop("annotations", None)
        (doc.get("metadata") or {}).pop("resourceVersion", None)
    if a != b:
        raise RouteError("the route changed beyond backendRef weights and annotations")
    return changes


def crds_dir() -> Path | None:
    """The Gateway API CRDs (LLMOPS_CRDS_DIR, default ../shared/crds beside the checkout), if present."""
    from include.settings import PROJECT_ROOT

    path = Path(os.environ.get("LLMOPS_CRDS_DIR") or PROJECT_ROOT.parent / "shared" / "crds")
    return path if path.is_dir() else None


@lru_cache(maxsize=4)
def _validator(crd_file: Path) -> Any:
    """The HTTPRoute v1 schema's validator, parsed once per process (the CRD is large)."""
    import jsonschema
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(crd_file.read_text(), Loader=loader)  # noqa: S506 - a safe loader
    schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(schema)


def validation_errors(route: Mapping[str, Any]) -> list[str] | None:
    """Schema errors of the route against the HTTPRoute CRD; None when the CRD is not available."""
    root = crds_dir()
    crd_file = root / "gateway-api" / "gateway.networking.k8s.io_httproutes.yaml" if root else None
    if crd_file is None or not crd_file.is_file():
        return None
    validator = _validator(crd_file)
    return [f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in validator.iter_errors(dict(route))]
