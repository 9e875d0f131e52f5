"""Which Kubernetes API calls the code makes, and which ones the control-plane tests made.

`calls_in_code()` reads include/ and plugins/ (their ASTs) for calls to (or references of) a method of the kubernetes
client's API classes or of the provider's KubernetesHook. `recording(path)` wraps those same
methods while the cluster tests run and appends one JSON line per call (method, plural for custom
objects, HTTP status) to `path`, so a separate process (the coverage test, in make test's serial
part) can compare the two.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import os
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CODE = ("include", "plugins")
# Tokens of the production identities the tests call as (conftest's `as_airflow` adds Airflow's): a call
# counts for coverage only when made with one of them, never with the admin's setup client.
PRODUCTION_TOKENS: set[str] = set()


def _api_classes() -> list[type]:
    import kubernetes.client as k8s

    return [cls for name, cls in vars(k8s).items() if inspect.isclass(cls) and name.endswith("Api")
            and name != "ApiClient"]


def _hook_class() -> type:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    return KubernetesHook


def _public_methods(cls: type) -> set[str]:
    own = {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}
    return {n for n in own if not n.endswith("_with_http_info")}


@functools.cache
def client_methods() -> frozenset[str]:
    """Every public method of the client's API classes and of KubernetesHook that calls the API server."""
    names = set().union(*(_public_methods(c) for c in _api_classes()))
    hook = {n for n in _public_methods(_hook_class())
            if n.split("_")[0] in {"create", "get", "list", "patch", "delete", "replace", "apply", "read"}}
    return frozenset(names | hook - {"get_conn", "get_connection", "get_connection_form_widgets",
                                     "get_ui_field_behaviour", "get_namespace", "get_xcom_sidecar_container_image",
                                     "get_xcom_sidecar_container_resources", "get_hook"})


def calls_in_code() -> dict[str, list[str]]:
    """method -> the places (file:line) in include/ and plugins/ that call it."""
    methods = client_methods()
    found: dict[str, list[str]] = {}
    for folder in CODE:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                # A reference counts too: `create = apps.create_namespaced_deployment; create(ns, obj)`.
                if isinstance(node, ast.Attribute) and node.attr in methods:
                    found.setdefault(node.attr, []).append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def read(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []


def _as_production(target) -> bool:
    """Whether the API object `target` (or the KubernetesHook) calls with a production identity's token."""
    client = getattr(target, "api_client", None)
    config = getattr(client, "configuration", None)
    auth = " ".join(str(v) for v in (getattr(config, "api_key", None) or {}).values())
    return any(token in auth for token in PRODUCTION_TOKENS)


@contextmanager
def recording(path: str | None) -> Generator[None, None, None]:
    """While open, every call of a client method appends {"method", "plural", "status", "as_production"}
    to `path`."""
    if not path:
        yield
        return
    from kubernetes.client.exceptions import ApiException

    originals: list[tuple[type, str, object]] = []

    def wrap(cls: type, name: str) -> None:
        original = vars(cls)[name]

        @functools.wraps(original)
        def recorded(*args, **kwargs):
            bound = dict(zip(inspect.signature(original).parameters, args, strict=False)) | kwargs
            entry = {"method": name, "plural": bound.get("plural"), "status": 200, "as_production": _as_production(
                args[0] if args else None)}
            try:
                return original(*args, **kwargs)
            except ApiException as e:
                entry["status"] = e.status
                raise
            finally:
                with open(path, "a") as out:
                    out.write(json.dumps(entry) + "\n")

        originals.append((cls, name, original))
        setattr(cls, name, recorded)

    methods = client_methods()
    for cls in [*_api_classes(), _hook_class()]:
        for name in _public_methods(cls) & methods:
            wrap(cls, name)
    try:
        yield
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)
