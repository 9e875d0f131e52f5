"""The eks serving paths on the local control plane, called as Airflow's production ServiceAccount.

`include/platforms/eks/servers.py` (EksServers), `router.py` (EksRouter over the HTTPRoute) and
`k8s_objects.py` run unchanged through the provider's KubernetesHook against a real API server
(RBAC, Pod Security `restricted`, the real Gateway API CRDs), kube-scheduler, the Deployment and
ReplicaSet controllers and kwok, which makes the scheduled pods Ready:

1. deploy: the Deployment, Service and PDB of a version are created in llm-serving; its pod is
   scheduled onto the gpu-inference-pool node (the pool's real taints against the pod's
   tolerations), becomes Ready and backs the Service; a retried deploy creates nothing twice;
2. the HTTPRoute: created when absent, read, replaced with its resourceVersion; the weights move;
   a write made from a stale read is refused by the API server (409) and `update` re-reads and
   redoes the edit, or gives up after MAX_CONFLICT_RETRIES;
3. scale a version down (the deployments/scale subresource) and list what is deployed;
4. a rollback to the previous champion, whose Deployment was scaled to 0 by the last promotion,
   brings it back to Ready (the rollout's own deploy / promote / scale_down_loser); deploy updates
   a Deployment an older release rendered to today's spec (and its PDB to today's budget), never
   lowers a stable's replicas, and its write is refused when made from a stale read;
5. the serving Role grants no more than that (a few neighbouring calls are refused with 403);
6. the PDB lets a single server's pod be evicted (a node drain, Karpenter's consolidation).

The inference pool gets two more nodes here, as Karpenter would launch them for a second and third
1-GPU vLLM pod; they and everything a test deploys are removed again, so later modules find the
session's cluster as conftest made it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from controlplane import ControlPlane

pytestmark = pytest.mark.slow

NS = "llm-serving"
AIRFLOW_SA = "system:serviceaccount:airflow:airflow-worker"  # k8s/airflow/serviceaccount.yaml
MODEL = "llmops-serving-it"  # this module's own model name: its objects never meet another module's
SOURCE = "s3://llmops-it/prod/models/ft-1/model"
POOL = "gpu-inference-pool"
EXTRA_NODES = (f"{POOL}-node-1", f"{POOL}-node-2")
READY_TIMEOUT_S = 30  # kwok makes a scheduled pod Ready in about a second
GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"  # the HTTPRoute, as k8s/ declares it


def _wait_for(what: str, probe: Callable[[], Any], timeout: float = READY_TIMEOUT_S, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if result := probe():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def _svc(version: int | str) -> str:
    from include.serving.route import served_name

    return served_name(MODEL, version)


# ---- admin reads (setup and inspection only; never the code under test) ----

def _apps(cp: ControlPlane):
    from kubernetes import client

    return client.AppsV1Api(cp.api_client)


def _core(cp: ControlPlane):
    from kubernetes import client

    return client.CoreV1Api(cp.api_client)


def _custom(cp: ControlPlane):
    from kubernetes import client

    return client.CustomObjectsApi(cp.api_client)


def _pods(cp: ControlPlane, service: str) -> list:
    return [p for p in _core(cp).list_namespaced_pod(NS, label_selector=f"llmops.io/service={service}").items
            if p.metadata.deletion_timestamp is None]


def _ready(cp: ControlPlane, service: str):
    """The Deployment once all its desired replicas (>= 1) are Ready, else None."""
    dep = _apps(cp).read_namespaced_deployment(service, NS)
    st = dep.status
    want = dep.spec.replicas or 0
    done = (want >= 1 and (st.observed_generation or 0) >= dep.metadata.generation
            and (st.ready_replicas or 0) == want and (st.updated_replicas or 0) == want)
    return dep if done else None


def wait_ready(cp: ControlPlane, service: str, timeout: float = READY_TIMEOUT_S):
    """What the DAG's wait_ready task waits for, seen from the control plane: every replica Ready."""
    try:
        return _wait_for(f"Deployment {NS}/{service} to be Ready", lambda: _ready(cp, service), timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_diagnose(cp, service)}") from None


def _diagnose(cp: ControlPlane, service: str) -> str:
    """Why a version is not Ready: its replicas, its pods' phase and conditions, the namespace's warnings."""
    dep = _apps(cp).read_namespaced_deployment(service, NS)
    lines = [f"spec.replicas={dep.spec.replicas} status={dep.status.to_dict()}"]
    for pod in _pods(cp, service):
        lines.append(f"pod {pod.metadata.name} on {pod.spec.node_name}: {pod.status.phase} "
                     f"{[(c.type, c.status, c.reason) for c in pod.status.conditions or []]}")
    lines += [f"event {e.involved_object.kind}/{e.involved_object.name}: {e.reason} {e.message}"
              for e in _core(cp).list_namespaced_event(NS).items if e.type == "Warning"]
    return "\n".join(lines)


def _route(cp: ControlPlane) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    from include.serving import route as rt

    try:
        return _custom(cp).get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, rt.route_name(MODEL))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _annotate_route(cp: ControlPlane, key: str, value: str) -> None:
    """Another writer (the admin) changes the route: its resourceVersion moves on."""
    from include.serving import route as rt

    _custom(cp).patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, rt.route_name(MODEL),
                                               {"metadata": {"annotations": {key: value}}})


# ---- fixtures ----

@pytest.fixture(scope="module")
def serving_cluster(cluster: ControlPlane) -> Iterator[ControlPlane]:
    """The session's cluster with Airflow's serving RoleBinding live and two more inference nodes."""
    from kubernetes import client

    def allowed() -> bool:  # the authorizer sees new RoleBindings through an informer
        review = client.AuthorizationV1Api(cluster.api_client).create_subject_access_review(
            client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
                user=AIRFLOW_SA, resource_attributes=client.V1ResourceAttributes(
                    namespace=NS, verb="create", group="apps", resource="deployments"))))
        return review.status.allowed

    _wait_for("RBAC to see the airflow-rollout RoleBinding", allowed)
    template = _core(cluster).read_node(f"{POOL}-node-0")  # shaped like the pool's instance type
    labels = {k: v for k, v in template.metadata.labels.items() if k != "kubernetes.io/hostname"}
    taints = [{"key": t.key, "value": t.value, "effect": t.effect} for t in template.spec.taints]
    for name in EXTRA_NODES:
        cluster.add_node(name, labels=labels, taints=taints, capacity=dict(template.status.capacity))
    try:
        yield cluster
    finally:
        core = _core(cluster)
        for name in EXTRA_NODES:
            core.delete_node(name)
            for pod in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items:
                core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)


def _remove_model_objects(cp: ControlPlane) -> None:
    cp.kubectl("delete", "-n", NS, "deployments,services,poddisruptionbudgets,httproutes",
               "-l", f"llmops.io/model={MODEL}", "--wait=false")
    _wait_for(f"{MODEL}'s pods to be gone", lambda: not _core(cp).list_namespaced_pod(
        NS, label_selector=f"llmops.io/model={MODEL}").items)


@pytest.fixture
def serving(serving_cluster: ControlPlane, as_airflow: ControlPlane, monkeypatch: pytest.MonkeyPatch):
    """The eks profile as Airflow's ServiceAccount, for this module's model; cleaned up after each test."""
    from include.settings import get_settings

    monkeypatch.setenv("LLMOPS_DATA_ROOT", "s3://llmops-it/prod")
    monkeypatch.setenv("LLMOPS_REGISTERED_MODEL_NAME", MODEL)
    get_settings.cache_clear()
    _remove_model_objects(serving_cluster)  # a previous, interrupted session's leftovers
    try:
        yield get_settings()
    finally:
        _remove_model_objects(serving_cluster)


# ---- 1. deploy ----

def test_deploy_creates_the_version_and_its_pod_becomes_ready_on_the_inference_node(serving, serving_cluster):
    from kubernetes import client

    from include.cluster.pools import NODEPOOL_LABEL, get_pool
    from include.platforms import get_platform
    from include.platforms.eks.servers import EksServers

    cp, svc = serving_cluster, _svc(1)
    servers = get_platform().servers()
    assert isinstance(servers, EksServers)
    url = servers.deploy(svc, SOURCE, wait=False)
    assert url == f"http://{svc}.{NS}.svc:8000"

    dep = wait_ready(cp, svc)
    service = _core(cp).read_namespaced_service(svc, NS)
    pdb = client.PolicyV1Api(cp.api_client).read_namespaced_pod_disruption_budget(svc, NS)
    assert dep.spec.replicas == 1 and pdb.spec.max_unavailable == 1 and pdb.spec.min_available is None
    assert service.spec.selector == dep.spec.selector.match_labels == pdb.spec.selector.match_labels

    # Scheduled by kube-scheduler onto the inference pool's node: the pod's tolerations against the
    # node's real taints, its nodeSelector against the node's labels; admitted under Pod Security
    # restricted with its PriorityClass resolved.
    [pod] = _pods(cp, svc)
    node = _core(cp).read_node(pod.spec.node_name)
    assert node.metadata.labels[NODEPOOL_LABEL] == POOL
    pool = get_pool(POOL)
    assert {(t.key, t.value, t.effect) for t in node.spec.taints} == {(t.key, t.value, t.effect)
                                                                      for t in pool.taints}
    assert pod.spec.service_account_name == "vllm" and pod.spec.priority_class_name == pool.priority_class
    assert pod.spec.priority == 50000  # k8s/karpenter/priorityclasses.yaml: llmops-inference
    assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)

    # The Service backs onto the Ready pod (the EndpointSlice controller agrees with the selector).
    def endpoint():
        slices = client.DiscoveryV1Api(cp.api_client).list_namespaced_endpoint_slice(
            NS, label_selector=f"kubernetes.io/service-name={svc}").items
        return [e for s in slices for e in s.endpoints or []
                if e.target_ref and e.target_ref.name == pod.metadata.name and e.conditions.ready]

    _wait_for(f"Service {svc} to have the pod as a ready endpoint", endpoint)

    # A retried task (a new EksServers, as a new task process would make): nothing is made twice.
    before = (dep.metadata.uid, dep.metadata.generation, service.metadata.uid, pdb.metadata.uid)
    assert get_platform().servers().deploy(svc, SOURCE, wait=False) == url
    dep = wait_ready(cp, svc)
    after = (dep.metadata.uid, dep.metadata.generation, _core(cp).read_namespaced_service(svc, NS).metadata.uid,
             client.PolicyV1Api(cp.api_client).read_namespaced_pod_disruption_budget(svc, NS).metadata.uid)
    assert after == before
    selector = f"llmops.io/service={svc}"
    assert len(_apps(cp).list_namespaced_deployment(NS, label_selector=selector).items) == 1
    assert len(_apps(cp).list_namespaced_replica_set(NS, label_selector=selector).items) == 1
    assert len(_pods(cp, svc)) == 1


# ---- 2. the HTTPRoute ----

def test_route_is_created_read_and_replaced_with_its_resource_version(serving, serving_cluster):
    from include.errors import Conflict
    from include.platforms import get_platform
    from include.platforms.eks.router import EksRouter
    from include.serving import route as rt
    from include.serving.router import MAX_CONFLICT_RETRIES

    cp, name = serving_cluster, rt.route_name(MODEL)
    v1, v2 = _svc(1), _svc(2)
    router = get_platform().router()
    assert isinstance(router, EksRouter)
    assert router.get(name) is None  # absent: 404 is "no route", not an error

    created = router.create(rt.new_route(MODEL, NS, backends={v1: 100}))
    assert created["metadata"]["uid"] and created["spec"]["parentRefs"][0]["name"] == "llm-gateway"
    with pytest.raises(Conflict):  # a second create (a concurrent first deploy) is a Conflict, not a crash
        router.create(rt.new_route(MODEL, NS, backends={v1: 100}))
    assert router.get(name)["metadata"]["uid"] == created["metadata"]["uid"]

    attached = router.update(name, lambda r: rt.attach(r, v1, v2))
    moved = router.update(name, lambda r: rt.set_weights(r, v1, v2, 25))
    assert int(moved["metadata"]["resourceVersion"]) > int(attached["metadata"]["resourceVersion"])
    assert rt.weights(_route(cp)) == {v1: 75, v2: 25}  # what the gateway reads

    # A write made from a stale read: the API server refuses it (409) and the route keeps its weights.
    with pytest.raises(Conflict):
        router.replace(rt.set_weights(attached, v1, v2, 50))
    assert rt.weights(_route(cp)) == {v1: 75, v2: 25}

    # Another writer slips in between our read and our write once: update re-reads and redoes the
    # edit on the new version; the other writer's change survives.
    seen: list[str] = []

    def edit_raced_once(route: dict) -> dict:
        seen.append(route["metadata"]["resourceVersion"])
        if len(seen) == 1:
            _annotate_route(cp, "example.com/other-writer", "1")
        return rt.set_weights(route, v1, v2, 50)

    router.update(name, edit_raced_once)
    assert len(seen) == 2 and seen[0] != seen[1]
    stored = _route(cp)
    assert rt.weights(stored) == {v1: 50, v2: 50}
    assert stored["metadata"]["annotations"]["example.com/other-writer"] == "1"

    # A writer that always wins: refused after MAX_CONFLICT_RETRIES reads, nothing of ours written.
    attempts: list[int] = []

    def edit_always_raced(route: dict) -> dict:
        attempts.append(1)
        _annotate_route(cp, "example.com/other-writer", str(len(attempts) + 1))
        return rt.set_weights(route, v1, v2, 100)

    with pytest.raises(Conflict, match=f"after {MAX_CONFLICT_RETRIES} tries"):
        router.update(name, edit_always_raced)
    assert len(attempts) == MAX_CONFLICT_RETRIES
    assert rt.weights(_route(cp)) == {v1: 50, v2: 50}


# ---- 3. scale down, list ----

def test_scale_down_and_list_deployed_versions(serving, serving_cluster):
    from include.platforms import get_platform

    cp, v1, v2 = serving_cluster, _svc(1), _svc(2)
    servers = get_platform().servers()
    for svc in (v1, v2):
        servers.deploy(svc, SOURCE, wait=False)
    created = {svc: wait_ready(cp, svc).metadata.creation_timestamp.timestamp() for svc in (v1, v2)}

    assert servers.deployed() == {svc: {"since": created[svc], "gpus": 1} for svc in (v1, v2)}

    assert servers.scale_down(v2) is True
    assert _apps(cp).read_namespaced_deployment(v2, NS).spec.replicas == 0
    _wait_for(f"{v2}'s pod to be gone", lambda: not _pods(cp, v2))
    assert servers.deployed() == {v1: {"since": created[v1], "gpus": 1}}  # 0 replicas hold no GPU
    assert _ready(cp, v1)  # the other version is untouched
    # Scaled, never deleted: the Service and PDB stay for a rollback.
    assert _core(cp).read_namespaced_service(v2, NS)
    assert servers.scale_down(_svc(99)) is False  # no such Deployment: 404 (not 403) means "nothing to do"


# ---- 4. a rollback to a version at 0 replicas ----

def _plan(run_id: str, canary: int, stable: int | None, action: str = "rollout") -> dict:
    return {"model": MODEL, "run_id": run_id, "action": action, "noop": False,
            "canary": {"version": str(canary), "service": _svc(canary), "source": SOURCE},
            "stable": None if stable is None else {"version": str(stable), "service": _svc(stable),
                                                   "source": SOURCE},
            "steps": [10, 100], "direct": stable is None or action == "rollback"}


def test_rollback_to_a_version_scaled_to_zero_brings_it_back_to_ready(serving, serving_cluster):
    from include.lifecycle import rollout
    from include.platforms import get_platform
    from include.serving import route as rt

    cp, v1, v2 = serving_cluster, _svc(1), _svc(2)

    # v1: the first rollout (no champion server): serves 100 %.
    first = _plan("run-1", canary=1, stable=None)
    rollout.deploy(first, wait_ready=False)
    wait_ready(cp, v1)
    rollout.promote(first, note="first rollout")

    # v2 replaces it; promotion scales the loser v1 to 0 and drops its backendRef.
    second = _plan("run-2", canary=2, stable=1)
    rollout.deploy(second, wait_ready=False)
    wait_ready(cp, v2)
    with pytest.raises(rollout.RolloutBusy):  # another run cannot promote while run-2 owns the route
        rollout.promote(_plan("intruder", canary=1, stable=2))
    rollout.promote(second)
    assert rollout.scale_down_loser(second) == v1
    _wait_for(f"{v1}'s pod to be gone", lambda: not _pods(cp, v1))
    assert rt.weights(_route(cp)) == {v2: 100}
    assert set(get_platform().servers().deployed()) == {v2}

    # Roll back to the previous champion v1, whose Deployment is at 0 replicas.
    back = _plan("run-3", canary=1, stable=2, action="rollback")
    rollout.deploy(back, wait_ready=False)
    claimed = _route(cp)
    assert rt.weights(claimed) == {v2: 100, v1: 0} and rt.state(claimed)["run"] == "run-3"
    rollout.deploy(back, wait_ready=False)  # the task retried: the route is not written again
    assert _route(cp)["metadata"]["resourceVersion"] == claimed["metadata"]["resourceVersion"]
    wait_ready(cp, v1)  # before the fix: the 409 was taken as "exists", v1 stayed at 0, this timed out
    assert _ready(cp, v2)  # the stable kept serving meanwhile
    rollout.promote(back, note="rollback")
    assert rollout.scale_down_loser(back) == v2
    assert rt.weights(_route(cp)) == {v1: 100}
    assert rt.state(_route(cp))["phase"] == "Promoted" and not rt.in_progress(_route(cp))
    _wait_for(f"{v2}'s pod to be gone", lambda: not _pods(cp, v2))
    assert set(get_platform().servers().deployed()) == {v1}


def _older_rendering(version: int, replicas: int) -> tuple[dict, dict]:
    """The version's Deployment and PDB as an older release rendered them: the image's filesystem
    writable, no /tmp volume, a PDB of minAvailable 1; the Deployment at `replicas`."""
    from include.serving import k8s_objects
    from include.settings import get_settings

    objs = k8s_objects.version_objects(MODEL, version, SOURCE, settings=get_settings(), replicas=replicas)
    pod = objs["deployment"]["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    pod["containers"][0]["volumeMounts"] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] != "tmp"]
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "tmp"]
    objs["pdb"]["spec"] = {"minAvailable": 1, "selector": objs["pdb"]["spec"]["selector"]}
    return objs["deployment"], objs["pdb"]


def test_deploy_updates_an_older_rendering_at_zero_to_todays_spec_and_ready(serving, serving_cluster):
    """An aborted canary rolled again, or a rollback, to a version whose Deployment an older release
    created and which sits at 0: deploy (as Airflow) writes today's spec and budget, and it serves."""
    from kubernetes import client

    from include.errors import Conflict
    from include.platforms import get_platform
    from include.serving import k8s_objects
    from include.settings import get_settings

    cp, svc = serving_cluster, _svc(3)
    old_dep, old_pdb = _older_rendering(3, replicas=0)
    _apps(cp).create_namespaced_deployment(NS, old_dep)  # the admin stands in for the older release
    policy = client.PolicyV1Api(cp.api_client)
    policy.create_namespaced_pod_disruption_budget(NS, old_pdb)
    generation = _apps(cp).read_namespaced_deployment(svc, NS).metadata.generation

    servers = get_platform().servers()
    servers.deploy(svc, SOURCE, wait=False)
    dep = wait_ready(cp, svc)  # the old code took the 409 as "exists": it stayed at 0, this timed out
    want = k8s_objects.version_objects(MODEL, 3, SOURCE, settings=get_settings())
    stored = cp.api_client.sanitize_for_serialization(dep)
    [container] = stored["spec"]["template"]["spec"]["containers"]
    assert dep.spec.replicas == 1 and dep.metadata.generation > generation
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["volumeMounts"] == want["deployment"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {v["name"] for v in stored["spec"]["template"]["spec"]["volumes"]} == {
        v["name"] for v in want["deployment"]["spec"]["template"]["spec"]["volumes"]}
    pdb = policy.read_namespaced_pod_disruption_budget(svc, NS)
    assert pdb.spec.max_unavailable == 1 and pdb.spec.min_available is None

    # Deployed again (a retried task): the spec is already today's, nothing is written, nothing rolls.
    servers.deploy(svc, SOURCE, wait=False)
    again = wait_ready(cp, svc)
    assert again.metadata.generation == dep.metadata.generation
    assert len(_apps(cp).list_namespaced_replica_set(NS, label_selector=f"llmops.io/service={svc}").items) == 2

    # The update is conditional on what deploy read: a write from a stale read is refused (409).
    stale = [{"op": "replace", "path": "/metadata/resourceVersion", "value": dep.metadata.resource_version},
             {"op": "add", "path": "/spec/replicas", "value": 1}]
    _apps(cp).patch_namespaced_deployment_scale(svc, NS, {"spec": {"replicas": 2}})  # someone scales meanwhile
    with pytest.raises(Conflict):
        servers.kube.patch("Deployment", svc, stale, NS)
    assert _apps(cp).read_namespaced_deployment(svc, NS).spec.replicas == 2


def test_deploy_never_lowers_a_stable_that_runs_more(serving, serving_cluster):
    """deploy runs on the stable at every rollout: one scaled to 3 (by hand, or by an autoscaler) keeps 3."""
    from include.platforms import get_platform

    cp, svc = serving_cluster, _svc(1)
    servers = get_platform().servers()
    servers.deploy(svc, SOURCE, wait=False)
    wait_ready(cp, svc)
    _apps(cp).patch_namespaced_deployment_scale(svc, NS, {"spec": {"replicas": 3}})
    before = wait_ready(cp, svc)  # three inference nodes: one server on each
    assert before.spec.replicas == 3

    servers.deploy(svc, SOURCE, wait=False)
    after = wait_ready(cp, svc)
    assert after.spec.replicas == 3 and after.metadata.generation == before.metadata.generation
    assert len(_pods(cp, svc)) == 3


# ---- 5. least privilege ----

def test_airflow_can_do_nothing_more_in_llm_serving(serving, serving_cluster):
    """Beyond the calls above, neighbouring ones are refused to Airflow's ServiceAccount: no delete,
    no replacing or reading a Deployment (deploy patches it, reading it through list), no reading pods
    or Secrets, no deleting routes or PDBs."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from include.platforms import get_platform
    from include.serving import route as rt

    svc = _svc(1)
    get_platform().servers().deploy(svc, SOURCE, wait=False)
    # The same ServiceAccount with a token of its own: these deliberate 403s are not the code's calls
    # (k8s_calls records a call as production only with the token `as_airflow` issued).
    config = client.Configuration()
    config.host = serving_cluster.server
    config.ssl_ca_cert = str(serving_cluster.pki / "ca.crt")
    config.api_key = {"authorization": "Bearer " + serving_cluster.sa_token("airflow", "airflow-worker")}
    api = client.ApiClient(config)
    apps, core, custom = client.AppsV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api)
    refused = {
        "delete deployment": lambda: apps.delete_namespaced_deployment(svc, NS),
        "replace deployment": lambda: apps.replace_namespaced_deployment(
            svc, NS, {"metadata": {"name": svc}, "spec": {"template": {"spec": {"serviceAccountName": "default"}}}}),
        "patch deployment in default": lambda: apps.patch_namespaced_deployment(
            svc, "default", {"spec": {"replicas": 2}}),
        "delete pdb": lambda: client.PolicyV1Api(api).delete_namespaced_pod_disruption_budget(svc, NS),
        "read deployment": lambda: apps.read_namespaced_deployment(svc, NS),
        "list pods": lambda: core.list_namespaced_pod(NS),
        "list secrets": lambda: core.list_namespaced_secret(NS),
        "delete service": lambda: core.delete_namespaced_service(svc, NS),
        "list httproutes": lambda: custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL),
        "delete httproute": lambda: custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                                           rt.route_name(MODEL)),
        "create deployment in default": lambda: apps.create_namespaced_deployment(
            "default", {"metadata": {"name": "x"}}),
    }

    def status(call) -> int:
        try:
            call()
            return 200
        except ApiException as exc:
            return exc.status

    try:
        got = {what: status(call) for what, call in refused.items()}
    finally:
        api.close()
    assert got == dict.fromkeys(refused, 403)
    assert _apps(serving_cluster).read_namespaced_deployment(svc, NS).metadata.deletion_timestamp is None


# ---- 6. the PDB lets a single server drain ----

def test_a_single_servers_pod_can_be_evicted(serving, serving_cluster):
    """What a node drain and Karpenter's consolidation and expiry do: the Eviction API. At replicas 1
    the PDB allows it (minAvailable 1 refused it with 429, forever); the Deployment makes a new pod."""
    from kubernetes import client

    from include.platforms import get_platform

    cp, svc = serving_cluster, _svc(1)
    get_platform().servers().deploy(svc, SOURCE, wait=False)
    wait_ready(cp, svc)
    policy = client.PolicyV1Api(cp.api_client)
    _wait_for("the disruption controller to allow one eviction", lambda: (
        policy.read_namespaced_pod_disruption_budget(svc, NS).status.disruptions_allowed == 1))
    [pod] = _pods(cp, svc)
    _core(cp).create_namespaced_pod_eviction(pod.metadata.name, NS, client.V1Eviction(
        metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=NS)))
    _wait_for(f"{svc}'s new pod", lambda: [p for p in _pods(cp, svc) if p.metadata.uid != pod.metadata.uid])
    wait_ready(cp, svc)
