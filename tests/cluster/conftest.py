"""The session's local control plane (controlplane.py): built once, started once, stopped at the end.

The build is a no-op when the binaries are up to date (scripts/build_control_plane.sh keeps a
stamp); a first build on a new machine takes minutes (`scripts/test.sh` starts it in the background
so that it overlaps the end-to-end tests).

Fixtures for the eks code paths:
- `cluster`: the control plane with `kubectl kustomize k8s/` server-side applied, and one kwok node
  per NodePool shaped like its first instance type (labels, taints, GPUs, EFA), as Karpenter would
  have launched it.
- `as_airflow`: the Airflow connection `kubernetes_default` authenticates as Airflow's production
  ServiceAccount (a TokenRequest token), never as an admin, so a call the Role does not grant fails
  here as it would on EKS. The project's code runs unchanged through the provider's KubernetesHook.
Every call the code makes through the kubernetes client is recorded (k8s_calls.py) for the
coverage test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import k8s_calls
import pytest
import yaml
from controlplane import ControlPlane, build

from include import prereqs

AIRFLOW_NS, AIRFLOW_SA = "airflow", "airflow-worker"  # k8s/airflow/serviceaccount.yaml


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    prereqs.find("go")  # a missing toolchain fails in one line, never skips
    build()
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane) -> ControlPlane:
    """k8s/ applied as the README tells an operator, and a node per pool."""
    control_plane.apply_project()
    return control_plane


@pytest.fixture
def as_airflow(cluster: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> ControlPlane:
    """The eks profile, with `kubernetes_default` as Airflow's ServiceAccount."""
    kubeconfig = cluster.kubeconfig_for(AIRFLOW_NS, AIRFLOW_SA)
    k8s_calls.PRODUCTION_TOKENS.add(yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"])
    conn = {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig), "in_cluster": False}}
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(conn))
    monkeypatch.delenv("KUBECONFIG", raising=False)  # the provider refuses two sources of config
    monkeypatch.setenv("LLMOPS_PROFILE", "eks")
    from include.settings import get_settings

    get_settings.cache_clear()
    yield cluster
    get_settings.cache_clear()


@pytest.fixture
def forbidden(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """No request of the test may be refused (403), not even one the code catches and only logs."""
    from training_world import forbidden_guard

    refused = forbidden_guard(monkeypatch)
    yield refused
    assert not refused, "requests the Role or the admission policy refused:\n" + "\n".join(refused)


@pytest.fixture
def eks(as_airflow: ControlPlane, world, forbidden: list[str], monkeypatch: pytest.MonkeyPatch):
    """The training modules' eks profile: as Airflow, over the module's `world` (training_world.py:
    its nodes, S3 and stages), no 403 allowed; each test starts with the nodes free."""
    from training_world import airflow_env, delete_runs

    airflow_env(monkeypatch, world)
    yield world
    delete_runs(world.cluster, world.dag_id)


@pytest.fixture(scope="session", autouse=True)
def record_k8s_calls() -> Iterator[None]:
    """Append every kubernetes-client call of this session to $LLMOPS_K8S_CALLS (coverage test)."""
    path = os.environ.get("LLMOPS_K8S_CALLS")
    with k8s_calls.recording(path):
        yield
