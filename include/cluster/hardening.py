"""The security contexts every pod the DAGs launch gets (trainer, evaluator)."""

from __future__ import annotations

from kubernetes.client import V1Capabilities, V1PodSecurityContext, V1SeccompProfile, V1SecurityContext


def restricted_pod(user: int, fs_group_change_policy: str | None = None) -> V1PodSecurityContext:
    """Pod Security "restricted" for the pod: the image's non-root user, which also owns the mounted
    volumes, and the runtime's default seccomp profile."""
    return V1PodSecurityContext(run_as_non_root=True, run_as_user=user, run_as_group=user, fs_group=user,
                                fs_group_change_policy=fs_group_change_policy,
                                seccomp_profile=V1SeccompProfile(type="RuntimeDefault"))


def restricted_container() -> V1SecurityContext:
    """Pod Security "restricted" for the container: non-root, no privilege escalation, no capabilities,
    and a read-only image filesystem (every path the process writes is a volume)."""
    return V1SecurityContext(allow_privilege_escalation=False, capabilities=V1Capabilities(drop=["ALL"]),
                             run_as_non_root=True, read_only_root_filesystem=True)
