"""The per-run NetworkPolicy: a training run's pods accept traffic only from each other.

PyTorch's TCPStore (the c10d rendezvous on MASTER_PORT), the worker process group's own store
(a port torchrun picks) and NCCL/Gloo sockets (ephemeral ports) have no authentication, so the only
safe peer set is "the pods of this run". A NetworkPolicy cannot say "pods with MY label value", so
each run gets its own, named like the run's JobSet and selecting its run label `llmops.io/job=<name>`
(every pod of every restart attempt carries it). k8s/training/networkpolicies.yaml denies all other
ingress in the namespace and limits egress; the ValidatingAdmissionPolicy there only admits policies
of this shape.
"""

from __future__ import annotations

from collections.abc import Mapping

from kubernetes.client import (
    V1LabelSelector,
    V1NetworkPolicy,
    V1NetworkPolicyIngressRule,
    V1NetworkPolicyPeer,
    V1NetworkPolicySpec,
    V1ObjectMeta,
)

RUN_LABEL = "llmops.io/job"  # include/training/k8s_job.py JOB_LABEL


def run_network_policy(name: str, namespace: str, labels: Mapping[str, str] | None = None) -> V1NetworkPolicy:
    """Ingress to the run's pods from the run's pods only, on every port (ports are picked at run time)."""
    selector = {RUN_LABEL: name}
    return V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {})),
        spec=V1NetworkPolicySpec(
            pod_selector=V1LabelSelector(match_labels=selector),
            policy_types=["Ingress"],
            ingress=[V1NetworkPolicyIngressRule(_from=[V1NetworkPolicyPeer(
                pod_selector=V1LabelSelector(match_labels=selector))])],
        ),
    )
