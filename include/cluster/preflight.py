"""Pre-flight: will this pod (or Job) actually schedule on the pool it names?

A pod that does not tolerate a pool's taints, selects the wrong pool, or asks for more GPUs or
EFA interfaces than any allowed instance type has, stays Pending forever: Karpenter finds no
instance to launch and the DAG waits until its timeout. Checking the rendered spec against the
NodePool (include/cluster/pools.py) turns that into an immediate error that names the field
and the fix, with every problem listed at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from include.cluster.pools import (
    CAPACITY_TYPE_LABEL,
    EFA,
    GPU,
    INSTANCE_TYPE_LABEL,
    NODEPOOL_LABEL,
    InstanceType,
    Pool,
    Taint,
    get_pool,
)
from include.errors import InputError


class PreflightError(InputError):
    """A pod spec cannot be placed on its pool; `problems` lists every reason, each with a fix."""

    def __init__(self, pool: str, problems: Iterable[str]):
        self.pool = pool
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) placing the pod on pool {pool}:\n{lines}")


def as_manifest(obj: Any) -> dict:
    """A kubernetes client model (or dict) as the API's camelCase dict."""
    if isinstance(obj, dict):
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def tolerates(toleration: dict, taint: Taint) -> bool:
    """Kubernetes' own rule (ToleratesTaint): effect, key and operator/value must all match."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.effect:
        return False
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    if not key:
        return operator == "Exists"
    if key != taint.key:
        return False
    if operator == "Exists":
        return True
    return operator == "Equal" and str(toleration.get("value") or "") == taint.value


def _quantity(value: Any) -> int:
    return int(str(value))


def _device_requests(containers: list[dict], field: str, problems: list[str]) -> tuple[int, int, str]:
    """Total GPUs and EFA interfaces the pod asks for, and the field to name in errors.

    Extended resources cannot be overcommitted: Kubernetes wants a limit, and a request equal to it.
    """
    gpus = efa = 0
    where = f"{field}.containers[0].resources.limits"
    for i, container in enumerate(containers):
        res = container.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        for name in (GPU, EFA):
            here = f"{field}.containers[{i}].resources"
            if name in requests and name not in limits:
                problems.append(f"{here}.limits['{name}']: missing; extended resources need a limit "
                                f"equal to the request, add limits['{name}']: {requests[name]}")
                continue
            if name not in limits:
                continue
            if name in requests and _quantity(requests[name]) != _quantity(limits[name]):
                problems.append(f"{here}.requests['{name}']: {requests[name]} differs from the limit "
                                f"{limits[name]}; set both to the same number")
            amount = _quantity(limits[name])
            if name == GPU:
                gpus += amount
                if amount:
                    where = f"{here}.limits"
            else:
                efa += amount
    return gpus, efa, where


def _check_selector(spec: dict, pool: Pool, field: str, problems: list[str]) -> str | None:
    """Check nodeSelector against the pool; return the pinned instance type, if any."""
    selector = spec.get("nodeSelector") or {}
    chosen = selector.get(NODEPOOL_LABEL)
    if chosen is None:
        problems.append(f"{field}.nodeSelector: no {NODEPOOL_LABEL} label, so the pod may land on any "
                        f"pool that it tolerates; add {{'{NODEPOOL_LABEL}': '{pool.name}'}}")
    elif chosen != pool.name:
        problems.append(f"{field}.nodeSelector['{NODEPOOL_LABEL}']: is '{chosen}' but the pod is meant "
                        f"for pool {pool.name}; set it to '{pool.name}'")
    for key, value in selector.items():
        if key in pool.labels and key != NODEPOOL_LABEL and pool.labels[key] != value:
            problems.append(f"{field}.nodeSelector['{key}']: is '{value}' but nodes of pool {pool.name} "
                            f"carry '{pool.labels[key]}'; set it to '{pool.labels[key]}' or drop it")
    capacity = selector.get(CAPACITY_TYPE_LABEL)
    if capacity is not None and capacity not in pool.capacity_types:
        problems.append(f"{field}.nodeSelector['{CAPACITY_TYPE_LABEL}']: '{capacity}' is not offered by "
                        f"pool {pool.name} ({', '.join(pool.capacity_types)}); use one of those or drop it")
    pinned = selector.get(INSTANCE_TYPE_LABEL)
    if pinned is not None and pinned not in pool.instance_types:
        problems.append(f"{field}.nodeSelector['{INSTANCE_TYPE_LABEL}']: '{pinned}' is not allowed on pool "
                        f"{pool.name}; use one of {', '.join(pool.instance_types)}")
        return None
    return pinned


def _check_tolerations(spec: dict, pool: Pool, field: str, problems: list[str]) -> None:
    tolerations = spec.get("tolerations") or []
    for taint in pool.taints:
        if not any(tolerates(t, taint) for t in tolerations):
            problems.append(f"{field}.tolerations: missing toleration for taint {taint} of pool "
                            f"{pool.name}; add {taint.toleration()}")


def _describe(types: Iterable[InstanceType], attr: str) -> str:
    return ", ".join(f"{t.name}: {getattr(t, attr)}" for t in types)


def placement_problems(
    spec: dict, pool: Pool, *, pods: int = 1, whole_node: bool = False, field: str = "spec",
    pods_field: str = "pods",
) -> list[str]:
    """Every reason `spec` (a PodSpec dict) cannot run `pods` copies on `pool`; empty if it can.

    whole_node: each pod must own its node's GPUs and EFA interfaces (multi-node training: NCCL
    wants every NVLink GPU and every EFA rail, and no neighbour sharing the fabric).
    """
    problems: list[str] = []
    pinned = _check_selector(spec, pool, field, problems)
    _check_tolerations(spec, pool, field, problems)

    wanted_priority = pool.priority_class
    priority = spec.get("priorityClassName")
    if wanted_priority and priority and priority != wanted_priority:
        problems.append(f"{field}.priorityClassName: '{priority}' but pool {pool.name} runs "
                        f"'{wanted_priority}'; set it to '{wanted_priority}'")

    gpus, efa, where = _device_requests(spec.get("containers") or [], field, problems)
    offered = [t for t in pool.instances() if pinned in (None, t.name)]
    if gpus == 0:
        problems.append(f"{where}['{GPU}']: the pod asks for no GPU but pool {pool.name} has only GPU "
                        f"nodes; set limits['{GPU}'] (at most {max(t.gpus for t in offered)})")
        return problems
    by_gpu = [t for t in offered if gpus <= t.gpus]
    if not by_gpu:
        most = max(t.gpus for t in offered)
        problems.append(f"{where}['{GPU}']: {gpus} GPUs per pod, but no instance type allowed here offers "
                        f"that many ({_describe(offered, 'gpus')}); request at most {most} per pod and "
                        "use more nodes")
        return problems
    fits = [t for t in by_gpu if efa <= t.efa_interfaces]
    if not fits:
        most = max(t.efa_interfaces for t in by_gpu)
        problems.append(f"{where}['{EFA}']: {efa} EFA interfaces per pod, but the instance types that fit "
                        f"the GPUs offer at most {most} ({_describe(by_gpu, 'efa_interfaces')}); request "
                        f"{most} or fewer")
        return problems
    if whole_node:
        exact = [t for t in fits if gpus == t.gpus and efa == t.efa_interfaces]
        if not exact:
            t = fits[0]
            fix = f"set limits['{GPU}']: {t.gpus}"
            if t.efa_interfaces:
                fix += f" and limits['{EFA}']: {t.efa_interfaces}"
            problems.append(f"{where}: the job takes whole nodes but asks for {gpus} GPUs and {efa} EFA "
                            f"interfaces per pod; a whole {t.name} has {t.gpus} and {t.efa_interfaces}: "
                            f"{fix}")
            return problems
        fits = exact

    # Karpenter counts a node's whole capacity against the pool limit, not what pods request.
    def gpus_charged(t: InstanceType) -> int:
        return math.ceil(pods / (t.gpus // gpus)) * t.gpus

    best = min(fits, key=gpus_charged)
    charged = gpus_charged(best)
    if charged > pool.gpu_limit:
        nodes_needed = charged // best.gpus
        per_node = best.gpus // gpus
        most = (pool.gpu_limit // best.gpus) * per_node
        problems.append(f"{pods_field}: {pods} pod(s) need {nodes_needed} x {best.name} = {charged} GPUs, over "
                        f"pool {pool.name}'s limit {GPU}: {pool.gpu_limit} (k8s/karpenter/nodepools.yaml); "
                        f"use at most {most} pod(s) or raise the pool's limit")
    return problems


def _locate(obj: dict) -> tuple[dict, str, int, str]:
    """Find the PodSpec in a Job, Pod or bare PodSpec: (spec, field path, pod count, count field)."""
    spec = obj.get("spec")
    if isinstance(spec, dict) and "template" in spec:  # Job
        pods = spec.get("parallelism") or 1
        return spec["template"].get("spec") or {}, "spec.template.spec", pods, "spec.parallelism"
    if isinstance(spec, dict):  # Pod or PodTemplateSpec
        return spec, "spec", 1, "pods"
    return obj, "spec", 1, "pods"  # bare PodSpec


def check_pod_placement(obj: Any, pool: Pool | str | None = None, *, pods: int | None = None,
                        whole_node: bool | None = None) -> None:
    """Raise PreflightError unless `obj` (Job, Pod or PodSpec; model or dict) fits `pool`.

    pool defaults to the one the pod selects. For a Job, pods defaults to its parallelism and
    whole_node to "more than one pod" (multi-node training owns its nodes).
    """
    manifest = as_manifest(obj)
    spec, field, job_pods, pods_field = _locate(manifest)
    if pool is None:
        pool = (spec.get("nodeSelector") or {}).get(NODEPOOL_LABEL)
        if pool is None:
            raise PreflightError("(none)", [f"{field}.nodeSelector: no {NODEPOOL_LABEL} label; select "
                                            "one of the GPU pools in k8s/karpenter/nodepools.yaml"])
    pool = get_pool(pool) if isinstance(pool, str) else pool
    pods = job_pods if pods is None else pods
    whole_node = pods > 1 if whole_node is None else whole_node
    problems = placement_problems(spec, pool, pods=pods, whole_node=whole_node, field=field,
                                  pods_field=pods_field)
    if problems:
        raise PreflightError(pool.name, problems)
