"""Render the NeMo launch for one training plan: a JobSet of one Indexed Job, plus its NetworkPolicy.

Why this shape (the decision is in include/training/restarts.py):
- JobSet (`jobset.x-k8s.io/v1alpha2`), one replicatedJob `node` of one Indexed Job with
  completions = parallelism = nodes: pod i is node rank i, from its completion index. The child
  Job has backoffLimitPerIndex 0 (no rank retried alone) and a podFailurePolicy, so any failed or
  lost rank fails it at once (one that only lost its peer stops, leaving the verdict to the cause),
  and the JobSet's failurePolicy (maxRestarts = the plan's max_restarts, BlockingRecreate)
  recreates the whole group from the last complete checkpoint: no rank waits on a peer that has
  finished, losing pod 0 costs one restart. A spot reclaim restarts without spending the budget,
  a bad plan (exit code 2) fails the JobSet at once. torchrun's own --max-restarts is 0.
- DNS: with `network.enableDNSHostnames` the JobSet controller creates the headless Service
  `network.subdomain` (= the JobSet's name; not-ready addresses published; deleted with the JobSet)
  and names pods `<jobset>-<replicatedJob>-<jobIndex>-<podIndex>`, so rank 0 is
  `MASTER_ADDR=<jobset>-node-0-0.<jobset>.<ns>.svc` before pod 0 exists (never `hostname -i`), and
  NODE_RANK is the pod's completion-index annotation. Node 0 hosts the c10d store; torch numbers
  the other nodes by sorted FQDN (include/training/rendezvous.py, `group_rank_order`).
- torchrun's arguments and the plan (one JSON argument) are an argv list: no shell ever runs.

Placement comes from include/cluster/pools.py (the NodePools in k8s/); the child Job the controller
will create is checked by include/cluster/preflight.py before anything is returned. Names derive
from (dag_id, run_id) only, so a task retry renders the same JobSet and re-attaches to it. Pods carry
the run label `llmops.io/job=<jobset>`, which the run's NetworkPolicy (cluster/network.py) selects.
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
    V1JobSpec,
    V1JobTemplateSpec,
    V1LabelSelector,
    V1NetworkPolicy,
    V1ObjectFieldSelector,
    V1ObjectMeta,
    V1PersistentVolumeClaimVolumeSource,
    V1PodAffinity,
    V1PodAffinityTerm,
    V1PodTemplateSpec,
    V1ResourceRequirements,
    V1SecretKeySelector,
    V1Volume,
    V1VolumeMount,
)

from include.cluster import podspec
from include.cluster.network import RUN_LABEL, run_network_policy
from include.cluster.pools import EFA, GPU, InstanceType, Pool, pool_for_plan
from include.cluster.preflight import as_manifest, check_pod_placement
from include.errors import InputError
from include.images import pull_policy
from include.settings import Settings, get_settings
from include.training.plan import trainer_keys
from include.training.rendezvous import DEFAULT_WAIT_TIMEOUT_S, WAIT_TIMEOUT_ENV, master_address
from include.training.restarts import (
    RestartPolicy,
    child_job_pod_failure_policy,
    jobset_failure_policy,
)

# JobSets are named `train-<dag slug>-<hash>`; the headless Service (the pods' subdomain) and the
# run's NetworkPolicy carry the same name.
JOB_PREFIX = "train"
REPLICATED_JOB = "node"  # the one replicatedJob: one pod per node
# The JobSet webhook refuses a name whose longest pod name `<jobset>-node-0-<podIndex>-xxxxx`
# exceeds 63 characters: 46 leaves room for 3-digit pod indexes (MAX_NODES is 64).
MAX_NAME_LENGTH = 46
HASH_LENGTH = 10

JOBSET_GROUP, JOBSET_VERSION, JOBSET_PLURAL = "jobset.x-k8s.io", "v1alpha2", "jobsets"
JOBSET_API_VERSION = f"{JOBSET_GROUP}/{JOBSET_VERSION}"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # set by the JobSet controller on its Jobs and pods
CONTAINER = "trainer"
MASTER_PORT = 29500
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX_LABEL = COMPLETION_INDEX_ANNOTATION  # the Job controller sets both on each pod (1.28+)
JOB_LABEL = RUN_LABEL  # the run label `llmops.io/job=<jobset>`: every pod of the run, every restart attempt
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

TORCHRUN_MAX_RESTARTS = 0  # never restart one node's workers in place: the JobSet restarts the group
RDZV_JOIN_TIMEOUT_S = 1800  # the last node may still be provisioning
TERMINATION_GRACE_S = 90  # spot gives 2 minutes' notice; room to flush a checkpoint
TTL_AFTER_FINISHED_S = 3 * 24 * 3600


def jobset_name(dag_id: str, run_id: str) -> str:
    """Deterministic JobSet name for a DAG run: `train-<dag slug>-<hash>`.

    A DNS-1035 label (valid for the JobSet, its Service and NetworkPolicy) of at most
    MAX_NAME_LENGTH chars; the hash of (dag_id, run_id) keeps runs apart when the slug is
    truncated or the same.
    """
    return podspec.hashed_name(JOB_PREFIX, dag_id, dag_id, run_id, max_length=MAX_NAME_LENGTH,
                               hash_length=HASH_LENGTH)


def pod_host_prefix(name: str, job_index: int = 0) -> str:
    """Child Job `job_index`'s name, `<jobset>-<replicatedJob>-<index>`; its pod i has the hostname `<prefix>-i`."""
    return f"{name}-{REPLICATED_JOB}-{job_index}"


@dataclass(frozen=True)
class TrainingLaunch:
    """What one run sends to the cluster: the JobSet manifest, its child Job template (client models)
    and the run's NetworkPolicy (created before the JobSet); and where it goes."""

    jobset: dict
    job_template: V1JobTemplateSpec
    network_policy: V1NetworkPolicy
    restarts: RestartPolicy
    pool: Pool
    instance: InstanceType

    @property
    def name(self) -> str:
        return self.jobset["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.jobset["metadata"]["namespace"]

    @property
    def nodes(self) -> int:
        return self.job_template.spec.parallelism

    @property
    def master_addr(self) -> str:
        return master_address(pod_host_prefix(self.name), self.name, self.namespace)

    def child_job(self) -> dict:
        """The batch/v1 Job the JobSet controller creates from the template (what runs the pods):
        for placement preflight, admission and checkov, which know Jobs but not JobSets."""
        template = as_manifest(self.job_template)
        name = pod_host_prefix(self.name)  # the child Job's name
        labels = {**template["metadata"].get("labels", {}), JOBSET_NAME_LABEL: self.name}
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels,
                             "annotations": template["metadata"].get("annotations", {})},
                "spec": template["spec"]}

    def manifests(self) -> list[dict]:
        """NetworkPolicy first: the run's pods are never reachable by anyone else, even briefly."""
        return [as_manifest(self.network_policy), self.jobset]


def _placement(plan: Mapping[str, Any], settings: Settings) -> tuple[Pool, InstanceType]:
    """The plan's pool and instance type. The plan is `build_plan`'s, from params `validate_params`
    checked and placed (the instance holds nodes x gpus_per_node): only the checkpoint directory, which
    comes from the settings, is checked against the volume every rank mounts."""
    pool = pool_for_plan(plan["pool"], settings)
    instances = {t.name: t for t in pool.instances()}
    if plan["instance_type"] not in instances:  # a lookup, for a plan build_plan did not make
        raise InputError(f"instance_type={plan['instance_type']!r}: pool {pool.name} has {', '.join(instances)}")
    checkpoint = plan["checkpoint_dir"]
    if not str(checkpoint).startswith(f"{CHECKPOINT_MOUNT}/"):
        raise InputError(f"checkpoint_dir={checkpoint!r}: must be under {CHECKPOINT_MOUNT}/, the shared FSx "
                         "volume every rank mounts (LLMOPS_CHECKPOINT_ROOT)")
    return pool, instances[plan["instance_type"]]


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


def run_labels(plan: Mapping[str, Any], name: str, settings: Settings) -> dict[str, str]:
    return podspec.labels("nemo-trainer", pool_for_plan(plan["pool"], settings), **{JOB_LABEL: name})


def rendezvous_network_policy(plan: Mapping[str, Any], settings: Settings | None = None) -> V1NetworkPolicy:
    """The run's NetworkPolicy alone (names and labels only): what setup creates before the launch,
    without rendering the JobSet again. Same object as `render(plan).network_policy`."""
    settings = settings or get_settings()
    name = jobset_name(str(plan["dag_id"]), str(plan["run_id"]))
    return run_network_policy(name, settings.training_namespace, run_labels(plan, name, settings))


def render(plan: Mapping[str, Any], settings: Settings | None = None) -> TrainingLaunch:
    """The JobSet and NetworkPolicy for `plan` (`build_plan`'s: valid already, so not checked again);
    PreflightError if the pools cannot run it.

    The pod's trainer validates its part of the plan (the image may be newer than Airflow).
    """
    settings = settings or get_settings()
    pool, instance = _placement(plan, settings)
    image = plan.get("image") or settings.trainer_image
    nodes, gpus = plan["nodes"], plan["gpus_per_node"]
    namespace = settings.training_namespace
    name = jobset_name(str(plan["dag_id"]), str(plan["run_id"]))
    master = master_address(pod_host_prefix(name), name, namespace)
    restarts = RestartPolicy.from_plan(plan)
    plan_json = json.dumps(trainer_keys(plan), sort_keys=True, separators=(",", ":"), allow_nan=False)

    efa = instance.efa_interfaces if nodes > 1 else 0  # one node: NVLink only, no fabric needed
    cpu, memory, shm = _sizes(instance, gpus)
    devices = {GPU: str(gpus), **({EFA: str(efa)} if efa else {})}
    labels = run_labels(plan, name, settings)
    shm_volume, shm_mount = podspec.shm(shm)
    annotations = {
        "llmops.io/dag-id": str(plan["dag_id"]),
        "llmops.io/run-id": str(plan["run_id"]),
        "llmops.io/run-name": str(plan["run_name"]),  # and the restart budget (also in the plan, in MLflow):
        "llmops.io/max-restarts": str(restarts.max_restarts),
        "llmops.io/max-wall-s": str(int(restarts.max_wall_s)),
    }

    container = V1Container(
        name=CONTAINER,
        image=image,
        image_pull_policy=pull_policy(image),  # IfNotPresent for a digest, Always for a tag
        command=["python", "-m", "include.training.rendezvous"],
        args=torchrun_args(name, master, nodes, gpus, plan_json),
        env=[
            *rendezvous_env(master, nodes, gpus, restarts.rendezvous_timeout_s),
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
        subdomain=name,  # the JobSet controller sets it too (= network.subdomain)
        affinity=affinity,
        termination_grace_period_seconds=TERMINATION_GRACE_S,
    )
    job_template = V1JobTemplateSpec(
        metadata=V1ObjectMeta(labels=labels, annotations=annotations),
        spec=V1JobSpec(
            completion_mode="Indexed",
            completions=nodes,
            parallelism=nodes,
            backoff_limit_per_index=0,  # never retry a rank alone; the first cause fails the Job (restarts.py)
            pod_replacement_policy="Failed",  # never two pods of one rank at once
            pod_failure_policy=child_job_pod_failure_policy(),
            template=V1PodTemplateSpec(
                metadata=V1ObjectMeta(
                    labels=labels,
                    annotations={**annotations, "karpenter.sh/do-not-disrupt": "true"},
                ),
                spec=pod_spec,
            ),
        ),
    )
    jobset = {
        "apiVersion": JOBSET_API_VERSION,
        "kind": "JobSet",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), "annotations": annotations},
        "spec": {
            # The controller creates the headless Service `name` (publishing not-ready pods, so rank 0
            # resolves while it starts) and names pods <name>-node-0-<i>.<name>.
            "network": {"enableDNSHostnames": True, "subdomain": name, "publishNotReadyAddresses": True},
            "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1, "template": as_manifest(job_template)}],
            "successPolicy": {"operator": "All", "targetReplicatedJobs": [REPLICATED_JOB]},
            "failurePolicy": jobset_failure_policy(restarts),
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
        },
    }
    launch = TrainingLaunch(jobset=jobset, job_template=job_template,
                            network_policy=run_network_policy(name, namespace, labels), restarts=restarts,
                            pool=pool, instance=instance)
    check_pod_placement(launch.child_job(), pool)
    return launch
