"""Reading a shared HTTPRoute: which of its rules and backends are a model's, and whether the
rollout can edit them.

A rule is the model's when a backendRef names one of its versions (`<model>-v<N>`, `served_name`) or
one of its matches contains the analysis policy's `route.match` (a header, on a shared gateway).
`read` says which version is the stable and refuses, naming every reason, a route the rollout could
not edit without guessing; the rollout calls it before it deploys anything. The edits are route.py's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

GROUP = "gateway.networking.k8s.io"
SERVICE_PORT = 8000
MATCH_FIELDS = ("path", "headers", "queryParams", "method")
# Backend filters the canary copies from the stable's backendRef: they change the request or the
# answer the same way for any version. Any other (a mirror, an extension) is refused.
BACKEND_FILTERS_KEPT = ("RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite")


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


def backend_refs(rule: Mapping[str, Any]) -> list[dict[str, Any]]:
    return rule.get("backendRefs") or []


def weight_of(ref: Mapping[str, Any]) -> int:
    """A backendRef's weight as Gateway API counts it: a missing weight is 1."""
    return int(ref.get("weight", 1))


def model_base(model_name: str) -> str:
    """`<model>` in the model's version names `<model>-v<N>`."""
    return served_name(model_name, 0).rpartition("-v")[0]


def version_base(service: str) -> str:
    """`<model>` of a version name `<model>-v<N>` (the canary's, the stable's)."""
    return service.rpartition("-v")[0]


def is_version(base: str, ref: Mapping[str, Any]) -> bool:
    """Whether the backendRef is named as one of the model's versions, `<base>-v<N>`."""
    head, sep, version = str(ref.get("name") or "").rpartition("-v")
    return bool(sep) and head == base and version.isdigit()


# ---- which rules are the model's ----

def selector(match: Mapping[str, Any] | None, model_name: str) -> dict[str, Any] | None:
    """The analysis policy's `route.match`, `{model}` filled with the route name and checked; None when unset.

    It is an HTTPRouteMatch (path, headers, queryParams, method): a rule is the model's when one of its
    matches contains it, so a shared route's rule for this model can be found before any version of
    it is attached (the first rollout onto a route that ships its rules).
    """
    if not match:
        return None
    if not isinstance(match, Mapping) or set(match) - set(MATCH_FIELDS):
        raise RouteError(f"route.match={match!r}: expected an HTTPRouteMatch of {', '.join(MATCH_FIELDS)}")
    filled = json.loads(json.dumps(dict(match)).replace("{model}", route_name(model_name)))
    for key in ("headers", "queryParams"):
        items = filled.get(key, [])
        if not isinstance(items, list) or not all(
                isinstance(i, Mapping) and isinstance(i.get("name"), str) and isinstance(i.get("value"), str)
                for i in items):
            raise RouteError(f"route.match.{key}={items!r}: expected a list of {{name, value}}")
    if not isinstance(filled.get("path", {}), Mapping):
        raise RouteError(f"route.match.path={filled['path']!r}: expected {{type, value}}")
    return filled


def _path(path: Mapping[str, Any] | None) -> tuple[str, str]:
    return (path or {}).get("type", "PathPrefix"), (path or {}).get("value", "/")


def _items(items: list[Mapping[str, Any]] | None, fold: bool) -> set[tuple[str, str, str]]:
    """Header names compare case-insensitively (HTTP), query parameter names exactly."""
    return {(i.get("type", "Exact"), i["name"].lower() if fold else i["name"], i["value"]) for i in items or []}


def _contains(match: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    if "path" in wanted and _path(match.get("path")) != _path(wanted["path"]):
        return False
    if "method" in wanted and match.get("method") != wanted["method"]:
        return False
    return all(_items(wanted.get(key), fold) <= _items(match.get(key), fold)
               for key, fold in (("headers", True), ("queryParams", False)))


def rules_of(route: Mapping[str, Any], base: str, match: Mapping[str, Any] | None) -> list[int]:
    return [i for i, rule in enumerate(route["spec"].get("rules") or [])
            if any(is_version(base, ref) for ref in backend_refs(rule))
            or (match and any(_contains(m, match) for m in rule.get("matches") or [{}]))]


def model_rules(route: Mapping[str, Any], model_name: str, match: Mapping[str, Any] | None = None) -> list[int]:
    """The rules that route the model: a backendRef named `<model>-v<N>`, or a match containing `match`."""
    return rules_of(route, model_base(model_name), match)


# ---- reading a route before editing it ----

def foreign_namespaces(route: Mapping[str, Any], model_name: str,
                       match: Mapping[str, Any] | None = None) -> list[str]:
    """The namespaces besides the route's that the model's rules refer to: where their ReferenceGrants live."""
    own = route["metadata"].get("namespace")
    rules = route["spec"].get("rules") or []
    return sorted({ref["namespace"] for i in model_rules(route, model_name, match) for ref in backend_refs(rules[i])
                   if ref.get("namespace", own) != own})


def granted(route: Mapping[str, Any], ref: Mapping[str, Any], grants: Iterable[Mapping[str, Any]]) -> bool:
    """Whether a ReferenceGrant in the backend's namespace lets HTTPRoutes of the route's namespace refer to it."""
    own = route["metadata"].get("namespace")
    group, kind = ref.get("group", ""), ref.get("kind", "Service")
    for grant in grants:
        if (grant.get("metadata") or {}).get("namespace") != ref.get("namespace"):
            continue
        spec = grant.get("spec") or {}
        if not any(f.get("group") == GROUP and f.get("kind") == "HTTPRoute" and f.get("namespace") == own
                   for f in spec.get("from") or []):
            continue
        if any(t.get("group", "") == group and t.get("kind") == kind and t.get("name") in (None, "", ref.get("name"))
               for t in spec.get("to") or []):
            return True
    return False


def filter_problem(filt: Mapping[str, Any], name: str) -> str | None:
    """Why a version's backendRef filter cannot be copied onto the canary's, or None."""
    kind = filt.get("type")
    if kind not in BACKEND_FILTERS_KEPT:
        return (f"a {kind} filter, which the rollout cannot tell the canary should have "
                f"(it copies {', '.join(BACKEND_FILTERS_KEPT)})")
    if name in json.dumps(filt):
        return f"a {kind} filter that names {name}, so the canary's copy would be wrong"
    return None


def _version_problems(where: str, ref: Mapping[str, Any], own: str | None) -> list[str]:
    """A version of the model must be what the servers seam runs: a Service in the route's namespace."""
    out = []
    if ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
        out.append(f"{where} is a {ref.get('group', '')}/{ref.get('kind', 'Service')}, but the model's versions "
                   "are Services")
    if ref.get("namespace", own) != own:
        out.append(f"{where} is in namespace {ref['namespace']}, but the model's versions run in the route's ({own})")
    if ref.get("port") != SERVICE_PORT:
        out.append(f"{where} is on port {ref.get('port')}, but the model's Services listen on {SERVICE_PORT}")
    for filt in ref.get("filters") or []:
        if problem := filter_problem(filt, str(ref.get("name"))):
            out.append(f"{where} has {problem}")
    return out


def read(route: Mapping[str, Any], model_name: str, *, match: Mapping[str, Any] | None = None,
         canary: str | None = None, grants: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """What the rollout needs from a route: {"rules": the model's rules, "stable": the version taking
    the model's traffic (its Service), or None when none does}.

    Raises RouteError naming every reason the rollout cannot edit it: no rule routes the model; a
    version that is not a Service of the route's namespace on the servers' port, or carries a filter
    the canary could not copy; a backend in another namespace without a ReferenceGrant (`grants`, read
    from those namespaces); a rule whose traffic goes to no version of the model (its stable is
    something else); more than one version taking traffic (`canary`, this run's own, excepted); a rule
    of the model that sends nothing to its stable.
    """
    base, own = model_base(model_name), route["metadata"].get("namespace")
    rules = route["spec"].get("rules") or []
    grants = list(grants)
    chosen = rules_of(route, base, match)
    problems = []
    if not chosen:
        problems.append(f"no rule routes {model_name}: none has a backendRef named {base}-v<N>"
                        + (f" or a match containing {json.dumps(match)}" if match
                           else ", and the analysis policy sets no route.match to find its rules by"))
    live: dict[str, list[int]] = {}
    for i in chosen:
        refs = backend_refs(rules[i])
        versions = [ref for ref in refs if is_version(base, ref)]
        for ref in refs:
            where = f"rule {i}: backendRef {ref.get('name')}"
            if is_version(base, ref):
                problems += _version_problems(where, ref, own)
            elif ref.get("namespace", own) != own and not granted(route, ref, grants):
                problems.append(f"{where} is in namespace {ref['namespace']}, which has no ReferenceGrant letting "
                                f"HTTPRoutes from {own} refer to it: the gateway would not route it")
        names = [ref.get("name") for ref in versions]
        problems += [f"rule {i}: backendRef {n} appears {names.count(n)} times" for n in sorted(set(names))
                     if names.count(n) > 1]
        if any(weight_of(ref) > 0 for ref in refs) and not any(weight_of(ref) > 0 for ref in versions):
            others = ", ".join(str(ref.get("name")) for ref in refs if weight_of(ref) > 0)
            problems.append(f"rule {i} routes {model_name} but its traffic goes to {others}, not a version of it "
                            f"({base}-v<N>): the rollout cannot tell which backend is its stable")
        for ref in versions:
            if weight_of(ref) > 0 and ref.get("name") != canary:
                live.setdefault(ref["name"], []).append(i)
    if len(live) > 1:
        problems.append(f"{' and '.join(sorted(live))} all take traffic: the rollout needs one stable version; "
                        "finish or undo that split by hand first")
    stable = next(iter(live)) if len(live) == 1 else None
    if stable is not None:
        problems += [f"rule {i} routes {model_name} but sends nothing to its stable {stable}"
                     for i in chosen if i not in live[stable]]
    if problems:
        raise RouteError("; ".join(problems))
    return {"rules": chosen, "stable": stable}
