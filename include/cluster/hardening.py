"""The container security context every pod the DAGs launch gets (trainer, evaluator)."""

from __future__ import annotations

from kubernetes.client import V1Capabilities, V1SecurityContext


def restricted_container() -> V1SecurityContext:
    """Pod Security "restricted" for the container: non-root, no privilege escalation, no capabilities."""
    return V1SecurityContext(allow_privilege_escalation=False, capabilities=V1Capabilities(drop=["ALL"]),
                             run_as_non_root=True)
