"""The off-hours DAG's eks paths on the local control plane, called as Airflow's ServiceAccount.

Each test runs the project's real tick (include/lifecycle/offhours.py `tick`) with the real
EksCapacity (include/platforms/eks/capacity.py, through the platform's client on the provider's KubernetesHook and the
`kubernetes_default` connection of `as_airflow`) and a real RequestStore on an s3:// data root
(moto's S3 server on 127.0.0.1, as tests/integration/conftest.py runs it). Karpenter's controller
does not run here: the NodeClaims the admin creates stand for nodes Karpenter launched. The
checkpoint root points at a directory that does not exist, standing for the FSx mount that
Airflow's pods do not have: nothing the tick does may create it.

- window close, then open: the experiment pool's limit goes to 0 and only its NodeClaims are
  deleted (once per close); at open the limit comes back from k8s/;
- a tick while a window is open succeeds as the ServiceAccount (the ClusterRole names only the pool
  the close scales to zero) and admits a waiting request;
- an experiment run that would overrun is stopped: its JobSet is deleted as the ServiceAccount, the
  hold marker is in S3, a task retry is refused (hold_if_stopped) until the next window re-admits it;
- leftovers: finished JobSets past their TTL and finished evaluator pods are deleted, a running
  JobSet and a running evaluator pod are not; a dry run lists them and changes nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from include.cluster.pools import GPU, get_pool
from include.platforms.eks.capacity import EVALUATOR_APP, TRAINER_APP
from include.scheduling.admission import Request
from include.training.k8s_job import JOBSET_GROUP, JOBSET_PLURAL, JOBSET_VERSION, jobset_name
from tests.integration.conftest import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    S3Server,
    connection_json,
    reset_object_storage_cache,
)

pytestmark = pytest.mark.slow

NS = "llm-training"  # settings.training_namespace
EXPERIMENT, TRAINING, INFERENCE = "gpu-experiment-pool", "gpu-training-pool", "gpu-inference-pool"
BUCKET = "llmops-offhours"
DAG = "finetune_lifecycle"
JOBSET = (JOBSET_GROUP, JOBSET_VERSION, NS, JOBSET_PLURAL)

# include/scheduling/windows.yaml: both pools open weeknights 20:00-06:00 America/New_York (EDT in June).
OPEN = datetime(2026, 6, 2, 2, 0, tzinfo=UTC)  # Mon 22:00 EDT, window 00:00Z-10:00Z
NEAR_CLOSE = datetime(2026, 6, 2, 9, 57, tzinfo=UTC)  # 3 minutes before that close (CLOSE_MARGIN 5 min)
CLOSED = datetime(2026, 6, 2, 14, 0, tzinfo=UTC)  # Tue 10:00 EDT
NEXT_OPEN = datetime(2026, 6, 3, 0, 30, tzinfo=UTC)  # Tue 20:30 EDT

KARPENTER = ("karpenter.sh", "v1")


def quiet(_: str) -> None:
    pass


def running(_: str) -> str:
    return "running"


def wait_for(what: str, probe, timeout: float = 30.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


# ---- fixtures ----

@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, started as tests/integration/conftest.py's `s3_server` starts it (its
    helpers). Not that fixture itself: it sets the session's environment, and this module's connection
    must not outlive it (each test sets its own with monkeypatch), nor replace the integration tests'."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    info = S3Server(endpoint_url=f"http://{host}:{port}", bucket=BUCKET)
    try:
        info.client().create_bucket(Bucket=BUCKET)
        yield info
    finally:
        server.stop()


@pytest.fixture(scope="module")
def admin(cluster):
    """The admin's CustomObjectsApi and CoreV1Api; the module waits until RBAC serves k8s/'s bindings
    (the authorizer learns new bindings through an informer) and leaves the pools as k8s/ declares."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    custom, core = client.CustomObjectsApi(cluster.api_client), client.CoreV1Api(cluster.api_client)
    sa = config.new_client_from_config(config_file=str(cluster.kubeconfig_for("airflow", "airflow-worker")))

    def granted() -> bool:
        try:
            client.CustomObjectsApi(sa).get_cluster_custom_object(*KARPENTER, "nodepools", EXPERIMENT)
            client.CoreV1Api(sa).list_namespaced_pod(NS, limit=1)
            return True
        except ApiException as e:
            if e.status != 403:
                raise
            return False

    try:
        wait_for("RBAC to serve k8s/'s bindings to airflow-worker", granted)
    finally:
        sa.close()
    yield SimpleNamespace(custom=custom, core=core)
    set_limit(custom, EXPERIMENT, get_pool(EXPERIMENT).gpu_limit)


@pytest.fixture
def eks(as_airflow, admin, s3: S3Server, tmp_path: Path, tmp_path_factory, monkeypatch) -> Iterator[SimpleNamespace]:
    """The eks profile as an Airflow task sees it: kubernetes_default is the ServiceAccount, the data root
    a fresh prefix in S3, no checkpoint volume; the experiment pool at its k8s/ limit."""
    from include.scheduling.requests import RequestStore
    from include.scheduling.windows import load
    from include.settings import get_settings

    prefix = f"offhours-{uuid.uuid4().hex[:8]}"
    mlflow_db = tmp_path_factory.getbasetemp() / "offhours-mlflow.db"  # one store for the module's ticks
    env = {"AIRFLOW_CONN_AWS_DEFAULT": connection_json(s3.endpoint_url), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
           "LLMOPS_DATA_ROOT": f"s3://{s3.bucket}/{prefix}",
           "LLMOPS_CHECKPOINT_ROOT": str(tmp_path / "fsx-not-mounted"),
           "LLMOPS_MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    reset_object_storage_cache()
    set_limit(admin.custom, EXPERIMENT, get_pool(EXPERIMENT).gpu_limit)
    settings = get_settings()
    assert settings.profile == "eks" and settings.data_root.startswith("s3://")
    try:
        yield SimpleNamespace(settings=settings, schedule=load(), store=RequestStore.for_settings(settings),
                              prefix=prefix, s3=s3, admin=admin, ckpt_root=Path(settings.checkpoint_root))
    finally:
        reset_object_storage_cache()
        get_settings.cache_clear()


def tick(env: SimpleNamespace, now: datetime, dry_run: bool = False) -> dict:
    """One off-hours tick as the DAG's task runs it: the real EksCapacity as Airflow's ServiceAccount."""
    from include.lifecycle import offhours
    from include.platforms import get_platform
    from include.platforms.eks.capacity import EksCapacity

    cluster = get_platform(env.settings).capacity(env.schedule)
    assert isinstance(cluster, EksCapacity)
    return offhours.tick(now, env.schedule, cluster, env.store, env.settings, running, dry_run=dry_run, log=quiet)


# ---- objects the admin makes ----

def set_limit(custom, pool: str, gpus: int) -> None:
    custom.patch_cluster_custom_object(*KARPENTER, "nodepools", pool, {"spec": {"limits": {GPU: str(gpus)}}})


def limit(custom, pool: str) -> str:
    return str(custom.get_cluster_custom_object(*KARPENTER, "nodepools", pool)["spec"]["limits"][GPU])


def nodeclaim(custom, pool: str, itype: str, capacity: str) -> str:
    """A NodeClaim as Karpenter makes one for `pool` (<pool>-<random>), created by the admin."""
    from include.cluster.pools import CAPACITY_TYPE_LABEL, INSTANCE_TYPE_LABEL, NODEPOOL_LABEL

    name = f"{pool}-{uuid.uuid4().hex[:5]}"
    custom.create_cluster_custom_object(*KARPENTER, "nodeclaims", {
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": name, "labels": {NODEPOOL_LABEL: pool, INSTANCE_TYPE_LABEL: itype,
                                              CAPACITY_TYPE_LABEL: capacity}},
        "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu-efa-nodeclass"},
                 "requirements": [{"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": [itype]}]},
    })
    return name


def exists(read) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        read()
        return True
    except ApiException as e:
        if e.status != 404:
            raise
        return False


def pod_spec(node: str, labels: dict | None = None, annotations: dict | None = None) -> dict:
    """A pod template llm-training's restricted Pod Security admits, placed on `node` (kwok runs it)."""
    return {
        "metadata": {"labels": labels or {}, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"operator": "Exists"}],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "main", "image": "registry.invalid/never-pulled:1",
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
        },
    }


FAIL_STAGE = "pod-container-running-failed.stage.kwok.x-k8s.io"  # kwok's chaos stage: the pod fails


def failing(node: str) -> dict:
    return pod_spec(node, labels={FAIL_STAGE: "true"}, annotations={f"{FAIL_STAGE}/exit-code": "1",
                                                                     f"{FAIL_STAGE}/delay": "0"})


def create_jobset(custom, name: str, template: dict) -> None:
    custom.create_namespaced_custom_object(*JOBSET, {
        "apiVersion": f"{JOBSET_GROUP}/{JOBSET_VERSION}", "kind": "JobSet",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": TRAINER_APP}},
        "spec": {"replicatedJobs": [{"name": "node", "replicas": 1, "template": {"spec": {
            "completions": 1, "parallelism": 1, "backoffLimit": 0, "template": template}}}]},
    })


def jobset_state(custom, name: str) -> str:
    from include.platforms.eks.jobs import jobset_progress

    try:
        return jobset_progress(custom.get_namespaced_custom_object(*JOBSET, name))["state"]
    except Exception as e:  # noqa: BLE001 - 404: gone
        if getattr(e, "status", None) == 404:
            return "absent"
        raise


# ---- 1. close, then open ----

def test_window_close_scales_the_experiment_pool_to_zero_and_open_restores_it(eks) -> None:
    custom = eks.admin.custom
    exp = [nodeclaim(custom, EXPERIMENT, "g5.12xlarge", "spot"), nodeclaim(custom, EXPERIMENT, "g6e.12xlarge", "spot")]
    others = [nodeclaim(custom, TRAINING, "p5.48xlarge", "on-demand"),
              nodeclaim(custom, INFERENCE, "g6e.12xlarge", "on-demand")]
    training_before = custom.get_cluster_custom_object(*KARPENTER, "nodepools", TRAINING)

    closed = tick(eks, CLOSED)
    assert not any(w["open"] for w in closed["windows"].values())
    assert closed["cleanup"] is not None and not closed["cleanup"]["dry_run"]
    acted = {(a["kind"], a["name"]): a for a in closed["cleanup"]["actions"]}
    assert acted[("NodePool", EXPERIMENT)]["done"], acted[("NodePool", EXPERIMENT)]
    for name in exp:
        assert acted[("NodeClaim", name)]["done"], acted[("NodeClaim", name)]
    assert not {("NodeClaim", name) for name in others} & set(acted), "another pool's nodes were touched"
    failed = [a for a in closed["cleanup"]["actions"] if a["error"]]
    assert not failed, failed
    # what the API server holds now: limit 0, the experiment pool's NodeClaims gone, the others kept
    assert limit(custom, EXPERIMENT) == "0"
    for name in exp:
        assert not exists(lambda n=name: custom.get_cluster_custom_object(*KARPENTER, "nodeclaims", n))
    for name in others:
        assert exists(lambda n=name: custom.get_cluster_custom_object(*KARPENTER, "nodeclaims", n)), name
    assert custom.get_cluster_custom_object(*KARPENTER, "nodepools", TRAINING) == training_before
    freed = closed["cleanup"]["freed"]
    assert freed["nodes"] >= 2 and freed["gpus"] >= 8  # g5.12xlarge + g6e.12xlarge: 4 GPUs each

    # Once per close: a later tick in the same closed period does nothing more.
    again = tick(eks, CLOSED + timedelta(minutes=5))
    assert again["cleanup"] is None and again["restored"] == []
    assert {k: v["phase"] for k, v in again["state"].items()} == {"production": "closed", "experiment": "closed"}

    # The next window opens: the limit comes back from k8s/, as the ServiceAccount; nothing else changes.
    opened = tick(eks, NEXT_OPEN)
    assert [(r["kind"], r["name"], r["verb"], r["done"], r["error"]) for r in opened["restored"]] == [
        ("NodePool", EXPERIMENT, "patch", True, "")]
    assert limit(custom, EXPERIMENT) == str(get_pool(EXPERIMENT).gpu_limit)
    assert custom.get_cluster_custom_object(*KARPENTER, "nodepools", TRAINING) == training_before
    assert tick(eks, NEXT_OPEN + timedelta(minutes=5))["restored"] == []  # idempotent
    for name in others:
        custom.delete_cluster_custom_object(*KARPENTER, "nodeclaims", name)


# ---- 2. a window open (DEFECT 1: the tick read gpu-training-pool, which the ClusterRole does not name) ----

def test_tick_with_a_window_open_succeeds_as_airflow_and_admits(eks) -> None:
    from include.scheduling.requests import admitted_run_id

    custom = eks.admin.custom
    set_limit(custom, EXPERIMENT, 0)  # as the last close left it
    training_before = custom.get_cluster_custom_object(*KARPENTER, "nodepools", TRAINING)
    rid = "req-open-window"
    eks.store.add(Request(id=rid, pool="experiment", gpus=8, hours=2.0, gpu_hours=16.0, cost_usd=40.0,
                          created_at=(OPEN - timedelta(hours=3)).isoformat(),
                          conf={"pool": "experiment", "window": "now"}))

    result = tick(eks, OPEN)  # today's code: 403 on get nodepools/gpu-training-pool, every tick in a window
    assert result["windows"]["experiment"]["open"] and result["windows"]["production"]["open"]
    assert [(r["name"], r["done"]) for r in result["restored"]] == [(EXPERIMENT, True)]
    assert limit(custom, EXPERIMENT) == str(get_pool(EXPERIMENT).gpu_limit)
    assert custom.get_cluster_custom_object(*KARPENTER, "nodepools", TRAINING) == training_before
    # Admission planned against the restored budget: the request runs as offhours__<id>.
    assert result["triggers"] == [{"trigger_run_id": admitted_run_id(rid),
                                   "conf": {"pool": "experiment", "window": "now"}}]
    assert eks.store.get(rid)["state"] == "admitted"
    assert result["cleanup"] is None  # nothing closed


# ---- 3. stopping an overrunning run (DEFECT 3: the marker went to /checkpoints on Airflow's pod) ----

def test_overrunning_run_is_stopped_held_and_readmitted(eks) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from include.lifecycle.training import hold_if_stopped
    from include.platforms.runs import run_names
    from include.scheduling.requests import admitted_run_id

    custom = eks.admin.custom
    rid = f"req-{uuid.uuid4().hex[:12]}"
    eks.store.add(Request(id=rid, pool="experiment", gpus=8, hours=4.0, gpu_hours=32.0, cost_usd=80.0,
                          created_at=(OPEN - timedelta(hours=1)).isoformat(),
                          conf={"pool": "experiment", "window": "now"}))
    eks.store.transition(rid, "admitted", "window open", admitted_at=(NEAR_CLOSE - timedelta(hours=1)).isoformat())
    names = run_names(eks.store.get(rid))
    assert names["run_id"] == admitted_run_id(rid)
    name = jobset_name(DAG, names["run_id"])
    # The run's JobSet, in progress: its pod waits for a node (kwok would otherwise complete it at once).
    create_jobset(custom, name, pod_spec("no-such-node"))
    wait_for("the JobSet to start", lambda: jobset_state(custom, name) == "active")
    # The training task's plan, as build_plan makes it (run name, checkpoint dir on the FSx mount).
    plan = {"dag_id": DAG, "run_id": names["run_id"], "run_name": names["run_name"],
            "checkpoint_dir": str(eks.ckpt_root / names["run_name"])}
    hold_if_stopped({"task": SimpleNamespace(plan=plan)})  # not stopped: the task may launch

    result = tick(eks, NEAR_CLOSE)
    [stopped] = result["stopped"]
    assert stopped["id"] == rid and stopped["run_name"] == names["run_name"]
    assert [(a["kind"], a["name"], a["done"], a["error"]) for a in stopped["actions"]] == [
        ("JobSet", name, True, "")]
    # Deleted as the ServiceAccount (Foreground: gone once its Job and pod are).
    wait_for("the JobSet to be deleted", lambda: jobset_state(custom, name) == "absent")
    record = eks.store.get(rid)
    assert record["state"] == "waiting" and record["stops"] == 1
    # The hold marker is in the data root (S3), where every Airflow task can read it ...
    markers = eks.s3.keys(f"{eks.prefix}/offhours/")
    held = [k for k in markers if names["run_name"] in k]
    assert held, f"no hold marker for {names['run_name']} under s3://{BUCKET}/{eks.prefix}/offhours/: {sorted(markers)}"
    body = json.loads(eks.s3.client().get_object(Bucket=BUCKET, Key=held[0])["Body"].read())
    assert body["why"] == "window closed" and body["stopped_at"]
    # ... and nothing was written where Airflow's pods have no volume.
    assert not eks.ckpt_root.exists(), sorted(str(p) for p in eks.ckpt_root.rglob("*"))
    with pytest.raises(AirflowFailException, match="stopped at window close"):
        hold_if_stopped({"task": SimpleNamespace(plan=plan)})  # a task retry does not relaunch it

    # A tick after the close still holds it; the next window re-admits it and lifts the hold.
    assert tick(eks, CLOSED)["triggers"] == []
    with pytest.raises(AirflowFailException):
        hold_if_stopped({"task": SimpleNamespace(plan=plan)})
    readmitted = tick(eks, NEXT_OPEN)
    assert [t["trigger_run_id"] for t in readmitted["triggers"]] == [names["run_id"]]  # same run: resumes
    assert not [k for k in eks.s3.keys(f"{eks.prefix}/offhours/") if names["run_name"] in k]
    hold_if_stopped({"task": SimpleNamespace(plan=plan)})
    assert not eks.ckpt_root.exists()


# ---- 4. leftovers ----

def closed_after(schedule, at: datetime) -> datetime:
    """The first whole hour from `at` on at which every pool's window is closed."""
    t = at.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    for _ in range(24 * 8):
        if all(pool.open_window(t) is None for pool in schedule.pools.values()):
            return t
        t += timedelta(hours=1)
    raise AssertionError(f"no closed hour in the week after {at}")


def test_close_cleans_up_finished_jobsets_and_evaluator_pods_not_running_ones(eks) -> None:
    custom, core = eks.admin.custom, eks.admin.core
    tag = uuid.uuid4().hex[:5]
    node = f"{EXPERIMENT}-node-0"
    done, crashed, busy = f"train-done-{tag}", f"train-crashed-{tag}", f"train-busy-{tag}"
    create_jobset(custom, done, pod_spec(node))
    create_jobset(custom, crashed, failing(node))
    create_jobset(custom, busy, pod_spec("no-such-node"))
    eval_labels = {"app.kubernetes.io/name": EVALUATOR_APP}
    eval_done, eval_busy = f"eval-done-{tag}", f"eval-busy-{tag}"
    for pod, template in ((eval_done, failing(f"{INFERENCE}-node-0")), (eval_busy, pod_spec(f"{INFERENCE}-node-0"))):
        template["metadata"]["labels"].update(eval_labels)
        core.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod",
                                        "metadata": {"name": pod, **template["metadata"]}, "spec": template["spec"]})
    wait_for("the JobSets to finish", lambda: (jobset_state(custom, done), jobset_state(custom, crashed),
                                               jobset_state(custom, busy)) == ("succeeded", "failed", "active"))
    wait_for("the evaluator pods to fail and to run", lambda: (
        core.read_namespaced_pod(eval_done, NS).status.phase, core.read_namespaced_pod(eval_busy, NS).status.phase)
        == ("Failed", "Running"))

    # Past the JobSets' TTL (windows.yaml finished_job_ttl_hours), in a closed window.
    ttl = timedelta(hours=float(eks.schedule.cleanup["finished_job_ttl_hours"]))
    now = closed_after(eks.schedule, datetime.now(UTC) + ttl)
    mine = {("JobSet", done), ("JobSet", crashed), ("Pod", eval_done)}
    untouched = {("JobSet", busy), ("Pod", eval_busy)}

    dry = tick(eks, now, dry_run=True)
    listed = {(a["kind"], a["name"]) for a in dry["cleanup"]["actions"]}
    assert mine <= listed and not untouched & listed
    assert all(not a["done"] for a in dry["cleanup"]["actions"])
    assert jobset_state(custom, done) == "succeeded" and jobset_state(custom, crashed) == "failed"
    assert exists(lambda: core.read_namespaced_pod(eval_done, NS))

    result = tick(eks, now)
    acted = {(a["kind"], a["name"]): a for a in result["cleanup"]["actions"]}
    for key in mine:
        assert acted[key]["done"] and not acted[key]["error"], acted[key]
    assert not untouched & set(acted)
    wait_for("the finished JobSets to be deleted",
             lambda: jobset_state(custom, done) == jobset_state(custom, crashed) == "absent")
    wait_for("the finished evaluator pod to be deleted", lambda: not exists(
        lambda: core.read_namespaced_pod(eval_done, NS)))
    assert jobset_state(custom, busy) == "active"  # no deletionTimestamp either
    assert core.read_namespaced_pod(eval_busy, NS).metadata.deletion_timestamp is None
    for name in (busy,):
        custom.delete_namespaced_custom_object(*JOBSET, name, propagation_policy="Background")
    core.delete_namespaced_pod(eval_busy, NS, grace_period_seconds=0)
