"""Operators that wrap include/: the training job on either profile.

DAG files call `training_job_operator(...)`; it returns the local or the Kubernetes operator for
`LLMOPS_PROFILE`, and only the latter imports the `kubernetes` client. `KubernetesTrainingJobOperator`
is importable from here too, lazily (kept out of `__all__` so a star import stays light).
"""

from .training import LocalTrainingJobOperator, training_job_operator

__all__ = ["LocalTrainingJobOperator", "training_job_operator"]


def __getattr__(name: str):
    if name == "KubernetesTrainingJobOperator":
        from .k8s_training import KubernetesTrainingJobOperator

        return KubernetesTrainingJobOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
