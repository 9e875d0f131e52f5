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
(`run.read_result(output_uri)`), as it does for training.

The judge's API key reaches the pod only as LLMOPS_JUDGE_API_KEY from the Secret `llm-judge`
(key `api-key`, optional: Bedrock needs none); it is never in the job, the args or the manifest.
"""

from __future__ import annotations

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
    V1ResourceRequirements,
    V1SecretKeySelector,
    V1Volume,
    V1VolumeMount,
)

from include.cluster import podspec
from include.cluster.pools import get_pool
from include.cluster.preflight import as_manifest, check_pod_placement
from include.evaluation.job import JobError, job_argument
from include.images import pull_policy
from include.settings import Settings, get_settings

CONTAINER = "evaluator"
COMMAND = ["python", "-m", "include.evaluation.entrypoint"]
SERVICE_ACCOUNT = "llm-evaluator"  # k8s/training/serviceaccount.yaml: read-only S3 via IRSA
RUN_AS_USER = podspec.RUN_AS_USER  # images/evaluator/Dockerfile's non-root user
JUDGE_SECRET = "llm-judge"
JUDGE_SECRET_KEY = "api-key"
SCRATCH = "/scratch"
HOME, XCOM_DIR, TMP = "/home/evaluator", "/airflow/xcom", "/tmp"
# Every path the evaluator writes is a volume (the root filesystem is read-only).
WRITABLE = {"scratch": SCRATCH, "home": HOME, "xcom": XCOM_DIR, "tmp": TMP}
XCOM_PATH = "/airflow/xcom/return.json"
DEFAULT_NAME = "llm-eval"
GPUS = 1
SHM_SIZE = "1Gi"  # memory-backed: counts against the memory limit
SCRATCH_REQUEST = "40Gi"  # staged model weights + caches; the inference nodes have 200Gi root volumes
SCRATCH_LIMIT = "100Gi"
ACTIVE_DEADLINE_S = 6 * 3600  # a hung engine or judge never holds a GPU for more than this
TERMINATION_GRACE_S = 30
STARTUP_TIMEOUT_S = 1800  # Karpenter launching a GPU node plus pulling the vLLM image

_JINJA_MARKERS = ("{{", "{%", "{#")
MAX_NAME_LENGTH = 53  # room for the operator's random suffix
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def pod_name(dag_id: str, run_id: str, role: str = "candidate") -> str:
    """A short DNS-1123 name per (DAG run, role); KubernetesPodOperator adds a random suffix."""
    return podspec.hashed_name(DEFAULT_NAME, role, dag_id, run_id, role, max_length=MAX_NAME_LENGTH, slug_length=20)


def _argument(job: Mapping[str, Any]) -> str:
    """The --job argv item: the job validated and serialised as one JSON string."""
    if not isinstance(job, Mapping):
        raise JobError(f"the job must be an object (got {type(job).__name__})")
    text = job_argument(job)
    # `arguments` is a templated field: Jinja would render these inside the JSON.
    if any(marker in text for marker in _JINJA_MARKERS):
        raise JobError("the job contains a Jinja marker ('{{', '{%' or '{#'); KubernetesPodOperator would "
                       "render it. Rename the path")
    return text


def render_pod(job: Mapping[str, Any], settings: Settings | None = None, *, name: str = DEFAULT_NAME,
               labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None) -> V1Pod:
    """The evaluator pod for `job`; raise JobError or PreflightError if it cannot run."""
    settings = settings or get_settings()
    if not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise JobError(f"pod name {name!r}: expected a DNS-1123 label of at most {MAX_NAME_LENGTH} characters")
    pool = get_pool(settings.inference_pool)
    argument = _argument(job)
    pod_labels = {**podspec.labels("llm-evaluator", pool), **(labels or {})}
    shm_volume, shm_mount = podspec.shm(SHM_SIZE)
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
        resources=V1ResourceRequirements(**podspec.gpu_pod_resources(
            pool, GPUS, **{"ephemeral-storage": SCRATCH_REQUEST})),
        volume_mounts=[shm_mount, *(V1VolumeMount(name=n, mount_path=p) for n, p in WRITABLE.items())],
        security_context=podspec.restricted_container(),
    )
    pod = V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=V1ObjectMeta(name=name, namespace=settings.training_namespace, labels=pod_labels,
                              annotations=pod_annotations),
        spec=podspec.pod_spec(
            pool,
            [container],
            [shm_volume, *(V1Volume(name=n, empty_dir=V1EmptyDirVolumeSource(size_limit=SCRATCH_LIMIT if n == "scratch"
                                                                              else None)) for n in WRITABLE)],
            service_account=SERVICE_ACCOUNT,
            active_deadline_seconds=ACTIVE_DEADLINE_S,
            termination_grace_period_seconds=TERMINATION_GRACE_S,
        ),
    )
    check_pod_placement(pod, pool)
    return pod


def manifest(job: Mapping[str, Any], settings: Settings | None = None, **kwargs: Any) -> dict:
    """The pod as the API's camelCase dict (for validation and review)."""
    return as_manifest(render_pod(job, settings, **kwargs))
