"""The pools as include/cluster/pools.py reads them from k8s/, and the instance-type table."""

from __future__ import annotations

import shutil

import pytest
import yaml

from include.cluster import pools
from include.cluster.pools import (
    INSTANCE_TYPES_FILE,
    NODEPOOL_LABEL,
    WORKLOAD_LABEL,
    PoolError,
    Taint,
    get_instance_types,
    load_pools,
    pool_for_plan,
    pool_from_manifest,
)
from include.settings import Settings

EXPECTED = {
    # pool: (workload, instance types, capacity types, GPU limit)
    "gpu-training-pool": ("training", {"p5.48xlarge", "p4d.24xlarge"}, {"on-demand"}, 64),
    "gpu-experiment-pool": ("experiment", {"g6e.12xlarge", "g5.12xlarge", "g5.48xlarge"}, {"spot"}, 32),
    "gpu-inference-pool": ("inference", {"g6e.xlarge", "g5.xlarge", "g5.2xlarge"}, {"on-demand", "spot"}, 16),
}


def test_pools_match_the_conventions():
    loaded = load_pools()
    assert set(loaded) == set(EXPECTED)
    for name, (workload, types, capacity, limit) in EXPECTED.items():
        pool = loaded[name]
        assert pool.workload == workload
        assert pool.labels[WORKLOAD_LABEL] == workload
        assert pool.labels[NODEPOOL_LABEL] == name
        assert pool.node_selector == {NODEPOOL_LABEL: name}
        assert set(pool.taints) == {Taint("nvidia.com/gpu", "true", "NoSchedule"),
                                    Taint(WORKLOAD_LABEL, workload, "NoSchedule")}
        assert set(pool.instance_types) == types
        assert set(pool.capacity_types) == capacity
        assert pool.gpu_limit == limit
        assert pool.priority_class


def test_tolerations_are_the_narrowest_match():
    pool = load_pools()["gpu-training-pool"]
    assert {"key": WORKLOAD_LABEL, "operator": "Equal", "value": "training", "effect": "NoSchedule"} \
        in pool.tolerations()
    assert len(pool.tolerations()) == len(pool.taints)


def test_every_pool_instance_type_is_described():
    table = get_instance_types()
    for pool in load_pools().values():
        for spec in pool.instances():
            assert spec.name in table
            assert spec.gpus >= 1 and spec.vcpu >= 1 and spec.memory_gib >= 1
            assert 0 < spec.spot_usd_per_hour < spec.on_demand_usd_per_hour


def test_instance_table_says_prices_need_checking():
    text = INSTANCE_TYPES_FILE.read_text()
    doc = yaml.safe_load(text)
    assert doc["prices_as_of"]
    assert "as of" in text.lower() and "check" in text.lower()


def test_training_instance_types_have_efa():
    for spec in load_pools()["gpu-training-pool"].instances():
        assert spec.efa_interfaces > 0 and spec.gpudirect_rdma, f"{spec.name}: training needs EFA RDMA"


def test_plan_pools_map_through_settings():
    settings = Settings()
    assert pool_for_plan("production", settings).name == "gpu-training-pool"
    assert pool_for_plan("experiment", settings).name == "gpu-experiment-pool"
    with pytest.raises(PoolError, match="expected one of production, experiment"):
        pool_for_plan("inference", settings)


def test_unknown_pool_names_the_known_ones():
    settings = Settings(training_pool="gpu-missing-pool")
    with pytest.raises(PoolError, match="gpu-training-pool"):
        pool_for_plan("production", settings)


def _training_nodepool() -> dict:
    docs = yaml.safe_load_all((pools.k8s_dir() / "karpenter" / "nodepools.yaml").read_text())
    return next(d for d in docs if d and d["metadata"]["name"] == "gpu-training-pool")


def test_manifest_without_workload_label_is_refused():
    doc = _training_nodepool()
    del doc["spec"]["template"]["metadata"]["labels"][WORKLOAD_LABEL]
    with pytest.raises(PoolError, match=WORKLOAD_LABEL):
        pool_from_manifest(doc)


def test_manifest_without_gpu_limit_is_refused():
    doc = _training_nodepool()
    doc["spec"]["limits"] = {"cpu": 1000}
    with pytest.raises(PoolError, match="nvidia.com/gpu"):
        pool_from_manifest(doc)


def test_k8s_dir_can_be_moved(tmp_path, monkeypatch):
    """An image that copies k8s/karpenter elsewhere points LLMOPS_K8S_DIR at it."""
    shutil.copytree(pools.k8s_dir() / "karpenter", tmp_path / "karpenter")
    monkeypatch.setenv("LLMOPS_K8S_DIR", str(tmp_path))
    assert set(pools.get_pools()) == set(EXPECTED)
    monkeypatch.setenv("LLMOPS_K8S_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(PoolError, match="LLMOPS_K8S_DIR"):
        pools.get_pools()
