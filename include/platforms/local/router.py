"""The local router: the HTTPRoute is a JSON file under the data root (written atomically under a
lock, with a resourceVersion that refuses a stale write), and every write is translated into
Envoy's config, with the backends' ports from the local model-server processes."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from include.errors import Conflict
from include.platforms.local import envoy, prometheus
from include.serving import processes
from include.serving import route as routes
from include.serving.router import Router
from include.settings import Settings


class LocalRouter(Router):
    def __init__(self, settings: Settings, root: Path | None = None):
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
        envoy.ensure_running(obj, processes.model_server_ports(self.root), self.root)
        prometheus.sync_targets(self.root)

    def gateway_url(self) -> str:
        info = processes.read(envoy.NAME, self.root)
        if info is None:
            raise RuntimeError("the local gateway (Envoy) is not running")
        return info.url
