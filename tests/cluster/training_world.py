"""The world the training tests run in (test_training_on_cluster.py, test_jobset_fault_matrix.py): nodes
shaped like the pools, the checkpoint volume, kwok stages, S3 on moto, and what they call the code with.

What a test adds to what the code renders is kwok's markers on the training pods' template (and
a label on the evaluator pod), nothing else:
- kwok's chaos stage (controlplane.KWOK_STAGES) fails a Running pod carrying its label, with the
  exit code of its annotation. With a one-hour `delay` a rank stays Running until the test calls
  `exit_rank` (exit code, zero delay) or `finish_rank` (label removed: kwok's pod-complete stage
  ends it with 0). The delay needs an equal `jitter-delay`: kwok uses the jitter when it is not
  larger than the delay, and the stage's default jitter is 1 s.
- `KUBELET_STAGES` stand in for two things a kubelet does that kwok's fast stages leave out,
  for pods with the `KUBELET_LABEL` only: a running pod that is deleted ends Failed with 143
  (SIGTERM) before it goes (kwok removes it without a terminal phase, and the Job controller of
  a podReplacementPolicy: Failed Job then waits forever for a failure that never comes); a bare pod
  (kwok completes only pods a Job owns) runs to completion with 0.
- `KubeletLogs` is the kubelet's containerLogs endpoint for this module's nodes (kwok runs without
  a node port, so the API server's pods/log proxy would dial 127.0.0.1:10250 and fail): each
  container's log is `LOG_LINES` lines naming its pod, and `tailLines` is honoured.

conftest.py's `eks` and `forbidden` fixtures use `airflow_env`, `delete_runs` and `forbidden_guard`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
import threading
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import k8s_calls
import pytest
import yaml
from airflow.sdk.exceptions import TaskDeferred
from controlplane import REPO_ROOT, ControlPlane
from kubernetes.client import CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from llmops_operators import k8s_training
from llmops_operators.k8s_training import KubernetesTrainingJobOperator

from include.cluster.pools import (
    CAPACITY_TYPE_LABEL,
    EFA,
    GPU,
    INSTANCE_TYPE_LABEL,
    get_pools,
    pool_for_plan,
)
from include.settings import get_settings
from include.training.k8s_job import JOBSET_GROUP, JOBSET_NAME_LABEL, JOBSET_PLURAL, JOBSET_VERSION, render

pytestmark = pytest.mark.slow

TRAINING_NS = "llm-training"
CHAOS = "pod-container-running-failed.stage.kwok.x-k8s.io"  # kwok's chaos stage: label and annotation prefix
HOLD = "1h"
KUBELET_LABEL = ("test.llmops.io/kubelet", "kwok")  # the pods the kubelet stages below apply to
ZONE_LABEL = "topology.kubernetes.io/zone"
RESTART_ATTEMPT_LABEL = "jobset.sigs.k8s.io/restart-attempt"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
BUCKET = "llmops-cluster"
JOBSET = (JOBSET_GROUP, JOBSET_VERSION, TRAINING_NS, JOBSET_PLURAL)


# ---- kwok: the pods' lifecycle ----

def _stage(name: str, match: list[dict], status: str, weight: int | None = None) -> dict:
    spec: dict[str, Any] = {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {"matchExpressions": [
            {"key": f'.metadata.labels["{KUBELET_LABEL[0]}"]', "operator": "In", "values": [KUBELET_LABEL[1]]},
            *match]},
        "next": {"statusTemplate": status},
    }
    if weight is not None:
        spec["weight"] = weight  # beats kwok's pod-delete stage (no weight) on the same pod
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name}, "spec": spec}


def _terminated(exit_code: int, reason: str, phase: str) -> str:
    return (
        "{{ $now := Now }}\n"
        "containerStatuses:\n"
        "{{ range .spec.containers }}\n"
        "- image: {{ .image | Quote }}\n"
        "  name: {{ .name | Quote }}\n"
        "  ready: false\n"
        "  restartCount: 0\n"
        "  started: false\n"
        "  state:\n"
        "    terminated:\n"
        f"      exitCode: {exit_code}\n"
        "      finishedAt: {{ $now | Quote }}\n"
        f"      reason: {reason}\n"
        "      startedAt: {{ $now | Quote }}\n"
        "{{ end }}\n"
        f"phase: {phase}\n"
    )


KUBELET_STAGES = [
    _stage("llmops-test-stop-deleted-pod",
           [{"key": ".metadata.deletionTimestamp", "operator": "Exists"},
            {"key": ".status.phase", "operator": "In", "values": ["Running"]}],
           _terminated(143, "Error", "Failed"), weight=1),
    _stage("llmops-test-complete-bare-pod",
           [{"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".metadata.ownerReferences", "operator": "DoesNotExist"},
            {"key": ".status.phase", "operator": "In", "values": ["Running"]}],
           _terminated(0, "Completed", "Succeeded")),
]


def mark_for_kwok(pod_metadata: dict) -> None:
    """kwok's markers on a pod template: kept Running until `exit_rank`/`finish_rank`, kubelet stages on."""
    pod_metadata.setdefault("labels", {}).update({CHAOS: "true", KUBELET_LABEL[0]: KUBELET_LABEL[1]})
    pod_metadata.setdefault("annotations", {}).update({f"{CHAOS}/delay": HOLD, f"{CHAOS}/jitter-delay": HOLD})


def pod_template_metadata(jobset: dict) -> dict:
    return jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["metadata"]


class KwokTrainingOperator(KubernetesTrainingJobOperator):
    """The production operator; what it renders only gets kwok's markers on the pod template."""

    def _render(self):
        launch = super()._render()
        mark_for_kwok(pod_template_metadata(launch.jobset))
        return launch


def kwok_jobset(plan: dict) -> dict:
    """What KwokTrainingOperator sends for `plan`: the production rendering plus kwok's markers."""
    jobset = copy.deepcopy(render(plan).jobset)
    mark_for_kwok(pod_template_metadata(jobset))
    return jobset


def exit_rank(cluster: ControlPlane, pod, code: int) -> None:
    """The rank's container exits with `code` now (kwok's chaos stage; the pod ends Failed)."""
    CoreV1Api(cluster.api_client).patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace, {
        "metadata": {"annotations": {f"{CHAOS}/exit-code": str(code), f"{CHAOS}/delay": "0s",
                                     f"{CHAOS}/jitter-delay": "0s"}}})


def finish_rank(cluster: ControlPlane, pod) -> None:
    """The rank exits 0 (kwok's pod-complete stage, once the chaos label is gone)."""
    CoreV1Api(cluster.api_client).patch_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                       {"metadata": {"labels": {CHAOS: None}}})


# ---- reading the cluster (as the admin) and waiting ----

def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30, interval: float = 0.2,
             state: Callable[[], Any] | None = None):
    """Poll `probe` until it returns something truthy; fail with `state()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if result := probe():
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}"
                                 + (f"; last state: {state()}" if state else ""))
        time.sleep(interval)


def read_jobset(cluster: ControlPlane, name: str) -> dict | None:
    try:
        return CustomObjectsApi(cluster.api_client).get_namespaced_custom_object(*JOBSET, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def run_pods(cluster: ControlPlane, name: str, attempt: int | None = None) -> list:
    """The run's pods (all attempts, or restart attempt `attempt`), by completion index."""
    selector = f"{JOBSET_NAME_LABEL}={name}" + (f",{RESTART_ATTEMPT_LABEL}={attempt}" if attempt is not None else "")
    pods = CoreV1Api(cluster.api_client).list_namespaced_pod(TRAINING_NS, label_selector=selector).items
    return sorted(pods, key=lambda p: (p.metadata.labels.get(RESTART_ATTEMPT_LABEL, ""),
                                       int(p.metadata.annotations[COMPLETION_INDEX])))


def describe_run(cluster: ControlPlane, name: str) -> str:
    jobset = read_jobset(cluster, name)
    status = (jobset or {}).get("status") or {}
    pods = [(p.metadata.name.rsplit("-", 1)[0], p.metadata.labels.get(RESTART_ATTEMPT_LABEL), p.status.phase,
             p.spec.node_name, bool(p.metadata.deletion_timestamp)) for p in run_pods(cluster, name)]
    return f"jobset status {status}; pods (name, attempt, phase, node, deleting) {pods}"


def wait_running(cluster: ControlPlane, name: str, nodes: int, attempt: int = 0, timeout: float = 30) -> list:
    """The `nodes` ranks of restart attempt `attempt`, once all are Running (by completion index)."""
    def running():
        pods = [p for p in run_pods(cluster, name, attempt)
                if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        return pods if len(pods) == nodes else None

    return wait_for(f"{nodes} running rank(s) of {name} (attempt {attempt})", running, timeout,
                    state=lambda: describe_run(cluster, name))


def wait_gone(cluster: ControlPlane, name: str, timeout: float = 30) -> None:
    wait_for(f"JobSet {name} and its pods to be gone",
             lambda: read_jobset(cluster, name) is None and not run_pods(cluster, name), timeout,
             state=lambda: describe_run(cluster, name))


def first_event(trigger, timeout: float = 30) -> dict:
    """Run a trigger as the triggerer does, until its first event; its payload."""
    async def run():
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(run(), timeout))


# ---- what the tests call with ----

class FakeTI:
    """The task instance attributes the operators read (xcom_push, the pod operator's labels)."""

    def __init__(self, dag_id: str, task_id: str, try_number: int) -> None:
        self.dag_id, self.task_id, self.map_index, self.try_number = dag_id, task_id, -1, try_number
        self.start_date = datetime.now(UTC)
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def task_context(dag_id: str, run_id: str, task_id: str = "launch_training", try_number: int = 1) -> dict:
    return {"ti": FakeTI(dag_id, task_id, try_number), "run_id": run_id, "dag": SimpleNamespace(dag_id=dag_id)}


def training_plan(dag_id: str, run_id: str, pool: str = "production", nodes: int = 2, **extra) -> dict:
    """A flat training plan as the DAG's plan task makes it, on the pool's first instance type, whole nodes."""
    instance = pool_for_plan(pool, get_settings()).instances()[0]
    return {"run_name": "llama-lora", "dag_id": dag_id, "run_id": run_id, "pool": pool, "nodes": nodes,
            "gpus_per_node": instance.gpus, "instance_type": instance.name, "backend": "nemo",
            "base_model": "llama31_8b", "dataset_uri": f"s3://{BUCKET}/prod/curated/0123456789abcdef",
            "output_uri": f"s3://{BUCKET}/prod/runs/{run_id}", "checkpoint_dir": f"/checkpoints/{run_id}",
            **extra}


def launch(plan: dict, try_number: int = 1, **kwargs) -> tuple[KwokTrainingOperator, dict, TaskDeferred]:
    """One try of the launch_training task: a fresh operator, execute(), its deferral."""
    op = KwokTrainingOperator(task_id="launch_training", plan=plan, **kwargs)
    ctx = task_context(plan["dag_id"], plan["run_id"], try_number=try_number)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    return op, ctx, deferred.value


@dataclass
class Calls:
    """Calls of one client or hook method: keyword arguments, HTTP status, whether made as Airflow's SA."""

    entries: list[dict] = field(default_factory=list)

    @property
    def statuses(self) -> list[int]:
        return [e["status"] for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)


def spy(monkeypatch: pytest.MonkeyPatch, cls: type, method: str) -> Calls:
    real = getattr(cls, method)
    calls = Calls()

    def spied(target, *args, **kwargs):
        entry = {"kwargs": kwargs, "status": 200, "as_airflow": k8s_calls._as_production(target)}
        calls.entries.append(entry)
        try:
            return real(target, *args, **kwargs)
        except ApiException as exc:
            entry["status"] = exc.status
            raise

    monkeypatch.setattr(cls, method, spied)
    return calls


# ---- the world the tests run in: nodes, the checkpoint volume, kwok stages, S3 ----

@dataclass
class World:
    cluster: ControlPlane
    dag_id: str
    s3_endpoint: str
    nodes: dict[str, str]  # node name -> pool name
    kubelet: KubeletLogs

    def add_node(self, name: str, pool: str) -> None:
        add_pool_node(self.cluster, name, pool)
        self.nodes[name] = pool
        self.kubelet.serve(self.cluster, name)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id=S3_KEYS[0], aws_secret_access_key=S3_KEYS[1])


S3_KEYS = ("AKIAMOTOTESTKEY00000", "moto-test-secret-key-0000000000000000000")  # moto accepts any


def root_volume(node_class: str) -> str:
    """The root volume size an EC2NodeClass in k8s/ gives its nodes (their ephemeral-storage)."""
    for doc in yaml.safe_load_all((REPO_ROOT / "k8s" / "karpenter" / "ec2nodeclasses.yaml").read_text()):
        if doc and doc["metadata"]["name"] == node_class:
            return next(m["ebs"]["volumeSize"] for m in doc["spec"]["blockDeviceMappings"] if m.get("rootVolume"))
    raise AssertionError(f"no EC2NodeClass {node_class} in k8s/karpenter")


def add_pool_node(cluster: ControlPlane, name: str, pool_name: str, zone: str = "us-east-1a") -> None:
    """A kwok node as Karpenter launches it for `pool_name`: its first instance type's CPUs, memory,
    GPUs and EFA, its EC2NodeClass's root volume, the pool's labels and taints, and a zone."""
    pool = get_pools()[pool_name]
    itype = pool.instances()[0]
    capacity = {"cpu": str(itype.vcpu), "memory": f"{itype.memory_gib}Gi",
                "ephemeral-storage": root_volume(pool.node_class), GPU: str(itype.gpus)}
    if itype.efa_interfaces:
        capacity[EFA] = str(itype.efa_interfaces)
    cluster.add_node(name, taints=[t.__dict__ for t in pool.taints], capacity=capacity,
                     labels={**pool.labels, **pool.node_selector, INSTANCE_TYPE_LABEL: itype.name,
                             CAPACITY_TYPE_LABEL: pool.capacity_types[0], ZONE_LABEL: zone})


LOG_LINES = 200


def container_log(pod: str, container: str) -> list[str]:
    """What KubeletLogs serves for a container: LOG_LINES numbered lines naming it."""
    return [f"[{pod}/{container}] step {i}" for i in range(LOG_LINES)]


class KubeletLogs:
    """The kubelet's containerLogs endpoint (HTTPS, as the API server's pods/log proxy calls it) for
    the nodes `serve` points at it; what kwok, started without a node port, does not provide."""

    def __init__(self, cluster: ControlPlane) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404)
                    return
                lines = container_log(parts[2], parts[3])
                tail = parse_qs(url.query).get("tailLines")
                body = "".join(f"{line}\n" for line in (lines[-int(tail[0]):] if tail else lines)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cluster.pki / "tls.crt", cluster.pki / "tls.key")  # the API server skips the check
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, cluster: ControlPlane, node: str) -> None:
        """Point `node`'s kubelet endpoint here (kwok's heartbeats leave the field alone without a node port)."""
        CoreV1Api(cluster.api_client).patch_node_status(
            node, {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}}}})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _ensure_checkpoint_volume(cluster: ControlPlane, timeout: float = 30) -> None:
    """The FSx volume the FSx CSI driver would provision for the llm-checkpoints claim (k8s/training/pvc.yaml)."""
    core = CoreV1Api(cluster.api_client)
    claim = core.read_namespaced_persistent_volume_claim("llm-checkpoints", TRAINING_NS)
    if claim.status.phase != "Bound":
        try:
            core.create_persistent_volume({
                "metadata": {"name": "llm-checkpoints-fsx"},
                "spec": {"capacity": {"storage": claim.spec.resources.requests["storage"]},
                         "accessModes": claim.spec.access_modes, "storageClassName": claim.spec.storage_class_name,
                         "persistentVolumeReclaimPolicy": "Retain",
                         "claimRef": {"namespace": TRAINING_NS, "name": "llm-checkpoints"},
                         "csi": {"driver": "fsx.csi.aws.com", "volumeHandle": "fs-0123456789abcdef0"}},
            })
        except ApiException as exc:
            if exc.status != 409:
                raise
    wait_for("the llm-checkpoints claim to bind", lambda: core.read_namespaced_persistent_volume_claim(
        "llm-checkpoints", TRAINING_NS).status.phase == "Bound", timeout)


@contextmanager
def _kubelet_stages(cluster: ControlPlane) -> Generator[None, None, None]:
    custom = CustomObjectsApi(cluster.api_client)
    created = []
    for stage in KUBELET_STAGES:
        try:
            custom.create_cluster_custom_object("kwok.x-k8s.io", "v1alpha1", "stages", stage)
            created.append(stage["metadata"]["name"])
        except ApiException as exc:
            if exc.status != 409:  # another module of this session has them
                raise
    try:
        yield
    finally:
        for name in created:
            custom.delete_cluster_custom_object("kwok.x-k8s.io", "v1alpha1", "stages", name)


@contextmanager
def _moto_s3() -> Generator[str, None, None]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def delete_runs(cluster: ControlPlane, dag_id: str, timeout: float = 60) -> None:
    """Delete every JobSet of `dag_id` (and so its pods), and wait until they are gone."""
    custom = CustomObjectsApi(cluster.api_client)
    mine = [j["metadata"]["name"] for j in custom.list_namespaced_custom_object(*JOBSET)["items"]
            if j["metadata"].get("annotations", {}).get("llmops.io/dag-id") == dag_id]
    for name in mine:
        try:
            custom.delete_namespaced_custom_object(*JOBSET, name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise
    for name in mine:
        wait_gone(cluster, name, timeout)


@contextmanager
def training_world(cluster: ControlPlane, dag_id: str, nodes: dict[str, str]) -> Generator[World, None, None]:
    """Nodes (name -> pool), the checkpoint volume, the kubelet stages and an S3 (moto) for one module;
    on exit its JobSets, pods and nodes are gone again."""
    with _kubelet_stages(cluster), _moto_s3() as endpoint:
        _ensure_checkpoint_volume(cluster)
        world = World(cluster, dag_id, endpoint, {}, KubeletLogs(cluster))
        try:
            for name, pool in nodes.items():
                world.add_node(name, pool)
            world.s3().create_bucket(Bucket=BUCKET)
            yield world
        finally:
            world.kubelet.close()
            delete_runs(cluster, dag_id)
            core = CoreV1Api(cluster.api_client)  # and a bare pod a failed test left (the evaluator's)
            core.delete_collection_namespaced_pod(TRAINING_NS, label_selector="=".join(KUBELET_LABEL))
            for name in world.nodes:
                try:
                    core.delete_node(name)
                except ApiException as exc:
                    if exc.status != 404:  # a test deleted it (spot reclaim)
                        raise


def airflow_env(monkeypatch: pytest.MonkeyPatch, world: World) -> None:
    """On top of `as_airflow`: the data root in S3 (moto) behind `aws_default`, no stray KUBECONFIG."""
    from airflow.sdk.io import store

    monkeypatch.setenv("LLMOPS_DATA_ROOT", f"s3://{BUCKET}/prod")
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": S3_KEYS[0], "password": S3_KEYS[1],
        "extra": {"endpoint_url": world.s3_endpoint, "region_name": "us-east-1"}}))
    for key, value in (("AWS_ACCESS_KEY_ID", S3_KEYS[0]), ("AWS_SECRET_ACCESS_KEY", S3_KEYS[1]),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)  # nothing falls through to real AWS credentials
    # The pod operator would pass a KUBECONFIG of the person running the tests to its trigger.
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(k8s_training, "DELETE_POLL_S", 0.2)
    # A cache of its own for the test: S3 stores attached to this module's moto server never outlive it
    # (a later module on this worker would get a store pointing at a stopped server).
    monkeypatch.setattr(store, "_STORE_CACHE", {a: s for a, s in store._STORE_CACHE.items()
                                                if not a.startswith(("s3", "s3a", "s3n"))})
    get_settings.cache_clear()


def forbidden_guard(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every request answered 403, as 'METHOD url: message', including those the code catches."""
    from kubernetes.client import rest
    from kubernetes_asyncio.client import rest as async_rest

    forbidden: list[str] = []

    def note(method: str, url: str, exc: Exception) -> None:
        if getattr(exc, "status", None) == 403:
            forbidden.append(f"{method} {url}: {getattr(exc, 'body', '')}")

    real, async_real = rest.RESTClientObject.request, async_rest.RESTClientObject.request

    def request(self, method, url, *args, **kwargs):
        try:
            return real(self, method, url, *args, **kwargs)
        except ApiException as exc:
            note(method, url, exc)
            raise

    async def async_request(self, method, url, *args, **kwargs):
        try:
            return await async_real(self, method, url, *args, **kwargs)
        except Exception as exc:
            note(method, url, exc)
            raise

    monkeypatch.setattr(rest.RESTClientObject, "request", request)
    monkeypatch.setattr(async_rest.RESTClientObject, "request", async_request)
    return forbidden
