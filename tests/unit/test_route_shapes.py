"""The rollout on the routes it meets: a table of route shapes with the edit or the refusal each must
give, and a property test over random shared routes and random step sequences.

Both drive the lifecycle's task functions (resolve, deploy, begin_step, abort, promote, scale_down)
over an in-memory router, the way the DAG does, and judge the written routes by Gateway API's own
rule: a backend's share is its weight over the sum of its rule's weights, a missing weight counting
1. Every rule that does not route the model must come out byte-identical; in the model's rules the
canary's share is the step's weight, and the other backends keep their proportions.
"""

from __future__ import annotations

import copy
import json
import random
from types import SimpleNamespace

import pytest
import yaml

from include.lifecycle import rollout
from include.serving import route as rt
from include.settings import Settings
from tests.k8s_schemas import REPO_ROOT
from tests.memory_router import MemoryRouter

SETTINGS = Settings()
MODEL = SETTINGS.registered_model_name
NS = SETTINGS.serving_namespace
NAME = rt.route_name(MODEL)
V1, V2, V3 = (rt.served_name(MODEL, v) for v in (1, 2, 3))
GATEWAY = [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "llm-gateway"}]


# ---- the world the lifecycle runs in ----

class MemoryServers:
    def __init__(self):
        self.deployed: list[str] = []
        self.scaled_down: list[str] = []

    def deploy(self, name, source, wait=True, update=True):
        self.deployed.append(name)
        return f"http://{name}"

    def ensure_observability(self):
        pass

    def scale_down(self, name):
        self.scaled_down.append(name)


class Registry:
    """Every version is registered; the registry is not what these tests are about."""

    def get_model_version(self, model, version):
        return SimpleNamespace(source=f"s3://models/{version}", run_id=None, tags={})


@pytest.fixture
def world(monkeypatch):
    w = SimpleNamespace(router=MemoryRouter(), servers=MemoryServers())
    platform = SimpleNamespace(name="local", router=lambda: w.router, servers=lambda: w.servers)
    monkeypatch.setattr(rollout, "get_platform", lambda settings=None: platform)
    return w


def start(w, route, version="2", steps=(10, 25, 50), action="rollout"):
    """resolve and deploy, as the DAG's first tasks: the plan."""
    w.router.objs.pop(NAME, None)
    if route is not None:
        w.router.create(route)
    req = rollout.validate_params({"model_version": version, "steps": list(steps), "action": action})
    plan = rollout.resolve(req, "run-1", SETTINGS, Registry())
    rollout.deploy(plan, SETTINGS)
    return plan


# ---- building routes ----

def ref(name, weight=None, **kw):
    return {"name": name, "port": kw.pop("port", rt.SERVICE_PORT), **({} if weight is None else {"weight": weight}),
            **kw}


def rule(*refs, model=MODEL, path="/v1", filters=None):
    """A rule matched by path and, unless `model` is None, by the header the shared gateway routes by."""
    match = {"path": {"type": "PathPrefix", "value": path}}
    if model is not None:
        match["headers"] = [{"name": "x-model-id", "value": model}]
    out = {"matches": [match]}
    if filters:
        out["filters"] = filters
    if refs:
        out["backendRefs"] = list(refs)
    return out


def route(*rules):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": NAME, "namespace": NS, "annotations": {}},
            "spec": {"parentRefs": copy.deepcopy(GATEWAY), "rules": list(rules)}}


def grant(namespace, to_kind="Service", name=None):
    to = {"group": "", "kind": to_kind, **({"name": name} if name else {})}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
            "metadata": {"name": "from-llm-serving", "namespace": namespace},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": NS}],
                     "to": [to]}}


# ---- judging them ----

def weight(r):
    return int(r.get("weight", 1))


def shares(rule_):
    refs = rule_.get("backendRefs") or []
    whole = sum(weight(r) for r in refs)
    return {r["name"]: weight(r) / whole if whole else 0.0 for r in refs}


def is_model_rule(rule_):
    """The rule routes the model: it names one of its versions, or matches its header."""
    names = {r["name"] for r in rule_.get("backendRefs") or []}
    headers = [h for m in rule_.get("matches") or [] for h in m.get("headers") or []]
    return any(n.startswith(f"{MODEL}-v") for n in names) or {"name": "x-model-id", "value": MODEL} in headers


def without(rule_, name):
    out = copy.deepcopy(rule_)
    if "backendRefs" in out:
        out["backendRefs"] = [r for r in out["backendRefs"] if r["name"] != name]
    return out


def check_untouched(before, after):
    """Every rule that does not route the model is byte-identical."""
    rules_b, rules_a = before["spec"]["rules"], after["spec"]["rules"]
    assert len(rules_a) == len(rules_b)
    for i, (b, a) in enumerate(zip(rules_b, rules_a, strict=True)):
        if not is_model_rule(b):
            assert json.dumps(a) == json.dumps(b), f"rule {i} is not the model's, yet it changed: {a}"


def check_split(before, after, canary, percent):
    """Other rules byte-identical; in the model's rules the canary at `percent` and the others in their
    proportions of `before` (each within one unit of the rule's total)."""
    check_untouched(before, after)
    for i, (b, a) in enumerate(zip(before["spec"]["rules"], after["spec"]["rules"], strict=True)):
        if not is_model_rule(b):
            continue
        got = shares(a)
        assert got[canary] == pytest.approx(percent / 100, abs=0.005), (
            f"rule {i}: the canary's share is {got[canary]:.4f} at {percent} %: {a['backendRefs']}")
        others = {r["name"]: weight(r) for r in b.get("backendRefs") or [] if r["name"] != canary}
        whole = sum(others.values())
        total = sum(weight(r) for r in a["backendRefs"])
        for name, w in others.items():
            want = (1 - percent / 100) * (w / whole if whole else (1.0 if name == V1 else 0.0))
            assert got[name] == pytest.approx(want, abs=1 / total + 1e-9), (
                f"rule {i}: {name}'s share is {got[name]:.4f}, {want:.4f} keeps its proportion: {a['backendRefs']}")


def drive(w, base, plan, abort_at=None):
    """The DAG's path after deploy: a direct plan promotes at once; else each step, then abort at
    `abort_at` or promote; then the loser's scale-down. Checks the route after every task."""
    check_untouched(base, w.router.get(NAME))
    if plan["direct"]:
        rollout.promote(plan, settings=SETTINGS)
        check_split(base, w.router.get(NAME), V2, 100)
        return "Promoted"
    for index, percent in enumerate(plan["steps"][:-1]):
        rollout.begin_step(plan, index, SETTINGS)
        check_split(base, w.router.get(NAME), V2, percent)
        if index == abort_at:
            rollout.abort(plan, "a test", SETTINGS)
            after = w.router.get(NAME)
            assert [without(r, V2) for r in after["spec"]["rules"]] == base["spec"]["rules"], "not back as it was"
            rollout.scale_down_loser(plan, SETTINGS)
            assert w.router.get(NAME)["spec"] == base["spec"]
            return "Aborted"
    rollout.promote(plan, settings=SETTINGS)
    check_split(base, w.router.get(NAME), V2, 100)
    rollout.scale_down_loser(plan, SETTINGS)
    check_untouched(base, w.router.get(NAME))
    return "Promoted"


def model_weights(r, i=0):
    return {ref_["name"]: ref_.get("weight") for ref_ in r["spec"]["rules"][i].get("backendRefs") or []}


# ---- the table ----

HEADERS_ROUTE = route(rule(ref(V1, 100)), rule(ref("coder-v3", 100), model="coder"),
                      rule(ref("embedder"), model="embedder"))

# (shape, route, ReferenceGrants by namespace, rule 0's weights at the first step (10 %), or the refusal)
SHAPES = [
    ("one rule", rt.new_route(MODEL, NS, backends={V1: 100}), {},
     {V1: 90, V2: 10}, None),
    ("several models on one gateway by header", HEADERS_ROUTE, {},
     {V1: 90, V2: 10}, None),
    ("another model's manual canary beside this model's rule",
     route(rule(ref(V1, 100)), rule(ref("coder-v3", 80), ref("coder-v4", 20), model="coder")), {},
     {V1: 90, V2: 10}, None),
    ("path-matched rules", route(rule(ref(V1, 100), model=None, path="/v1/chat"),
                                 rule(ref(V1), model=None, path="/v1/completions"),
                                 rule(ref("docs-site", 1), model=None, path="/docs")), {},
     {V1: 90, V2: 10}, None),
    ("three backends", route(rule(ref(V1, 100), ref("shared-pool", 20))), {},
     {V1: 75, "shared-pool": 15, V2: 10}, None),
    ("80/20 with another backend, left over from a manual split",
     route(rule(ref(V1, 80), ref("vllm-fallback", 20)), rule(ref("coder-v3", 100), model="coder")), {},
     {V1: 72, "vllm-fallback": 18, V2: 10}, None),
    ("missing weights", route(rule(ref(V1), ref("shared-pool"))), {},
     {V1: 45, "shared-pool": 45, V2: 10}, None),
    ("a cross-namespace backend with a ReferenceGrant",
     route(rule(ref(V1, 100), ref("shared-pool", 100, namespace="pools"))), {"pools": [grant("pools")]},
     {V1: 45, "shared-pool": 45, V2: 10}, None),
    ("a cross-namespace backend without a ReferenceGrant",
     route(rule(ref(V1, 100), ref("shared-pool", 100, namespace="pools"))),
     {"pools": [grant("pools", name="another-service")]},
     None, "rule 0: backendRef shared-pool is in namespace pools, which has no ReferenceGrant"),
    ("the stable in another namespace, granted",
     route(rule(ref(V1, 100, namespace="models"))), {"models": [grant("models")]},
     None, f"backendRef {V1} is in namespace models, but the model's versions run in the route's"),
    ("a header filter on the stable's backendRef",
     route(rule(ref(V1, 100, filters=[{"type": "RequestHeaderModifier",
                                       "requestHeaderModifier": {"set": [{"name": "x-tier", "value": "gpu"}]}}]))),
     {}, {V1: 90, V2: 10}, None),
    ("a mirror filter on the stable's backendRef",
     route(rule(ref(V1, 100, filters=[{"type": "RequestMirror",
                                       "requestMirror": {"backendRef": {"name": "shadow", "port": 8000}}}]))),
     {}, None, "RequestMirror filter, which the rollout cannot tell the canary should have"),
    ("a filter naming the stable", route(rule(ref(V1, 100, filters=[
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-version", "value": V1}]}}]))),
     {}, None, f"filter that names {V1}"),
    ("a rule with no backendRefs beside the model's",
     route(rule(ref(V1, 100)), rule(model=None, path="/docs", filters=[
         {"type": "RequestRedirect", "requestRedirect": {"hostname": "docs.example.com"}}])), {},
     {V1: 90, V2: 10}, None),
    ("the model's header rule with no backendRefs while another rule serves it",
     route(rule(ref(V1, 100), model=None, path="/v1"), rule(path="/v2")), {},
     None, f"rule 1 routes {MODEL} but sends nothing to its stable {V1}"),
    ("a stable whose name is not <model>-v<N>", route(rule(ref("vllm-gpt4", 100))), {},
     None, "its traffic goes to vllm-gpt4, not a version of it"),
    ("the seed's route: a canary named <model>-canary",
     route(rule(ref("vllm-gpt4", 80), ref("vllm-gpt4-canary", 20))), {},
     None, "the rollout cannot tell which backend is its stable"),
    ("two versions of the model taking traffic", route(rule(ref(V1, 80), ref(V3, 20))), {},
     None, f"{V1} and {V3} all take traffic"),
    ("a version on another port", route(rule(ref(V1, 100, port=9000))), {},
     None, "on port 9000, but the model's Services listen on 8000"),
    ("no rule routes the model", route(rule(ref("coder-v3", 100), model="coder")), {},
     None, f"no rule routes {MODEL}"),
]


@pytest.mark.parametrize(("shape", "base", "grants", "first", "refusal"), SHAPES, ids=[s[0] for s in SHAPES])
def test_route_shapes(world, shape, base, grants, first, refusal):
    """Each shape through the DAG's tasks: the edit it must give (aborted after the last step, so the
    route must come back as it was), or the refusal, with nothing deployed."""
    w = world
    w.router.grants = grants
    if refusal:
        with pytest.raises(ValueError) as refused:
            start(w, copy.deepcopy(base))
        assert w.servers.deployed == [] and w.router.writes == [], f"refused after deploying {w.servers.deployed}"
        assert refusal in str(refused.value)
        return
    plan = start(w, copy.deepcopy(base))
    check_untouched(base, w.router.get(NAME))
    assert not plan["direct"] and plan["stable"]["service"] == V1, "the stable serving the model was not found"
    rollout.begin_step(plan, 0, SETTINGS)
    assert model_weights(w.router.get(NAME)) == first
    assert drive(w, base, plan, abort_at=len(plan["steps"]) - 2) == "Aborted"


@pytest.mark.parametrize(("shape", "base", "grants", "first", "refusal"),
                         [s for s in SHAPES if s[4] is None], ids=[s[0] for s in SHAPES if s[4] is None])
def test_promotion_moves_only_the_models_rules(world, shape, base, grants, first, refusal):
    w = world
    w.router.grants = grants
    plan = start(w, copy.deepcopy(base))
    assert drive(w, base, plan) == "Promoted"
    final = w.router.get(NAME)
    for i, b in enumerate(base["spec"]["rules"]):
        if is_model_rule(b):
            assert shares(final["spec"]["rules"][i]).get(V2) == 1.0 and V1 not in shares(final["spec"]["rules"][i])


@pytest.mark.parametrize(("shape", "base", "grants", "first", "refusal"),
                         [s for s in SHAPES if s[4] is None], ids=[s[0] for s in SHAPES if s[4] is None])
def test_weights_are_shares_of_the_rule(shape, base, grants, first, refusal):
    """The edit itself (attach, then each step's weight): the canary's share is the step's weight
    whatever else the rule holds."""
    attached = rt.attach(copy.deepcopy(base), V1, V2)
    for percent in (10, 25, 50, 100):
        check_split(base, rt.set_weights(attached, V1, V2, percent), V2, percent)


def test_a_header_filter_is_copied_to_the_canary(world):
    base = next(s[1] for s in SHAPES if s[0] == "a header filter on the stable's backendRef")
    start(world, copy.deepcopy(base))
    refs = {r["name"]: r for r in world.router.get(NAME)["spec"]["rules"][0]["backendRefs"]}
    assert refs[V2]["filters"] == refs[V1]["filters"]


def test_the_canarys_ref_is_the_servers_service_never_a_copy_of_the_stables_namespace():
    """The canary's backendRef is the Service its server gets, in the route's namespace: a stable in
    another namespace (which the rollout refuses to start from) is never copied into it."""
    attached = rt.attach(route(rule(ref(V1, 100, namespace="models"))), V1, V2)
    canary = next(r for r in attached["spec"]["rules"][0]["backendRefs"] if r["name"] == V2)
    assert canary == {"name": V2, "port": rt.SERVICE_PORT, "weight": 0}


def test_a_stable_gone_between_resolve_and_deploy_is_refused_before_any_server_starts(world):
    """Finding 4's second half: the plan's stable is no longer on the route when deploy runs."""
    w = world
    w.router.create(route(rule(ref(V1, 100))))
    req = rollout.validate_params({"model_version": "2", "steps": [10, 50]})
    plan = rollout.resolve(req, "run-1", SETTINGS, Registry())
    w.router.objs[NAME]["spec"]["rules"][0]["backendRefs"] = [ref(V3, 100)]
    with pytest.raises(ValueError) as refused:
        rollout.deploy(plan, SETTINGS)
    assert w.servers.deployed == [] and w.router.writes == [], f"refused after deploying {w.servers.deployed}"
    assert f"its stable is now {V3}" in str(refused.value)


def test_a_first_rollout_fills_the_models_empty_rule_on_the_shipped_shared_route(world):
    """The route k8s/serving/ ships: the model's rule found by its header, with no version yet; another
    model's rule beside it stays byte-identical through the whole first rollout."""
    shipped = yaml.safe_load((REPO_ROOT / "k8s" / "serving" / "httproute.yaml").read_text())
    other = rule(ref("coder-v3", 100), model="coder")
    shipped["spec"]["rules"].append(copy.deepcopy(other))
    plan = start(world, copy.deepcopy(shipped), version="1")
    assert plan["stable"] is None and plan["direct"] and world.servers.deployed == [V1]
    rollout.promote(plan, settings=SETTINGS)
    final = world.router.get(NAME)
    assert final["spec"]["rules"][0]["backendRefs"] == [{"name": V1, "port": rt.SERVICE_PORT, "weight": 100}]
    assert json.dumps(final["spec"]["rules"][1]) == json.dumps(other)
    for written in world.router.writes:
        assert rt.validation_errors(written) in ([], None)


def test_the_shipped_route_is_the_models_on_the_gateway():
    shipped = yaml.safe_load((REPO_ROOT / "k8s" / "serving" / "httproute.yaml").read_text())
    gateway = yaml.safe_load((REPO_ROOT / "k8s" / "serving" / "gateway.yaml").read_text())
    kustomization = yaml.safe_load((REPO_ROOT / "k8s" / "serving" / "kustomization.yaml").read_text())
    assert "httproute.yaml" not in kustomization["resources"]  # created once: an apply would wipe backendRefs
    assert (shipped["metadata"]["name"], shipped["metadata"]["namespace"]) == (NAME, NS)
    assert shipped["spec"]["parentRefs"][0]["name"] == gateway["metadata"]["name"]
    assert gateway["metadata"]["namespace"] == NS
    policy = yaml.safe_load((REPO_ROOT / "include" / "serving" / "policy.yaml").read_text())
    match = rt.selector(policy["route"]["match"], MODEL)
    assert rt.model_rules(shipped, MODEL, match) == [0]
    assert rt.validation_errors(shipped) in ([], None)


# ---- the property ----

OTHERS = ["shared-pool", "vllm-fallback", "batch-pool"]


def random_route(rng: random.Random) -> dict:
    """Rules of this model (by header or by path), of other models (by header), and without backendRefs,
    shuffled; the model's rules all serve V1, beside other backends, leftover versions at 0 and missing
    weights."""
    rules = []
    for n in range(rng.randint(1, 3)):
        refs = [ref(V1, rng.choice([None, 1, 3, 50, 100, 1000]))]
        for name in rng.sample(OTHERS, rng.randint(0, 3)):
            refs.append(ref(name, rng.choice([None, 0, 1, 5, 20, 100, 999])))
        if rng.random() < 0.3:
            refs.append(ref(V3, 0))
        rng.shuffle(refs)
        by_header = rng.random() < 0.5
        rules.append(rule(*refs, model=MODEL if by_header else None, path=f"/v1/{n}" if not by_header else "/v1"))
    for n in range(rng.randint(0, 3)):
        other = f"model{n}"
        refs = [ref(f"{other}-v{v}", rng.choice([None, 0, 10, 100])) for v in range(rng.randint(0, 3))]
        rules.append(rule(*refs, model=other))
    if rng.random() < 0.3:
        rules.append(rule(model=None, path="/healthz", filters=[
            {"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath",
                                                                     "replaceFullPath": "/ready"}}}]))
    rng.shuffle(rules)
    return route(*rules)


def random_steps(rng: random.Random) -> list[int]:
    return sorted(rng.sample(range(1, 100), rng.randint(1, 4)))


@pytest.mark.parametrize("seed", range(8))
def test_random_routes_and_steps_keep_other_rules_and_give_the_canary_its_share(world, seed):
    """Random shared routes, random steps, aborted at a random step or promoted: checked after every
    task (`drive`). A failure names the seed, the case, the steps and the route."""
    rng = random.Random(20261208 * 100 + seed)
    for case in range(40):
        base = random_route(rng)
        steps = random_steps(rng)
        world.router.writes.clear()
        world.servers.deployed.clear()
        abort_at = rng.choice([None, *range(len(steps))])
        try:
            plan = start(world, copy.deepcopy(base), steps=steps)
            drive(world, base, plan, abort_at)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, case {case}: steps {steps}, abort at {abort_at}, "
                                 f"route {json.dumps(base['spec']['rules'])}: {exc}") from exc


@pytest.mark.parametrize("seed", range(4))
def test_random_routes_and_steps_the_edit_gives_each_share(seed):
    """The same property on the edits alone: attach, record the weights as deploy's claim does, then
    each step's weight in turn, every step from the last one's route."""
    rng = random.Random(20261208 * 10 + seed)
    for case in range(50):
        base = random_route(rng)
        current = rt.attach(copy.deepcopy(base), V1, V2)
        current = rt.with_state(current, {"phase": "Deploying", "canary": "2", "stable": "1",
                                          "base": rt.base_weights(current, V2)})
        for percent in [*random_steps(rng), 100]:
            current = rt.set_weights(current, V1, V2, percent)
            try:
                check_split(base, current, V2, percent)
            except AssertionError as exc:
                raise AssertionError(f"seed {seed}, case {case}: at {percent} %, "
                                     f"route {json.dumps(base['spec']['rules'])}: {exc}") from exc


def test_the_eks_router_reads_the_grants_in_the_backends_namespace():
    """Through the platform's one client, in the namespace the backend is in; a refusal there is the
    reason the rollout gives (bind the reader ClusterRole in that namespace)."""
    from kubernetes.client import ApiClient
    from kubernetes.client.exceptions import ApiException

    from include.platforms.eks.kube import Kube
    from include.platforms.eks.router import EksRouter

    class Cluster(ApiClient):
        def __init__(self, status=200):
            super().__init__()
            self.paths, self.status = [], status

        def call_api(self, resource_path, method, path_params=None, *args, **kwargs):
            self.paths.append((method, resource_path.format(**(path_params or {}))))
            if self.status != 200:
                raise ApiException(status=self.status, reason="Forbidden")
            return {"items": [grant(path_params["namespace"])]}

    def router(api_client):
        hook = SimpleNamespace(api_client=api_client)
        return EksRouter(Settings(profile="eks", data_root="s3://llmops-data/prod"), kube=Kube(hook=hook))

    cluster = Cluster()
    assert router(cluster).reference_grants("pools") == [grant("pools")]
    assert cluster.paths == [("GET", "/apis/gateway.networking.k8s.io/v1/namespaces/pools/referencegrants")]
    with pytest.raises(rt.RouteError, match="bind the ClusterRole airflow-rollout-referencegrants there"):
        router(Cluster(status=403)).reference_grants("pools")


def test_the_readme_worked_example(world):
    """The README's route contract example, step by step: the first rule's weights, the other never."""
    base = route(rule(ref(V1, 80), ref("bedrock-proxy", 20, namespace="shared", port=8080)),
                 rule(ref("coder-v3"), model="coder"))
    world.router.grants = {"shared": [grant("shared")]}
    plan = start(world, copy.deepcopy(base), steps=(10, 25, 50))

    def row():
        weights_ = model_weights(world.router.get(NAME))
        assert json.dumps(world.router.get(NAME)["spec"]["rules"][1]) == json.dumps(base["spec"]["rules"][1])
        return weights_[V1], weights_["bedrock-proxy"], weights_.get(V2)

    assert row() == (80, 20, 0)
    for index, expected in enumerate([(72, 18, 10), (60, 15, 25), (40, 10, 50)]):
        rollout.begin_step(plan, index, SETTINGS)
        assert row() == expected
    rollout.promote(plan, settings=SETTINGS)
    assert row() == (0, 0, 100)


def test_the_local_gateway_tells_the_models_apart_by_their_header():
    """Envoy, the local gateway, matches what the shared route matches: the path and the header."""
    from include.platforms.local import envoy

    shipped = yaml.safe_load((REPO_ROOT / "k8s" / "serving" / "httproute.yaml").read_text())
    shipped["spec"]["rules"][0]["backendRefs"] = [ref(V1, 100)]
    shipped["spec"]["rules"].append(rule(ref("coder-v3"), model="coder"))
    routes = envoy.route_configuration(shipped)["virtual_hosts"][0]["routes"]
    assert [(r["match"]["headers"], r["route"]["weighted_clusters"]["clusters"][0]["name"]) for r in routes] == [
        ([{"name": "x-model-id", "string_match": {"exact": MODEL}}], V1),
        ([{"name": "x-model-id", "string_match": {"exact": "coder"}}], "coder-v3")]
