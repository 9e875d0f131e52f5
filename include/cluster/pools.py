"""The Karpenter GPU pools, read from the NodePool manifests in k8s/ (the one source of truth).

The Job renderer takes tolerations, node selectors and priority classes from here, and preflight
checks pods against the same data, so a change to k8s/karpenter/nodepools.yaml reaches both
without a second copy to keep in sync. The files are parsed directly with PyYAML: no kubectl
and no cluster needed. Instance types come from instance_types.yaml beside this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from include.settings import PROJECT_ROOT, Settings, get_settings

GPU = "nvidia.com/gpu"
EFA = "vpc.amazonaws.com/efa"
NODEPOOL_LABEL = "karpenter.sh/nodepool"
WORKLOAD_LABEL = "llmops.io/workload"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
PRIORITY_CLASS_ANNOTATION = "llmops.io/priority-class"

INSTANCE_TYPES_FILE = Path(__file__).with_name("instance_types.yaml")
NODEPOOLS_SUBDIR = "karpenter"

# A training plan's `pool` (the trigger form's choice, the off-hours windows' sections) and the
# Settings field holding the Karpenter NodePool it means.
PRODUCTION, EXPERIMENT = "production", "experiment"
PLAN_POOLS = {PRODUCTION: "training_pool", EXPERIMENT: "experiment_pool"}


class PoolError(ValueError):
    """The NodePool manifests do not follow the project's conventions, or a pool is unknown."""


def k8s_dir() -> Path:
    """The kustomize tree; LLMOPS_K8S_DIR points elsewhere (e.g. where an image copied it)."""
    return Path(os.environ.get("LLMOPS_K8S_DIR") or PROJECT_ROOT / "k8s")


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}"

    def toleration(self) -> dict[str, str]:
        """The narrowest toleration for this taint (Equal on key and value, same effect)."""
        return {"key": self.key, "operator": "Equal", "value": self.value, "effect": self.effect}


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpus: int
    gpu_model: str
    gpu_memory_gib: int
    gpu_bf16_tflops: float
    efa_interfaces: int
    gpudirect_rdma: bool
    vcpu: int
    memory_gib: int
    on_demand_usd_per_hour: float
    spot_usd_per_hour: float


@dataclass(frozen=True)
class Pool:
    name: str
    workload: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]
    instance_types: tuple[str, ...]
    capacity_types: tuple[str, ...]
    gpu_limit: int
    node_class: str
    priority_class: str | None

    @property
    def node_selector(self) -> dict[str, str]:
        return {NODEPOOL_LABEL: self.name}

    def tolerations(self) -> list[dict[str, str]]:
        return [t.toleration() for t in self.taints]

    def instances(self) -> tuple[InstanceType, ...]:
        """The allowed instance types with their specs, in the NodePool's order."""
        table = get_instance_types()
        missing = [n for n in self.instance_types if n not in table]
        if missing:
            raise PoolError(f"pool {self.name}: instance types {missing} are not described in "
                            f"{INSTANCE_TYPES_FILE.name}; add them there")
        return tuple(table[n] for n in self.instance_types)


def load_instance_types(path: Path = INSTANCE_TYPES_FILE) -> dict[str, InstanceType]:
    doc = yaml.safe_load(path.read_text())
    return {name: InstanceType(name=name, **spec) for name, spec in doc["instance_types"].items()}


@lru_cache(maxsize=1)
def get_instance_types() -> dict[str, InstanceType]:
    return load_instance_types()


def _requirement(name: str, reqs: list[dict], key: str) -> tuple[str, ...]:
    for req in reqs:
        if req.get("key") == key and req.get("operator") == "In":
            return tuple(req.get("values") or ())
    raise PoolError(f"NodePool {name}: spec.template.spec.requirements has no `{key} In [...]`; "
                    "every GPU pool must list its instance and capacity types")


def pool_from_manifest(doc: dict) -> Pool:
    """Read one NodePool manifest into a Pool, enforcing the conventions the renderer needs."""
    name = doc["metadata"]["name"]
    template = doc["spec"]["template"]
    spec = template["spec"]
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    workload = labels.get(WORKLOAD_LABEL)
    if not workload:
        raise PoolError(f"NodePool {name}: spec.template.metadata.labels lacks {WORKLOAD_LABEL}")
    taints = tuple(Taint(t["key"], str(t.get("value", "")), t["effect"]) for t in spec.get("taints") or ())
    limit = (doc["spec"].get("limits") or {}).get(GPU)
    if limit is None:
        raise PoolError(f"NodePool {name}: spec.limits lacks {GPU}")
    return Pool(
        name=name,
        workload=workload,
        labels={**labels, NODEPOOL_LABEL: name},
        taints=taints,
        instance_types=_requirement(name, spec["requirements"], INSTANCE_TYPE_LABEL),
        capacity_types=_requirement(name, spec["requirements"], CAPACITY_TYPE_LABEL),
        gpu_limit=int(limit),
        node_class=spec["nodeClassRef"]["name"],
        priority_class=(doc["metadata"].get("annotations") or {}).get(PRIORITY_CLASS_ANNOTATION),
    )


def load_pools(root: Path | None = None) -> dict[str, Pool]:
    """Every NodePool under <k8s>/karpenter/*.yaml, by name."""
    folder = (root or k8s_dir()) / NODEPOOLS_SUBDIR
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise PoolError(f"no NodePool manifests in {folder}; set LLMOPS_K8S_DIR to the k8s/ tree")
    pools = {}
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "NodePool":
                pool = pool_from_manifest(doc)
                pools[pool.name] = pool
    return pools


@lru_cache(maxsize=4)
def _pools_at(root: str) -> dict[str, Pool]:
    return load_pools(Path(root))


def get_pools() -> dict[str, Pool]:
    return _pools_at(str(k8s_dir()))


def get_pool(name: str) -> Pool:
    pools = get_pools()
    if name not in pools:
        raise PoolError(f"unknown pool {name!r}; the NodePools in k8s/ are {sorted(pools)}")
    return pools[name]


def pool_for_plan(kind: str, settings: Settings | None = None) -> Pool:
    """The pool a plan's `pool` ("production" or "experiment") runs on, per the settings."""
    if kind not in PLAN_POOLS:
        raise PoolError(f"pool={kind!r}: expected one of {', '.join(PLAN_POOLS)}")
    settings = settings or get_settings()
    return get_pool(getattr(settings, PLAN_POOLS[kind]))
