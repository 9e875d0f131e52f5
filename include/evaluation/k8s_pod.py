"""The evaluator pod (eks): one GPU on the inference pool, running include/evaluation/entrypoint.py.

Placement comes from include/cluster/pools.py (`get_pool(settings.inference_pool)`, read from the
NodePools in k8s/): the pool's node selector, exactly its tolerations, its priority class, and one
`nvidia.com/gpu` (request = limit) which every instance type of that pool offers. CPU and memory
requests are sized to fit the SMALLEST allowed instance type, so Karpenter may launch any of them
(spot or on-demand) and never finds the pod unschedulable. The rendered pod is checked by
include/cluster/preflight.py before it is returned.

The command is an argument list: `python -m include.evaluation.entrypoint --job <json>`, the job
(job.py) one argv item. No shell ever parses it, and nothing a user typed (a dataset name, a URI)
is interpolated into a command string.

Namespace: `settings.training_namespace` (llm-training), not the serving namespace, because
- Airflow's Role there (k8s/training/rbac.yaml, airflow-job-launcher) already grants exactly what
  KubernetesPodOperator needs (pods create/get/list/patch/delete, pods/log, events); the
  serving namespace grants Airflow nothing;
- its own ServiceAccount there (llm-evaluator, IRSA; k8s/training/iam/) reads the models and the eval
  set and writes only under the evaluations prefix: not the trainer's identity and write access;
- llm-serving holds the live stable/canary vLLM Deployments; a batch job does not belong beside
  them (quotas, network policies and canary metrics stay about serving). The GPU it runs on is
  still the inference pool's: placement is by node selector, not by namespace.
The namespace enforces Pod Security "restricted", which this pod meets (non-root, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp, read-only root; writes go to volumes).

Results: the pod writes result.json (and scores.jsonl, summary.json) under the job's output URI
and /airflow/xcom/return.json. The Role deliberately does not grant pods/exec, which the XCom
sidecar needs, so `do_xcom_push` defaults to False and the DAG reads the result from storage
(`scoring.read_result(output_uri)`), as it does for training.

The judge's API key reaches the pod only as LLMOPS_JUDGE_API_KEY from the Secret `llm-judge`
(key `api-key`, optional: Bedrock needs none); it is never in the job, the args or the manifest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from kubernetes.client import (
    V1Container,
    V1EmptyDirVolumeSource,
    V1EnvVar,
    V1EnvVarSource,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1ResourceRequirements,
    V1SecretKeySelector,
    V1Toleration,
    V1Volume,
    V1VolumeMount,
)

from include.cluster.hardening import restricted_container, restricted_pod
from include.cluster.images import pull_policy
from include.cluster.pools import GPU, Pool, get_pool
from include.cluster.preflight import as_manifest, check_pod_placement
from include.evaluation.job import JobError, job_argument
from include.settings import Settings, get_settings

CONTAINER = "evaluator"
COMMAND = ["python", "-m", "include.evaluation.entrypoint"]
SERVICE_ACCOUNT = "llm-evaluator"  # k8s/training/serviceaccount.yaml: read-only S3 via IRSA
RUN_AS_USER = 10001  # images/evaluator/Dockerfile's non-root user
JUDGE_SECRET = "llm-judge"
JUDGE_SECRET_KEY = "api-key"
SCRATCH = "/scratch"
HOME, XCOM_DIR, TMP = "/home/evaluator", "/airflow/xcom", "/tmp"  # writable: volumes, like SCRATCH
XCOM_PATH = "/airflow/xcom/return.json"
DEFAULT_NAME = "llm-eval"
GPUS = 1
SHM_SIZE = "1Gi"  # memory-backed: counts against the memory limit
SCRATCH_REQUEST = "40Gi"  # staged model weights + caches; the inference nodes have 200Gi root volumes
SCRATCH_LIMIT = "100Gi"
ACTIVE_DEADLINE_S = 6 * 3600  # a hung engine or judge never holds a GPU for more than this
TERMINATION_GRACE_S = 30
STARTUP_TIMEOUT_S = 1800  # Karpenter launching a GPU node plus pulling the vLLM image
# CPU/memory share of the smallest allowed instance: the rest is kubelet, system and daemonsets.
CPU_SHARE, MEMORY_SHARE = 0.75, 0.75

_JINJA_MARKERS = ("{{", "{%", "{#")
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def pod_name(dag_id: str, run_id: str, role: str = "candidate") -> str:
    """A short DNS-1123 name per (DAG run, role); KubernetesPodOperator adds a random suffix."""
    digest = hashlib.sha256(f"{dag_id}\0{run_id}\0{role}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", role.lower()).strip("-")[:20].strip("-")
    return f"{DEFAULT_NAME}-{slug}-{digest}" if slug else f"{DEFAULT_NAME}-{digest}"


def resources_for(pool: Pool) -> dict[str, dict[str, str]]:
    """One GPU, and CPU/memory that fit every instance type the pool may launch."""
    gpu_types = [t for t in pool.instances() if t.gpus >= GPUS]
    if not gpu_types:
        raise ValueError(f"pool {pool.name}: no instance type with {GPUS} GPU(s)")
    cpu = max(1, int(min(t.vcpu for t in gpu_types) * CPU_SHARE))
    memory = max(1, int(min(t.memory_gib for t in gpu_types) * MEMORY_SHARE))
    return {
        "requests": {"cpu": str(cpu), "memory": f"{memory}Gi", "ephemeral-storage": SCRATCH_REQUEST, GPU: str(GPUS)},
        "limits": {"memory": f"{memory}Gi", GPU: str(GPUS)},
    }


def _argument(job: Mapping[str, Any] | str | Any) -> Any:
    """The --job argv item: a job dict is validated and serialised here; a string (Jinja template
    rendering to the JSON) or an XComArg is passed through and validated by the pod itself."""
    if not isinstance(job, Mapping):
        return job
    text = job_argument(job)
    # `arguments` is a templated field: Jinja would render these inside the JSON.
    if any(marker in text for marker in _JINJA_MARKERS):
        raise JobError("the job contains a Jinja marker ('{{', '{%' or '{#'); KubernetesPodOperator would "
                       "render it. Rename the path or pass the job through XCom")
    return text


def render_pod(job: Mapping[str, Any] | str | Any, settings: Settings | None = None, *, name: str = DEFAULT_NAME,
               labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None) -> V1Pod:
    """The evaluator pod for `job`; raise JobError or PreflightError if it cannot run."""
    settings = settings or get_settings()
    if not _NAME_RE.fullmatch(name) or len(name) > 53:  # room for the operator's random suffix
        raise ValueError(f"pod name {name!r}: expected a DNS-1123 label of at most 53 characters")
    pool = get_pool(settings.inference_pool)
    argument = _argument(job)
    if not isinstance(argument, str):  # an XComArg: a placeholder the operator replaces at run time
        argument = "{}"
    pod_labels = {
        "app.kubernetes.io/name": "llm-evaluator",
        "app.kubernetes.io/part-of": "llmops-finetune",
        "app.kubernetes.io/managed-by": "airflow",
        "llmops.io/workload": pool.workload,
        **(labels or {}),
    }
    pod_annotations = {
        # A batch job: consolidation of an "underutilized" inference node must not kill it midway.
        "karpenter.sh/do-not-disrupt": "true",
        **(annotations or {}),
    }
    container = V1Container(
        name=CONTAINER,
        image=settings.evaluator_image,
        image_pull_policy=pull_policy(settings.evaluator_image),  # IfNotPresent for a digest, Always for a tag
        command=list(COMMAND),
        args=["--job", argument],
        env=[
            V1EnvVar(name="LLMOPS_PROFILE", value="eks"),
            V1EnvVar(name="LLMOPS_EVAL_WORKDIR", value=SCRATCH),
            V1EnvVar(name="LLMOPS_XCOM_PATH", value=XCOM_PATH),
            V1EnvVar(name="RAGAS_DO_NOT_TRACK", value="true"),
            V1EnvVar(name="HF_HUB_OFFLINE", value="1"),
            V1EnvVar(name="TRANSFORMERS_OFFLINE", value="1"),
            V1EnvVar(name="HF_HOME", value=f"{SCRATCH}/hf"),
            V1EnvVar(name="VLLM_CACHE_ROOT", value=f"{SCRATCH}/vllm"),
            V1EnvVar(name="VLLM_NO_USAGE_STATS", value="1"),
            V1EnvVar(name="DO_NOT_TRACK", value="1"),
            V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
            V1EnvVar(name="LLMOPS_JUDGE_API_KEY", value_from=V1EnvVarSource(
                secret_key_ref=V1SecretKeySelector(name=JUDGE_SECRET, key=JUDGE_SECRET_KEY, optional=True))),
        ],
        resources=V1ResourceRequirements(**resources_for(pool)),
        volume_mounts=[
            V1VolumeMount(name="shm", mount_path="/dev/shm"),
            V1VolumeMount(name="scratch", mount_path=SCRATCH),
            V1VolumeMount(name="home", mount_path=HOME),
            V1VolumeMount(name="xcom", mount_path=XCOM_DIR),
            V1VolumeMount(name="tmp", mount_path=TMP),
        ],
        security_context=restricted_container(),
    )
    pod = V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=V1ObjectMeta(name=name, namespace=settings.training_namespace, labels=pod_labels,
                              annotations=pod_annotations),
        spec=V1PodSpec(
            restart_policy="Never",  # the Airflow task's retries re-run it, on a fresh pod
            service_account_name=SERVICE_ACCOUNT,
            automount_service_account_token=False,  # never calls the Kubernetes API
            enable_service_links=False,
            priority_class_name=pool.priority_class,
            node_selector=dict(pool.node_selector),
            tolerations=[V1Toleration(**t) for t in pool.tolerations()],
            active_deadline_seconds=ACTIVE_DEADLINE_S,
            termination_grace_period_seconds=TERMINATION_GRACE_S,
            security_context=restricted_pod(RUN_AS_USER),
            containers=[container],
            volumes=[
                V1Volume(name="shm", empty_dir=V1EmptyDirVolumeSource(medium="Memory", size_limit=SHM_SIZE)),
                V1Volume(name="scratch", empty_dir=V1EmptyDirVolumeSource(size_limit=SCRATCH_LIMIT)),
                *(V1Volume(name=n, empty_dir=V1EmptyDirVolumeSource()) for n in ("home", "xcom", "tmp")),
            ],
        ),
    )
    check_pod_placement(pod, pool)
    return pod


def kubernetes_pod_operator_kwargs(job: Mapping[str, Any] | str | Any, settings: Settings | None = None, *,
                                   name: str = DEFAULT_NAME, xcom_push: bool = False, deferrable: bool = True,
                                   labels: Mapping[str, str] | None = None,
                                   annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Arguments for `KubernetesPodOperator(task_id=..., **kwargs)` that submit exactly `render_pod`'s pod.

    job: the job dict (built at run time: `scoring.build_job`), or, in a DAG file where the job is
    only known at run time, a Jinja string / XComArg that resolves to `job.job_argument(job)`.
    The operator builds its pod from `full_pod_spec` with its own non-empty parameters on top;
    name, namespace, image, command, args and the container name are given explicitly so its
    defaults (container "base", a task-id name) never replace ours.
    """
    settings = settings or get_settings()
    pod = render_pod(job, settings, name=name, labels=labels, annotations=annotations)
    return {
        "kubernetes_conn_id": settings.kubernetes_conn_id,
        "namespace": pod.metadata.namespace,
        "name": pod.metadata.name,
        "random_name_suffix": True,  # each try its own pod; the operator re-attaches by labels
        "image": settings.evaluator_image,
        "cmds": list(COMMAND),
        "arguments": ["--job", _argument(job)],
        "full_pod_spec": pod,
        "base_container_name": CONTAINER,
        "do_xcom_push": xcom_push,  # needs pods/exec for the sidecar, which the Role does not grant
        "get_logs": True,
        "log_events_on_failure": True,
        "startup_timeout_seconds": STARTUP_TIMEOUT_S,
        "reattach_on_restart": True,
        "on_finish_action": "delete_succeeded_pod",  # keep failed pods for their logs
        "deferrable": deferrable,
    }


def manifest(job: Mapping[str, Any] | str | Any, settings: Settings | None = None, **kwargs: Any) -> dict:
    """The pod as the API's camelCase dict (for validation and review)."""
    return as_manifest(render_pod(job, settings, **kwargs))
