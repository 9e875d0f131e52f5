"""Off-hours cleanup of rollout leftovers: model servers at weight 0 that an aborted or crashed rollout
left running, read through the serving seams (the route's weights and state, the running servers)."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from include.lifecycle.offhours import rollout_leftovers
from include.scheduling import cleanup
from include.serving import route as rt
from include.settings import Settings

MODEL = "llmops-assistant"
NOW = datetime(2026, 6, 2, 21, 0, tzinfo=UTC)
T = NOW.timestamp()
H = 3600


def svc(version: int) -> str:
    return rt.served_name(MODEL, version)


class FakeRouter:
    def __init__(self, route):
        self.route = route

    def get(self, name):
        assert name == rt.route_name(MODEL)
        return self.route


class FakeServers:
    workload_kind, namespace = "Deployment", "llm-serving"

    def __init__(self, deployed):
        self._deployed, self.stopped = deployed, []

    def deployed(self):
        return self._deployed

    def scale_down(self, service):
        self.stopped.append(service)
        return True


def route(weights: dict[str, int], phase: str, changed_h_ago: float, **state):
    r = rt.with_state(rt.new_route(MODEL, "llm-serving", backends=weights), {"phase": phase, **state})
    r["metadata"]["annotations"][rt.UPDATED_AT_ANNOTATION] = str(int(T - changed_h_ago * H))
    return r


@pytest.fixture
def settings():
    return Settings(profile="eks", data_root="s3://bucket/llmops", registered_model_name=MODEL)


def deployed():
    return {svc(1): {"since": T - 240 * H, "gpus": 1},  # stable, serving 100 %
            svc(2): {"since": T - 3 * H, "gpus": 1},  # the aborted canary, at weight 0
            svc(3): {"since": T - 5 * H, "gpus": 1},  # detached from the route, still running
            svc(4): {"since": T - 0.2 * H, "gpus": 1}}  # just started, not in the route yet: too young


def test_aborted_canary_and_detached_server_past_the_ttl_are_scaled_down(settings):
    aborted = route({svc(1): 100, svc(2): 0}, "Aborted", changed_h_ago=2, canary="2", stable="1")
    servers = FakeServers(deployed())
    actions = rollout_leftovers(settings, NOW, 1, router=FakeRouter(aborted), servers=servers)
    assert [(a.kind, a.name, a.verb, a.namespace, a.gpus) for a in actions] == [
        ("Deployment", svc(2), "patch", "llm-serving", 1), ("Deployment", svc(3), "patch", "llm-serving", 1)]
    assert "at weight 0 in the route for 2.0 h" in actions[0].reason
    assert "not in the route for 5.0 h" in actions[1].reason and "aborted or crashed rollout" in actions[1].reason
    cleanup.apply(actions, dry_run=True, log=lambda _: None)
    assert servers.stopped == []
    cleanup.apply(actions, dry_run=False, log=lambda _: None)
    assert servers.stopped == [svc(2), svc(3)]
    assert cleanup.summary(actions, dry_run=False)["freed"]["gpus"] == 2


def test_time_at_weight_zero_counts_from_the_routes_last_change(settings):
    """A server up for hours whose weight went to 0 half an hour ago is still within the TTL."""
    promoted = route({svc(1): 0, svc(2): 100}, "Promoted", changed_h_ago=0.5, canary="2", stable="1")
    actions = rollout_leftovers(settings, NOW, 1, router=FakeRouter(promoted), servers=FakeServers(deployed()))
    assert [a.name for a in actions] == [svc(3)]


def test_a_rollout_in_progress_keeps_its_canary_and_stable(settings):
    progressing = route({svc(1): 100, svc(2): 0}, "Deploying", changed_h_ago=6, canary="2", stable="1")
    assert rt.in_progress(progressing)
    actions = rollout_leftovers(settings, NOW, 1, router=FakeRouter(progressing), servers=FakeServers(deployed()))
    assert [a.name for a in actions] == [svc(3)]


def test_no_route_and_an_unreadable_seam(settings):
    lines = []
    actions = rollout_leftovers(settings, NOW, 1, lines.append, router=FakeRouter(None),
                                servers=FakeServers(deployed()))
    assert actions == [] and "no HTTPRoute" in lines[0]  # nothing says which version serves: touch nothing

    class Broken(FakeRouter):
        def get(self, name):
            raise ConnectionError("api down")

    lines.clear()
    assert rollout_leftovers(settings, NOW, 1, lines.append, router=Broken(None), servers=FakeServers({})) == []
    assert "could not read" in lines[0] and "api down" in lines[0]


def test_local_servers_list_and_stop_their_processes(tmp_path):
    from include.platforms.local.servers import LocalServers
    from include.serving import processes

    servers = LocalServers(Settings(profile="local", data_root=f"file://{tmp_path}"), root=tmp_path)
    name = "model-" + svc(7)
    processes.ensure_running(name, lambda port: [sys.executable, "-c", "import time; time.sleep(60)",
                                                 f"--name={name}"], root=tmp_path, wait=False)
    try:
        found = servers.deployed()
        assert list(found) == [svc(7)] and abs(found[svc(7)]["since"] - time.time()) < 30
        assert servers.workload_kind == "Process"
        assert servers.scale_down(svc(7)) and servers.deployed() == {}
    finally:
        processes.stop(name, tmp_path, grace_s=1)


def test_eks_servers_list_running_vllm_deployments(monkeypatch, settings):
    import kubernetes.client as k8s

    from include.platforms.eks.kube import Kube
    from include.platforms.eks.servers import EksServers

    def deployment(version: int, replicas: int) -> k8s.V1Deployment:  # as the client deserialises it
        container = k8s.V1Container(name="vllm", resources=k8s.V1ResourceRequirements(
            limits={"nvidia.com/gpu": "1", "cpu": "8"}))
        return k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name=svc(version), labels={"llmops.io/service": svc(version)},
                                      creation_timestamp=datetime(2026, 6, 2, 18, 0, tzinfo=UTC)),
            spec=k8s.V1DeploymentSpec(replicas=replicas, selector=k8s.V1LabelSelector(),
                                      template=k8s.V1PodTemplateSpec(spec=k8s.V1PodSpec(containers=[container]))))

    calls = []

    class Apps:
        def __init__(self, client):
            pass

        def list_namespaced_deployment(self, namespace, label_selector):
            calls.append((namespace, label_selector))
            return k8s.V1DeploymentList(items=[deployment(1, 2), deployment(2, 0)])

    monkeypatch.setattr(k8s, "AppsV1Api", Apps)
    found = EksServers(settings, kube=Kube(hook=SimpleNamespace(api_client=k8s.ApiClient()))).deployed()
    assert found == {svc(1): {"since": datetime(2026, 6, 2, 18, 0, tzinfo=UTC).timestamp(), "gpus": 2}}
    assert calls == [("llm-serving", f"app.kubernetes.io/name=vllm,llmops.io/model={rt.route_name(MODEL)}")]
    from include.serving import k8s_objects

    assert "list" in k8s_objects.API_CALLS[("apps", "deployments")]  # the Role grants it (test_serving_k8s)
