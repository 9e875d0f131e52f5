"""The ValidatingAdmissionPolicy in llm-training admits what the DAGs render and refuses the rest."""

from __future__ import annotations

import copy

import pytest

from include.evaluation.k8s_pod import JUDGE_SECRET
from include.evaluation.k8s_pod import SERVICE_ACCOUNT as EVALUATOR_SA
from include.evaluation.k8s_pod import manifest as evaluator_manifest
from include.images import registry
from include.settings import Settings
from include.training.k8s_job import HF_SECRET, render
from include.training.k8s_job import SERVICE_ACCOUNT as TRAINER_SA
from tests.admission import Admission
from tests.k8s_schemas import REPO_ROOT, manifests_from_files, validate
from tests.unit.test_eval_pod import job as eval_job
from tests.unit.test_k8s_job import plan as train_plan

AIRFLOW = "system:serviceaccount:airflow:airflow-worker"
ADMIN = "kubernetes-admin"
SETTINGS = Settings(profile="eks", data_root="s3://llmops-data/prod")


def objects() -> dict[str, dict]:
    return {d["kind"]: d for d in manifests_from_files(REPO_ROOT / "k8s")
            if d["kind"].startswith("ValidatingAdmissionPolicy")}


ADMISSION = Admission(objects()["ValidatingAdmissionPolicy"], objects()["ValidatingAdmissionPolicyBinding"])
LAUNCH = render(train_plan(), SETTINGS)
# The headless Service the JobSet controller creates for the run (its shape, for the Service rule
# that stays as a second line: Airflow's Role grants no Services).
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": LAUNCH.name, "namespace": LAUNCH.namespace},
           "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                    "selector": {"jobset.sigs.k8s.io/jobset-name": LAUNCH.name}}}
JOBSET = LAUNCH.jobset
JOB = LAUNCH.child_job()
POLICY = LAUNCH.manifests()[0]
EVALUATOR = evaluator_manifest(eval_job(), SETTINGS)


def with_irsa(pod: dict) -> dict:
    """What the EKS pod identity webhook adds before validation: a projected token volume."""
    pod = copy.deepcopy(pod)
    pod["spec"]["volumes"].append({"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}})
    return pod


def test_policy_and_binding_validate_against_the_1_32_schema():
    for obj in objects().values():
        validate(obj)
    binding = objects()["ValidatingAdmissionPolicyBinding"]
    assert binding["spec"]["policyName"] == objects()["ValidatingAdmissionPolicy"]["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]


@pytest.mark.parametrize("name", ["service", "jobset-production", "jobset-experiment", "job", "evaluator",
                                  "evaluator+irsa", "network-policy"])
def test_what_the_dags_render_is_admitted(name):
    obj = {"service": SERVICE, "jobset-production": JOBSET,
           "jobset-experiment": render(train_plan(pool="experiment"), SETTINGS).jobset, "job": JOB,
           "evaluator": EVALUATOR, "evaluator+irsa": with_irsa(EVALUATOR), "network-policy": POLICY}[name]
    assert ADMISSION.review(obj, AIRFLOW) == []


def test_the_policy_covers_every_kind_airflow_may_create():
    """Each (group, resource) Airflow's Role may create is matched by the policy."""
    from tests.unit.test_rbac_calls import role_grants

    rules = objects()["ValidatingAdmissionPolicy"]["spec"]["matchConstraints"]["resourceRules"]
    matched = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    creatable = {(g, r) for g, r, v in role_grants() if v == "create"}
    assert creatable and creatable <= matched


def test_the_configured_registries_admit_the_default_images():
    variables = {v["name"]: v["expression"] for v in objects()["ValidatingAdmissionPolicy"]["spec"]["variables"]}
    for image in (SETTINGS.trainer_image, SETTINGS.evaluator_image):
        assert any(image.startswith(prefix) for prefix in eval(variables["registries"]))  # noqa: S307 - a list literal
        assert registry(image) in variables["registries"]
    assert set(eval(variables["serviceAccounts"])) == {TRAINER_SA, EVALUATOR_SA}  # noqa: S307
    assert set(eval(variables["secrets"])) == {JUDGE_SECRET, HF_SECRET}  # noqa: S307


def _set(obj: dict, path: str, value) -> dict:
    obj = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = obj
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is None:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return obj


POD = "spec"
TEMPLATE = "spec.template.spec"
RJ = "spec.replicatedJobs.0.template.spec.template.spec"
HOSTILE = [
    ("LoadBalancer Service", _set(SERVICE, "spec.type", "LoadBalancer"), "headless ClusterIP"),
    ("NodePort Service", _set(SERVICE, "spec.type", "NodePort"), "headless ClusterIP"),
    ("Service with a cluster IP", _set(SERVICE, "spec.clusterIP", "10.100.0.7"), "headless ClusterIP"),
    ("externalIPs", _set(SERVICE, "spec.externalIPs", ["203.0.113.9"]), "headless ClusterIP"),
    ("ExternalName", _set(_set(SERVICE, "spec.type", "ExternalName"), "spec.externalName", "evil.example"),
     "headless ClusterIP"),
    ("pod as airflow-worker", _set(EVALUATOR, f"{POD}.serviceAccountName", "airflow-worker"), "ServiceAccounts"),
    ("pod as default SA", _set(EVALUATOR, f"{POD}.serviceAccountName", None), "ServiceAccounts"),
    ("job as default SA", _set(JOB, f"{TEMPLATE}.serviceAccountName", "default"), "ServiceAccounts"),
    ("jobset as default SA", _set(JOBSET, f"{RJ}.serviceAccountName", "default"), "ServiceAccounts"),
    ("jobset with a second replicatedJob as airflow-worker", _set(JOBSET, "spec.replicatedJobs", [
        JOBSET["spec"]["replicatedJobs"][0],
        _set(JOBSET["spec"]["replicatedJobs"][0], "template.spec.template.spec.serviceAccountName",
             "airflow-worker")]), "ServiceAccounts"),
    ("jobset foreign image", _set(JOBSET, f"{RJ}.containers.0.image", "docker.io/evil/miner:1"), "registries"),
    ("jobset secret volume", _set(JOBSET, f"{RJ}.volumes", [{"name": "s", "secret": {"secretName": "db"}}]),
     "Secrets"),
    ("jobset envFrom secret", _set(JOBSET, f"{RJ}.containers.0.envFrom", [{"secretRef": {"name": "db"}}]),
     "Secrets"),
    ("jobset creating PVCs", _set(JOBSET, "spec.volumeClaimPolicies", [{"templates": []}]), "JobSets"),
    ("jobset taking another Service's name", _set(JOBSET, "spec.network.subdomain", "airflow-api"), "JobSets"),
    ("foreign image", _set(EVALUATOR, f"{POD}.containers.0.image", "docker.io/evil/miner:1"), "registries"),
    ("look-alike registry", _set(JOB, f"{TEMPLATE}.containers.0.image", "ghcr.io/llmops-finetune-evil/x:1"),
     "registries"),
    ("foreign init container", _set(JOB, f"{TEMPLATE}.initContainers",
                                    [{"name": "x", "image": "quay.io/x/y:1"}]), "registries"),
    ("secret volume", _set(EVALUATOR, f"{POD}.volumes", [{"name": "s", "secret": {"secretName": "db"}}]), "Secrets"),
    ("projected secret", _set(EVALUATOR, f"{POD}.volumes",
                              [{"name": "s", "projected": {"sources": [{"secret": {"name": "db"}}]}}]), "Secrets"),
    ("other secret by key", _set(EVALUATOR, f"{POD}.containers.0.env", [{"name": "X", "valueFrom": {
        "secretKeyRef": {"name": "airflow-metadata-db", "key": "connection"}}}]), "Secrets"),
    ("envFrom secret", _set(JOB, f"{TEMPLATE}.containers.0.envFrom", [{"secretRef": {"name": "hf-token"}}]),
     "Secrets"),
    ("policy open to all pods", _set(POLICY, "spec.ingress", [{"from": [{"podSelector": {}}]}]), "NetworkPolicy"),
    ("policy open to a namespace", _set(POLICY, "spec.ingress", [{"from": [
        {"namespaceSelector": {}, "podSelector": POLICY["spec"]["podSelector"]}]}]), "NetworkPolicy"),
    ("policy open to the internet", _set(POLICY, "spec.ingress", [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]),
     "NetworkPolicy"),
    ("policy for another run", _set(POLICY, "metadata.name", "train-other-0123456789"), "NetworkPolicy"),
    ("policy selecting every pod", _set(POLICY, "spec.podSelector", {}), "NetworkPolicy"),
    ("policy opening egress", _set(_set(POLICY, "spec.policyTypes", ["Ingress", "Egress"]), "spec.egress",
                                   [{}]), "NetworkPolicy"),
]


@pytest.mark.parametrize(("case", "obj", "message"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_objects_from_airflow_are_refused(case, obj, message):
    denials = ADMISSION.review(obj, AIRFLOW)
    assert denials and any(message in d for d in denials), denials


def test_admins_and_other_namespaces_are_not_airflow():
    loadbalancer = HOSTILE[0][1]
    assert ADMISSION.review(loadbalancer, ADMIN) == []
    assert ADMISSION.review(_set(loadbalancer, "metadata.namespace", "llm-serving"), AIRFLOW) == []
