"""The HTTPRoute: the single source of truth for the traffic split, and the rollout's state.

Pure functions over the `gateway.networking.k8s.io/v1` HTTPRoute dict, used by both router
implementations (local file + Envoy, eks API), so the edit is the same object on both profiles.

The weight edit follows the Argo Rollouts Gateway API plugin's rule: only the `weight` of the
backendRefs named for stable and canary changes, in every rule that references them; other rules
and backendRefs are untouched. Attaching the canary (a weight-0 backendRef next to stable's, in the
same rules) and detaching the loser after scale-down are separate, explicit edits.

The rollout's state lives in annotations on the route (`STATE_ANNOTATION`, JSON), so a restarted
task reads where it was from the route itself: run, phase, versions, services, steps, current
step index and weight.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from include.validation import Rule

API_VERSION = "gateway.networking.k8s.io/v1"
ANNOTATION_PREFIX = "rollout.llmops.io/"
STATE_ANNOTATION = ANNOTATION_PREFIX + "state"
IN_PROGRESS_ANNOTATION = ANNOTATION_PREFIX + "in-progress"
UPDATED_AT_ANNOTATION = ANNOTATION_PREFIX + "updated-at"  # epoch seconds of the last state change
SERVICE_PORT = 8000
PHASES = ("Deploying", "Progressing", "Paused", "Promoted", "Aborted")


class RouteError(ValueError):
    """The route cannot take the edit (missing backendRef, invalid object, ...)."""


def served_name(model_name: str, version: str | int) -> str:
    """The served model name, Service and Envoy cluster name of a version: `<model>-v<version>`.

    It carries the version, so vLLM's `model_name` label and the gateway's per-backend stats tell
    canary and stable apart. An RFC 1123 label (a Service name).
    """
    base = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:50] or "model"
    name = f"{base}-v{version}"
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise RouteError(f"version {version!r}: cannot form a Service name from it")
    return name


def route_name(model_name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:63] or "model"


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


def _refs(rule: Mapping[str, Any]) -> list[dict[str, Any]]:
    return rule.get("backendRefs") or []


def rules_referencing(route: Mapping[str, Any], service: str) -> list[int]:
    return [i for i, rule in enumerate(route["spec"].get("rules") or [])
            if any(ref.get("name") == service for ref in _refs(rule))]


def weights(route: Mapping[str, Any]) -> dict[str, int]:
    """service -> weight, from the first rule that references each (the rollout keeps them equal)."""
    out: dict[str, int] = {}
    for rule in route["spec"].get("rules") or []:
        for ref in _refs(rule):
            out.setdefault(ref["name"], int(ref.get("weight", 1)))
    return out


def serving_at_100(route: Mapping[str, Any]) -> str | None:
    """The backend taking all traffic (every other weight 0), or None."""
    live = [svc for svc, w in weights(route).items() if w > 0]
    return live[0] if len(live) == 1 else None


def set_weights(route: Mapping[str, Any], stable: str, canary: str, canary_weight: int) -> dict[str, Any]:
    """A copy with canary at `canary_weight` and stable at 100 - it, in every rule naming them.

    Argo's rule: both backendRefs must be referenced; nothing else changes.
    """
    Rule("canary weight", "integer", 0, 100, error=RouteError).check(canary_weight)
    out = copy.deepcopy(dict(route))
    touched = 0
    for rule in out["spec"].get("rules") or []:
        names = {ref.get("name") for ref in _refs(rule)}
        if canary in names and stable in names:
            for ref in _refs(rule):
                if ref.get("name") == canary:
                    ref["weight"] = canary_weight
                elif ref.get("name") == stable:
                    ref["weight"] = 100 - canary_weight
            touched += 1
        elif canary in names or stable in names:
            raise RouteError(f"a rule references only one of {stable!r}/{canary!r}: the split needs both")
    if not touched:
        raise RouteError(f"no rule references both {stable!r} and {canary!r}")
    return out


def attach(route: Mapping[str, Any], stable: str, canary: str) -> dict[str, Any]:
    """Add `canary` at weight 0 to every rule that references `stable` (no-op when present)."""
    out = copy.deepcopy(dict(route))
    rules = out["spec"].get("rules") or []
    targets = rules_referencing(out, stable)
    if not targets:
        raise RouteError(f"no rule references the stable backend {stable!r}")
    for i in targets:
        refs = rules[i]["backendRefs"]
        if not any(ref.get("name") == canary for ref in refs):
            template = next(ref for ref in refs if ref.get("name") == stable)
            refs.append({**copy.deepcopy(template), "name": canary, "weight": 0})
    return out


def detach(route: Mapping[str, Any], service: str) -> dict[str, Any]:
    """Remove a weight-0 backendRef everywhere (the scaled-down loser). Refuses a live one."""
    out = copy.deepcopy(dict(route))
    for rule in out["spec"].get("rules") or []:
        for ref in _refs(rule):
            if ref.get("name") == service and int(ref.get("weight", 1)) != 0:
                raise RouteError(f"{service!r} still has weight {ref.get('weight')}: set it to 0 first")
        rule["backendRefs"] = [ref for ref in _refs(rule) if ref.get("name") != service]
    return out


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

    The check a patch must pass under the Argo plugin's rule, used by tests and before every write.
    """
    a, b = copy.deepcopy(dict(before)), copy.deepcopy(dict(after))
    changes = []
    rules_a, rules_b = a["spec"].get("rules") or [], b["spec"].get("rules") or []
    if len(rules_a) != len(rules_b):
        raise RouteError("the number of rules changed")
    for i, (ra, rb) in enumerate(zip(rules_a, rules_b, strict=True)):
        refs_a, refs_b = _refs(ra), _refs(rb)
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
