"""The eks platform's one Kubernetes client (include/platforms/eks/kube.py) against a real API
server, as Airflow's ServiceAccount: every verb lands, and each refusal arrives as the project's own
error (NotFound, Conflict, Forbidden) naming the verb and the object."""

from __future__ import annotations

import pytest

from include.errors import Conflict, Forbidden, NotFound

NS = "llm-serving"


def route(name: str) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"parentRefs": [{"name": "llm-gateway"}],
                     "rules": [{"backendRefs": [{"name": "some-model-v1", "port": 8000, "weight": 100}]}]}}


def test_each_answer_is_the_projects_own_error(as_airflow):
    from include.platforms.eks.kube import Kube

    kube = Kube()  # the connection kubernetes_default: Airflow's ServiceAccount
    name = "kube-client-test"
    created = kube.create("HTTPRoute", route(name), NS)
    assert kube.get("HTTPRoute", name, NS)["metadata"]["uid"] == created["metadata"]["uid"]
    with pytest.raises(Conflict, match=f"create HTTPRoute {NS}/{name}"):
        kube.create("HTTPRoute", route(name), NS)
    assert kube.ensure("HTTPRoute", route(name), NS) is False

    stale = {**created, "spec": {**created["spec"], "hostnames": ["a.example"]}}
    kube.replace("HTTPRoute", stale, NS)
    with pytest.raises(Conflict, match=f"replace HTTPRoute {NS}/{name}"):  # the same resourceVersion again
        kube.replace("HTTPRoute", stale, NS)

    with pytest.raises(NotFound, match=f"HTTPRoute {NS}/absent-route: not found"):
        kube.get("HTTPRoute", "absent-route", NS)
    assert kube.find("HTTPRoute", "absent-route", NS) is None

    # The Role grants no delete on routes: refused, and the error says who was refused what.
    with pytest.raises(Forbidden, match=f"delete HTTPRoute {NS}/{name}: forbidden .*kubernetes_default"):
        kube.delete("HTTPRoute", name, NS)
    as_airflow.kubectl("-n", NS, "delete", "httproute", name)


def test_typed_and_cluster_scoped_kinds_answer_in_dicts(as_airflow):
    from include.platforms.eks.kube import Kube

    kube = Kube()
    pool = kube.get("NodePool", "gpu-experiment-pool")  # cluster-scoped: the off-hours ClusterRole's get
    assert pool["kind"] == "NodePool" and "limits" in pool["spec"]
    assert kube.list("Pod", "llm-training", "app.kubernetes.io/name=nothing-has-this") == []
    with pytest.raises(NotFound, match=f"Deployment {NS}/absent-deployment: not found"):
        kube.scale("Deployment", "absent-deployment", 0, NS)
