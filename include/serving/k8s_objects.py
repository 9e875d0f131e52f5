"""The eks serving objects the rollout creates or edits, rendered here (one source of truth).

Per model version: a vLLM Deployment on gpu-inference-pool (placement and restricted security from
the shared cluster helpers), a Service and a PodDisruptionBudget, all named by `served_name` (the
version is in the name, in `--served-model-name`, and so in the metrics' `model_name` label).
Weights stream from S3: a full fine-tune with vLLM's Run:ai streamer (`--load-format
runai_streamer` reads safetensors straight from s3://); a LoRA adapter is synced by an init
container next to the base model, which vLLM serves with `--enable-lora`.

Cluster-level objects in k8s/serving/ (Gateway, PodMonitor, the Airflow Role) are checked against
these by tests: the Role's rules must equal `API_CALLS`, what the eks router and servers call.
"""

from __future__ import annotations

from typing import Any

from include.cluster.podspec import RUN_AS_USER, gpu_pod_resources, restricted_container, restricted_pod
from include.cluster.pools import get_pool
from include.images import pull_policy
from include.serving.route import SERVICE_PORT, route_name, served_name
from include.settings import Settings, get_settings

# The server image is `settings.serving_image` (images/vllm: upstream vLLM plus the non-root user
# RUN_AS_USER, which the pods run as). The adapter fetcher is `settings.aws_cli_image` (upstream's);
# it runs as that uid too, with HOME on /tmp, writing only the tmp and adapters emptyDirs.
SERVICE_ACCOUNT = "vllm"  # IRSA / Pod Identity: read-only on the model bucket
STARTUP_BUDGET_S = 1200  # pulling a multi-GB image and streaming weights: 20 minutes before giving up
MAX_MODEL_LEN = 4096
GPUS = 1
# What EksRouter / EksServers call, as RBAC (apiGroup, resource, verbs): the Role grants exactly this.
API_CALLS = {
    ("gateway.networking.k8s.io", "httproutes"): ("create", "get", "update"),
    ("apps", "deployments"): ("create", "list", "patch"),
    ("apps", "deployments/scale"): ("patch",),
    ("", "services"): ("create",),
    ("policy", "poddisruptionbudgets"): ("create", "patch"),
}


def labels(model: str, version: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/part-of": "llmops-finetune",
            "llmops.io/model": route_name(model), "llmops.io/version": str(version),
            "llmops.io/service": served_name(model, version)}


def _selector(model: str, version: str) -> dict[str, str]:
    return {"llmops.io/service": served_name(model, version)}


def _args(name: str, source_uri: str, method: str, base_model_uri: str | None) -> list[str]:
    common = ["--host", "0.0.0.0", "--port", str(SERVICE_PORT), "--max-model-len", str(MAX_MODEL_LEN),  # noqa: S104
              "--disable-log-requests"]
    if method == "lora":
        if not base_model_uri:
            raise ValueError("method=lora: the base model's URI is required to serve the adapter")
        return ["--model", base_model_uri, "--load-format", "runai_streamer", "--served-model-name",
                f"{name}-base", "--enable-lora", "--lora-modules", f"{name}=/adapters/{name}", *common]
    return ["--model", source_uri, "--load-format", "runai_streamer", "--served-model-name", name, *common]


def version_objects(model: str, version: str | int, source_uri: str, *, settings: Settings | None = None,
                    method: str = "full", base_model_uri: str | None = None, replicas: int = 1) -> dict[str, dict]:
    """Deployment, Service and PodDisruptionBudget for one version, as API dicts."""
    settings = settings or get_settings()
    if method not in ("full", "lora"):
        raise ValueError(f"method={method!r}: expected full or lora")
    if not source_uri.startswith("s3://"):
        raise ValueError(f"source {source_uri!r}: eks serves weights from s3://")
    version = str(version)
    name, ns = served_name(model, version), settings.serving_namespace
    pool = get_pool(settings.inference_pool)
    meta = {"name": name, "namespace": ns, "labels": labels(model, version)}
    probe = {"port": "http"}
    container: dict[str, Any] = {
        "name": "vllm",
        "image": settings.serving_image,
        "imagePullPolicy": pull_policy(settings.serving_image),  # IfNotPresent for a digest, Always for a tag
        "args": _args(name, source_uri, method, base_model_uri),
        "ports": [{"name": "http", "containerPort": SERVICE_PORT}],
        # Every cache (HF, vLLM's, torch compile, Triton, FlashInfer) goes under HOME; temporary files
        # and vLLM's IPC sockets under /tmp. Both are emptyDirs: the image's filesystem is read-only.
        "env": [{"name": "HOME", "value": "/cache"}, {"name": "HF_HOME", "value": "/cache/hf"},
                {"name": "VLLM_CACHE_ROOT", "value": "/cache/vllm"}, {"name": "TMPDIR", "value": "/tmp"},
                {"name": "VLLM_NO_USAGE_STATS", "value": "1"}, {"name": "DO_NOT_TRACK", "value": "1"},
                {"name": "AWS_REGION", "value": "us-east-1"}],
        "resources": gpu_pod_resources(pool, GPUS),
        "startupProbe": {"httpGet": {"path": "/health", **probe}, "periodSeconds": 10,
                         "failureThreshold": STARTUP_BUDGET_S // 10},
        "readinessProbe": {"httpGet": {"path": "/v1/models", **probe}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/health", **probe}, "periodSeconds": 15, "failureThreshold": 4},
        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}, {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "shm", "mountPath": "/dev/shm"}],
        "securityContext": _api(restricted_container()),
    }
    volumes = [{"name": "cache", "emptyDir": {"sizeLimit": "50Gi"}}, {"name": "tmp", "emptyDir": {"sizeLimit": "5Gi"}},
               {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
    init = []
    if method == "lora":
        container["volumeMounts"].append({"name": "adapters", "mountPath": "/adapters", "readOnly": True})
        volumes.append({"name": "adapters", "emptyDir": {"sizeLimit": "5Gi"}})
        init.append({"name": "fetch-adapter", "image": settings.aws_cli_image,
                     "imagePullPolicy": pull_policy(settings.aws_cli_image),
                     "args": ["s3", "sync", "--only-show-errors", source_uri, f"/adapters/{name}"],
                     "env": [{"name": "HOME", "value": "/tmp"}],
                     "volumeMounts": [{"name": "adapters", "mountPath": "/adapters"},
                                      {"name": "tmp", "mountPath": "/tmp"}],
                     "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}},
                     "securityContext": _api(restricted_container())})
    pod_spec: dict[str, Any] = {
        "serviceAccountName": SERVICE_ACCOUNT,
        # No Kubernetes API token: vLLM never calls the API server (IRSA and Pod Identity project their
        # own AWS token).
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "nodeSelector": dict(pool.node_selector),
        "tolerations": pool.tolerations(),
        "securityContext": _api(restricted_pod(RUN_AS_USER)),
        "terminationGracePeriodSeconds": 60,
        "containers": [container],
        "volumes": volumes,
    }
    if pool.priority_class:
        pod_spec["priorityClassName"] = pool.priority_class
    if init:
        pod_spec["initContainers"] = init
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {"replicas": replicas, "selector": {"matchLabels": _selector(model, version)},
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": {"metadata": {"labels": labels(model, version)}, "spec": pod_spec}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
               "spec": {"selector": _selector(model, version),
                        "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}]}}
    # Voluntary evictions (Karpenter's consolidation and expiry, a drain) take one server at a time.
    # Not minAvailable: 1, which at replicas 1 refuses every eviction: the GPU node could then never be
    # consolidated, expired or drained. The price at replicas 1: from the eviction until the new pod
    # is Ready (the model loads again) the version has no server; run 2 replicas to avoid that gap.
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta,
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(model, version)}}}
    return {"deployment": deployment, "service": service, "pdb": pdb}


def _api(model: Any) -> dict:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(model)


def role_rules() -> list[dict[str, Any]]:
    return [{"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
            for (group, resource), verbs in sorted(API_CALLS.items())]
