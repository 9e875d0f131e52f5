"""Model servers on eks: per version, the vLLM Deployment, Service and PDB rendered by
`serving.k8s_objects` (on gpu-inference-pool), addressed by the Service's in-cluster name."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from include.platforms.eks.kube import Kube
from include.serving import k8s_objects
from include.serving.route import SERVICE_PORT, route_name
from include.serving.servers import Servers
from include.settings import Settings


class EksServers(Servers):
    workload_kind = "Deployment"

    def __init__(self, settings: Settings, kube: Kube | None = None):
        self.settings = settings
        self.namespace = settings.serving_namespace
        self.kube = kube or Kube(settings.kubernetes_conn_id)

    def deploy(self, service: str, source_uri: str, *, method: str = "full", wait: bool = True) -> str:
        """Create the version's Deployment, Service and PDB, or, when the Deployment exists, set its
        replicas to the desired count: a version scaled to 0 when another was promoted serves again
        (a rollback to the previous champion). A retried task never makes a second object."""
        version = service.rsplit("-v", 1)[1]
        objs = k8s_objects.version_objects(self.settings.registered_model_name, version, source_uri,
                                           settings=self.settings, method=method)
        if not self.kube.ensure("Deployment", objs["deployment"], self.namespace):
            self.kube.scale("Deployment", service, objs["deployment"]["spec"]["replicas"], self.namespace)
        self.kube.ensure("Service", objs["service"], self.namespace)
        self.kube.ensure("PodDisruptionBudget", objs["pdb"], self.namespace)
        return self.url(service)

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
        from include.errors import NotFound

        try:
            self.kube.scale("Deployment", service, 0, self.namespace)
        except NotFound:
            return False
        return True
