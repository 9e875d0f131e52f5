"""The local control plane does what the eks profile's tests need from a real cluster.

(a) `kubectl kustomize k8s/ | kubectl apply --server-side -f -` is accepted by a real API server
    with the real CRDs, strict field validation and admission (no unknown fields, no warnings);
(b) RBAC, called as Airflow's production ServiceAccount with a TokenRequest token: what its Roles
    grant is allowed, what they do not (including a resourceNames miss) is refused with 403; and
    the training namespace's ValidatingAdmissionPolicy admits a run's NetworkPolicy, not a wider one;
(c) scheduler + controller-manager + kwok + JobSet work end to end: a Job and a JobSet run to
    completion on a kwok node, the JobSet webhook validates, and a kwok chaos stage fails a pod
    with the exit code asked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from controlplane import CRDS, REPO_ROOT, ControlPlane, module_dir

pytestmark = pytest.mark.slow

AIRFLOW_NS, AIRFLOW_SA = "airflow", "airflow-worker"  # k8s/airflow/serviceaccount.yaml
TRAINING_NS = "llm-training"  # k8s/training/rbac.yaml: the Role Airflow's ServiceAccount is bound to
SMOKE_NS = "cp-smoke"  # a plain namespace for (c): no Pod Security or admission policy of the project


@pytest.fixture(scope="module")
def applied(cluster: ControlPlane) -> subprocess.CompletedProcess:
    """k8s/ rendered by kustomize and server-side applied, exactly as the README tells an operator:
    the session's one apply (conftest `cluster`), made before any test changed an object."""
    return cluster.applied


def test_k8s_manifests_apply_cleanly(applied: subprocess.CompletedProcess) -> None:
    assert applied.returncode == 0, f"apply refused:\n{applied.stderr}"
    warnings = [line for line in applied.stderr.splitlines() if "warning" in line.lower()]
    assert not warnings, "the API server warned:\n" + "\n".join(warnings)
    assert "serverside-applied" in applied.stdout


def test_installed_crds_are_the_ones_the_schema_tests_use() -> None:
    """The CRDs installed here (from Go modules) and ../shared/crds (the offline schema tests'
    copies) must be the same files, or the two kinds of test would prove different things."""
    shared = Path(os.environ.get("LLMOPS_SHARED_CRDS", REPO_ROOT.parent / "shared" / "crds"))
    if not shared.is_dir():
        pytest.skip(f"no shared CRDs at {shared}")
    ours = {Path(f).name: module_dir(tools, module) / f for tools, module, files in CRDS for f in files}
    theirs = {p.name: p for p in shared.rglob("*.yaml")}
    assert set(theirs) <= set(ours), f"not installed here: {sorted(set(theirs) - set(ours))}"
    differ = [name for name, path in theirs.items() if path.read_bytes() != ours[name].read_bytes()]
    assert not differ, f"differ from {shared}: {differ}"


# ---- (b) RBAC as the ServiceAccount ----

def _call(cp: ControlPlane, kubeconfig, fn) -> int:
    """HTTP status of one API call made with `kubeconfig`'s identity (200 when it succeeds)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        fn(client, api)
        return 200
    except ApiException as e:
        return e.status
    finally:
        api.close()


def test_airflow_service_account_gets_exactly_its_roles(control_plane: ControlPlane, applied) -> None:
    assert applied.returncode == 0, "needs k8s/ applied"
    kubeconfig = control_plane.kubeconfig_for(AIRFLOW_NS, AIRFLOW_SA)
    whoami = control_plane.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                                   kubeconfig=kubeconfig).stdout
    assert whoami == f"system:serviceaccount:{AIRFLOW_NS}:{AIRFLOW_SA}"

    def custom(c, api):
        return c.CustomObjectsApi(api)

    allowed = {
        "list pods in llm-training": lambda c, api: c.CoreV1Api(api).list_namespaced_pod(TRAINING_NS),
        "list jobsets in llm-training": lambda c, api: custom(c, api).list_namespaced_custom_object(
            "jobset.x-k8s.io", "v1alpha2", TRAINING_NS, "jobsets"),
        "get nodepool gpu-experiment-pool": lambda c, api: custom(c, api).get_cluster_custom_object(
            "karpenter.sh", "v1", "nodepools", "gpu-experiment-pool"),
        "list nodeclaims": lambda c, api: custom(c, api).list_cluster_custom_object(
            "karpenter.sh", "v1", "nodeclaims"),
    }
    refused = {
        "list secrets in llm-training": lambda c, api: c.CoreV1Api(api).list_namespaced_secret(TRAINING_NS),
        "list batch jobs in llm-training": lambda c, api: c.BatchV1Api(api).list_namespaced_job(TRAINING_NS),
        "list pods in default": lambda c, api: c.CoreV1Api(api).list_namespaced_pod("default"),
        # resourceNames: the Role names gpu-experiment-pool only
        "get nodepool gpu-training-pool": lambda c, api: custom(c, api).get_cluster_custom_object(
            "karpenter.sh", "v1", "nodepools", "gpu-training-pool"),
        "list nodepools": lambda c, api: custom(c, api).list_cluster_custom_object(
            "karpenter.sh", "v1", "nodepools"),
    }
    # The authorizer sees new RoleBindings through an informer: wait until the first grant is live.
    first = next(iter(allowed.values()))
    _wait_for("RBAC to see k8s/'s bindings", lambda: _call(control_plane, kubeconfig, first) == 200, timeout=30)
    got = {what: _call(control_plane, kubeconfig, fn) for what, fn in {**allowed, **refused}.items()}
    assert got == {**dict.fromkeys(allowed, 200), **dict.fromkeys(refused, 403)}


def test_admission_policy_admits_a_runs_network_policy_and_refuses_a_wider_one(
        control_plane: ControlPlane, applied) -> None:
    """The ValidatingAdmissionPolicy of k8s/training, evaluated by the real API server for the real
    caller: the NetworkPolicy include/cluster/network.py renders passes, one that also admits
    another namespace's pods is denied with the policy's message."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from include.cluster.network import run_network_policy

    assert applied.returncode == 0, "needs k8s/ applied"
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig_for(AIRFLOW_NS, AIRFLOW_SA)))
    net = client.NetworkingV1Api(api)
    wider = run_network_policy("ft-wider", TRAINING_NS)
    wider.spec.ingress[0]._from[0].namespace_selector = client.V1LabelSelector(match_labels={})

    def refused_wider() -> ApiException | None:
        # A new policy takes effect once the API server's admission informers have it (well under a
        # second here): until then the create succeeds, so undo it and ask again.
        try:
            net.create_namespaced_network_policy(TRAINING_NS, wider)
        except ApiException as e:
            return e
        net.delete_namespaced_network_policy("ft-wider", TRAINING_NS)
        return None

    try:
        refused = _wait_for("the admission policy to take effect", refused_wider, timeout=30)
        net.create_namespaced_network_policy(TRAINING_NS, run_network_policy("ft-admitted", TRAINING_NS))
    finally:
        api.close()
    message = json.loads(refused.body)["message"]
    assert refused.status == 403
    assert "ValidatingAdmissionPolicy 'llm-training-airflow-guard'" in message
    assert "only a run's own NetworkPolicy" in message


# ---- (c) scheduler + controller-manager + kwok + JobSet, end to end ----

def _wait_for(what: str, probe, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := probe():
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _condition(obj: dict, kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in obj.get("status", {}).get("conditions") or [])


def _pod_template(labels: dict | None = None, annotations: dict | None = None) -> dict:
    return {
        "metadata": {"labels": labels or {}, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "main", "image": "registry.invalid/never-pulled:1",
                            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
        },
    }


@pytest.fixture(scope="module")
def smoke(control_plane: ControlPlane):
    """A kwok node (tainted like a pool node) and a namespace for the end-to-end checks."""
    from kubernetes import client

    control_plane.add_node("kwok-node-0", labels={"node.kubernetes.io/instance-type": "m5.8xlarge"},
                           taints=[{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}])
    client.CoreV1Api(control_plane.api_client).create_namespace({"metadata": {"name": SMOKE_NS}})
    _wait_for("the default ServiceAccount in the smoke namespace", lambda: _has_default_sa(control_plane))
    return control_plane


def _has_default_sa(cp: ControlPlane) -> bool:
    from kubernetes import client

    return any(sa.metadata.name == "default"
               for sa in client.CoreV1Api(cp.api_client).list_namespaced_service_account(SMOKE_NS).items)


def test_indexed_job_runs_to_completion_on_a_kwok_node(smoke: ControlPlane) -> None:
    from kubernetes import client

    batch = client.BatchV1Api(smoke.api_client)
    batch.create_namespaced_job(SMOKE_NS, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "indexed"},
        "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0,
                 "template": _pod_template()},
    })
    job = _wait_for("the Job to complete", lambda: _completed_job(smoke, "indexed"))
    assert job["status"]["succeeded"] == 2
    pods = client.CoreV1Api(smoke.api_client).list_namespaced_pod(SMOKE_NS, label_selector="job-name=indexed").items
    assert {p.spec.node_name for p in pods} == {"kwok-node-0"}  # placed by kube-scheduler
    assert {p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods} == {"0", "1"}


def _completed_job(cp: ControlPlane, name: str) -> dict | None:
    from kubernetes import client

    job = cp.api_client.sanitize_for_serialization(client.BatchV1Api(cp.api_client).read_namespaced_job(name, SMOKE_NS))
    assert not _condition(job, "Failed"), job["status"]
    return job if _condition(job, "Complete") else None


def _jobset(name: str, **spec) -> dict:
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": name},
        "spec": {
            "replicatedJobs": [{"name": "node", "replicas": 1, "template": {"spec": {
                "completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0,
                "template": _pod_template()}}}],
            **spec,
        },
    }


def test_jobset_runs_to_completion_with_its_headless_service(smoke: ControlPlane) -> None:
    from kubernetes import client

    custom = client.CustomObjectsApi(smoke.api_client)
    args = ("jobset.x-k8s.io", "v1alpha2", SMOKE_NS, "jobsets")
    custom.create_namespaced_custom_object(*args, _jobset("train"))

    def completed():
        js = custom.get_namespaced_custom_object(*args, "train")
        assert not _condition(js, "Failed"), js.get("status")
        return js if _condition(js, "Completed") else None

    _wait_for("the JobSet to complete", completed)
    core = client.CoreV1Api(smoke.api_client)
    assert core.read_namespaced_service("train", SMOKE_NS).spec.cluster_ip == "None"  # the rank-0 DNS name
    pods = core.list_namespaced_pod(SMOKE_NS, label_selector="jobset.sigs.k8s.io/jobset-name=train").items
    assert sorted(p.spec.hostname for p in pods) == ["train-node-0-0", "train-node-0-1"]
    assert {p.spec.subdomain for p in pods} == {"train"}


def test_jobset_webhook_refuses_an_invalid_jobset(smoke: ControlPlane) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    bad = _jobset("bad", successPolicy={"operator": "All", "targetReplicatedJobs": ["no-such-job"]})
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(smoke.api_client).create_namespaced_custom_object(
            "jobset.x-k8s.io", "v1alpha2", SMOKE_NS, "jobsets", bad)
    status = json.loads(refused.value.body)
    assert status["code"] == 422
    assert status["message"].startswith('admission webhook "vjobset.kb.io" denied the request')
    assert "'no-such-job' does not appear in .spec.ReplicatedJobs" in status["message"]


def test_kwok_chaos_stage_fails_a_pod_with_the_exit_code_asked_for(smoke: ControlPlane) -> None:
    from kubernetes import client

    stage = "pod-container-running-failed.stage.kwok.x-k8s.io"
    template = _pod_template(labels={stage: "true"}, annotations={f"{stage}/exit-code": "42"})
    client.BatchV1Api(smoke.api_client).create_namespaced_job(SMOKE_NS, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "crash"},
        "spec": {"backoffLimit": 0, "template": template},
    })
    batch = client.BatchV1Api(smoke.api_client)
    _wait_for("the Job to fail", lambda: _condition(
        smoke.api_client.sanitize_for_serialization(batch.read_namespaced_job("crash", SMOKE_NS)), "Failed"))
    pods = client.CoreV1Api(smoke.api_client).list_namespaced_pod(SMOKE_NS, label_selector="job-name=crash").items
    statuses = [s for p in pods for s in p.status.container_statuses or []]
    assert {s.state.terminated.exit_code for s in statuses if s.state.terminated} == {42}


def test_admission_policy_type_checks(control_plane: ControlPlane, applied) -> None:
    """The API server type-checks the policy's CEL against every kind it matches. Fields of another
    kind are expected warnings; a type error (no matching overload) is a rule that cannot hold."""
    from kubernetes import client

    assert applied.returncode == 0, "needs k8s/ applied"
    api = client.AdmissionregistrationV1Api(control_plane.api_client)

    def checked():
        status = api.read_validating_admission_policy("llm-training-airflow-guard").status
        return status and status.type_checking and status.type_checking.expression_warnings is not None

    _wait_for("the policy's type check", checked, timeout=30)
    warnings = api.read_validating_admission_policy("llm-training-airflow-guard").status.type_checking
    errors = [f"{w.field_ref}: {w.warning}" for w in warnings.expression_warnings
              if "no matching overload" in w.warning]
    assert not errors, "\n".join(errors)
