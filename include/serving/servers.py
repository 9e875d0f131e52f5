"""Model servers per version: deploy, address, scale down; local processes and eks Deployments side by side.

local: one `include.serving.modelserver` process per version (named `model-<service>`, pid file
under the data root), serving the registered weights directly from the data root.
eks: the Deployment, Service and PDB rendered by `k8s_objects` (vLLM on gpu-inference-pool), created
through the Kubernetes API, an existing Deployment scaled to its desired replicas; the in-cluster
Service address. `get_servers` picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from include.serving import processes
from include.settings import Settings, get_settings

PREFIX = "model-"


def process_name(service: str) -> str:
    return PREFIX + service


def backend_ports(root: Path | None = None) -> dict[str, int]:
    """Service name -> port of every running local model server."""
    return {i.name.removeprefix(PREFIX): i.port for i in processes.running(PREFIX, root)}


def local_model_dir(source_uri: str) -> str:
    if source_uri.startswith("file://"):
        return source_uri.removeprefix("file://")
    if "://" in source_uri:
        raise ValueError(f"model source {source_uri!r}: the local profile serves file:// weights only")
    return source_uri


def _sync_scrape_targets(root: Path) -> None:
    from include.serving import prometheus_local

    prometheus_local.sync_targets(root)


class Servers(ABC):
    # The rollout form's per-profile defaults (dags/rollout_model.py): how long a model takes to load,
    # how long a person has to answer, how long the loser keeps serving, whether to generate load.
    ROLLOUT_DEFAULTS: dict[str, float | int] = {}

    @abstractmethod
    def deploy(self, service: str, source_uri: str, *, method: str = "full", wait: bool = True) -> str:
        """Ensure the version's server exists and serves (idempotent; a stopped or scaled-to-0 one
        starts again); return its base URL. With `wait`, a local server is also ready when this
        returns; without it (and always on eks) the caller waits."""

    @abstractmethod
    def url(self, service: str) -> str | None:
        """Base URL of the version's server (direct, outside the route), None when not deployed."""

    @abstractmethod
    def scale_down(self, service: str) -> bool: ...

    # What a running server is, for the cleanup report: "Process" (local) or "Deployment" (eks).
    workload_kind = "Process"
    namespace = ""

    @abstractmethod
    def deployed(self) -> dict[str, dict[str, Any]]:
        """Every running server of this model: service -> {"since": epoch seconds, "gpus": int}."""

    def ensure_observability(self) -> None:  # noqa: B027 - eks: Prometheus is the cluster's
        """Make sure something scrapes the servers (local: start Prometheus)."""

    def start_traffic(self, prompts: list[str], rate: float) -> bool:
        """Replay prompts through the gateway during analysis (local); eks serves real traffic."""
        return False

    def stop_traffic(self) -> bool:
        return False


class LocalServers(Servers):
    ROLLOUT_DEFAULTS = {"traffic_rate": 20.0, "ready_timeout_s": 120,
                        "scale_down_delay_s": 5, "retry_delay_s": 5}

    def __init__(self, settings: Settings, root: Path | None = None):
        self.root = root or processes.run_dir(settings.data_root)

    def deploy(self, service: str, source_uri: str, *, method: str = "full", wait: bool = True) -> str:
        name = process_name(service)
        model_dir = local_model_dir(source_uri)
        info = processes.ensure_running(
            name, lambda port: processes.python_argv("include.serving.modelserver", f"--name={name}",
                                                     "--model-dir", model_dir, "--served-model-name", service,
                                                     "--port", str(port)),
            ready_path="/v1/models", root=self.root, wait=wait)
        _sync_scrape_targets(self.root)
        return info.url

    def url(self, service: str) -> str | None:
        info = processes.read(process_name(service), self.root)
        return info.url if info else None

    def ensure_observability(self) -> None:
        from include.serving import prometheus_local

        prometheus_local.ensure_running(self.root)

    def start_traffic(self, prompts: list[str], rate: float) -> bool:
        from include.serving import envoy, loadgen

        gateway = processes.read(envoy.NAME, self.root)
        if gateway is None or rate <= 0:
            return False
        loadgen.start(gateway.url, rate, prompts, root=self.root)
        return True

    def stop_traffic(self) -> bool:
        from include.serving import loadgen

        return loadgen.stop_process(self.root)

    def deployed(self) -> dict[str, dict[str, Any]]:
        out = {}
        for info in processes.running(PREFIX, self.root):
            since = processes.started_at(info.name, self.root)
            if since is not None:
                out[info.name.removeprefix(PREFIX)] = {"since": since, "gpus": 0}
        return out

    def scale_down(self, service: str) -> bool:
        stopped = processes.stop(process_name(service), self.root)
        _sync_scrape_targets(self.root)
        return stopped


class EksServers(Servers):
    ROLLOUT_DEFAULTS = {"traffic_rate": 0.0, "ready_timeout_s": 1800,
                        "scale_down_delay_s": 600, "retry_delay_s": 60}

    workload_kind = "Deployment"

    def __init__(self, settings: Settings, api_client: Any = None):
        self.settings = settings
        self.namespace = settings.serving_namespace
        self._client = api_client

    @property
    def client(self) -> Any:
        if self._client is None:
            from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

            self._client = KubernetesHook(conn_id=self.settings.kubernetes_conn_id).api_client
        return self._client

    def deploy(self, service: str, source_uri: str, *, method: str = "full", wait: bool = True) -> str:
        """Create the version's Deployment, Service and PDB, or, when the Deployment exists, set its
        replicas to the desired count: a version scaled to 0 when another was promoted serves again
        (a rollback to the previous champion). A retried task never makes a second object."""
        from kubernetes.client import AppsV1Api, CoreV1Api, PolicyV1Api

        from include.serving import k8s_objects

        ns = self.settings.serving_namespace
        version = service.rsplit("-v", 1)[1]
        objs = k8s_objects.version_objects(self.settings.registered_model_name, version, source_uri,
                                           settings=self.settings, method=method)
        apps = AppsV1Api(self.client)
        if not _create(apps.create_namespaced_deployment, ns, objs["deployment"]):
            replicas = objs["deployment"]["spec"]["replicas"]  # the Role: patch on deployments/scale
            apps.patch_namespaced_deployment_scale(service, ns, {"spec": {"replicas": replicas}})
        _create(CoreV1Api(self.client).create_namespaced_service, ns, objs["service"])
        _create(PolicyV1Api(self.client).create_namespaced_pod_disruption_budget, ns, objs["pdb"])
        return self.url(service)

    def url(self, service: str) -> str | None:
        return f"http://{service}.{self.settings.serving_namespace}.svc:{k8s_objects_port()}"

    def deployed(self) -> dict[str, dict[str, Any]]:
        """The model's vLLM Deployments with replicas > 0 (one scaled to 0 holds no GPU)."""
        from kubernetes.client import AppsV1Api

        from include.serving.route import route_name

        selector = f"app.kubernetes.io/name=vllm,llmops.io/model={route_name(self.settings.registered_model_name)}"
        out = {}
        for dep in AppsV1Api(self.client).list_namespaced_deployment(self.namespace, label_selector=selector).items:
            replicas = int(dep.spec.replicas or 0)
            created = dep.metadata.creation_timestamp
            if replicas <= 0 or created is None:
                continue
            gpus = sum(int(((c.resources.limits if c.resources else None) or {}).get("nvidia.com/gpu", 0))
                       for c in dep.spec.template.spec.containers)
            service = (dep.metadata.labels or {}).get("llmops.io/service", dep.metadata.name)
            since = created.timestamp() if hasattr(created, "timestamp") else _epoch(str(created))
            out[service] = {"since": since, "gpus": replicas * gpus}
        return out

    def scale_down(self, service: str) -> bool:
        from kubernetes.client import AppsV1Api
        from kubernetes.client.exceptions import ApiException

        try:
            AppsV1Api(self.client).patch_namespaced_deployment_scale(
                service, self.settings.serving_namespace, {"spec": {"replicas": 0}})
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


def _create(create: Any, namespace: str, obj: dict) -> bool:
    """Create `obj`; False when it already exists (409)."""
    from kubernetes.client.exceptions import ApiException

    try:
        create(namespace, obj)
    except ApiException as exc:
        if exc.status != 409:
            raise
        return False
    return True


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def k8s_objects_port() -> int:
    from include.serving.route import SERVICE_PORT

    return SERVICE_PORT


def servers_class(settings: Settings | None = None) -> type[Servers]:
    """The one place the profile picks how model servers run."""
    return LocalServers if (settings or get_settings()).is_local else EksServers


def get_servers(settings: Settings | None = None) -> Servers:
    settings = settings or get_settings()
    return servers_class(settings)(settings)


def rollout_defaults(settings: Settings | None = None) -> dict[str, float | int]:
    """The rollout form's defaults for this profile's servers; builds nothing (safe at DAG parse time)."""
    return dict(servers_class(settings).ROLLOUT_DEFAULTS)
