"""Render the NeMo launch objects for one training plan: a headless Service and an Indexed Job.

Why this shape (kubernetes.io, "Job with Pod-to-Pod Communication"):
- Indexed Job, completions = parallelism = nodes: pod i is node rank i, from its completion
  index (downward API), so ranks are distinct and stable across retries of that index.
- The pods set `subdomain` to a headless Service, which gives pod 0 the DNS name
  `<job>-0.<svc>.<ns>.svc`: MASTER_ADDR is known before pod 0 even exists (not `hostname -i`,
  which made every pod of the seed's Job think it was rank 0).
- backoffLimitPerIndex + podFailurePolicy: a spot interruption or preemption (pod condition
  DisruptionTarget) is ignored and only that index is retried, from the last checkpoint; an
  invalid plan (the entrypoint's exit code) fails the whole Job at once instead of burning retries.
- torchrun's arguments and the plan (one JSON argument) are an argv list: no shell ever runs.

Placement comes from include/cluster/pools.py (the NodePools in k8s/): node selector, exactly the
pool's tolerations, its priority class, and GPU/EFA requests equal to what the instance type
offers. The rendered Job is checked by include/cluster/preflight.py before it is returned.

Names derive from (dag_id, run_id) only, so a task retry renders the same Job and Service and
re-attaches to the one already running instead of launching a second training run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client import (
    V1Affinity,
    V1Container,
    V1ContainerPort,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1Job,
    V1JobSpec,
    V1LabelSelector,
    V1ObjectFieldSelector,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1PodAffinity,
    V1PodAffinityTerm,
    V1PodFailurePolicy,
    V1PodFailurePolicyOnExitCodesRequirement,
    V1PodFailurePolicyOnPodConditionsPattern,
    V1PodFailurePolicyRule,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1SecretKeySelector,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
    V1Volume,
    V1VolumeMount,
)

from include.cluster import podspec
from include.cluster.pools import EFA, GPU, PLAN_POOLS, InstanceType, Pool, pool_for_plan
from include.cluster.preflight import as_manifest, check_pod_placement
from include.container import USER_ERROR_EXIT_CODE
from include.errors import InputError
from include.images import check_reference, pull_policy
from include.settings import Settings, get_settings
from include.training.params import PARAM_RULES
from include.training.plan import trainer_plan
from include.training.rendezvous import DEFAULT_WAIT_TIMEOUT_S, WAIT_TIMEOUT_ENV, master_address

# Jobs are named `job-<dag slug>-<hash>`: KubernetesJobOperator prefixes "job-" to the name it is
# given, so the rendered Job already carries its final name (plugins/ strips it for the provider).
JOB_PREFIX = "job"
# Pod hostnames are `<job>-<index>` and must stay within 63 characters.
MAX_NAME_LENGTH = 52
HASH_LENGTH = 10

CONTAINER = "trainer"
MASTER_PORT = 29500
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
JOB_LABEL = "llmops.io/job"
SERVICE_ACCOUNT = "nemo-trainer"  # k8s/training/serviceaccount.yaml
CHECKPOINT_CLAIM = "llm-checkpoints"  # k8s/training/pvc.yaml
CHECKPOINT_MOUNT = "/checkpoints"
RUN_AS_USER = podspec.RUN_AS_USER  # the trainer image's non-root user (images/nemo-trainer/Dockerfile)
# NeMo converts the base model once into NEMO_HOME: on the shared FSx volume, every rank and run reuse it.
NEMO_HOME = f"{CHECKPOINT_MOUNT}/nemo-home"
HF_SECRET, HF_SECRET_KEY = "hf-token", "token"  # optional: only gated base models (Llama) need it
# Writable paths besides the checkpoints: volumes, never the image's filesystem.
HOME, XCOM_DIR, TMP = "/home/trainer", "/airflow/xcom", "/tmp"
WRITABLE = {"checkpoints": CHECKPOINT_MOUNT, "home": HOME, "xcom": XCOM_DIR, "tmp": TMP}

BACKOFF_LIMIT_PER_INDEX = 3
TORCHRUN_MAX_RESTARTS = 3  # survivors re-rendezvous when one node is replaced
RDZV_JOIN_TIMEOUT_S = 1800  # the last node may still be provisioning
TERMINATION_GRACE_S = 90  # spot gives 2 minutes' notice; room to flush a checkpoint
TTL_AFTER_FINISHED_S = 3 * 24 * 3600

# Keys the launcher consumes; the rest of the plan goes to the trainer as its JSON argument.
REQUIRED_KEYS = ("run_name", "dag_id", "run_id", "pool", "nodes", "gpus_per_node", "instance_type")


def job_name(dag_id: str, run_id: str) -> str:
    """Deterministic Job (and Service) name for a DAG run: `job-<dag slug>-<hash>`.

    A DNS-1035 label (valid for both the Job and the Service) of at most MAX_NAME_LENGTH chars;
    the hash of (dag_id, run_id) keeps runs apart when the slug is truncated or the same.
    """
    return podspec.hashed_name(JOB_PREFIX, dag_id, dag_id, run_id, max_length=MAX_NAME_LENGTH,
                               hash_length=HASH_LENGTH)


@dataclass(frozen=True)
class TrainingLaunch:
    """What one training run sends to the cluster, and where it goes."""

    job: V1Job
    service: V1Service
    pool: Pool
    instance: InstanceType

    @property
    def name(self) -> str:
        return self.job.metadata.name

    @property
    def namespace(self) -> str:
        return self.job.metadata.namespace

    def manifests(self) -> list[dict]:
        """Service first: pod 0's DNS record needs it."""
        return [as_manifest(self.service), as_manifest(self.job)]


def _count(plan: Mapping[str, Any], key: str, problems: list[str]) -> int:
    """nodes / gpus_per_node by the same rule as the trigger form and the trainer."""
    try:
        return PARAM_RULES[key].check(plan.get(key))
    except InputError as exc:
        problems.append(str(exc))
        return 0


def _validate(plan: Mapping[str, Any], settings: Settings) -> tuple[Pool, InstanceType, str]:
    problems = [f"{key}: required" for key in REQUIRED_KEYS if key not in plan]
    if problems:
        raise InputError("; ".join(problems))
    if plan["pool"] not in PLAN_POOLS:
        raise InputError(f"pool={plan['pool']!r}: expected one of {', '.join(PLAN_POOLS)}")
    pool = pool_for_plan(plan["pool"], settings)
    nodes = _count(plan, "nodes", problems)
    gpus = _count(plan, "gpus_per_node", problems)
    instance_type = plan["instance_type"]
    instance = None
    if instance_type not in pool.instance_types:
        problems.append(f"instance_type={instance_type!r}: pool {pool.name} allows "
                        f"{', '.join(pool.instance_types)}")
    else:
        instance = next(t for t in pool.instances() if t.name == instance_type)
        if gpus > instance.gpus:
            problems.append(f"gpus_per_node={gpus}: {instance.name} has {instance.gpus} GPUs")
        elif nodes > 1 and gpus and gpus != instance.gpus:
            problems.append(f"gpus_per_node={gpus}: multi-node runs take whole nodes; "
                            f"set it to {instance.gpus} ({instance.name})")
    checkpoint = plan.get("checkpoint_dir")
    if checkpoint is not None and not str(checkpoint).startswith(f"{CHECKPOINT_MOUNT}/"):
        problems.append(f"checkpoint_dir={checkpoint!r}: must be under {CHECKPOINT_MOUNT}/, the shared "
                        "FSx volume every rank mounts")
    image = plan.get("image") or settings.trainer_image
    try:
        check_reference("image", image)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise InputError("; ".join(problems))
    return pool, instance, image


def torchrun_args(name: str, master: str, nodes: int, gpus_per_node: int, plan_json: str) -> list[str]:
    """torchrun's argument list; the plan is one item, after the module, never re-parsed."""
    return [
        f"--nnodes={nodes}",
        f"--nproc-per-node={gpus_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={master}:{MASTER_PORT}",
        f"--rdzv-id={name}",
        f"--rdzv-conf=join_timeout={RDZV_JOIN_TIMEOUT_S},read_timeout=300",
        f"--max-restarts={TORCHRUN_MAX_RESTARTS}",
        "--module",
        "include.training.entrypoint",
        "--plan",
        plan_json,
    ]


def rendezvous_env(master: str, nodes: int, gpus_per_node: int,
                   wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> list[V1EnvVar]:
    """The same rank environment the local launcher gives its processes; workers wait for rank 0's
    store up to the plan's rendezvous_timeout_s."""
    index = V1EnvVarSource(field_ref=V1ObjectFieldSelector(
        field_path=f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"))
    return [
        V1EnvVar(name="MASTER_ADDR", value=master),
        V1EnvVar(name="MASTER_PORT", value=str(MASTER_PORT)),
        V1EnvVar(name="NNODES", value=str(nodes)),
        V1EnvVar(name="NPROC_PER_NODE", value=str(gpus_per_node)),
        V1EnvVar(name="NODE_RANK", value_from=index),
        V1EnvVar(name=WAIT_TIMEOUT_ENV, value=str(int(wait_timeout_s))),
    ]


def nccl_env(instance: InstanceType, efa: int) -> list[V1EnvVar]:
    """NCCL/libfabric settings per aws-samples/awsome-distributed-training's EFA cheatsheet.

    FI_PROVIDER=efa makes a missing EFA device an error instead of a silent fall-back to TCP;
    FI_EFA_USE_HUGE_PAGE=0 avoids fork() failures from data-loader workers; device RDMA exists
    on p4d/p5 only (setting it on g5/g6e fails). Without EFA, NCCL uses the pod's eth0 sockets.
    """
    env = {"NCCL_DEBUG": "INFO", "NCCL_SOCKET_IFNAME": "^lo,docker"}
    if efa:
        env |= {"FI_PROVIDER": "efa", "FI_EFA_USE_HUGE_PAGE": "0", "FI_EFA_FORK_SAFE": "1"}
        if instance.gpudirect_rdma:
            env["FI_EFA_USE_DEVICE_RDMA"] = "1"
    return [V1EnvVar(name=k, value=v) for k, v in env.items()]


def _sizes(instance: InstanceType, gpus: int) -> tuple[str, str, str]:
    """CPU and memory for `gpus` of the node's GPUs, leaving room for kubelet and daemonsets."""
    share = gpus / instance.gpus
    cpu = max(1, int(instance.vcpu * share * 0.9))
    memory = max(1, int(instance.memory_gib * share * 0.85))
    shm = max(1, memory // 4)
    return str(cpu), f"{memory}Gi", f"{shm}Gi"


def rendezvous_service(plan: Mapping[str, Any], settings: Settings | None = None) -> V1Service:
    """The run's headless Service alone (names and labels only): what setup needs, without
    rendering the Job again. Same object as `render(plan).service`."""
    settings = settings or get_settings()
    if plan.get("pool") not in PLAN_POOLS:
        raise InputError(f"pool={plan.get('pool')!r}: expected one of {', '.join(PLAN_POOLS)}")
    name = job_name(str(plan["dag_id"]), str(plan["run_id"]))
    labels = podspec.labels("nemo-trainer", pool_for_plan(plan["pool"], settings), **{JOB_LABEL: name})
    return render_service(name, settings.training_namespace, labels)


def render_service(name: str, namespace: str, labels: Mapping[str, str]) -> V1Service:
    """Headless Service whose only job is DNS records for the Job's pods."""
    return V1Service(
        api_version="v1",
        kind="Service",
        metadata=V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels)),
        spec=V1ServiceSpec(
            cluster_ip="None",
            selector={JOB_LABEL: name},
            # Pods are never "ready" (no probes matter here); rank 0 must resolve while starting.
            publish_not_ready_addresses=True,
            ports=[V1ServicePort(name="rdzv", port=MASTER_PORT, target_port=MASTER_PORT, protocol="TCP")],
        ),
    )


def render(plan: Mapping[str, Any], settings: Settings | None = None) -> TrainingLaunch:
    """The Service and Indexed Job for `plan`; raise InputError (PreflightError among them) if it cannot run."""
    settings = settings or get_settings()
    pool, instance, image = _validate(plan, settings)
    nodes, gpus = plan["nodes"], plan["gpus_per_node"]
    namespace = settings.training_namespace
    name = job_name(str(plan["dag_id"]), str(plan["run_id"]))
    master = master_address(name, name, namespace)
    # The trainer's own validator, here too: a bad plan fails before any GPU node is provisioned, and
    # the Job records every default it runs with. The pod validates again (the image may be newer).
    try:
        checked = trainer_plan(plan)
    except InputError as exc:
        raise InputError(f"trainer plan: {exc}") from None
    try:
        plan_json = json.dumps(checked, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the plan is not JSON-serialisable: {exc}") from None

    efa = instance.efa_interfaces if nodes > 1 else 0  # one node: NVLink only, no fabric needed
    cpu, memory, shm = _sizes(instance, gpus)
    devices = {GPU: str(gpus), **({EFA: str(efa)} if efa else {})}
    labels = podspec.labels("nemo-trainer", pool, **{JOB_LABEL: name})
    shm_volume, shm_mount = podspec.shm(shm)
    annotations = {
        "llmops.io/dag-id": str(plan["dag_id"]),
        "llmops.io/run-id": str(plan["run_id"]),
        "llmops.io/run-name": str(plan["run_name"]),
    }

    container = V1Container(
        name=CONTAINER,
        image=image,
        image_pull_policy=pull_policy(image),  # IfNotPresent for a digest, Always for a tag
        command=["python", "-m", "include.training.rendezvous"],
        args=torchrun_args(name, master, nodes, gpus, plan_json),
        env=[
            *rendezvous_env(master, nodes, gpus, plan.get("rendezvous_timeout_s", DEFAULT_WAIT_TIMEOUT_S)),
            *nccl_env(instance, efa),
            V1EnvVar(name="LLMOPS_PROFILE", value="eks"),
            V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
            V1EnvVar(name="NEMO_HOME", value=NEMO_HOME),
            V1EnvVar(name="HF_TOKEN", value_from=V1EnvVarSource(
                secret_key_ref=V1SecretKeySelector(name=HF_SECRET, key=HF_SECRET_KEY, optional=True))),
        ],
        ports=[V1ContainerPort(name="rdzv", container_port=MASTER_PORT, protocol="TCP")],
        resources=V1ResourceRequirements(
            requests={"cpu": cpu, "memory": memory, **devices},
            limits={"memory": memory, **devices},
        ),
        volume_mounts=[shm_mount, *(V1VolumeMount(name=n, mount_path=p) for n, p in WRITABLE.items())],
        security_context=podspec.restricted_container(),
    )
    affinity = None
    if nodes > 1:  # all ranks in one zone: EFA does not cross AZs, and cross-AZ traffic is billed
        affinity = V1Affinity(pod_affinity=V1PodAffinity(
            required_during_scheduling_ignored_during_execution=[V1PodAffinityTerm(
                label_selector=V1LabelSelector(match_labels={JOB_LABEL: name}),
                topology_key="topology.kubernetes.io/zone",
            )]))
    pod_spec = podspec.pod_spec(
        pool,
        [container],
        [shm_volume, V1Volume(name="checkpoints",
                              persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(claim_name=CHECKPOINT_CLAIM)),
         # HOME (HF_HOME and other caches), the XCom file and /tmp: the image's filesystem is read-only
         *(V1Volume(name=n, empty_dir=V1EmptyDirVolumeSource()) for n in ("home", "xcom", "tmp"))],
        service_account=SERVICE_ACCOUNT,
        instance_type=instance.name,
        # OnRootMismatch: no recursive chown of a large FSx volume on every start
        fs_group_change_policy="OnRootMismatch",
        subdomain=name,
        affinity=affinity,
        termination_grace_period_seconds=TERMINATION_GRACE_S,
    )
    job = V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=V1ObjectMeta(name=name, namespace=namespace, labels=labels, annotations=annotations),
        spec=V1JobSpec(
            completion_mode="Indexed",
            completions=nodes,
            parallelism=nodes,
            backoff_limit_per_index=BACKOFF_LIMIT_PER_INDEX,
            max_failed_indexes=0,  # one rank failing for good ends the run; the others cannot finish
            pod_replacement_policy="Failed",  # never two pods of one rank at once
            pod_failure_policy=V1PodFailurePolicy(rules=[
                V1PodFailurePolicyRule(
                    action="Ignore",
                    on_pod_conditions=[V1PodFailurePolicyOnPodConditionsPattern(
                        type="DisruptionTarget", status="True")],
                ),
                V1PodFailurePolicyRule(
                    action="FailJob",
                    on_exit_codes=V1PodFailurePolicyOnExitCodesRequirement(
                        operator="In", values=[USER_ERROR_EXIT_CODE]),
                ),
            ]),
            ttl_seconds_after_finished=TTL_AFTER_FINISHED_S,
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(
                    labels=labels,
                    annotations={**annotations, "karpenter.sh/do-not-disrupt": "true"},
                ),
                spec=pod_spec,
            ),
        ),
    )
    check_pod_placement(job, pool)
    return TrainingLaunch(job=job, service=render_service(name, namespace, labels), pool=pool,
                          instance=instance)
