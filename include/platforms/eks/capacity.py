"""The eks capacity seam: Karpenter NodePools and NodeClaims, training JobSets and leftovers.

NodePools and NodeClaims are cluster-scoped custom objects, the training JobSets namespaced ones,
all through the platform's one client (`kube.Kube`). The cluster-scoped verbs are exactly those
k8s/airflow/offhours-rbac.yaml grants (nodepools get/patch, nodeclaims list/delete); in
llm-training (k8s/training/rbac.yaml) jobsets list/delete and pods list/delete. A JobSet's child
Jobs, pods and headless Service are owned by it: deleting the JobSet deletes them.

Scale to zero follows Karpenter's rule: lowering `limits` never removes nodes, so the pool's
limit goes to 0 first (nothing new launches) and then its NodeClaims are deleted, which drains
and terminates their nodes. At window open the limit comes back from k8s/ (the NodePool file),
never from a remembered value.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from include.cluster.pools import CAPACITY_TYPE_LABEL, GPU, INSTANCE_TYPE_LABEL, NODEPOOL_LABEL, PLAN_POOLS
from include.dag_ids import FINETUNE_LIFECYCLE
from include.platforms.eks.jobs import delete_jobset, jobset_progress
from include.platforms.eks.kube import Kube
from include.platforms.runs import clear_hold, mark_stopped, run_names
from include.scheduling.cleanup import Action
from include.training.k8s_job import JOB_LABEL, jobset_name

EVALUATOR_APP = "llm-evaluator"
TRAINER_APP = "nemo-trainer"
FINISHED_PHASES = ("Succeeded", "Failed")


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class EksCapacity:
    def __init__(self, settings, schedule, kube: Kube | None = None):
        self.settings, self.schedule = settings, schedule
        self.kube = kube or Kube(settings.kubernetes_conn_id)

    def pool_name(self, kind: str) -> str:
        return getattr(self.settings, PLAN_POOLS[kind])

    def gpu_limit(self, kind: str) -> int:
        """The NodePool's limit as k8s/ declares it: the budget admission plans against."""
        from include.cluster.pools import get_pool

        return get_pool(self.pool_name(kind)).gpu_limit

    def shared_gpu_budget(self) -> bool:
        return False

    # ---- NodePools and NodeClaims ----
    def _patch_limit(self, name: str, gpus: int) -> None:
        self.kube.patch("NodePool", name, {"spec": {"limits": {GPU: str(gpus)}}})

    def scale_to_zero(self, kind: str) -> list[Action]:
        from include.cluster.pools import get_instance_types

        name = self.pool_name(kind)
        pool = self.kube.get("NodePool", name)
        actions = []
        if str((pool["spec"].get("limits") or {}).get(GPU)) != "0":
            actions.append(Action("NodePool", name, "patch", f"limits.{GPU} -> 0 at window close: no new nodes",
                                  run=lambda: self._patch_limit(name, 0)))
        claims = self.kube.list("NodeClaim", selector=f"{NODEPOOL_LABEL}={name}")
        types = get_instance_types()
        for claim in claims:
            labels = claim["metadata"].get("labels") or {}
            itype = types.get(labels.get(INSTANCE_TYPE_LABEL, ""))
            spot = labels.get(CAPACITY_TYPE_LABEL) == "spot"
            price = (itype.spot_usd_per_hour if spot else itype.on_demand_usd_per_hour) if itype else 0.0
            claim_name = claim["metadata"]["name"]
            actions.append(Action(
                "NodeClaim", claim_name, "delete",
                f"node of {name} ({labels.get(INSTANCE_TYPE_LABEL, '?')}, {labels.get(CAPACITY_TYPE_LABEL, '?')}) "
                "after window close; Karpenter drains it", nodes=1, gpus=itype.gpus if itype else 0,
                usd_per_hour=price,
                run=lambda n=claim_name: self.kube.delete("NodeClaim", n)))
        return actions

    def restore_limits(self, kind: str) -> list[Action]:
        name = self.pool_name(kind)
        want = self.gpu_limit(kind)
        pool = self.kube.get("NodePool", name)
        have = (pool["spec"].get("limits") or {}).get(GPU)
        if str(have) == str(want):
            return []
        return [Action("NodePool", name, "patch", f"limits.{GPU} {have} -> {want} (from k8s/) at window open",
                       run=lambda: self._patch_limit(name, want))]

    # ---- leftovers in the training namespace ----
    def leftovers(self, now: datetime, running: set[str]) -> list[Action]:
        ns = self.settings.training_namespace
        ttl_h = float(self.schedule.cleanup["finished_job_ttl_hours"])
        actions = []
        for jobset in self.kube.list("JobSet", ns, f"app.kubernetes.io/name={TRAINER_APP}"):
            name = jobset["metadata"]["name"]
            state = jobset_progress(jobset)["state"]
            if state not in ("succeeded", "failed"):
                continue  # running, suspended or already being deleted
            ended = max((_time(c.get("lastTransitionTime")) for c in (jobset.get("status") or {}).get("conditions", [])
                         if str(c.get("status")) == "True" and c.get("lastTransitionTime")), default=None)
            if ended is None or (now - ended).total_seconds() < ttl_h * 3600:
                continue
            age = (now - ended).total_seconds() / 3600
            actions.append(Action("JobSet", name, "delete", f"{state} {age:.1f} h ago (> {ttl_h:g} h TTL; "
                                  "ttlSecondsAfterFinished should have removed it)", namespace=ns,
                                  run=lambda n=name: self.kube.delete("JobSet", n, ns, propagation="Background")))
        for pod in self.kube.list("Pod", ns, f"app.kubernetes.io/name={EVALUATOR_APP}"):
            phase = (pod.get("status") or {}).get("phase")
            if phase in FINISHED_PHASES:
                name = pod["metadata"]["name"]
                actions.append(Action("Pod", name, "delete", f"evaluator pod finished ({phase})",
                                      namespace=ns, run=lambda n=name: self.kube.delete("Pod", n, ns)))
        return actions

    # ---- runs ----
    def stop_run(self, record: dict[str, Any]) -> list[Action]:
        """Delete the run's JobSet: its pods get SIGTERM and terminationGracePeriodSeconds to flush a
        checkpoint. The hold marker under the data root (Airflow's pods mount no checkpoint volume)
        stops task retries relaunching it; it is written first, so a retry racing the delete is held."""
        names = run_names(record)
        name = jobset_name(FINETUNE_LIFECYCLE, names["run_id"])
        ns = self.settings.training_namespace

        def stop() -> None:
            mark_stopped(self.settings, names["run_name"], "window closed")
            delete_jobset(self.kube, name, ns)

        return [Action("JobSet", name, "delete", "experiment run would overrun the window: pods get SIGTERM and "
                       "their grace period to checkpoint; resumes in the next window", namespace=ns,
                       gpus=int(record["request"]["gpus"]), run=stop)]

    def release_hold(self, record: dict[str, Any]) -> None:
        clear_hold(self.settings, run_names(record)["run_name"])

    def node_intervals(self, plan: dict[str, Any], result: dict[str, Any] | None) -> list[tuple[float, int]]:
        """(seconds, GPUs) per pod of the run's JobSet, every restart included: start to finish."""
        from include.cluster.pools import get_instance_types

        name = jobset_name(plan["dag_id"], plan["run_id"])
        gpus = get_instance_types()[plan["instance_type"]].gpus
        out = []
        now = datetime.now(UTC)
        for pod in self.kube.list("Pod", self.settings.training_namespace, f"{JOB_LABEL}={name}"):
            status = pod.get("status") or {}
            started = _time(status.get("startTime"))
            if started is None:
                continue
            ends = [_time(s["state"]["terminated"]["finishedAt"]) for s in status.get("containerStatuses") or []
                    if ((s.get("state") or {}).get("terminated") or {}).get("finishedAt")]
            out.append((((max(ends) if ends else now) - started).total_seconds(), gpus))
        return out
