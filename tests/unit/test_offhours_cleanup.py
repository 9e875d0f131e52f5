"""Cleanup on a seeded mess: the dry run lists, the real run deletes exactly the expected objects.

The Kubernetes side (the eks platform's client, include/platforms/eks/kube.py, on the provider's
hook) runs against the in-memory API server of the operator tests
(tests/unit/test_training_operators.FakeCluster), extended here with Karpenter NodePools and
NodeClaims (cluster-scoped custom objects), JobSet listing and pod deletion. Every NodePool
and NodeClaim it holds is validated against the Karpenter CRDs, after each patch too. The
registry side is a real MLflow sqlite store with a champion and a challenger.
"""

from __future__ import annotations

import copy
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from kubernetes.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi

from include.lifecycle.offhours import registered_runs
from include.platforms.eks.capacity import EksCapacity
from include.platforms.eks.kube import Kube
from include.platforms.local.capacity import LocalCapacity
from include.scheduling import cleanup
from include.scheduling.windows import load
from include.settings import Settings
from tests.k8s_schemas import REPO_ROOT, require_crds, validate
from tests.unit.test_training_operators import FakeCluster, _api_error

NOW = datetime(2026, 6, 2, 10, 0, tzinfo=UTC)
NS = "llm-training"
NODEPOOLS = REPO_ROOT / "k8s" / "karpenter" / "nodepools.yaml"


class KarpenterCluster(FakeCluster):
    """FakeCluster plus cluster-scoped Karpenter objects, JobSet lists and pod deletes."""

    def __init__(self) -> None:
        super().__init__()
        self.custom: dict[tuple[str, str], dict] = {}  # (plural, name) -> object

    def add(self, obj: dict) -> None:
        plural = obj["kind"].lower() + "s"
        self.custom[(plural, obj["metadata"]["name"])] = validate(copy.deepcopy(obj))

    # -- custom objects (cluster-scoped) --
    def get_cluster_custom_object(self, group, version, plural, name, **kwargs):
        self.calls.append(("get_cluster_custom_object", {"plural": plural, "name": name}))
        if (plural, name) not in self.custom:
            raise _api_error(404, "NotFound")
        return copy.deepcopy(self.custom[(plural, name)])

    def patch_cluster_custom_object(self, group, version, plural, name, body, **kwargs):
        self.calls.append(("patch_cluster_custom_object", {"plural": plural, "name": name, "body": body}))
        obj = self.custom[(plural, name)]

        def merge(into: dict, patch: dict) -> None:  # JSON merge patch
            for k, v in patch.items():
                if isinstance(v, dict) and isinstance(into.get(k), dict):
                    merge(into[k], v)
                else:
                    into[k] = v

        merged = copy.deepcopy(obj)
        merge(merged, body)
        self.custom[(plural, name)] = validate(merged)
        return copy.deepcopy(merged)

    def list_cluster_custom_object(self, group, version, plural, label_selector="", **kwargs):
        self.calls.append(("list_cluster_custom_object", {"plural": plural, "label_selector": label_selector}))
        key, _, value = label_selector.partition("=")
        items = [copy.deepcopy(o) for (p, _), o in sorted(self.custom.items())
                 if p == plural and (not key or (o["metadata"].get("labels") or {}).get(key) == value)]
        return {"items": items}

    def delete_cluster_custom_object(self, group, version, plural, name, **kwargs):
        self.calls.append(("delete_cluster_custom_object", {"plural": plural, "name": name}))
        if self.custom.pop((plural, name), None) is None:
            raise _api_error(404, "NotFound")
        return {"kind": "Status", "status": "Success"}

    # -- namespaced lists and pod deletes --
    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector="", **kwargs):
        self.calls.append(("list_namespaced_custom_object", {"namespace": namespace, "plural": plural,
                                                             "label_selector": label_selector}))
        key, _, value = label_selector.partition("=")
        items = [copy.deepcopy(j) for (ns, _), j in sorted(self.jobsets.items())
                 if ns == namespace and j["metadata"]["labels"].get(key) == value]
        return {"items": items}

    def delete_namespaced_pod(self, name, namespace, **kwargs):
        self.calls.append(("delete_namespaced_pod", {"name": name, "namespace": namespace}))
        for key, pods in self.pods.items():
            for pod in pods:
                if key[0] == namespace and pod["metadata"]["name"] == name:
                    pods.remove(pod)
                    return {"kind": "Status", "status": "Success"}
        raise _api_error(404, "NotFound")

    def deletions(self) -> set[tuple[str, str]]:
        return {(m.split("_")[-1] if "custom" not in m else kw.get("plural", "jobsets"), kw["name"])
                for m, kw in self.calls if m.startswith("delete_")}


API_METHODS = {
    CoreV1Api: ("list_namespaced_pod", "delete_namespaced_pod"),
    CustomObjectsApi: ("get_cluster_custom_object", "patch_cluster_custom_object", "list_cluster_custom_object",
                       "delete_cluster_custom_object", "list_namespaced_custom_object", "get_namespaced_custom_object",
                       "delete_namespaced_custom_object"),
}


@pytest.fixture
def cluster(monkeypatch) -> KarpenterCluster:
    require_crds()
    fake = KarpenterCluster()

    def get_conn(hook):
        hook._is_in_cluster = False
        return ApiClient(Configuration())

    monkeypatch.setattr(KubernetesHook, "get_conn", get_conn)
    for api, methods in API_METHODS.items():
        for method in methods:
            monkeypatch.setattr(api, method, lambda _self, *a, _m=method, **kw: getattr(fake, _m)(*a, **kw))
    return fake


def nodepool(name: str) -> dict:
    return next(d for d in yaml.safe_load_all(NODEPOOLS.read_text()) if d and d["metadata"]["name"] == name)


def nodeclaim(name: str, pool: str, itype: str, capacity: str) -> dict:
    return {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": pool,
                                                  "node.kubernetes.io/instance-type": itype,
                                                  "karpenter.sh/capacity-type": capacity}},
            "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass",
                                      "name": "gpu-efa-nodeclass"},
                     "requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                                       "values": [itype]}]}}


def jobset(name: str, condition: str | None, ended: datetime | None) -> dict:
    status = {"replicatedJobsStatus": [{"name": "node", "active": 1}]} if condition is None else {
        "conditions": [{"type": condition, "status": "True", "lastTransitionTime": ended.isoformat()}],
        "terminalState": condition}
    labels = {"app.kubernetes.io/name": "nemo-trainer", "llmops.io/job": name}
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": name, "namespace": NS, "labels": labels}, "spec": {"replicatedJobs": []},
            "status": status}


def eval_pod(name: str, phase: str) -> dict:
    return {"metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/name": "llm-evaluator"}},
            "status": {"phase": phase}}


def seed_cluster(fake: KarpenterCluster) -> None:
    for pool in ("gpu-experiment-pool", "gpu-training-pool"):
        fake.add(nodepool(pool))
    fake.add(nodeclaim("gpu-experiment-pool-a1", "gpu-experiment-pool", "g5.12xlarge", "spot"))
    fake.add(nodeclaim("gpu-experiment-pool-b2", "gpu-experiment-pool", "g6e.12xlarge", "spot"))
    fake.add(nodeclaim("gpu-training-pool-c3", "gpu-training-pool", "p5.48xlarge", "on-demand"))
    old, recent = NOW - timedelta(days=5), NOW - timedelta(hours=2)
    for name, cond, ended in (("train-old-done", "Completed", old), ("train-old-failed", "Failed", old),
                              ("train-recent", "Completed", recent), ("train-running", None, None)):
        fake.jobsets[(NS, name)] = jobset(name, cond, ended)
    fake.pods[(NS, "evaluators")] = [eval_pod("eval-done", "Succeeded"), eval_pod("eval-failed", "Failed"),
                                     eval_pod("eval-running", "Running")]


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_root=f"file://{tmp_path}/data", checkpoint_root=str(tmp_path / "ckpt"),
                    mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", profile="local")


def test_seeded_kubernetes_mess_dry_run_then_real_run(cluster, settings):
    seed_cluster(cluster)
    eks = EksCapacity(Settings(profile="eks", data_root="s3://bucket/llmops"), load(), Kube(hook=KubernetesHook()))
    actions = eks.scale_to_zero("experiment") + eks.leftovers(NOW, running=set())
    expected = {("NodePool", "gpu-experiment-pool"), ("NodeClaim", "gpu-experiment-pool-a1"),
                ("NodeClaim", "gpu-experiment-pool-b2"), ("JobSet", "train-old-done"),
                ("JobSet", "train-old-failed"), ("Pod", "eval-done"), ("Pod", "eval-failed")}
    assert {(a.kind, a.name) for a in actions} == expected
    assert all(a.reason for a in actions)

    cleanup.apply(actions, dry_run=True, log=lambda _: None)
    dry = cleanup.summary(actions, dry_run=True)
    assert not [c for c in cluster.calls if c[0].startswith(("delete_", "patch_"))], "a dry run changes nothing"
    # g5.12xlarge + g6e.12xlarge on spot: 2 nodes, 8 GPUs, $2.50 + $4.50 an hour.
    assert dry["freed"] == {"nodes": 2, "gpus": 8, "usd_per_hour": 7.0, "bytes": 0}

    cleanup.apply(actions, dry_run=False, log=lambda _: None)
    real = cleanup.summary(actions, dry_run=False)
    assert real["freed"] == dry["freed"] and "2 nodes, 8 GPUs, $7.00/h" in real["summary"]
    assert cluster.deletions() == {("nodeclaims", "gpu-experiment-pool-a1"), ("nodeclaims", "gpu-experiment-pool-b2"),
                                   ("jobsets", "train-old-done"), ("jobsets", "train-old-failed"),
                                   ("pod", "eval-done"), ("pod", "eval-failed")}
    assert cluster.custom[("nodepools", "gpu-experiment-pool")]["spec"]["limits"] == {"nvidia.com/gpu": "0"}
    assert ("nodeclaims", "gpu-training-pool-c3") in cluster.custom  # production capacity untouched
    assert ("nodepools", "gpu-training-pool") in cluster.custom
    patch_before_delete = [m for m, _ in cluster.calls if m in ("patch_cluster_custom_object",
                                                                "delete_cluster_custom_object")]
    assert patch_before_delete[0] == "patch_cluster_custom_object", "limits go to 0 before nodes are deleted"
    deleting = {n for (_, n), j in cluster.jobsets.items() if j["metadata"].get("deletionTimestamp")}
    assert deleting == {"train-old-done", "train-old-failed"}  # recent and running ones are kept
    assert all(kw["propagation_policy"] == "Background"
               for m, kw in cluster.calls if m == "delete_namespaced_custom_object")

    # Idempotent: a second pass finds nothing left to do.
    assert eks.scale_to_zero("experiment") + eks.leftovers(NOW, running=set()) == []
    # Window open: the limit comes back from k8s/, validated by the CRD on the way in.
    restore = eks.restore_limits("experiment")
    assert [a.describe() for a in restore] == [
        "patch NodePool gpu-experiment-pool: limits.nvidia.com/gpu 0 -> 32 (from k8s/) at window open"]
    cleanup.apply(restore, dry_run=False, log=lambda _: None)
    assert cluster.custom[("nodepools", "gpu-experiment-pool")]["spec"]["limits"] == {"nvidia.com/gpu": "32"}
    assert eks.restore_limits("experiment") == []


def test_rbac_grants_exactly_the_karpenter_calls_the_code_makes(cluster):
    seed_cluster(cluster)
    eks = EksCapacity(Settings(profile="eks", data_root="s3://bucket/llmops"), load(), Kube(hook=KubernetesHook()))
    for batch in (eks.scale_to_zero("experiment"), eks.restore_limits("experiment")):
        cleanup.apply(batch, dry_run=False, log=lambda _: None)
    verbs = {"get_cluster_custom_object": "get", "patch_cluster_custom_object": "patch",
             "list_cluster_custom_object": "list", "delete_cluster_custom_object": "delete"}
    used = {(kw["plural"], verbs[m]) for m, kw in cluster.calls if m in verbs}
    named = {kw["name"] for m, kw in cluster.calls if m in verbs and kw["plural"] == "nodepools"}
    role = next(d for d in yaml.safe_load_all((REPO_ROOT / "k8s" / "airflow" / "offhours-rbac.yaml").read_text())
                if d["kind"] == "ClusterRole")
    for doc in yaml.safe_load_all((REPO_ROOT / "k8s" / "airflow" / "offhours-rbac.yaml").read_text()):
        validate(doc)
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == used
    assert all(rule["apiGroups"] == ["karpenter.sh"] for rule in role["rules"])
    pool_rule = next(rule for rule in role["rules"] if rule["resources"] == ["nodepools"])
    assert set(pool_rule["resourceNames"]) == named == {"gpu-experiment-pool"}


def test_window_open_restores_only_the_pools_the_close_scales_and_the_cluster_role_names(cluster):
    """Both pools' windows open: the tick restores (and reads) only the SCALED_AT_CLOSE pools' NodePools,
    exactly the ClusterRole's resourceNames; reading gpu-training-pool was a 403 on every tick in a window."""
    from include.cluster.pools import PLAN_POOLS
    from include.lifecycle import offhours

    seed_cluster(cluster)
    settings = Settings(profile="eks", data_root="s3://bucket/llmops")
    eks = EksCapacity(settings, load(), Kube(hook=KubernetesHook()))
    schedule = load()
    opened = datetime(2026, 6, 2, 2, 0, tzinfo=UTC)  # Mon 22:00 New York: every pool's window is open
    assert all(pool.open_window(opened) for pool in schedule.pools.values())
    cluster.custom[("nodepools", "gpu-experiment-pool")]["spec"]["limits"] = {"nvidia.com/gpu": "0"}

    restored = offhours.open_restore(opened, schedule, eks, dry_run=False, log=lambda _: None)
    assert [(a["name"], a["done"]) for a in restored] == [("gpu-experiment-pool", True)]
    read = {kw["name"] for m, kw in cluster.calls
            if m.endswith("_cluster_custom_object") and kw["plural"] == "nodepools"}
    role = next(d for d in yaml.safe_load_all((REPO_ROOT / "k8s" / "airflow" / "offhours-rbac.yaml").read_text())
                if d["kind"] == "ClusterRole")
    named = set(next(rule for rule in role["rules"] if rule["resources"] == ["nodepools"])["resourceNames"])
    scaled = {getattr(settings, PLAN_POOLS[kind]) for kind in offhours.SCALED_AT_CLOSE}
    assert read == scaled == named == {"gpu-experiment-pool"}
    closed = datetime(2026, 6, 2, 14, 0, tzinfo=UTC)
    assert offhours.open_restore(closed, schedule, eks, dry_run=False, log=lambda _: None) == []


def _age(path: Path, days: float) -> None:
    stamp = time.time() - days * 86400
    for p in [path, *path.rglob("*")]:
        os.utime(p, (stamp, stamp))


def _checkpoint(root: Path, run: str, days: float, steps=(60, 120)) -> Path:
    d = root / run
    for s in steps:
        (d / f"step-{s}").mkdir(parents=True)
        (d / f"step-{s}" / "state.pt").write_bytes(b"x" * 1000)
    (d / "latest").write_text(f"step-{steps[-1]}\n")
    _age(d, days)
    return d


def register(settings: Settings, run: str, alias: str | None) -> None:
    from include.registry import mlflow_registry as reg

    client = reg.get_client(settings.mlflow_tracking_uri)
    mlflow_run = reg.get_or_create_run("exp", "finetune_lifecycle", run, client=client)
    version = reg.register_candidate(settings.registered_model_name, f"{settings.data_root}/models/{run}/export",
                                     mlflow_run, {"airflow.dag_id": "finetune_lifecycle", "airflow.run_id": run},
                                     client=client)
    if alias:
        client.set_registered_model_alias(settings.registered_model_name, alias, version)


def test_a_failed_dataset_runs_staging_dir_is_stale_staging(tmp_path):
    """curated/_staging/<run> is the dataset stage's staging (one dir per run): past the TTL it goes."""
    from include.data.catalog import staging_uri

    assert staging_uri("file:///d", "manual__1").split("/")[-2] == cleanup.STAGING_PARENT
    root = tmp_path / "data"
    old = root / "curated" / cleanup.STAGING_PARENT / "manual__1-0a1b2c3d"
    old.mkdir(parents=True)
    (old / "train.jsonl").write_bytes(b"x" * 100)
    _age(old, 2)
    fresh = root / "curated" / cleanup.STAGING_PARENT / "manual__2-0a1b2c3e"
    fresh.mkdir()
    (fresh / "train.jsonl").write_bytes(b"x")
    actions = cleanup.stale_staging([root], now=time.time(), staging_hours=24, running=set())
    assert [(a.name, a.bytes) for a in actions] == [(str(old), 100)]
    assert "failed run" in actions[0].reason


def test_seeded_data_mess_keeps_the_champions_checkpoints(settings, tmp_path):
    from include.registry import mlflow_registry as reg

    ckpt = Path(settings.checkpoint_root)
    data = Path(settings.data_root.removeprefix("file://"))
    champion = _checkpoint(ckpt, "ft-champion0001", days=60)
    challenger = _checkpoint(ckpt, "ft-challenger01", days=40)
    older_version = _checkpoint(ckpt, "ft-registered01", days=90)
    orphan_old = _checkpoint(ckpt, "ft-orphan00001", days=30)
    orphan_new = _checkpoint(ckpt, "ft-orphan00002", days=2)
    running = _checkpoint(ckpt, "ft-running0001", days=20)
    (running / ".tmp-step-180-4242").mkdir()
    _age(running, 20)
    stale_tmp = ckpt / "ft-orphan00002" / ".tmp-step-180-77"
    stale_tmp.mkdir()
    (stale_tmp / "state.pt").write_bytes(b"y" * 500)
    _age(stale_tmp, 3)
    fresh_tmp = ckpt / "ft-orphan00002" / ".tmp-step-240-78"
    fresh_tmp.mkdir()
    publish = data / "models" / ".ft-orphan00003.ab12cd34"
    publish.mkdir(parents=True)
    (publish / "model.bin").write_bytes(b"z" * 2000)
    _age(publish, 2)
    keep_hidden = data / "curated" / ".keep"
    keep_hidden.parent.mkdir(parents=True)
    keep_hidden.write_text("")
    _age(keep_hidden, 100)

    register(settings, "ft-registered01", None)
    register(settings, "ft-champion0001", "champion")
    register(settings, "ft-challenger01", "challenger")
    client = reg.get_client(settings.mlflow_tracking_uri)
    kept = registered_runs(settings.registered_model_name, client)
    assert kept["ft-champion0001"].startswith("champion") and kept["ft-challenger01"].startswith("challenger")

    actions = cleanup.data_actions(settings, registered=kept, running={"ft-running0001"}, days=14,
                                   staging_hours=24)
    assert sorted(a.name for a in actions) == sorted([str(orphan_old), str(stale_tmp), str(publish)])
    assert all(a.reason and a.bytes > 0 for a in actions)
    cleanup.apply(actions, dry_run=True, log=lambda _: None)
    assert orphan_old.exists() and stale_tmp.exists() and publish.exists()
    dry = cleanup.summary(actions, dry_run=True)
    assert dry["freed"]["bytes"] == 2 * 1000 + len("step-120\n") + 500 + 2000  # orphan, tmp, publish

    cleanup.apply(actions, dry_run=False, log=lambda _: None)
    assert cleanup.summary(actions, dry_run=False)["freed"] == dry["freed"]
    assert not orphan_old.exists() and not stale_tmp.exists() and not publish.exists()
    for survivor in (champion, challenger, older_version, orphan_new, running, fresh_tmp, keep_hidden,
                     running / ".tmp-step-180-4242"):
        assert survivor.exists(), survivor
    assert (champion / "step-120" / "state.pt").read_bytes() == b"x" * 1000


def test_local_leftover_ranks_are_stopped_and_running_runs_are_not(settings):
    """An orphan (its launcher exited, so it was re-parented) is stopped; ranks under a live launcher
    (here: this test process) belong to a run in progress, whatever started it, and are kept."""
    import subprocess
    import sys

    import psutil

    from include.training.local_launcher import record_rank

    ckpt = Path(settings.checkpoint_root)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    # a launcher that records its rank, then exits (as a killed Airflow task would); the rank must not
    # hold the captured pipes, or run() would wait for it to end
    spawn = ("import subprocess as s, sys; from include.training.local_launcher import record_rank; "
             "p = s.Popen(sys.argv[2:], start_new_session=True, stdout=s.DEVNULL, stderr=s.DEVNULL); "
             "record_rank(sys.argv[1], 0, p.pid); print(p.pid)")
    orphan = psutil.Process(int(subprocess.run(
        [sys.executable, "-c", spawn, str(ckpt / "ft-orphanranks"), *sleeper], capture_output=True, text=True,
        check=True, cwd=Path(__file__).resolve().parents[2]).stdout))
    live = subprocess.Popen(sleeper)
    try:
        record_rank(ckpt / "ft-live000001", 0, live.pid)  # this test process is its launcher, alive
        local = LocalCapacity(settings, load())
        actions = local.leftovers(NOW, running=set())
        assert [a.kind for a in actions] == ["Process"] and "ft-orphanranks" in actions[0].name
        assert "launcher is gone" in actions[0].reason
        cleanup.apply(actions, dry_run=True, log=lambda _: None)
        assert orphan.is_running()
        cleanup.apply(actions, dry_run=False, log=lambda _: None)
        assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
        assert live.poll() is None
    finally:
        for proc in (orphan, live):
            try:
                proc.kill()
            except psutil.Error:
                pass
        live.wait()


def test_eks_actual_cost_from_the_jobs_pods_and_stop_at_close(cluster, tmp_path, monkeypatch):
    """Pods' start to finish x the node's GPUs; spot price on the experiment pool; every attempt counts.
    Stopping a run holds it (marker under the data root, written before the delete) and deletes its
    JobSet (pods get SIGTERM and their grace period); nothing goes to the checkpoint root, which
    Airflow's pods do not mount. tests/cluster/test_offhours_on_cluster.py proves the marker in S3."""
    import include.platforms.eks.capacity as eks_capacity
    from include.scheduling import cost
    from include.scheduling.requests import admitted_run_id
    from include.training.k8s_job import JOB_LABEL, jobset_name

    settings = Settings(profile="eks", data_root="s3://bucket/llmops", checkpoint_root=str(tmp_path))
    eks = EksCapacity(settings, load(), Kube(hook=KubernetesHook()))
    plan = {"dag_id": "finetune_lifecycle", "run_id": admitted_run_id("req-1"), "instance_type": "g5.12xlarge",
            "pool": "experiment", "nodes": 2, "gpus_per_node": 4}
    name = jobset_name(plan["dag_id"], plan["run_id"])

    def pod(i: int, start: str, end: str) -> dict:
        return {"metadata": {"name": f"{name}-node-0-{i}", "namespace": NS, "labels": {JOB_LABEL: name}},
                "status": {"phase": "Succeeded", "startTime": start, "containerStatuses": [
                    {"name": "trainer", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
                     "state": {"terminated": {"exitCode": 0, "finishedAt": end}}}]}}

    cluster.pods[(NS, name)] = [pod(0, "2026-06-02T01:00:00Z", "2026-06-02T03:00:00Z"),
                                pod(1, "2026-06-02T01:00:00Z", "2026-06-02T03:00:00Z"),
                                pod(2, "2026-06-02T00:30:00Z", "2026-06-02T01:00:00Z")]  # an interrupted try
    intervals = eks.node_intervals(plan, None)
    assert sorted(intervals) == [(1800.0, 4), (7200.0, 4), (7200.0, 4)]
    actual = cost.actual_usage(intervals, cost.node_price(plan))
    assert actual == {"node_hours": 4.5, "gpu_hours": 18.0, "cost_usd": 11.25}  # 4.5 h x $2.50 spot
    assert cost.compare({"gpu_hours": 16.0, "cost_usd": 10.0}, actual) == {
        "cost.estimated_gpu_hours": 16.0, "cost.actual_gpu_hours": 18.0, "cost.gpu_hours_error_pct": 12.5,
        "cost.estimated_cost_usd": 10.0, "cost.actual_cost_usd": 11.25, "cost.cost_usd_error_pct": 12.5}

    cluster.jobsets[(NS, name)] = jobset(name, None, None)
    record = {"request": {"id": "req-1", "gpus": 8}}
    marked = []

    def mark_stopped(settings_, run_name, why):  # the hold marker only: no stop request into a checkpoint dir
        marked.append({"run_name": run_name, "why": why,
                       "jobset_deleted": bool(cluster.calls_of("delete_namespaced_custom_object"))})

    monkeypatch.setattr(eks_capacity, "mark_stopped", mark_stopped)
    actions = eks.stop_run(record)
    cleanup.apply(actions, dry_run=False, log=lambda _: None)
    assert [a.error for a in actions] == [""]
    assert cluster.calls_of("delete_namespaced_custom_object")[-1] == {
        "name": name, "namespace": NS, "propagation_policy": "Foreground"}
    from include.platforms.runs import run_names

    assert marked == [{"run_name": run_names(record)["run_name"], "why": "window closed", "jobset_deleted": False}]
    assert list(tmp_path.iterdir()) == []  # the checkpoint root: untouched
