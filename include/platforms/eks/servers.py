"""Model servers on eks: per version, the vLLM Deployment, Service and PDB rendered by
`serving.k8s_objects` (on gpu-inference-pool), addressed by the Service's in-cluster name."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from include.errors import Conflict, NotFound
from include.platforms.eks.kube import Kube
from include.serving import k8s_objects
from include.serving.route import SERVICE_PORT, route_name
from include.serving.router import MAX_CONFLICT_RETRIES
from include.serving.servers import Servers
from include.settings import Settings


class EksServers(Servers):
    workload_kind = "Deployment"

    def __init__(self, settings: Settings, kube: Kube | None = None):
        self.settings = settings
        self.namespace = settings.serving_namespace
        self.kube = kube or Kube(settings.kubernetes_conn_id)

    def deploy(self, service: str, source_uri: str, *, method: str = "full", wait: bool = True,
               update: bool = True) -> str:
        """Create or update the version's Deployment, Service and PDB to what `k8s_objects` renders.

        A Deployment that exists (a rollback to a version scaled to 0, an aborted canary rolled again,
        a version rendered by an older release) gets the rendered spec and at least the desired
        replicas; one running more (scaled up by hand or by an autoscaler) keeps its count. With
        `update=False` (the stable, serving traffic: rewriting its template would roll it without
        analysis) an existing one keeps its spec and is only scaled up from 0. A retried task makes
        no second object and, when nothing changed, writes nothing."""
        version = service.rsplit("-v", 1)[1]
        objs = k8s_objects.version_objects(self.settings.registered_model_name, version, source_uri,
                                           settings=self.settings, method=method)
        if not self.kube.ensure("Deployment", objs["deployment"], self.namespace):
            if update:
                self._update_deployment(objs["deployment"])
            elif not int(((self._current(service) or {}).get("spec") or {}).get("replicas") or 0):
                self.kube.scale("Deployment", service, int(objs["deployment"]["spec"]["replicas"]), self.namespace)
        self.kube.ensure("Service", objs["service"], self.namespace)  # selector and port never change
        if not self.kube.ensure("PodDisruptionBudget", objs["pdb"], self.namespace):
            self.kube.patch("PodDisruptionBudget", service, [_set("/spec", objs["pdb"]["spec"])], self.namespace)
        return self.url(service)

    def _update_deployment(self, desired: dict[str, Any]) -> None:
        """Write the rendered labels and spec over the existing Deployment (a JSON patch replaces
        each field whole: nothing of an older rendering is left), with replicas = max(running,
        desired). The write is conditional on the resourceVersion read, so a scale made meanwhile
        is never undone: on a conflict, read again and redo."""
        name = desired["metadata"]["name"]
        for _ in range(MAX_CONFLICT_RETRIES):
            current = self._current(name) or {}
            running = int((current.get("spec") or {}).get("replicas") or 0)
            spec = {**desired["spec"], "replicas": max(running, int(desired["spec"]["replicas"]))}
            ops = [_set("/metadata/labels", desired["metadata"]["labels"]),
                   *(_set(f"/spec/{key}", value) for key, value in spec.items() if key != "selector")]  # immutable
            if rv := (current.get("metadata") or {}).get("resourceVersion"):
                ops.insert(0, {"op": "replace", "path": "/metadata/resourceVersion", "value": rv})
            try:
                self.kube.patch("Deployment", name, ops, self.namespace)
                return
            except Conflict:
                continue
        raise Conflict(f"Deployment {self.namespace}/{name}: still conflicting after {MAX_CONFLICT_RETRIES} tries")

    def _current(self, service: str) -> dict[str, Any] | None:
        """The Deployment as stored, read through `list` (which the Role grants for the cleanup), so
        deploying needs no `get`."""
        found = self.kube.list("Deployment", self.namespace, f"llmops.io/service={service}")
        return next((d for d in found if d["metadata"]["name"] == service), None)

    def url(self, service: str) -> str | None:
        return f"http://{service}.{self.namespace}.svc:{SERVICE_PORT}"

    def deployed(self) -> dict[str, dict[str, Any]]:
        """The model's vLLM Deployments with replicas > 0 (one scaled to 0 holds no GPU)."""
        selector = f"app.kubernetes.io/name=vllm,llmops.io/model={route_name(self.settings.registered_model_name)}"
        out = {}
        for dep in self.kube.list("Deployment", self.namespace, selector):
            replicas = int(dep["spec"].get("replicas") or 0)
            created = dep["metadata"].get("creationTimestamp")
            if replicas <= 0 or created is None:
                continue
            gpus = sum(int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
                       for c in dep["spec"]["template"]["spec"]["containers"])
            service = (dep["metadata"].get("labels") or {}).get("llmops.io/service", dep["metadata"]["name"])
            since = datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp()
            out[service] = {"since": since, "gpus": replicas * gpus}
        return out

    def scale_down(self, service: str) -> bool:
        try:
            self.kube.scale("Deployment", service, 0, self.namespace)
        except NotFound:
            return False
        return True


def _set(path: str, value: Any) -> dict[str, Any]:
    """A JSON patch operation setting `path` to `value` whole ("add" replaces a member that exists)."""
    return {"op": "add", "path": path, "value": value}
