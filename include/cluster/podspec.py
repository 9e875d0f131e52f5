"""The one pod skeleton every workload the DAGs launch is built from (trainer, evaluator; next the
vLLM Deployment): labels, hardening, shared memory, pool placement and deterministic names.

Placement comes from the pool (include/cluster/pools.py, read from the NodePools in k8s/): its
node selector (plus an instance type when one is pinned), exactly its tolerations and its
priority class. Hardening is Pod Security "restricted" as the images' own non-root user.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from kubernetes.client import (
    V1Capabilities,
    V1Container,
    V1EmptyDirVolumeSource,
    V1PodSecurityContext,
    V1PodSpec,
    V1SeccompProfile,
    V1SecurityContext,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from include.cluster.pools import GPU, INSTANCE_TYPE_LABEL, Pool

# CPU and memory of a GPU pod: this share of the smallest instance type its pool may launch; the rest
# is the kubelet's reserve, the system and the DaemonSets (the device plugins). A whole node's CPU and
# memory never schedule (g6e.xlarge's 4 vCPU are not all allocatable).
NODE_SHARE = 0.75


def gpu_pod_resources(pool: Pool, gpus: int, **extra_requests: str) -> dict[str, dict[str, str]]:
    """Requests and limits that fit every instance type of `pool` with `gpus` GPUs (memory limit = request)."""
    types = [t for t in pool.instances() if t.gpus >= gpus]
    if not types:
        raise ValueError(f"pool {pool.name}: no instance type with {gpus} GPU(s)")
    cpu = max(1, int(min(t.vcpu for t in types) * NODE_SHARE))
    memory = f"{max(1, int(min(t.memory_gib for t in types) * NODE_SHARE))}Gi"
    return {"requests": {"cpu": str(cpu), "memory": memory, **extra_requests, GPU: str(gpus)},
            "limits": {"memory": memory, GPU: str(gpus)}}


# The runtime UID/GID the nemo-trainer and evaluator images create (images/*/Dockerfile).
RUN_AS_USER = 10001
PART_OF = "llmops-finetune"
MANAGED_BY = "airflow"
WORKLOAD_LABEL = "llmops.io/workload"
SHM_VOLUME = "shm"


def labels(app: str, pool: Pool, **extra: str) -> dict[str, str]:
    """The labels every launched object carries: what it is, who made it, which pool it runs on."""
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/part-of": PART_OF,
            "app.kubernetes.io/managed-by": MANAGED_BY, **extra, WORKLOAD_LABEL: pool.workload}


def restricted_pod(user: int = RUN_AS_USER, fs_group_change_policy: str | None = None) -> V1PodSecurityContext:
    """Pod Security "restricted" for the pod: the image's non-root user, which also owns the mounted
    volumes, and the runtime's default seccomp profile."""
    return V1PodSecurityContext(run_as_non_root=True, run_as_user=user, run_as_group=user, fs_group=user,
                                fs_group_change_policy=fs_group_change_policy,
                                seccomp_profile=V1SeccompProfile(type="RuntimeDefault"))


def restricted_container(read_only_root: bool = True) -> V1SecurityContext:
    """Pod Security "restricted" for the container: non-root, no privilege escalation, no capabilities,
    and (by default) a read-only image filesystem: every path the process writes is a volume."""
    return V1SecurityContext(allow_privilege_escalation=False, capabilities=V1Capabilities(drop=["ALL"]),
                             run_as_non_root=True, read_only_root_filesystem=read_only_root)


def shm(size: str) -> tuple[V1Volume, V1VolumeMount]:
    """A memory-backed /dev/shm (the runtime's 64 MiB default starves data loaders and NCCL)."""
    return (V1Volume(name=SHM_VOLUME, empty_dir=V1EmptyDirVolumeSource(medium="Memory", size_limit=size)),
            V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"))


def pod_spec(pool: Pool, containers: Sequence[V1Container], volumes: Sequence[V1Volume], *,
             service_account: str, instance_type: str | None = None, fs_group_change_policy: str | None = None,
             **extra: Any) -> V1PodSpec:
    """A hardened pod on `pool`: never restarted in place (the Job or task retries), no API token,
    no service links, the pool's node selector, tolerations and priority class."""
    selector = dict(pool.node_selector)
    if instance_type:
        selector[INSTANCE_TYPE_LABEL] = instance_type
    return V1PodSpec(
        restart_policy="Never",
        service_account_name=service_account,
        automount_service_account_token=False,
        enable_service_links=False,
        priority_class_name=pool.priority_class,
        node_selector=selector,
        tolerations=[V1Toleration(**t) for t in pool.tolerations()],
        security_context=restricted_pod(RUN_AS_USER, fs_group_change_policy),
        containers=list(containers),
        volumes=list(volumes),
        **extra,
    )


def hashed_name(prefix: str, slug: str, *parts: str, max_length: int, hash_length: int = 10,
                slug_length: int | None = None) -> str:
    """A deterministic DNS-1035 name `<prefix>-<slug>-<hash>` of at most `max_length` characters.

    The hash of `parts` keeps runs apart when slugs are truncated or equal; the same parts always
    give the same name, so a retried task finds what its earlier try created.
    """
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:hash_length]
    room = max_length - len(prefix) - len(digest) - 2
    if slug_length is not None:
        room = min(room, slug_length)
    clean = re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-")[:max(room, 0)].strip("-")
    return f"{prefix}-{clean}-{digest}" if clean else f"{prefix}-{digest}"
