"""The eks platform: Amazon EKS with Karpenter GPU pools, JobSet, a Gateway API HTTPRoute, vLLM,
in-cluster or Amazon Managed Prometheus. Every Kubernetes call goes through `kube.Kube`; the
`kubernetes` client is imported only when a seam is first used."""

from __future__ import annotations

from typing import Any

from include.platforms import Platform


class EksPlatform(Platform):
    name = "eks"
    rollout_defaults = {"traffic_rate": 0.0, "ready_timeout_s": 1800, "scale_down_delay_s": 600,
                        "retry_delay_s": 60}

    def kube(self):
        from include.platforms.eks.kube import Kube

        return Kube(self.settings.kubernetes_conn_id)

    def jobs(self):
        from include.platforms.eks.jobs import KubernetesJobs

        return KubernetesJobs(self.settings)

    def capacity(self, schedule: Any = None):
        from include.platforms.eks.capacity import EksCapacity
        from include.scheduling.windows import load

        return EksCapacity(self.settings, schedule or load())

    def servers(self):
        from include.platforms.eks.servers import EksServers

        return EksServers(self.settings)

    def router(self):
        from include.platforms.eks.router import EksRouter

        return EksRouter(self.settings)

    def metrics(self):
        from include.platforms.eks.metrics import eks_client

        return eks_client()


PLATFORM = EksPlatform
