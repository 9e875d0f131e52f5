"""All-or-nothing restarts: the exit codes, the restart budget, and what the eks side renders.

A data-parallel run is one unit. When any rank is lost (killed, node reclaimed, store gone) the
survivors cannot finish: a collective with a missing peer hangs or errors, and a rank retried
alone would wait on peers that already exited. So every failure stops the whole group, and the
group restarts together from the last complete checkpoint (include/training/checkpoints.py).
The restart count, the backoff between attempts and a total wall-clock bound are plan keys
(`RESTART_KEYS`), so they are logged to MLflow with the rest of the plan.

Exit codes a rank uses (the pod's container exit code on eks, the process's locally):
- 0: done;
- `USER_ERROR_EXIT_CODE` (2): the plan is invalid. Retrying cannot help: fail at once.
- `PEER_LOST_EXIT_CODE` (75, EX_TEMPFAIL): this rank is healthy but lost a peer or rank 0's
  store (a broken collective, a store that never came up). It is a consequence, never the cause:
  the launcher names the first rank that failed with any other code, and restarts everyone.
- anything else (1, a signal): the rank itself failed; restart the group.

eks: JobSet, not a plain Job the operator replaces. Both give all-or-nothing; they differ in
who runs the restart loop.
- JobSet (`jobset.x-k8s.io/v1alpha2`): `failurePolicy.maxRestarts` recreates every child Job, with
  `restartStrategy: BlockingRecreate` so the old pods are gone before new ones start (never two
  rank 0s writing one checkpoint directory). The loop runs in the cluster's controller, so it
  survives an Airflow worker restart, and the rules tell failures apart by the child Job's
  failure message: a bad plan fails the JobSet (`FailJobSet`), a spot reclaim
  (`DisruptionTarget`) restarts without spending the budget, anything else spends one restart.
  The child Job fails on the first failed pod that names a cause, never on a lost peer: a rank
  exiting `PEER_LOST_EXIT_CODE` only fails its own index (`FailIndex`, backoffLimitPerIndex 0:
  never retried alone), so the reclaimed rank's pod, which a drain or pod GC marks
  `DisruptionTarget` only seconds later, still decides the restart, as the launcher's root cause
  does locally. When every rank ends on a lost peer there is no other cause: the Job fails with
  its failed indexes and that restart spends the budget.
  Kubeflow Trainer v2 builds its TrainJob on JobSet, so this is also the migration path.
  Cost: the JobSet controller must be installed (its CRD is in the shared CRDs), and Airflow has
  no JobSet operator, so the task creates and watches a custom object through the Kubernetes hook.
- A plain Indexed Job (the source design) with `backoffLimit: 0` and a podFailurePolicy that
  fails it on `PEER_LOST_EXIT_CODE`: the Airflow operator must delete and recreate the Job itself,
  counting restarts in the task, and a worker restart mid-loop loses that count.
We choose JobSet; the local launcher (include/training/local_launcher.py) runs the same loop in
process, with the same budget, backoff and bound. torchrun's own `--max-restarts` must be 0 under
either design: an in-place torchrun restart is exactly the per-rank retry this replaces.
The total wall-clock bound is not a JobSet field (a child Job's activeDeadlineSeconds restarts with
it): the training task's deferral timeout (max_wall_s) and execution_timeout enforce it; its on_kill
deletes the JobSet, and so does the DAG's teardown when the task timed out while deferred.
The renderer is include/training/k8s_job.py, the operator plugins/llmops_operators/k8s_training.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from include.container import USER_ERROR_EXIT_CODE  # noqa: F401 -- re-exported beside the peer-loss code
from include.errors import InputError
from include.validation import Rule

PEER_LOST_EXIT_CODE = 75  # sysexits EX_TEMPFAIL: "temporary failure, retry"
MAX_BACKOFF_S = 300.0  # exponential backoff is capped here
# Written into the checkpoint dir by whoever stops a run on purpose (the off-hours window close):
# the ranks' SIGTERM is then a request, not a failure, and the launcher does not restart them.
STOP_REQUEST_FILE = ".offhours-stop.json"

RESTART_KEYS = ("max_restarts", "restart_backoff_s", "max_wall_s", "rendezvous_timeout_s")


class RestartPolicyError(InputError):
    """A restart key of the plan is out of range; the message names it and the range."""


RESTART_RULES: dict[str, Rule] = {
    "max_restarts": Rule("max_restarts", "integer", 0, 100, error=RestartPolicyError),
    "restart_backoff_s": Rule("restart_backoff_s", "number", 0.0, MAX_BACKOFF_S, error=RestartPolicyError),
    "max_wall_s": Rule("max_wall_s", "number", 10.0, 14 * 24 * 3600.0, error=RestartPolicyError),
    "rendezvous_timeout_s": Rule("rendezvous_timeout_s", "number", 1.0, 7200.0, error=RestartPolicyError),
}

# Per backend, like the trainer's own defaults: tiny runs on this machine, nemo on EKS.
RESTART_DEFAULTS: dict[str, dict[str, Any]] = {
    # Ranks start in seconds; a store that is not up within 20 s is not coming.
    "tiny": {"max_restarts": 3, "restart_backoff_s": 1.0, "max_wall_s": 7200.0, "rendezvous_timeout_s": 20.0},
    # A fresh p5 node: ~3-5 min to join, then a ~20 GB NeMo image pull (10-20 min): wait 30 min
    # for rank 0's store. Spot reclaims do not spend max_restarts (see the JobSet rules), only
    # real failures; 72 h matches the training task's execution_timeout.
    "nemo": {"max_restarts": 3, "restart_backoff_s": 30.0, "max_wall_s": 72 * 3600.0, "rendezvous_timeout_s": 1800.0},
}


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 3
    restart_backoff_s: float = 1.0
    max_wall_s: float = 7200.0
    rendezvous_timeout_s: float = 20.0

    def backoff(self, restart: int) -> float:
        """Seconds to wait before restart number `restart` (1-based): doubles, capped."""
        return min(self.restart_backoff_s * 2 ** max(restart - 1, 0), MAX_BACKOFF_S)

    def as_plan(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_plan(cls, plan: Mapping[str, Any]) -> RestartPolicy:
        """The restart policy of a plan `build_plan` made (its keys checked there): no check here."""
        defaults = RESTART_DEFAULTS.get(plan.get("backend"), RESTART_DEFAULTS["tiny"])
        return cls(**{key: plan.get(key, defaults[key]) for key in RESTART_KEYS})


def restart_policy(plan: Mapping[str, Any]) -> RestartPolicy:
    """The plan's restart policy, checked: its keys where present, else the defaults of its backend."""
    defaults = RESTART_DEFAULTS.get(plan.get("backend"), RESTART_DEFAULTS["tiny"])
    return RestartPolicy(**{key: RESTART_RULES[key].check(plan.get(key, defaults[key]), label=f"plan key {key!r}")
                            for key in RESTART_KEYS})


def restart_plan_fields(backend: str) -> dict[str, Any]:
    """The restart keys a new plan carries (`backend`'s defaults, checked once here)."""
    return restart_policy({"backend": backend}).as_plan()


# ---- classifying a rank's exception: its own failure, or a lost peer ----

_PEER_LOSS_TYPES = ("DistError", "DistNetworkError", "DistStoreError", "DistBackendError", "StoreUnavailable")
_PEER_LOSS_MESSAGES = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Socket Timeout",
                       "Timed out waiting", "Connection refused")


def is_peer_loss(exc: BaseException) -> bool:
    """True when `exc` means a peer or rank 0's store went away, not that this rank is broken.

    torch reports a dead gloo/NCCL peer as a plain RuntimeError from its C++ transport (e.g.
    "gloo/transport/tcp/pair.cc: Read error: Connection reset by peer") or as a DistError subclass;
    neither type is imported here, so the trainer image needs nothing more.
    """
    for cls in type(exc).__mro__:
        if cls.__name__ in _PEER_LOSS_TYPES:
            return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("gloo" in text or "NCCL" in text or "TCPStore" in text) and any(
        m in text for m in _PEER_LOSS_MESSAGES
    )


# ---- what the eks renderer needs (JobSet; see the module docstring) ----

# The child Job's failure message when a pod failure policy rule fires, as the Job controller
# writes it: "Container <c> for pod <ns>/<pod> failed with exit code 2 matching FailJob rule at index 1".
USER_ERROR_RULE_INDEX = 1


def child_job_pod_failure_policy() -> dict[str, Any]:
    """podFailurePolicy of each child Job (backoffLimitPerIndex 0): the first cause fails the Job at once.

    Rule 0 marks a disruption (spot reclaim, node drain) and rule 1 a bad plan, so that the JobSet
    rules can tell them apart by the Job's failure message. Rule 2: a lost peer is a consequence,
    not a cause: that rank's index fails (no replacement pod) and the Job waits for the failure
    that caused it, which a later rule or rule 0 then reports. Rule 3: any other exit code fails
    the Job, and the JobSet restarts the group. A pod that fails without an exit code matching
    these fails its index only; when every index has failed, so has the Job.
    """
    return {
        "rules": [
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [USER_ERROR_EXIT_CODE]}},
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [PEER_LOST_EXIT_CODE]}},
            {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [PEER_LOST_EXIT_CODE]}},
        ]
    }


def jobset_failure_policy(policy: RestartPolicy) -> dict[str, Any]:
    """`spec.failurePolicy` of the training JobSet: all-or-nothing restarts within the budget."""
    return {
        "maxRestarts": policy.max_restarts,
        "restartStrategy": "BlockingRecreate",
        "rules": [
            {
                "name": "badPlan",
                "action": "FailJobSet",
                "onJobFailureReasons": ["PodFailurePolicy"],
                "onJobFailureMessagePatterns": [
                    f"exit code {USER_ERROR_EXIT_CODE} matching FailJob rule at index {USER_ERROR_RULE_INDEX}"
                ],
            },
            {
                "name": "disruption",
                "action": "RestartJobSetAndIgnoreMaxRestarts",
                "onJobFailureReasons": ["PodFailurePolicy"],
                "onJobFailureMessagePatterns": ["DisruptionTarget matching FailJob rule at index 0"],
            },
            # Anything else (a crash: FailJob rule 3; every rank lost its peer: FailedIndexes):
            # RestartJobSet, JobSet's default action, which spends one of maxRestarts.
        ],
    }
