"""The eks router: the model's HTTPRoute through the Kubernetes API, in the serving namespace.
`replace` carries the resourceVersion it read, so a stale write gets 409 (`Conflict`) and
`Router.update` reads again. The ReferenceGrants of a namespace the route refers to are read there:
the ClusterRole in k8s/serving/rbac.yaml, bound in that namespace, lets Airflow list them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.errors import Forbidden
from include.platforms.eks.kube import Kube
from include.serving.route import RouteError
from include.serving.router import Router
from include.settings import Settings


class EksRouter(Router):
    def __init__(self, settings: Settings, kube: Kube | None = None):
        self.namespace = settings.serving_namespace
        self.kube = kube or Kube(settings.kubernetes_conn_id)

    def get(self, name: str) -> dict[str, Any] | None:
        return self.kube.find("HTTPRoute", name, self.namespace)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self.kube.create("HTTPRoute", obj, self.namespace)

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self.kube.replace("HTTPRoute", obj, self.namespace)

    def reference_grants(self, namespace: str) -> list[dict[str, Any]]:
        try:
            return self.kube.list("ReferenceGrant", namespace)
        except Forbidden as exc:
            raise RouteError(f"cannot read the ReferenceGrants in {namespace} ({exc}): bind the ClusterRole "
                             f"airflow-rollout-referencegrants there") from exc
