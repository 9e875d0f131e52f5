"""Who may talk to whom: in llm-training (k8s/training/networkpolicies.yaml plus the per-run policy) and
to the vLLM servers in llm-serving (k8s/serving/networkpolicy.yaml), evaluated against the labels of
the pods the renderers actually produce."""

from __future__ import annotations

import pytest

from include.cluster.network import run_network_policy
from include.cluster.preflight import as_manifest
from include.evaluation.k8s_pod import manifest as evaluator_manifest
from include.settings import Settings
from include.training.k8s_job import MASTER_PORT, render
from tests.k8s_schemas import REPO_ROOT, manifests_from_files, validate
from tests.network_policy import Endpoint, allowed, connects
from tests.unit.test_eval_pod import job as eval_job
from tests.unit.test_k8s_job import plan as train_plan

SETTINGS = Settings(profile="eks", data_root="s3://llmops-data/prod")
NS = SETTINGS.training_namespace
S3 = Endpoint(ip="52.216.10.20")
STS_ENDPOINT = Endpoint(ip="10.0.3.7")
INTERNET = Endpoint(ip="140.82.112.3")
IMDS = Endpoint(ip="169.254.169.254")
DNS = Endpoint.pod("kube-system", {"k8s-app": "kube-dns"})
JUDGE = Endpoint.pod("llm-serving", {"app.kubernetes.io/name": "judge"})
AIRFLOW = Endpoint.pod("airflow", {"component": "worker"})
STRANGER = Endpoint.pod(NS, {"app": "debug-shell"})


def static_policies(namespace: str = NS) -> list[dict]:
    return [d for d in manifests_from_files(REPO_ROOT / "k8s")
            if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == namespace]


def launch(run_id: str):
    return render(train_plan(run_id=run_id), SETTINGS)


def trainer(launch_) -> Endpoint:
    return Endpoint.pod(NS, launch_.child_job()["spec"]["template"]["metadata"]["labels"])


RUN_A, RUN_B = launch("manual__a"), launch("manual__b")
POLICIES = [*static_policies(), *(as_manifest(r.network_policy) for r in (RUN_A, RUN_B))]
EVALUATOR = Endpoint.pod(NS, evaluator_manifest(eval_job(), SETTINGS)["metadata"]["labels"])


def test_all_policies_validate_and_live_in_the_training_or_serving_namespace():
    every = [d for d in manifests_from_files(REPO_ROOT / "k8s") if d["kind"] == "NetworkPolicy"]
    assert {p["metadata"]["namespace"] for p in every} == {NS, SETTINGS.serving_namespace}
    for p in [*every, *POLICIES]:
        validate(p)
    assert all(p["metadata"]["namespace"] == NS for p in POLICIES)


def test_the_rendezvous_port_is_the_one_the_pods_use():
    container = RUN_A.child_job()["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == {MASTER_PORT}
    assert f"--rdzv-endpoint={RUN_A.name}-node-0-0.{RUN_A.name}.{NS}.svc:{MASTER_PORT}" in container["args"]


@pytest.mark.parametrize("port", [MASTER_PORT, 29501, 43817])  # c10d store, torchrun's worker store, NCCL
def test_a_run_reaches_itself_on_every_port(port):
    assert connects(POLICIES, trainer(RUN_A), trainer(RUN_A), port)


@pytest.mark.parametrize("source", ["other run", "evaluator", "airflow", "stranger"])
def test_nobody_else_reaches_a_run(source):
    src = {"other run": trainer(RUN_B), "evaluator": EVALUATOR, "airflow": AIRFLOW, "stranger": STRANGER}[source]
    assert not connects(POLICIES, src, trainer(RUN_A), MASTER_PORT)
    assert not allowed(POLICIES, trainer(RUN_A), src, "Ingress", MASTER_PORT)


def test_without_its_policy_a_run_cannot_rendezvous():
    """The per-run policy is what opens the port: the static ones deny all ingress."""
    assert not connects(static_policies(), trainer(RUN_A), trainer(RUN_A), MASTER_PORT)


def test_the_run_policy_selects_exactly_the_runs_pods():
    policy = as_manifest(run_network_policy(RUN_A.name, NS))
    assert policy["spec"] == as_manifest(RUN_A.network_policy)["spec"]
    labels = RUN_A.child_job()["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["metadata"]["name"] == RUN_A.name and "ports" not in policy["spec"]["ingress"][0]


@pytest.mark.parametrize(("who", "dest", "port", "protocol", "ok"), [
    ("trainer", DNS, 53, "UDP", True), ("trainer", DNS, 53, "TCP", True),
    ("trainer", S3, 443, "TCP", True), ("trainer", STS_ENDPOINT, 443, "TCP", True),
    ("trainer", S3, 80, "TCP", False), ("trainer", INTERNET, 443, "TCP", False),
    ("trainer", IMDS, 80, "TCP", False), ("trainer", JUDGE, 8000, "TCP", False),
    ("evaluator", DNS, 53, "UDP", True), ("evaluator", S3, 443, "TCP", True),
    ("evaluator", JUDGE, 8000, "TCP", True), ("evaluator", JUDGE, 22, "TCP", False),
    ("evaluator", INTERNET, 443, "TCP", False), ("evaluator", IMDS, 80, "TCP", False),
    ("stranger", S3, 443, "TCP", False), ("stranger", DNS, 53, "UDP", True),
])
def test_egress_is_dns_aws_endpoints_and_the_judge_only(who, dest, port, protocol, ok):
    src = {"trainer": trainer(RUN_A), "evaluator": EVALUATOR, "stranger": STRANGER}[who]
    assert allowed(POLICIES, src, dest, "Egress", port, protocol) is ok


def test_evaluator_cannot_reach_the_trainers():
    assert not connects(POLICIES, EVALUATOR, trainer(RUN_A), MASTER_PORT)


# ---- llm-serving: the vLLM servers ----

SERVING = SETTINGS.serving_namespace
SERVING_POLICIES = static_policies(SERVING)
# The peers as k8s/serving/networkpolicy.yaml's comment places them: the Gateway's Envoy proxies, labelled
# by Envoy Gateway in its controller namespace; the Prometheus Operator's Prometheus; Airflow's pods
# (the official chart's component labels).
ENVOY = Endpoint.pod("envoy-gateway-system", {
    "app.kubernetes.io/name": "envoy", "app.kubernetes.io/component": "proxy",
    "gateway.envoyproxy.io/owning-gateway-name": "llm-gateway",
    "gateway.envoyproxy.io/owning-gateway-namespace": SERVING})
OTHER_GATEWAY = Endpoint.pod("envoy-gateway-system", {
    **ENVOY.labels, "gateway.envoyproxy.io/owning-gateway-name": "public-gateway",
    "gateway.envoyproxy.io/owning-gateway-namespace": "web"})
PROMETHEUS = Endpoint.pod("monitoring", {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"})
TRIGGERER = Endpoint.pod("airflow", {"component": "triggerer", "tier": "airflow"})
AIRFLOW_WEB = Endpoint.pod("airflow", {"component": "api-server", "tier": "airflow"})
NEIGHBOUR = Endpoint.pod(SERVING, {"app": "debug-shell"})


def vllm() -> Endpoint:
    from include.serving.k8s_objects import version_objects

    dep = version_objects("llmops-assistant", 4, "s3://llmops-data/prod/models/a", settings=SETTINGS)["deployment"]
    return Endpoint.pod(SERVING, dep["spec"]["template"]["metadata"]["labels"])


def test_the_serving_policy_guards_the_servers_port_and_the_gateway_it_names():
    import yaml

    from include.serving.route import SERVICE_PORT

    [policy] = SERVING_POLICIES
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert all(p["port"] == SERVICE_PORT for rule in policy["spec"]["ingress"] for p in rule["ports"])
    gateway = yaml.safe_load((REPO_ROOT / "k8s/serving/gateway.yaml").read_text())
    assert allowed(SERVING_POLICIES, vllm(), Endpoint.pod(ENVOY.namespace, {
        **ENVOY.labels, "gateway.envoyproxy.io/owning-gateway-name": gateway["metadata"]["name"],
        "gateway.envoyproxy.io/owning-gateway-namespace": gateway["metadata"]["namespace"]}), "Ingress", SERVICE_PORT)


@pytest.mark.parametrize(("who", "port", "ok"), [
    ("gateway", 8000, True), ("prometheus", 8000, True), ("airflow worker", 8000, True), ("triggerer", 8000, True),
    ("gateway", 22, False), ("another gateway", 8000, False), ("a neighbour in llm-serving", 8000, False),
    ("a trainer", 8000, False), ("the evaluator", 8000, False), ("airflow's api-server", 8000, False),
])
def test_only_the_gateway_prometheus_and_airflow_reach_the_servers(who, port, ok):
    src = {"gateway": ENVOY, "prometheus": PROMETHEUS, "airflow worker": AIRFLOW, "triggerer": TRIGGERER,
           "another gateway": OTHER_GATEWAY, "a neighbour in llm-serving": NEIGHBOUR, "a trainer": trainer(RUN_A),
           "the evaluator": EVALUATOR, "airflow's api-server": AIRFLOW_WEB}[who]
    assert allowed(SERVING_POLICIES, vllm(), src, "Ingress", port) is ok


def test_the_serving_policy_leaves_other_pods_of_the_namespace_alone():
    """It selects the vLLM servers only: the judge the evaluator calls is not isolated by it."""
    assert allowed(SERVING_POLICIES, JUDGE, EVALUATOR, "Ingress", 8000)
