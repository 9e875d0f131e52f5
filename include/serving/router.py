"""The router seam: read and write the HTTPRoute; the local and eks implementations side by side.

Both hold the same `gateway.networking.k8s.io/v1` HTTPRoute object with a `metadata.resourceVersion`
and refuse a write made from a stale read (`Conflict`); `update` re-reads and re-applies the edit on
conflict, the optimistic concurrency the Kubernetes API gives. `get_router` is the one place the
profile picks the implementation.

- `LocalRouter`: the route is a JSON file under the data root (written atomically under a lock);
  every write is translated into Envoy's config (`envoy.apply`), with the backends' ports from the
  local model-server processes.
- `EksRouter`: `CustomObjectsApi` get / replace (replace carries resourceVersion: 409 on conflict)
  through the cncf.kubernetes provider's hook, in the serving namespace.
"""

from __future__ import annotations

import fcntl
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from include.serving import route as routes
from include.settings import Settings, get_settings

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
MAX_CONFLICT_RETRIES = 5


class Conflict(RuntimeError):
    """The route changed since it was read (resourceVersion mismatch)."""


class Router(ABC):
    namespace: str

    @abstractmethod
    def get(self, name: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Write `obj`; raise Conflict when its resourceVersion is not the stored one."""

    def update(self, name: str, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Read, edit, write; on conflict read again and redo the edit (at most a few times)."""
        for attempt in range(MAX_CONFLICT_RETRIES):
            current = self.get(name)
            if current is None:
                raise routes.RouteError(f"HTTPRoute {self.namespace}/{name} does not exist")
            new = edit(current)
            if new == current:
                return current
            try:
                return self.replace(new)
            except Conflict:
                log.info("HTTPRoute %s changed under us (attempt %d): re-reading", name, attempt + 1)
        raise Conflict(f"HTTPRoute {self.namespace}/{name}: still conflicting after {MAX_CONFLICT_RETRIES} tries")

    def apply_backends(self, obj: Mapping[str, Any]) -> None:  # noqa: B027 - local only
        """Make the data plane follow the route (local: Envoy); the eks gateway does it itself."""


class LocalRouter(Router):
    def __init__(self, settings: Settings, root: Path | None = None):
        from include.serving import processes

        self.namespace = settings.serving_namespace
        self.root = root or processes.run_dir(settings.data_root)
        (self.root / "routes").mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.root / "routes" / f"{self.namespace}.{name}.json"

    @contextmanager
    def _locked(self, name: str):
        with open(self._path(name).with_suffix(".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get(self, name: str) -> dict[str, Any] | None:
        path = self._path(name)
        return json.loads(path.read_text()) if path.exists() else None

    def _write(self, obj: dict[str, Any]) -> dict[str, Any]:
        errors = routes.validation_errors(obj)
        if errors:
            raise routes.RouteError("HTTPRoute does not validate against its CRD:\n" + "\n".join(errors))
        self.apply_backends(obj)
        path = self._path(obj["metadata"]["name"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        tmp.replace(path)
        return obj

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        with self._locked(name):
            if self.get(name) is not None:
                raise Conflict(f"HTTPRoute {self.namespace}/{name} already exists")
            new = json.loads(json.dumps(obj))
            new["metadata"]["resourceVersion"] = "1"
            return self._write(new)

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        with self._locked(name):
            current = self.get(name)
            if current is None:
                raise routes.RouteError(f"HTTPRoute {self.namespace}/{name} does not exist")
            if str(obj["metadata"].get("resourceVersion")) != str(current["metadata"]["resourceVersion"]):
                raise Conflict(f"HTTPRoute {self.namespace}/{name}: resourceVersion "
                               f"{obj['metadata'].get('resourceVersion')} is stale")
            new = json.loads(json.dumps(obj))
            new["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
            return self._write(new)

    def apply_backends(self, obj: Mapping[str, Any]) -> None:
        from include.serving import envoy, prometheus_local, servers

        ports = servers.backend_ports(self.root)
        envoy.ensure_running(obj, ports, self.root)
        prometheus_local.sync_targets(self.root)

    def gateway_url(self) -> str:
        from include.serving import envoy, processes

        info = processes.read(envoy.NAME, self.root)
        if info is None:
            raise RuntimeError("the local gateway (Envoy) is not running")
        return info.url


class EksRouter(Router):
    def __init__(self, settings: Settings, api: Any = None):
        self.namespace = settings.serving_namespace
        self.settings = settings
        self._api = api

    @property
    def api(self) -> Any:
        if self._api is None:
            from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
            from kubernetes.client import CustomObjectsApi

            hook = KubernetesHook(conn_id=self.settings.kubernetes_conn_id)
            self._api = CustomObjectsApi(hook.api_client)
        return self._api

    def get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, dict(obj))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from exc
            raise

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.replace_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                             obj["metadata"]["name"], dict(obj))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from exc
            raise


def get_router(settings: Settings | None = None) -> Router:
    """The one place the profile picks the router."""
    settings = settings or get_settings()
    return LocalRouter(settings) if settings.is_local else EksRouter(settings)
