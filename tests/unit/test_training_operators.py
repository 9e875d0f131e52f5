"""The training operators and the eks platform's container jobs, against a fake API server.

Only the Kubernetes client's API methods are replaced (CustomObjectsApi / CoreV1Api /
NetworkingV1Api), by an in-memory cluster that records every call and answers like the API server:
objects, 404, 409. Everything above them is the real code: the provider's KubernetesHook and its
custom-object helpers, the platform's client (include/platforms/eks/kube.py), our operator and
trigger. So these tests check what would reach a cluster: which calls, in which order, with which
names and bodies, and that a retried task never starts a second JobSet.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException
from airflow.sdk.exceptions import TaskDeferred
from kubernetes.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi, NetworkingV1Api
from kubernetes.client.exceptions import ApiException
from llmops_operators import k8s_training
from llmops_operators.k8s_training import JobSetTrigger, KubernetesTrainingJobOperator
from llmops_operators.training import LocalTrainingJobOperator, training_job_operator

from include.errors import Forbidden, InputError
from include.platforms import get_platform
from include.platforms.eks import jobs as eks_jobs
from include.settings import get_settings
from include.training.k8s_job import JOB_LABEL, JOBSET_GROUP, JOBSET_PLURAL, JOBSET_VERSION, render
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
    """Enough of the API server for JobSets, their pods and logs, and NetworkPolicies; `calls` records
    every request. A created JobSet gets its child Job's pods, as the controllers would make them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.jobsets: dict[tuple[str, str], dict] = {}
        self.network_policies: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], list[dict]] = {}
        self.logs: dict[str, str] = {}  # pod name -> log text
        self.reads_until_deleted = 1  # a Foreground delete takes a while to finish

    def calls_of(self, method: str) -> list[dict]:
        return [kwargs for name, kwargs in self.calls if name == method]

    # -- jobset.x-k8s.io/v1alpha2 (namespaced custom objects) --
    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kwargs):
        assert (group, version, plural) == (JOBSET_GROUP, JOBSET_VERSION, JOBSET_PLURAL)
        self.calls.append(("create_namespaced_custom_object", {"namespace": namespace, "body": copy.deepcopy(body)}))
        key = (namespace, body["metadata"]["name"])
        if key in self.jobsets:
            raise _api_error(409, "AlreadyExists")
        self.jobsets[key] = {**copy.deepcopy(body), "status": {"restarts": 0, "replicatedJobsStatus": [
            {"name": "node", "active": 1, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}]}}
        template = body["spec"]["replicatedJobs"][0]["template"]["spec"]
        self.pods[key] = [
            {"metadata": {"name": f"{key[1]}-node-0-{i}-x{i}z", "namespace": namespace,
                          "creationTimestamp": "2025-06-01T02:00:00Z",
                          "labels": {**template["template"]["metadata"]["labels"],
                                     "jobset.sigs.k8s.io/jobset-name": key[1],
                                     "batch.kubernetes.io/job-completion-index": str(i)}},
             "status": {"phase": "Pending"}}
            for i in range(template["completions"])
        ]
        return copy.deepcopy(self.jobsets[key])

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        self.calls.append(("get_namespaced_custom_object", {"name": name, "namespace": namespace}))
        jobset = self.jobsets.get((namespace, name))
        if jobset is None:
            raise _api_error(404, "NotFound")
        if jobset["metadata"].get("deletionTimestamp"):
            jobset["_reads_left"] -= 1
            if jobset["_reads_left"] <= 0:
                del self.jobsets[(namespace, name)]
                self.pods.pop((namespace, name), None)
        return {k: copy.deepcopy(v) for k, v in jobset.items() if not k.startswith("_")}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        self.calls.append(("delete_namespaced_custom_object", {"name": name, "namespace": namespace, **kwargs}))
        jobset = self.jobsets.get((namespace, name))
        if jobset is None:
            raise _api_error(404, "NotFound")
        jobset["metadata"]["deletionTimestamp"] = "2025-06-01T03:00:00Z"
        jobset["_reads_left"] = self.reads_until_deleted
        return {"kind": "Status", "status": "Success"}

    def set_jobset(self, name: str, condition: str | None = None, reason: str = "", message: str = "",
                   restarts: int = 0, counted: int | None = None, **counts) -> None:
        jobset = self.jobsets[(get_settings().training_namespace, name)]
        status = {"restarts": restarts, "restartsCountTowardsMax": restarts if counted is None else counted,
                  "replicatedJobsStatus": [{"name": "node", "active": 0, "ready": 0, "succeeded": 0, "failed": 0,
                                            "suspended": 0, **counts}]}
        if condition:
            status["conditions"] = [{"type": condition, "status": "True", "reason": reason, "message": message,
                                     "lastTransitionTime": "2025-06-01T05:00:00Z"}]
            status["terminalState"] = condition
        jobset["status"] = status

    # -- core/v1 --
    def list_namespaced_pod(self, namespace, label_selector="", **kwargs):
        self.calls.append(("list_namespaced_pod", {"namespace": namespace, "label_selector": label_selector}))
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if "=" in term and "!" not in term)
        items = [p for (ns, _), pods in self.pods.items() if ns == namespace for p in pods
                 if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        return _model({"items": items}, "V1PodList")

    def read_namespaced_pod_log(self, name, namespace, **kwargs):
        self.calls.append(("read_namespaced_pod_log", {"name": name, "namespace": namespace, **kwargs}))
        if name not in self.logs:
            raise _api_error(404, "NotFound")
        lines = self.logs[name].splitlines()
        return "\n".join(lines[-kwargs["tail_lines"]:]) if kwargs.get("tail_lines") else self.logs[name]

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


API_METHODS = {
    CustomObjectsApi: ("create_namespaced_custom_object", "get_namespaced_custom_object",
                       "delete_namespaced_custom_object"),
    CoreV1Api: ("list_namespaced_pod", "read_namespaced_pod_log"),
    NetworkingV1Api: ("create_namespaced_network_policy", "delete_namespaced_network_policy"),
}


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
    for api, methods in API_METHODS.items():
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


class Lines:
    """A logger that keeps the formatted lines (pytest runs here without its logging plugin)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _keep(self, msg, *args, **kwargs):
        self.lines.append(msg % args if args else msg)

    info = warning = debug = error = _keep

    def progress(self) -> list[str]:
        return [line for line in self.lines if line.startswith("JobSet ")]


@pytest.fixture
def log_lines(monkeypatch) -> Lines:
    lines = Lines()
    for cls in (JobSetTrigger, KubernetesTrainingJobOperator):
        monkeypatch.setattr(cls, "log", property(lambda _self: lines))
    return lines


def operator(plan: dict | None = None, **kwargs) -> KubernetesTrainingJobOperator:
    return KubernetesTrainingJobOperator(task_id="train", plan=plan or training_plan(), **kwargs)


def run_try(try_number: int, plan: dict | None = None) -> tuple[TaskDeferred | None, dict]:
    """One task try as the task runner does it: a fresh operator, execute(), maybe a deferral."""
    op = operator(plan)
    ctx = context(try_number)
    try:
        op.execute(ctx)
    except TaskDeferred as deferred:
        return deferred, ctx
    return None, ctx


def assert_defers_on(deferred: TaskDeferred | None, name: str, namespace: str) -> None:
    assert deferred is not None, "the task should defer until the JobSet finishes"
    trigger = deferred.trigger
    assert isinstance(trigger, JobSetTrigger)
    assert (trigger.name, trigger.namespace) == (name, namespace)
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout.total_seconds() == render(training_plan()).restarts.max_wall_s  # the wall bound


# ---- the JobSet operator ----

def test_first_launch_creates_exactly_the_rendered_jobset_once_and_defers(cluster):
    plan = training_plan()
    launch = render(plan)
    deferred, ctx = run_try(1, plan)

    creates = cluster.calls_of("create_namespaced_custom_object")
    assert len(creates) == 1
    assert creates[0]["namespace"] == launch.namespace == get_settings().training_namespace
    assert creates[0]["body"] == launch.jobset  # exactly the rendered object, nothing merged over it
    assert_defers_on(deferred, launch.name, launch.namespace)
    assert ctx["ti"].xcom["jobset_name"] == launch.name
    assert ctx["ti"].xcom["jobset_namespace"] == launch.namespace


def test_a_retry_while_the_jobset_runs_reattaches_instead_of_creating(cluster):
    launch = render(training_plan())
    run_try(1)
    cluster.set_jobset(launch.name, restarts=1, active=1, ready=1)
    cluster.calls.clear()

    deferred, ctx = run_try(2)

    assert cluster.calls_of("create_namespaced_custom_object") == []
    assert cluster.calls_of("delete_namespaced_custom_object") == []
    assert len(cluster.jobsets) == 1
    assert_defers_on(deferred, launch.name, launch.namespace)


def test_a_retry_after_the_jobset_failed_deletes_it_and_creates_a_fresh_one(cluster):
    launch = render(training_plan())
    run_try(1)
    cluster.set_jobset(launch.name, "Failed", "ReachedMaxRestarts", "jobset failed due to reaching max number "
                       "of restarts", restarts=3, failed=1)
    cluster.reads_until_deleted = 3
    cluster.calls.clear()

    deferred, _ = run_try(2)

    deletes = cluster.calls_of("delete_namespaced_custom_object")
    assert deletes == [{"name": launch.name, "namespace": launch.namespace, "propagation_policy": "Foreground"}]
    creates = cluster.calls_of("create_namespaced_custom_object")
    assert len(creates) == 1 and creates[0]["body"]["metadata"]["name"] == launch.name
    # it waited until the old JobSet was gone (404) before creating the new one
    order = [name for name, _ in cluster.calls]
    last_read = max(i for i, name in enumerate(order) if name == "get_namespaced_custom_object")
    assert order.index("create_namespaced_custom_object") > last_read
    assert_defers_on(deferred, launch.name, launch.namespace)
    assert "conditions" not in cluster.jobsets[(launch.namespace, launch.name)]["status"]


def test_a_retry_after_the_jobset_succeeded_neither_creates_nor_waits(cluster):
    launch = render(training_plan())
    run_try(1)
    cluster.set_jobset(launch.name, "Completed", "AllJobsCompleted", "jobset completed successfully", succeeded=1)
    cluster.calls.clear()

    deferred, _ = run_try(2)

    assert deferred is None
    assert [name for name, _ in cluster.calls] == ["get_namespaced_custom_object"]


def test_a_rerun_after_the_jobset_expired_does_not_train_again(cluster):
    run_try(1)
    cluster.jobsets.clear()  # the finished JobSet is gone after its TTL
    cluster.result_published = True
    cluster.calls.clear()

    deferred, _ = run_try(2)

    assert deferred is None and cluster.calls == [], "a published result means the run is done"


def test_a_jobset_created_concurrently_is_adopted_not_duplicated(cluster, monkeypatch):
    launch = render(training_plan())
    real_create = cluster.create_namespaced_custom_object

    def racing_create(group, version, namespace, plural, body, **kwargs):  # another try wins the race
        real_create(group, version, namespace, plural, copy.deepcopy(body))
        return real_create(group, version, namespace, plural, body)

    monkeypatch.setattr(cluster, "create_namespaced_custom_object", racing_create)
    deferred, _ = run_try(1)
    assert len(cluster.jobsets) == 1 and cluster.calls_of("delete_namespaced_custom_object") == []
    assert_defers_on(deferred, launch.name, launch.namespace)


def test_a_bad_plan_fails_without_retry_and_without_any_api_call(cluster):
    bad = {**training_plan(), "instance_type": "t3.micro"}
    with pytest.raises(InputError, match="instance_type"):
        run_try(1, bad)
    assert cluster.calls == []


def test_the_trigger_logs_progress_and_fires_once_the_jobset_ends(cluster, monkeypatch, log_lines):
    launch = render(training_plan())
    deferred, _ = run_try(1)
    trigger = deferred.trigger
    kind, kwargs = trigger.serialize()
    assert kind == "llmops_operators.k8s_training.JobSetTrigger" and kwargs["name"] == launch.name
    states = iter([dict(restarts=0, active=1), dict(restarts=0, active=1), dict(restarts=1, active=1, ready=1),
                   dict(condition="Failed", reason="ReachedMaxRestarts", message="max restarts", restarts=3,
                        failed=1)])

    real_get = cluster.get_namespaced_custom_object

    def read(*args, **kwargs):  # each poll of the trigger: the JobSet has moved on
        cluster.set_jobset(launch.name, **next(states))
        return real_get(*args, **kwargs)

    monkeypatch.setattr(cluster, "get_namespaced_custom_object", read)
    trigger.poll_interval_s = 0

    async def first_event():
        async for event in trigger.run():
            return event

    log_lines.lines.clear()
    event = asyncio.run(first_event())
    assert event.payload["state"] == "failed" and event.payload["restarts"] == 3
    progress = log_lines.progress()
    assert len(progress) == 3, progress  # a line per change, not per poll
    assert "restarts 1 (1 of max 3 counted); jobs active=1 ready=1" in progress[1]


def test_a_failed_jobset_fails_the_task_with_its_reason_restarts_and_rank0_log(cluster):
    launch = render(training_plan())
    run_try(1)
    rank0 = next(p for p in cluster.pods[(launch.namespace, launch.name)]
                 if p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "0")
    cluster.logs[rank0["metadata"]["name"]] = "\n".join(f"step {i}" for i in range(200)) + "\nCUDA error: ECC"
    cluster.set_jobset(launch.name, "Failed", "ReachedMaxRestarts", "jobset failed due to reaching max number of "
                       "restarts", restarts=4, counted=3, failed=1)
    event = {"name": launch.name, "namespace": launch.namespace,
             **eks_jobs.jobset_progress(cluster.jobsets[(launch.namespace, launch.name)])}

    with pytest.raises(AirflowFailException) as info:  # the budget is spent: no Airflow retry on top
        operator().execute_complete(context(), event)
    message = str(info.value)
    assert f"JobSet {launch.namespace}/{launch.name} failed after 4 restart(s) (3 of max 3 counted)" in message
    assert "ReachedMaxRestarts: jobset failed due to reaching max number of restarts" in message
    assert message.rstrip().endswith("CUDA error: ECC") and "step 151" in message and "step 150" not in message
    assert cluster.calls_of("list_namespaced_pod")[-1]["label_selector"] == \
        f"{JOB_LABEL}={launch.name},batch.kubernetes.io/job-completion-index=0"
    assert cluster.calls_of("read_namespaced_pod_log")[-1]["container"] == "trainer"


def test_success_and_disappearance(cluster):
    launch = render(training_plan())
    done = {"name": launch.name, "namespace": launch.namespace, **eks_jobs.jobset_progress(
        {"status": {"conditions": [{"type": "Completed", "status": "True"}], "restarts": 1}})}
    assert operator().execute_complete(context(), done) is None
    gone = {**done, **eks_jobs.jobset_progress(None)}
    with pytest.raises(AirflowException, match="disappeared before it finished") as info:
        operator().execute_complete(context(), gone)
    assert not isinstance(info.value, AirflowFailException)  # a retry relaunches from the checkpoint


def test_without_deferral_it_polls_in_the_worker_within_the_bound(cluster, monkeypatch, log_lines):
    launch = render(training_plan())
    states = iter([dict(restarts=0, active=1), dict(restarts=1, active=1),
                   dict(condition="Completed", reason="AllJobsCompleted", message="ok", restarts=1, succeeded=1)])
    real_get = cluster.get_namespaced_custom_object

    def get(*args, **kwargs):
        if cluster.jobsets:
            cluster.set_jobset(launch.name, **next(states))
        return real_get(*args, **kwargs)

    monkeypatch.setattr(cluster, "get_namespaced_custom_object", get)
    op = operator(deferrable=False, poll_interval_s=0)
    assert op.execute(context()) is None
    lines = log_lines.progress()
    assert any("succeeded; restarts 1" in line for line in lines), lines
    assert any("restart budget 3" in line for line in log_lines.lines)
    assert len(cluster.calls_of("create_namespaced_custom_object")) == 1


def test_on_kill_deletes_the_jobset(cluster):
    launch = render(training_plan())
    op = operator()
    op.on_kill()  # nothing launched yet: nothing to delete
    assert cluster.calls_of("delete_namespaced_custom_object") == []
    with pytest.raises(TaskDeferred):
        op.execute(context())
    op.on_kill()
    assert cluster.calls_of("delete_namespaced_custom_object") == [
        {"name": launch.name, "namespace": launch.namespace, "propagation_policy": "Foreground"}]
    op.on_kill()  # already being deleted, or gone: no error


def test_operator_templates_the_plan():
    op = KubernetesTrainingJobOperator(task_id="train", plan="{{ ti.xcom_pull('plan') }}")
    assert op.template_fields == ("plan",) and op.deferrable
    assert LocalTrainingJobOperator.template_fields == ("plan",)


# ---- the eks platform's container jobs ----

def k8s_jobs() -> eks_jobs.KubernetesJobs:
    return eks_jobs.KubernetesJobs(get_settings())


def test_setup_rendezvous_creates_the_network_policy_once_and_tolerates_409(cluster):
    plan = training_plan()
    launch = render(plan)
    first = k8s_jobs().setup_rendezvous(plan)
    second = k8s_jobs().setup_rendezvous(plan)

    creates = cluster.calls_of("create_namespaced_network_policy")
    assert len(creates) == 2 and len(cluster.network_policies) == 1
    assert creates[0]["namespace"] == launch.namespace
    assert first["created"] is True and second["created"] is False
    assert first["master_addr"] == launch.master_addr == f"{launch.name}-node-0-0.{launch.name}.{launch.namespace}.svc"
    # the run's NetworkPolicy: ingress to exactly the run's pods, from exactly them
    policy = cluster.network_policies[(launch.namespace, launch.name)]
    selector = {JOB_LABEL: launch.name}
    assert policy["spec"]["podSelector"] == {"matchLabels": selector}
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": selector}}]}]
    assert cluster.calls_of("create_namespaced_custom_object") == []  # the JobSet is the launch task's


def test_setup_rendezvous_raises_other_api_errors(cluster, monkeypatch):
    monkeypatch.setattr(cluster, "create_namespaced_network_policy",
                        lambda namespace, body, **kw: (_ for _ in ()).throw(_api_error(403, "Forbidden")))
    with pytest.raises(Forbidden) as info:
        k8s_jobs().setup_rendezvous(training_plan())
    assert isinstance(info.value.__cause__, ApiException) and info.value.__cause__.status == 403


def test_teardown_deletes_the_network_policy_and_tolerates_404(cluster):
    plan = training_plan()
    launch = render(plan)
    k8s_jobs().setup_rendezvous(plan)
    k8s_jobs().teardown_rendezvous(plan)
    k8s_jobs().teardown_rendezvous(plan)  # already gone: fine
    assert cluster.calls_of("delete_namespaced_network_policy") == [
        {"name": launch.name, "namespace": launch.namespace}] * 2
    assert cluster.network_policies == {}
    assert cluster.calls_of("delete_namespaced_custom_object") == []  # no JobSet: nothing to stop


def test_teardown_stops_a_jobset_left_running_and_keeps_a_finished_one(cluster):
    """The wall bound: a training task that timed out while deferred leaves its JobSet running."""
    plan = training_plan()
    launch = render(plan)
    run_try(1)
    k8s_jobs().teardown_rendezvous(plan)
    assert cluster.calls_of("delete_namespaced_custom_object") == [
        {"name": launch.name, "namespace": launch.namespace, "propagation_policy": "Foreground"}]

    cluster.jobsets.clear()
    cluster.calls.clear()
    run_try(1)
    cluster.set_jobset(launch.name, "Completed", "AllJobsCompleted", "jobset completed successfully", succeeded=1)
    k8s_jobs().teardown_rendezvous(plan)
    assert cluster.calls_of("delete_namespaced_custom_object") == []  # kept for its logs until the TTL


def test_the_seam_dispatches_on_the_profile(cluster, monkeypatch):
    monkeypatch.setenv("LLMOPS_PROFILE", "eks")
    monkeypatch.setenv("LLMOPS_DATA_ROOT", "s3://llmops-data/prod")
    assert get_platform().jobs().setup_rendezvous(training_plan())["kind"] == "kubernetes"
    assert len(cluster.network_policies) == 1
    assert isinstance(training_job_operator(task_id="train", plan={}), KubernetesTrainingJobOperator)

    monkeypatch.setenv("LLMOPS_PROFILE", "local")
    monkeypatch.delenv("LLMOPS_DATA_ROOT")
    get_settings.cache_clear()
    assert get_platform().jobs().setup_rendezvous(training_plan()) == {"kind": "local", "master_addr": "127.0.0.1"}
    assert isinstance(training_job_operator(task_id="train", plan={}), LocalTrainingJobOperator)


def test_the_local_profile_never_imports_the_kubernetes_client():
    probe = ("import sys; from llmops_operators import training_job_operator; import include.platforms as p; "
             "op = training_job_operator(task_id='train', plan={}); p.get_platform().jobs().setup_rendezvous({}); "
             "print(type(op).__name__, 'kubernetes' in sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "LLMOPS_PROFILE": "local",
           "PYTHONPATH": os.pathsep.join([root, os.path.join(root, "plugins")])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["LocalTrainingJobOperator", "False"]
