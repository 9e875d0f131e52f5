"""The eks serving objects: rendered from include/, validated against the real schemas and CRDs, and
checked against what they must agree with (Services vs route, Role vs API calls, pool placement)."""

from __future__ import annotations

import pytest
import yaml
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from kubernetes.client import ApiClient

from include.cluster.preflight import check_pod_placement
from include.errors import Forbidden
from include.platforms.eks.kube import Kube
from include.platforms.eks.router import EksRouter
from include.platforms.eks.servers import EksServers
from include.serving import k8s_objects as ko
from include.serving import route as rt
from include.settings import Settings
from tests.k8s_schemas import REPO_ROOT, require_crds, validate

EKS = Settings(profile="eks", data_root="s3://llmops-data/prod")
MODEL = "llmops-assistant"
SRC = "s3://llmops-data/prod/models/ft-1/model"


def test_version_objects_validate_and_carry_the_version():
    objs = ko.version_objects(MODEL, 7, SRC, settings=EKS)
    for obj in objs.values():
        validate(obj)
    dep = objs["deployment"]
    pod = dep["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--served-model-name") + 1] == "llmops-assistant-v7" == objs["service"]["metadata"]["name"]
    assert args[args.index("--model") + 1] == SRC and "runai_streamer" in args
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and pod["securityContext"]["runAsNonRoot"]
    assert pod["nodeSelector"] == {"karpenter.sh/nodepool": "gpu-inference-pool"}
    check_pod_placement({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod})
    # the Service and the PDB select exactly the Deployment's pods
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for sel in (objs["service"]["spec"]["selector"], objs["pdb"]["spec"]["selector"]["matchLabels"],
                dep["spec"]["selector"]["matchLabels"]):
        assert sel.items() <= labels.items()


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_the_pdb_lets_one_server_at_a_time_drain(replicas):
    """The disruption controller's arithmetic: an eviction is allowed while the healthy pods exceed
    the desired ones. maxUnavailable 1 allows one at every replica count; minAvailable 1 allowed none at
    replicas 1, so Karpenter could never consolidate, expire or drain a single server's node."""
    spec = ko.version_objects(MODEL, 7, SRC, settings=EKS, replicas=replicas)["pdb"]["spec"]
    assert "minAvailable" not in spec

    def disruptions_allowed(budget: dict, healthy: int) -> int:
        desired = replicas - budget["maxUnavailable"] if "maxUnavailable" in budget else budget["minAvailable"]
        return max(0, healthy - desired)

    assert disruptions_allowed(spec, healthy=replicas) == 1
    assert disruptions_allowed({"minAvailable": 1}, healthy=1) == 0  # what it was


def test_lora_serves_the_adapter_on_the_base():
    objs = ko.version_objects(MODEL, 3, SRC, settings=EKS, method="lora", base_model_uri="s3://b/base")
    validate(objs["deployment"])
    pod = objs["deployment"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--enable-lora" in args and args[args.index("--lora-modules") + 1] == "llmops-assistant-v3=/adapters/" \
        "llmops-assistant-v3"
    assert pod["initContainers"][0]["args"][:3] == ["s3", "sync", "--only-show-errors"]
    with pytest.raises(ValueError, match="base model"):
        ko.version_objects(MODEL, 3, SRC, settings=EKS, method="lora")
    with pytest.raises(ValueError, match="s3://"):
        ko.version_objects(MODEL, 3, "file:///x", settings=EKS)


def test_httproute_targets_the_services_and_its_patch_follows_the_argo_rule():
    require_crds()
    stable, canary = (ko.version_objects(MODEL, v, SRC, settings=EKS)["service"] for v in (1, 2))
    route = rt.attach(rt.new_route(MODEL, EKS.serving_namespace, backends={stable["metadata"]["name"]: 100}),
                      stable["metadata"]["name"], canary["metadata"]["name"])
    patched = rt.with_state(rt.set_weights(route, stable["metadata"]["name"], canary["metadata"]["name"], 25),
                            {"phase": "Progressing", "step": 0, "weight": 25})
    for obj in (route, patched):
        validate(obj)
    assert sorted(rt.weight_changes(route, patched)) == sorted(
        [(0, "llmops-assistant-v1", 100, 75), (0, "llmops-assistant-v2", 0, 25)])
    ports = {s["metadata"]["name"]: s["spec"]["ports"][0]["port"] for s in (stable, canary)}
    for ref in patched["spec"]["rules"][0]["backendRefs"]:
        assert ports[ref["name"]] == ref["port"]
    gateway = yaml.safe_load((REPO_ROOT / "k8s" / "serving" / "gateway.yaml").read_text())
    assert patched["spec"]["parentRefs"][0]["name"] == gateway["metadata"]["name"]
    assert gateway["metadata"]["namespace"] == patched["metadata"]["namespace"]


def test_podmonitor_and_gateway_validate_and_select_the_vllm_pods():
    require_crds()
    pm = validate(yaml.safe_load((REPO_ROOT / "k8s" / "serving" / "podmonitor.yaml").read_text()))
    validate(yaml.safe_load((REPO_ROOT / "k8s" / "serving" / "gateway.yaml").read_text()))
    labels = ko.version_objects(MODEL, 1, SRC, settings=EKS)["deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "http"


def _rbac():
    docs = list(yaml.safe_load_all((REPO_ROOT / "k8s" / "serving" / "rbac.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def test_role_grants_exactly_the_api_calls():
    role = validate(_rbac()["Role"])
    granted = {(g, r): tuple(sorted(rule["verbs"])) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"]}
    assert granted == {k: tuple(sorted(v)) for k, v in ko.API_CALLS.items()}
    validate(_rbac()["RoleBinding"])
    validate(_rbac()["ServiceAccount"])


def kube(api_client: ApiClient) -> Kube:
    """The eks platform's client on the provider's hook, whose API client (what get_conn() builds from
    the connection) is `api_client`."""
    hook = KubernetesHook()
    hook.__dict__["api_client"] = api_client
    return Kube(hook=hook)


class RecordingClient(ApiClient):
    """Records (verb, apiGroup, resource) of every call the eks seams make; answers like a fresh cluster."""

    VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}

    def __init__(self):
        super().__init__()
        self.calls: set[tuple[str, str, str]] = set()
        self.route = None

    def call_api(self, resource_path, method, path_params=None, query_params=None, header_params=None, body=None,
                 *args, **kwargs):
        for key, value in (path_params or {}).items():
            if key not in ("namespace", "name"):
                resource_path = resource_path.replace("{" + key + "}", str(value))
        parts = resource_path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        after = parts[parts.index("{namespace}") + 1:]
        resource = after[0] + (f"/{after[2]}" if len(after) > 2 else "")
        listing = method == "GET" and "name" not in (path_params or {})
        self.calls.add(("list" if listing else self.VERBS[method], group, resource))
        if listing:
            return {"items": []}
        if resource == "httproutes":
            if method == "GET":
                return self.route
            self.route = body
        return body


def test_eks_seams_call_only_what_the_role_allows():
    """On a fresh cluster and on one where the version exists (deploy updates it): together, exactly
    the Role's calls."""
    client = RecordingClient()
    router = EksRouter(EKS, kube=kube(client))
    router.create(rt.new_route(MODEL, EKS.serving_namespace, backends={"llmops-assistant-v1": 100}))
    router.update(rt.route_name(MODEL), lambda r: rt.attach(r, "llmops-assistant-v1", "llmops-assistant-v2"))
    servers = EksServers(EKS, kube=kube(client))
    servers.deploy("llmops-assistant-v2", SRC)
    servers.scale_down("llmops-assistant-v1")
    assert servers.deployed() == {}  # the off-hours cleanup's look for rollout leftovers
    existing = ExistingClient(stored(2, replicas=0))
    EksServers(EKS, kube=kube(existing)).deploy("llmops-assistant-v2", SRC)
    used = {(group, resource, verb) for verb, group, resource in client.calls | existing.calls}
    allowed = {(g, r, v) for (g, r), verbs in ko.API_CALLS.items() for v in verbs}
    assert used == allowed


def stored(version: int, replicas: int, resource_version: str = "41") -> dict:
    """The version's Deployment as the API server holds it: rendered by an older release (the image's
    filesystem writable, no /tmp volume), at `replicas`."""
    dep = ko.version_objects(MODEL, version, SRC, settings=EKS)["deployment"]
    pod = dep["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "tmp"]
    dep["metadata"]["resourceVersion"] = resource_version
    dep["spec"]["replicas"] = replicas
    return dep


class ExistingClient(RecordingClient):
    """As RecordingClient, on a cluster where the version's objects exist (every create is a 409, a list
    finds `deployment`); the first `conflicts` patches of the Deployment are refused as stale (409)."""

    def __init__(self, deployment: dict, conflicts: int = 0):
        super().__init__()
        self.deployment, self.conflicts = deployment, conflicts
        self.patches: list[tuple[str, object, object]] = []
        self.lists = 0

    def call_api(self, resource_path, method, path_params=None, query_params=None, header_params=None, body=None,
                 *args, **kwargs):
        from kubernetes.client.exceptions import ApiException

        out = super().call_api(resource_path, method, path_params, query_params, header_params, body, *args, **kwargs)
        if method == "POST":
            raise ApiException(status=409, reason="AlreadyExists")
        if method == "GET" and resource_path.endswith("/deployments"):
            self.lists += 1
            return {"items": [self.deployment]}
        if method == "PATCH":
            resource = resource_path.rsplit("/", 2)[-2 if resource_path.endswith("{name}") else -1]
            self.patches.append((resource, (path_params or {}).get("name"), body))
            if resource == "deployments" and self.conflicts:
                self.conflicts -= 1
                raise ApiException(status=409, reason="Conflict")
        return out


def applied(ops: list[dict]) -> dict:
    """What a JSON patch of top-level "add"s and the resourceVersion "replace" sets, path by path."""
    assert all(op["op"] == "add" or op["path"] == "/metadata/resourceVersion" for op in ops), ops
    return {op["path"]: op["value"] for op in ops}


def test_redeploying_a_version_at_zero_writes_the_rendered_spec_and_the_desired_replicas():
    """A rollback to a version scaled to 0, rendered by an older release: the Deployment exists (409),
    so deploy patches it whole to today's rendering with replicas 1, conditional on what it read; the
    PDB gets today's budget. Only calls the Role grants."""
    client = ExistingClient(stored(1, replicas=0))
    servers = EksServers(EKS, kube=kube(client))
    assert servers.deploy("llmops-assistant-v1", SRC) == "http://llmops-assistant-v1.llm-serving.svc:8000"
    rendered = ko.version_objects(MODEL, 1, SRC, settings=EKS)
    [(kind, name, ops), (pdb_kind, pdb_name, pdb_ops)] = client.patches
    assert (kind, name, pdb_kind, pdb_name) == ("deployments", "llmops-assistant-v1",
                                                "poddisruptionbudgets", "llmops-assistant-v1")
    assert ops[0] == {"op": "replace", "path": "/metadata/resourceVersion", "value": "41"}
    written = applied(ops)
    assert written["/spec/template"] == rendered["deployment"]["spec"]["template"]
    assert written["/spec/template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert written["/spec/strategy"] == rendered["deployment"]["spec"]["strategy"]
    assert written["/spec/replicas"] == rendered["deployment"]["spec"]["replicas"] == 1
    assert written["/metadata/labels"] == rendered["deployment"]["metadata"]["labels"]
    assert "/spec/selector" not in written  # immutable
    assert applied(pdb_ops) == {"/spec": rendered["pdb"]["spec"]}
    used = {(group, resource, verb) for verb, group, resource in client.calls}
    assert used == {("apps", "deployments", "create"), ("apps", "deployments", "list"),
                    ("apps", "deployments", "patch"), ("", "services", "create"),
                    ("policy", "poddisruptionbudgets", "create"), ("policy", "poddisruptionbudgets", "patch")}
    assert used <= {(g, r, v) for (g, r), verbs in ko.API_CALLS.items() for v in verbs}


def test_redeploying_a_stable_that_runs_more_keeps_its_replicas():
    """deploy runs on the stable at every rollout: a stable scaled to 3 stays at 3, never back to 1."""
    client = ExistingClient(stored(1, replicas=3))
    EksServers(EKS, kube=kube(client)).deploy("llmops-assistant-v1", SRC)
    assert applied(client.patches[0][2])["/spec/replicas"] == 3


def test_a_stale_read_is_read_again_and_the_update_redone():
    """Someone scaled the Deployment between the read and the write: the API server refuses the write
    (409, the resourceVersion moved on), and deploy reads again before writing."""
    client = ExistingClient(stored(1, replicas=0), conflicts=2)
    EksServers(EKS, kube=kube(client)).deploy("llmops-assistant-v1", SRC)
    assert client.lists == 3 and [p[0] for p in client.patches].count("deployments") == 3

    from include.errors import Conflict
    from include.serving.router import MAX_CONFLICT_RETRIES

    client = ExistingClient(stored(1, replicas=0), conflicts=MAX_CONFLICT_RETRIES)
    with pytest.raises(Conflict, match="still conflicting"):
        EksServers(EKS, kube=kube(client)).deploy("llmops-assistant-v1", SRC)


def test_deploy_raises_what_is_not_already_exists():
    from kubernetes.client.exceptions import ApiException

    class Refusing(RecordingClient):
        def call_api(self, *args, **kwargs):
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(Forbidden) as exc:
        EksServers(EKS, kube=kube(Refusing())).deploy("llmops-assistant-v1", SRC)
    assert isinstance(exc.value.__cause__, ApiException) and exc.value.__cause__.status == 403


def test_vllm_requests_fit_every_instance_type_of_the_inference_pool():
    """With room left on the node for the kubelet's reserve and the DaemonSets (the device plugins):
    a request of a whole node's CPU or memory never schedules."""
    from include.cluster.pools import GPU, get_pool

    pool = get_pool(EKS.inference_pool)
    resources = ko.version_objects(MODEL, 1, SRC, settings=EKS)["deployment"]["spec"]["template"]["spec"][
        "containers"][0]["resources"]
    requests = resources["requests"]
    assert resources["limits"]["memory"] == requests["memory"] and resources["limits"][GPU] == requests[GPU] == "1"
    cpu, memory_gib = float(requests["cpu"]), float(requests["memory"].removesuffix("Gi"))
    for t in pool.instances():
        assert cpu <= t.vcpu - 0.5 and memory_gib <= t.memory_gib - 2, (t.name, requests)
