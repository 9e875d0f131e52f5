"""The k8s/ kustomize tree: it builds, every object validates, and it keeps the project's conventions."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import yaml

from include.settings import Settings
from tests.k8s_schemas import (
    REPO_ROOT,
    ManifestError,
    crds_dir,
    kustomization_files,
    kustomize_build,
    kustomize_command,
    manifests_from_files,
    needs_crds,
    require_crds,
    validate,
    validation_errors,
)

K8S = REPO_ROOT / "k8s"
WORKLOADS = {"gpu-training-pool": "training", "gpu-experiment-pool": "experiment",
             "gpu-inference-pool": "inference"}


@lru_cache(maxsize=1)
def built() -> tuple[dict, ...]:
    """The real kustomize build when a binary is here, else the files the kustomizations list."""
    if kustomize_command() is not None:
        return tuple(kustomize_build(K8S))
    return tuple(manifests_from_files(K8S))


def objects() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in built()}


def ids(docs):
    return [f"{d['kind']}/{d['metadata']['name']}" for d in docs]


def test_tree_builds_with_the_expected_objects():
    expected = {
        ("Namespace", "llm-training"), ("Namespace", "llm-serving"), ("Namespace", "airflow"),
        ("NodePool", "gpu-training-pool"), ("NodePool", "gpu-experiment-pool"), ("NodePool", "gpu-inference-pool"),
        ("ServiceAccount", "nemo-trainer"), ("ServiceAccount", "airflow-worker"),
        ("Role", "airflow-job-launcher"), ("RoleBinding", "airflow-job-launcher"),
        ("PersistentVolumeClaim", "llm-checkpoints"),
        ("PriorityClass", "llmops-training-high"), ("PriorityClass", "llmops-experiment-low"),
    }
    assert expected <= set(objects())
    assert any(kind == "EC2NodeClass" for kind, _ in objects())


def test_real_kustomize_build_agrees_with_the_files():
    if kustomize_command() is None:
        pytest.fail("no kustomize/kubectl binary: run `make install` (it runs scripts/install_kubectl.py)")
    real = kustomize_build(K8S)
    assert sorted(ids(real)) == sorted(ids(manifests_from_files(K8S)))
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "llmops-finetune" for d in real)


def test_helm_values_are_not_a_resource():
    assert K8S / "airflow" / "values.yaml" not in kustomization_files(K8S)


def test_core_objects_validate():
    errors = [e for d in built() if not needs_crds(d) for e in validation_errors(d)]
    assert not errors, "\n".join(errors)


def test_karpenter_objects_validate_against_their_crds():
    require_crds()
    route = yaml.safe_load((K8S / "serving" / "httproute.yaml").read_text())  # created once, not applied
    docs = [d for d in built() if needs_crds(d)] + [route]
    assert {d["kind"] for d in docs} == {"NodePool", "EC2NodeClass", "Gateway", "HTTPRoute", "PodMonitor"}
    errors = [e for d in docs for e in validation_errors(d)]
    assert not errors, "\n".join(errors)


def test_validator_refuses_typos_and_bad_values():
    require_crds()
    nodepool = copy.deepcopy(objects()[("NodePool", "gpu-training-pool")])
    nodepool["spec"]["disruption"]["consolidationPolicy"] = "WhenIdle"
    nodepool["spec"]["template"]["spec"]["taint"] = []
    errors = "\n".join(validation_errors(nodepool))
    assert "'WhenIdle' is not one of" in errors
    assert "'taint' was unexpected" in errors
    role = copy.deepcopy(objects()[("Role", "airflow-job-launcher")])
    role["rules"][0]["verb"] = ["get"]
    with pytest.raises(ManifestError, match="Role/airflow-job-launcher"):
        validate(role)


def test_crds_dir_is_configurable(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMOPS_CRDS_DIR", str(tmp_path / "absent"))
    assert crds_dir() is None
    monkeypatch.setenv("LLMOPS_CRDS_DIR", str(tmp_path))
    assert crds_dir() == tmp_path


# ---- NodePool conventions the renderer and preflight rely on ----

@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_nodepool_conventions(name):
    pool = objects()[("NodePool", name)]
    template = pool["spec"]["template"]
    workload = WORKLOADS[name]
    assert template["metadata"]["labels"]["llmops.io/workload"] == workload
    taints = {(t["key"], str(t["value"]), t["effect"]) for t in template["spec"]["taints"]}
    assert taints == {("nvidia.com/gpu", "true", "NoSchedule"), ("llmops.io/workload", workload, "NoSchedule")}
    keys = {r["key"] for r in template["spec"]["requirements"]}
    assert {"node.kubernetes.io/instance-type", "karpenter.sh/capacity-type"} <= keys
    # mirrors the CRD's CEL rules, which jsonschema cannot evaluate
    assert not {k for k in template["metadata"]["labels"] if k.split("/")[0].endswith("karpenter.sh")}
    assert ("EC2NodeClass", template["spec"]["nodeClassRef"]["name"]) in objects()
    assert ("PriorityClass", pool["metadata"]["annotations"]["llmops.io/priority-class"]) in objects()


def _requirement(pool: dict, key: str) -> list[str]:
    reqs = pool["spec"]["template"]["spec"]["requirements"]
    return next(r["values"] for r in reqs if r["key"] == key)


def test_training_pool_is_on_demand_and_not_voluntarily_disrupted():
    pool = objects()[("NodePool", "gpu-training-pool")]
    assert _requirement(pool, "karpenter.sh/capacity-type") == ["on-demand"]
    disruption = pool["spec"]["disruption"]
    assert disruption["consolidationPolicy"] == "WhenEmpty"
    frozen = [b for b in disruption["budgets"] if b["nodes"] == "0"]
    assert frozen and {"Drifted", "Underutilized"} <= set(frozen[0].get("reasons", ["Drifted", "Underutilized"]))
    assert pool["spec"]["template"]["spec"]["expireAfter"] == "Never"
    assert int(pool["spec"]["limits"]["nvidia.com/gpu"]) == 64


def test_experiment_pool_is_spot_and_quickly_consolidated():
    pool = objects()[("NodePool", "gpu-experiment-pool")]
    assert _requirement(pool, "karpenter.sh/capacity-type") == ["spot"]
    assert pool["spec"]["disruption"]["consolidationPolicy"] == "WhenEmptyOrUnderutilized"
    assert pool["spec"]["disruption"]["consolidateAfter"] in {"30s", "1m", "2m", "5m"}


def test_inference_pool_mixes_capacity_types():
    pool = objects()[("NodePool", "gpu-inference-pool")]
    assert set(_requirement(pool, "karpenter.sh/capacity-type")) == {"on-demand", "spot"}


def test_training_node_class_is_efa_ready():
    pool = objects()[("NodePool", "gpu-training-pool")]
    node_class = objects()[("EC2NodeClass", pool["spec"]["template"]["spec"]["nodeClassRef"]["name"])]
    terms = node_class["spec"]["subnetSelectorTerms"] + node_class["spec"]["securityGroupSelectorTerms"]
    assert any("efa" in key for term in terms for key in term.get("tags", {}))
    assert node_class["spec"]["metadataOptions"]["httpPutResponseHopLimit"] == 1


def test_priority_classes_rank_training_over_experiments():
    high = objects()[("PriorityClass", "llmops-training-high")]
    low = objects()[("PriorityClass", "llmops-experiment-low")]
    assert high["value"] > low["value"]
    assert low["preemptionPolicy"] == "Never"


# ---- namespaces, identities, RBAC ----

def test_settings_namespaces_exist():
    settings = Settings()
    assert ("Namespace", settings.training_namespace) in objects()
    assert ("Namespace", settings.serving_namespace) in objects()


def test_airflow_role_is_least_privilege():
    role = objects()[("Role", "airflow-job-launcher")]
    assert role["metadata"]["namespace"] == "llm-training"
    granted = {(group, resource): set(rule["verbs"])
               for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}
    allowed = {"create", "get", "list", "watch", "patch", "delete"}
    assert set(granted) == {("jobset.x-k8s.io", "jobsets"), ("", "pods"), ("", "pods/log"), ("", "events"),
                            ("networking.k8s.io", "networkpolicies")}  # no Jobs, no Services: the JobSet controller's
    assert all(verbs <= allowed for verbs in granted.values())
    assert granted[("", "pods/log")] == {"get"} and granted[("", "events")] <= {"get", "list", "watch"}
    assert "*" not in str(role["rules"])
    # The one cluster-wide grant: Karpenter objects for the off-hours DAG (tests/unit/test_offhours_cleanup.py).
    # The rollout's ReferenceGrant reader is a ClusterRole bound nowhere cluster-wide: a RoleBinding in
    # each namespace a route refers to grants it there.
    assert {(k, n) for k, n in objects() if k in {"ClusterRole", "ClusterRoleBinding"}} == {
        ("ClusterRole", "llmops-offhours-karpenter"), ("ClusterRoleBinding", "llmops-offhours-karpenter"),
        ("ClusterRole", "airflow-rollout-referencegrants")}
    reader = objects()[("ClusterRole", "airflow-rollout-referencegrants")]
    assert reader["rules"] == [{"apiGroups": ["gateway.networking.k8s.io"], "resources": ["referencegrants"],
                                "verbs": ["list"]}]


def test_role_is_bound_to_airflows_service_account_only():
    binding = objects()[("RoleBinding", "airflow-job-launcher")]
    assert binding["metadata"]["namespace"] == "llm-training"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "airflow-job-launcher"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"}]


def test_service_accounts_carry_an_iam_role():
    for name, namespace in (("airflow-worker", "airflow"), ("nemo-trainer", "llm-training"),
                            ("llm-evaluator", "llm-training")):
        sa = objects()[("ServiceAccount", name)]
        assert sa["metadata"]["namespace"] == namespace
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_checkpoint_claim_is_shared_fsx():
    pvc = objects()[("PersistentVolumeClaim", "llm-checkpoints")]
    assert pvc["metadata"]["namespace"] == "llm-training"
    assert pvc["spec"]["storageClassName"] == "fsx-lustre"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_airflow_helm_values_use_the_annotated_service_account():
    values = yaml.safe_load((K8S / "airflow" / "values.yaml").read_text())
    for component in ("workers", "triggerer"):  # the triggerer polls deferred Jobs
        assert values[component]["serviceAccount"] == {"create": False, "name": "airflow-worker"}
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["LLMOPS_PROFILE"] == "eks"
    assert env["LLMOPS_TRAINING_NAMESPACE"] == "llm-training"
    assert values["config"]["operators"]["default_deferrable"] == "True"
