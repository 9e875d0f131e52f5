"""Model servers on this machine: one `include.serving.modelserver` process per version (named
`model-<service>`, pid file under the data root), serving the registered weights straight from the
data root; the local Prometheus scrapes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from include.platforms.local import prometheus
from include.serving import processes
from include.serving.servers import Servers
from include.settings import Settings


def local_model_dir(source_uri: str) -> str:
    if source_uri.startswith("file://"):
        return source_uri.removeprefix("file://")
    if "://" in source_uri:
        raise ValueError(f"model source {source_uri!r}: the local profile serves file:// weights only")
    return source_uri


class LocalServers(Servers):
    def __init__(self, settings: Settings, root: Path | None = None):
        self.root = root or processes.run_dir(settings.data_root)

    def deploy(self, service: str, source_uri: str, *, method: str = "full", wait: bool = True,
               update: bool = True) -> str:
        name = processes.model_server_name(service)
        model_dir = local_model_dir(source_uri)
        info = processes.ensure_running(
            name, lambda port: processes.python_argv("include.serving.modelserver", f"--name={name}",
                                                     "--model-dir", model_dir, "--served-model-name", service,
                                                     "--port", str(port)),
            ready_path="/v1/models", root=self.root, wait=wait)
        prometheus.sync_targets(self.root)
        return info.url

    def url(self, service: str) -> str | None:
        info = processes.read(processes.model_server_name(service), self.root)
        return info.url if info else None

    def ensure_observability(self) -> None:
        prometheus.ensure_running(self.root)

    def start_traffic(self, prompts: list[str], rate: float) -> bool:
        from include.platforms.local import envoy
        from include.serving import loadgen

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
        for info in processes.running(processes.MODEL_SERVER_PREFIX, self.root):
            since = processes.started_at(info.name, self.root)
            if since is not None:
                out[info.name.removeprefix(processes.MODEL_SERVER_PREFIX)] = {"since": since, "gpus": 0}
        return out

    def scale_down(self, service: str) -> bool:
        stopped = processes.stop(processes.model_server_name(service), self.root)
        prometheus.sync_targets(self.root)
        return stopped
