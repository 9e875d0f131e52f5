"""The training operators and the Kubernetes side of the compute seam, against a fake API server.

Only the Kubernetes client's API methods are replaced (BatchV1Api / CoreV1Api), by an in-memory
cluster that records every call and answers like the API server: objects, 404, 409. Everything
above them is the real code: KubernetesHook, the provider's KubernetesJobOperator (build, merge,
serialise, defer) and our operator. So these tests check what would reach a cluster: which calls,
in which order, with which names and bodies, and that a retried task never starts a second Job.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from airflow.providers.cncf.kubernetes.triggers.job import KubernetesJobTrigger
from airflow.sdk.exceptions import TaskDeferred
from kubernetes.client import ApiClient, BatchV1Api, Configuration, CoreV1Api, NetworkingV1Api
from kubernetes.client.exceptions import ApiException
from llmops_operators import k8s_training
from llmops_operators.k8s_training import KubernetesTrainingJobOperator
from llmops_operators.training import LocalTrainingJobOperator, training_job_operator

from include import compute
from include.cluster.preflight import as_manifest
from include.compute import kubernetes as k8s_compute
from include.errors import InputError
from include.settings import get_settings
from include.training.k8s_job import JOB_LABEL, render
from tests.unit.test_k8s_job import plan as make_plan

NODES = 2
RUN_ID = "scheduled__2025-06-01T02:00:00+00:00"
_api = ApiClient(Configuration())


def _model(data: dict, kind: str):
    """Deserialise a JSON body into a client model, as the client does with a response."""
    return _api._ApiClient__deserialize(copy.deepcopy(data), kind)


def _api_error(status: int, reason: str) -> ApiException:
    return ApiException(status=status, reason=reason)


class FakeCluster:
    """Enough of the API server for Jobs, their pods and Services; `calls` records every request."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.jobs: dict[tuple[str, str], dict] = {}
        self.services: dict[tuple[str, str], dict] = {}
        self.network_policies: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], list[dict]] = {}
        self.pods_visible_after_lists = 0  # the Job controller is a little late creating pods
        self.reads_until_deleted = 1  # a Foreground delete takes a while to finish

    def calls_of(self, method: str) -> list[dict]:
        return [kwargs for name, kwargs in self.calls if name == method]

    # -- batch/v1 --
    def create_namespaced_job(self, namespace, body, **kwargs):
        body = _api.sanitize_for_serialization(body)
        self.calls.append(("create_namespaced_job", {"namespace": namespace, "body": body}))
        key = (namespace, body["metadata"]["name"])
        if key in self.jobs:
            raise _api_error(409, "AlreadyExists")
        self.jobs[key] = {**copy.deepcopy(body), "status": {"active": body["spec"]["parallelism"]}}
        template_labels = body["spec"]["template"]["metadata"]["labels"]
        self.pods[key] = [
            {"metadata": {"name": f"{key[1]}-{i}-x{i}z", "namespace": namespace,
                          "labels": {**template_labels, "batch.kubernetes.io/job-name": key[1],
                                     "batch.kubernetes.io/job-completion-index": str(i)}},
             "status": {"phase": "Pending"}}
            for i in range(body["spec"]["completions"])
        ]
        return _model(self.jobs[key], "V1Job")

    def read_namespaced_job_status(self, name, namespace, **kwargs):
        self.calls.append(("read_namespaced_job_status", {"name": name, "namespace": namespace}))
        job = self.jobs.get((namespace, name))
        if job is None:
            raise _api_error(404, "NotFound")
        if job["metadata"].get("deletionTimestamp"):
            job["_reads_left"] -= 1
            if job["_reads_left"] <= 0:
                del self.jobs[(namespace, name)]
                self.pods.pop((namespace, name), None)
        return _model({k: v for k, v in job.items() if not k.startswith("_")}, "V1Job")

    def delete_namespaced_job(self, name, namespace, **kwargs):
        self.calls.append(("delete_namespaced_job", {"name": name, "namespace": namespace, **kwargs}))
        job = self.jobs.get((namespace, name))
        if job is None:
            raise _api_error(404, "NotFound")
        job["metadata"]["deletionTimestamp"] = "2025-06-01T03:00:00Z"
        job["_reads_left"] = self.reads_until_deleted
        return {"kind": "Status", "status": "Success"}

    def set_job_condition(self, name: str, condition: str, reason: str) -> None:
        job = self.jobs[(get_settings().training_namespace, name)]
        job["status"] = {"failed" if condition == "Failed" else "succeeded": NODES,
                         "conditions": [{"type": condition, "status": "True", "reason": reason}]}

    # -- core/v1 --
    def list_namespaced_pod(self, namespace, label_selector="", **kwargs):
        self.calls.append(("list_namespaced_pod", {"namespace": namespace, "label_selector": label_selector}))
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if "=" in term and "!" not in term)
        if self.pods_visible_after_lists > 0:
            self.pods_visible_after_lists -= 1
            return _model({"items": []}, "V1PodList")
        items = [p for (ns, _), pods in self.pods.items() if ns == namespace for p in pods
                 if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        return _model({"items": items}, "V1PodList")

    def create_namespaced_service(self, namespace, body, **kwargs):
        body = _api.sanitize_for_serialization(body)
        self.calls.append(("create_namespaced_service", {"namespace": namespace, "body": body}))
        key = (namespace, body["metadata"]["name"])
        if key in self.services:
            raise _api_error(409, "AlreadyExists")
        self.services[key] = body
        return _model(body, "V1Service")

    def delete_namespaced_service(self, name, namespace, **kwargs):
        self.calls.append(("delete_namespaced_service", {"name": name, "namespace": namespace}))
        if self.services.pop((namespace, name), None) is None:
            raise _api_error(404, "NotFound")
        return {"kind": "Status", "status": "Success"}

    # -- networking.k8s.io/v1 --
    def create_namespaced_network_policy(self, namespace, body, **kwargs):
        body = _api.sanitize_for_serialization(body)
        self.calls.append(("create_namespaced_network_policy", {"namespace": namespace, "body": body}))
        key = (namespace, body["metadata"]["name"])
        if key in self.network_policies:
            raise _api_error(409, "AlreadyExists")
        self.network_policies[key] = body
        return _model(body, "V1NetworkPolicy")

    def delete_namespaced_network_policy(self, name, namespace, **kwargs):
        self.calls.append(("delete_namespaced_network_policy", {"name": name, "namespace": namespace}))
        if self.network_policies.pop((namespace, name), None) is None:
            raise _api_error(404, "NotFound")
        return {"kind": "Status", "status": "Success"}


@pytest.fixture(autouse=True)
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def cluster(monkeypatch) -> FakeCluster:
    fake = FakeCluster()

    def get_conn(hook):  # no kubeconfig, no network: a real client whose API methods are fakes
        hook._is_in_cluster = False
        return ApiClient(Configuration())

    monkeypatch.setattr(KubernetesHook, "get_conn", get_conn)
    for api, methods in ((BatchV1Api, ("create_namespaced_job", "read_namespaced_job_status",
                                       "delete_namespaced_job")),
                         (CoreV1Api, ("list_namespaced_pod", "create_namespaced_service",
                                      "delete_namespaced_service")),
                         (NetworkingV1Api, ("create_namespaced_network_policy",
                                            "delete_namespaced_network_policy"))):
        for method in methods:
            monkeypatch.setattr(api, method, lambda _self, *a, _m=method, **kw: getattr(fake, _m)(*a, **kw))
    monkeypatch.setattr(k8s_training, "DELETE_POLL_S", 0)
    fake.result_published = False  # the run's result.json in object storage
    monkeypatch.setattr(KubernetesTrainingJobOperator, "result_published", lambda _op: fake.result_published)
    return fake


class FakeTI:
    def __init__(self, try_number: int):
        self.dag_id, self.task_id, self.map_index, self.try_number = "llm_finetune", "train", -1, try_number
        self.xcom: dict[str, object] = {}

    def xcom_push(self, key, value):
        self.xcom[key] = value


def context(try_number: int = 1) -> dict:
    return {"ti": FakeTI(try_number), "run_id": RUN_ID, "dag": SimpleNamespace()}


def training_plan(**extra) -> dict:
    return make_plan(nodes=NODES, run_id=RUN_ID, **extra)


def run_try(try_number: int, plan: dict | None = None) -> tuple[TaskDeferred | None, dict]:
    """One task try as the task runner does it: a fresh operator, execute(), maybe a deferral."""
    op = KubernetesTrainingJobOperator(task_id="train", plan=plan or training_plan())
    op.startup_check_interval_seconds = 0
    ctx = context(try_number)
    try:
        op.execute(ctx)
    except TaskDeferred as deferred:
        return deferred, ctx
    return None, ctx


def assert_defers_on(deferred: TaskDeferred | None, name: str, namespace: str) -> None:
    assert deferred is not None, "the task should defer until the Job finishes"
    trigger = deferred.trigger
    assert isinstance(trigger, KubernetesJobTrigger)
    assert (trigger.job_name, trigger.job_namespace) == (name, namespace)
    assert sorted(trigger.pod_names) == [f"{name}-{i}-x{i}z" for i in range(NODES)]
    assert trigger.do_xcom_push is False and deferred.method_name == "execute_complete"


# ---- the Job operator ----

def test_first_launch_creates_exactly_the_rendered_job_and_defers(cluster):
    plan = training_plan()
    launch = render(plan)
    deferred, ctx = run_try(1, plan)

    creates = cluster.calls_of("create_namespaced_job")
    assert len(creates) == 1
    sent, want = creates[0]["body"], as_manifest(launch.job)
    assert creates[0]["namespace"] == launch.namespace == get_settings().training_namespace
    assert sent["metadata"]["name"] == launch.name
    spec = sent["spec"]
    assert spec["parallelism"] == spec["completions"] == NODES
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == launch.service.metadata.name == launch.name
    assert not any(c["name"] == "airflow-xcom-sidecar" for c in pod["containers"]), "no XCom sidecar"

    # The provider merges its own defaults over the rendered Job; only these may differ.
    template = spec["template"]["metadata"]
    assert template.pop("labels").items() >= want["spec"]["template"]["metadata"]["labels"].items()
    assert template.pop("name") and template.pop("namespace") == launch.namespace
    want["spec"]["template"]["metadata"].pop("labels")
    container = pod["containers"][0]
    assert container.pop("terminationMessagePolicy") == "File" and container.pop("envFrom") == []
    assert (pod.pop("hostNetwork"), pod.pop("imagePullSecrets"), pod.pop("initContainers")) == (False, [], [])
    assert sent == want

    assert_defers_on(deferred, launch.name, launch.namespace)
    assert ctx["ti"].xcom["job_name"] == launch.name
    assert cluster.calls_of("list_namespaced_pod")[0]["label_selector"] == f"{JOB_LABEL}={launch.name}"


def test_a_retry_while_the_job_runs_reattaches_instead_of_creating(cluster):
    launch = render(training_plan())
    run_try(1)
    cluster.calls.clear()

    deferred, ctx = run_try(2)

    assert cluster.calls_of("create_namespaced_job") == []
    assert cluster.calls_of("delete_namespaced_job") == []
    assert len(cluster.jobs) == 1
    assert_defers_on(deferred, launch.name, launch.namespace)
    assert ctx["ti"].xcom["job_name"] == launch.name


def test_a_retry_after_the_job_failed_deletes_it_and_creates_a_fresh_one(cluster):
    launch = render(training_plan())
    run_try(1)
    cluster.set_job_condition(launch.name, "Failed", "BackoffLimitExceeded")
    cluster.reads_until_deleted = 3
    cluster.calls.clear()

    deferred, _ = run_try(2)

    deletes = cluster.calls_of("delete_namespaced_job")
    assert deletes == [{"name": launch.name, "namespace": launch.namespace, "propagation_policy": "Foreground"}]
    creates = cluster.calls_of("create_namespaced_job")
    assert len(creates) == 1 and creates[0]["body"]["metadata"]["name"] == launch.name
    # it waited until the old Job was gone (404) before creating the new one
    order = [name for name, _ in cluster.calls]
    last_read = max(i for i, name in enumerate(order) if name == "read_namespaced_job_status")
    assert order.index("create_namespaced_job") > last_read
    assert cluster.calls[last_read - 1][0] == "read_namespaced_job_status"
    assert_defers_on(deferred, launch.name, launch.namespace)
    assert "conditions" not in cluster.jobs[(launch.namespace, launch.name)]["status"]


def test_a_retry_after_the_job_succeeded_neither_creates_nor_waits(cluster):
    launch = render(training_plan())
    run_try(1)
    cluster.set_job_condition(launch.name, "Complete", "CompletionsReached")
    cluster.calls.clear()

    deferred, ctx = run_try(2)

    assert deferred is None
    assert [name for name, _ in cluster.calls] == ["read_namespaced_job_status"]
    assert ctx["ti"].xcom["job_name"] == launch.name


def test_a_rerun_after_the_job_expired_does_not_train_again(cluster):
    run_try(1)
    cluster.jobs.clear()  # the finished Job is gone after its TTL
    cluster.result_published = True
    cluster.calls.clear()

    deferred, _ = run_try(2)

    assert deferred is None and cluster.calls == [], "a published result means the run is done"


def test_a_job_created_concurrently_is_adopted_not_duplicated(cluster, monkeypatch):
    launch = render(training_plan())
    real_create = cluster.create_namespaced_job

    def racing_create(namespace, body, **kwargs):  # another try wins between our read and our create
        real_create(namespace, copy.deepcopy(body))
        return real_create(namespace, body)

    monkeypatch.setattr(cluster, "create_namespaced_job", racing_create)
    deferred, _ = run_try(1)
    assert len(cluster.jobs) == 1
    assert_defers_on(deferred, launch.name, launch.namespace)


def test_pod_discovery_waits_for_the_job_controller(cluster):
    """The provider gives up after a few immediate lists (apache/airflow#70585); we wait."""
    cluster.pods_visible_after_lists = 6
    deferred, _ = run_try(1)
    assert len(cluster.calls_of("list_namespaced_pod")) == 7
    assert deferred is not None and len(deferred.trigger.pod_names) == NODES


def test_a_bad_plan_fails_without_retry_and_without_any_api_call(cluster):
    bad = {**training_plan(), "instance_type": "t3.micro"}
    with pytest.raises(InputError, match="instance_type"):
        run_try(1, bad)
    assert cluster.calls == []


def test_operator_templates_the_plan_and_never_pushes_through_a_sidecar():
    op = KubernetesTrainingJobOperator(task_id="train", plan="{{ ti.xcom_pull('plan') }}", do_xcom_push=True)
    assert "plan" in op.template_fields and "name" in op.template_fields
    assert op.do_xcom_push is False and op.deferrable and op.wait_until_job_complete
    assert LocalTrainingJobOperator.template_fields == ("plan",)


# ---- the compute seam, Kubernetes side ----

def test_setup_rendezvous_creates_the_service_once_and_tolerates_409(cluster):
    plan = training_plan()
    launch = render(plan)
    first = k8s_compute.setup_rendezvous(plan)
    second = k8s_compute.setup_rendezvous(plan)

    creates = cluster.calls_of("create_namespaced_service")
    assert len(creates) == 2 and len(cluster.services) == 1
    body = creates[0]["body"]
    assert creates[0]["namespace"] == launch.namespace
    assert body["metadata"]["name"] == launch.name  # the Job's pods name it as their subdomain
    assert body["spec"]["clusterIP"] == "None" and body["spec"]["publishNotReadyAddresses"] is True
    assert body["spec"]["selector"] == {JOB_LABEL: launch.name}
    assert first["created"] is True and second["created"] is False
    assert first["master_addr"] == f"{launch.name}-0.{launch.name}.{launch.namespace}.svc"
    # and the run's NetworkPolicy: ingress to exactly the Service's pods, from exactly them
    policy = cluster.network_policies[(launch.namespace, launch.name)]
    assert len(cluster.calls_of("create_namespaced_network_policy")) == 2 and len(cluster.network_policies) == 1
    assert policy["spec"]["podSelector"] == {"matchLabels": body["spec"]["selector"]}
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": body["spec"]["selector"]}}]}]


def test_setup_rendezvous_raises_other_api_errors(cluster, monkeypatch):
    monkeypatch.setattr(cluster, "create_namespaced_service",
                        lambda namespace, body, **kw: (_ for _ in ()).throw(_api_error(403, "Forbidden")))
    with pytest.raises(ApiException) as info:
        k8s_compute.setup_rendezvous(training_plan())
    assert info.value.status == 403


def test_teardown_deletes_the_service_and_tolerates_404(cluster):
    plan = training_plan()
    launch = render(plan)
    k8s_compute.setup_rendezvous(plan)
    k8s_compute.teardown_rendezvous(plan)
    k8s_compute.teardown_rendezvous(plan)  # already gone: fine
    assert cluster.calls_of("delete_namespaced_service") == [{"name": launch.name, "namespace": launch.namespace}] * 2
    assert cluster.services == {} and cluster.network_policies == {}
    assert len(cluster.calls_of("delete_namespaced_network_policy")) == 2
    assert cluster.calls_of("delete_namespaced_job") == []  # no Job: nothing to stop


def test_teardown_stops_a_job_left_running_and_keeps_a_finished_one(cluster):
    plan = training_plan()
    launch = render(plan)
    run_try(1)
    k8s_compute.teardown_rendezvous(plan)
    assert cluster.calls_of("delete_namespaced_job") == [
        {"name": launch.name, "namespace": launch.namespace, "propagation_policy": "Foreground"}]

    cluster.jobs.clear()
    cluster.calls.clear()
    run_try(1)
    cluster.set_job_condition(launch.name, "Complete", "CompletionsReached")
    k8s_compute.teardown_rendezvous(plan)
    assert cluster.calls_of("delete_namespaced_job") == []  # kept for its logs until the TTL


def test_the_seam_dispatches_on_the_profile(cluster, monkeypatch):
    monkeypatch.setenv("LLMOPS_PROFILE", "eks")
    monkeypatch.setenv("LLMOPS_DATA_ROOT", "s3://llmops-data/prod")
    assert compute.container_jobs().setup_rendezvous(training_plan())["kind"] == "kubernetes"
    assert len(cluster.services) == 1
    assert isinstance(training_job_operator(task_id="train", plan={}), KubernetesTrainingJobOperator)

    monkeypatch.setenv("LLMOPS_PROFILE", "local")
    monkeypatch.delenv("LLMOPS_DATA_ROOT")
    get_settings.cache_clear()
    assert compute.container_jobs().setup_rendezvous(training_plan()) == {"kind": "local", "master_addr": "127.0.0.1"}
    assert isinstance(training_job_operator(task_id="train", plan={}), LocalTrainingJobOperator)


def test_the_local_profile_never_imports_the_kubernetes_client():
    probe = ("import sys; from llmops_operators import training_job_operator; import include.compute as c; "
             "op = training_job_operator(task_id='train', plan={}); c.container_jobs().setup_rendezvous({}); "
             "print(type(op).__name__, 'kubernetes' in sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "LLMOPS_PROFILE": "local",
           "PYTHONPATH": os.pathsep.join([root, os.path.join(root, "plugins")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["LocalTrainingJobOperator", "False"]
