"""Every GPU pool's taints are tolerated by the device-plugin DaemonSets (kustomize and Helm values)
and by the workloads rendered for that pool; the plugins select every GPU/EFA node the pools launch."""

from __future__ import annotations

import pytest
import yaml

from include.cluster.pools import get_instance_types
from include.evaluation.k8s_pod import manifest as evaluator_manifest
from include.settings import Settings
from include.training.k8s_job import render
from tests.k8s_schemas import REPO_ROOT, manifests_from_files, validate
from tests.unit.test_eval_pod import job as eval_job
from tests.unit.test_k8s_job import INSTANCE
from tests.unit.test_k8s_job import plan as train_plan

K8S = REPO_ROOT / "k8s"
PLUGINS = K8S / "device-plugins"
SETTINGS = Settings(profile="eks", data_root="s3://llmops-data/prod")


def nodepools() -> dict[str, dict]:
    docs = yaml.safe_load_all((K8S / "karpenter" / "nodepools.yaml").read_text())
    return {d["metadata"]["name"]: d for d in docs if d and d["kind"] == "NodePool"}


def daemonsets() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in manifests_from_files(PLUGINS) if d["kind"] == "DaemonSet"}


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    """Kubernetes' matching rule (ToleratesTaint): effect empty = all; Exists needs no value;
    an empty key with Exists tolerates everything."""
    for t in tolerations or []:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        operator = t.get("operator", "Equal")
        if not t.get("key") and operator == "Exists":
            return True
        if t.get("key") != taint["key"]:
            continue
        if operator == "Exists" or str(t.get("value", "")) == str(taint.get("value", "")):
            return True
    return False


def pool_nodes(pool: dict) -> list[dict[str, str]]:
    """The label sets of the nodes a NodePool can launch, one per instance type."""
    template = pool["spec"]["template"]
    types = next(r["values"] for r in template["spec"]["requirements"]
                 if r["key"] == "node.kubernetes.io/instance-type")
    return [{**template["metadata"]["labels"], "karpenter.sh/nodepool": pool["metadata"]["name"],
             "node.kubernetes.io/instance-type": t} for t in types]


def affinity_admits(spec: dict, labels: dict[str, str]) -> bool:
    """requiredDuringScheduling node affinity (terms ORed, expressions ANDed) and nodeSelector."""
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if not required:
        return True
    ops = {"In": lambda k, v: labels.get(k) in v, "NotIn": lambda k, v: labels.get(k) not in v,
           "Exists": lambda k, v: k in labels, "DoesNotExist": lambda k, v: k not in labels}
    return any(all(ops[e["operator"]](e["key"], e.get("values", [])) for e in term.get("matchExpressions", []))
               for term in required["nodeSelectorTerms"])


def taints(pool: dict) -> list[dict]:
    return pool["spec"]["template"]["spec"]["taints"]


def test_the_plugins_are_in_the_tree_and_validate():
    built = {(d["kind"], d["metadata"]["name"]) for d in manifests_from_files(K8S)}
    assert {("DaemonSet", "nvidia-device-plugin-daemonset"), ("DaemonSet", "aws-efa-k8s-device-plugin")} <= built
    for ds in daemonsets().values():
        validate(ds)
        image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.rsplit(":", 1)[1] == ds["metadata"]["labels"]["app.kubernetes.io/version"]  # pinned


@pytest.mark.parametrize("pool_name", sorted(nodepools()))
@pytest.mark.parametrize("plugin", ["nvidia-device-plugin-daemonset", "aws-efa-k8s-device-plugin"])
def test_plugins_tolerate_every_pool_taint(plugin, pool_name):
    spec = daemonsets()[plugin]["spec"]["template"]["spec"]
    untolerated = [t for t in taints(nodepools()[pool_name]) if not tolerates(spec["tolerations"], t)]
    assert not untolerated, f"{plugin} would never run on {pool_name}: {untolerated} not tolerated"


@pytest.mark.parametrize("values_file", ["nvidia-device-plugin.yaml", "efa-device-plugin.yaml"])
def test_helm_values_tolerate_every_pool_taint(values_file):
    values = yaml.safe_load((PLUGINS / "helm-values" / values_file).read_text())
    for name, pool in nodepools().items():
        assert all(tolerates(values["tolerations"], t) for t in taints(pool)), f"{values_file} vs {name}"


def test_the_upstream_defaults_would_not_run_on_the_pools():
    """What the issue found: tolerating nvidia.com/gpu alone leaves the workload taint untolerated."""
    upstream = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert all(not all(tolerates(upstream, t) for t in taints(p)) for p in nodepools().values())


@pytest.mark.parametrize("pool_name", sorted(nodepools()))
def test_plugins_select_every_node_the_pools_launch(pool_name):
    nvidia = daemonsets()["nvidia-device-plugin-daemonset"]["spec"]["template"]["spec"]
    efa = daemonsets()["aws-efa-k8s-device-plugin"]["spec"]["template"]["spec"]
    types = get_instance_types()
    for labels in pool_nodes(nodepools()[pool_name]):
        assert affinity_admits(nvidia, labels), labels
        if types[labels["node.kubernetes.io/instance-type"]].efa_interfaces:
            assert affinity_admits(efa, labels), labels
    assert not affinity_admits(nvidia, {"node.kubernetes.io/instance-type": "m7i.large"})  # not a GPU pool node


@pytest.mark.parametrize("pool", sorted(INSTANCE))
def test_rendered_training_pods_tolerate_their_pool(pool):
    spec = render(train_plan(pool=pool), SETTINGS).child_job()["spec"]["template"]["spec"]
    pools = nodepools()
    target = next(name for name, p in pools.items() if any(affinity_admits(spec, n) for n in pool_nodes(p)))
    assert all(tolerates(spec["tolerations"], t) for t in taints(pools[target]))
    others = [p for name, p in pools.items() if name != target]
    assert all(not affinity_admits(spec, n) for p in others for n in pool_nodes(p))


def test_rendered_evaluator_pod_tolerates_the_inference_pool():
    spec = evaluator_manifest(eval_job(), SETTINGS)["spec"]
    pool = nodepools()[SETTINGS.inference_pool]
    assert all(tolerates(spec["tolerations"], t) for t in taints(pool))
    assert any(affinity_admits(spec, n) for n in pool_nodes(pool))
