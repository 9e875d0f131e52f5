"""The local platform: everything on this machine. Ranks are processes, model servers too, Envoy
routes by the HTTPRoute file, Debian's Prometheus scrapes them, the data root is file:// or s3://."""

from __future__ import annotations

from typing import Any

from include.platforms import Platform


class LocalPlatform(Platform):
    name = "local"
    rollout_defaults = {"traffic_rate": 20.0, "ready_timeout_s": 120, "scale_down_delay_s": 5, "retry_delay_s": 5}

    def jobs(self):
        from include.platforms.local.jobs import LocalJobs

        return LocalJobs(self.settings)

    def capacity(self, schedule: Any = None):
        from include.platforms.local.capacity import LocalCapacity
        from include.scheduling.windows import load

        return LocalCapacity(self.settings, schedule or load())

    def servers(self):
        from include.platforms.local.servers import LocalServers

        return LocalServers(self.settings)

    def router(self):
        from include.platforms.local.router import LocalRouter

        return LocalRouter(self.settings)

    def metrics(self):
        from include.platforms.local import prometheus
        from include.serving import processes
        from include.serving.metrics import PrometheusClient

        root = processes.run_dir(self.settings.data_root)
        return PrometheusClient(lambda: prometheus.url(root))


PLATFORM = LocalPlatform
