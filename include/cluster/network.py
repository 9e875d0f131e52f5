"""The per-run NetworkPolicy: a training run's pods accept traffic only from each other.

PyTorch's TCPStore (the c10d rendezvous on MASTER_PORT), the worker process group's own store
(a port torchrun picks) and NCCL/Gloo sockets (ephemeral ports) have no authentication, so the only
safe peer set is "the pods of this run". A NetworkPolicy cannot say "pods with MY label value", so
each run gets its own, created beside the headless Service and selecting exactly what the Service
selects (the Job's pods). k8s/training/networkpolicies.yaml denies all other ingress in the
namespace and limits egress; the ValidatingAdmissionPolicy there only admits policies of this shape.
"""

from __future__ import annotations

from kubernetes.client import (
    V1LabelSelector,
    V1NetworkPolicy,
    V1NetworkPolicyIngressRule,
    V1NetworkPolicyPeer,
    V1NetworkPolicySpec,
    V1ObjectMeta,
    V1Service,
)


def run_network_policy(service: V1Service) -> V1NetworkPolicy:
    """Ingress to the run's pods from the run's pods only, on every port (ports are picked at run time)."""
    selector = dict(service.spec.selector)
    return V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=V1ObjectMeta(name=service.metadata.name, namespace=service.metadata.namespace,
                              labels=dict(service.metadata.labels or {})),
        spec=V1NetworkPolicySpec(
            pod_selector=V1LabelSelector(match_labels=selector),
            policy_types=["Ingress"],
            ingress=[V1NetworkPolicyIngressRule(_from=[V1NetworkPolicyPeer(
                pod_selector=V1LabelSelector(match_labels=selector))])],
        ),
    )
