"""Acceptance for the eks objects: the real `kubectl kustomize k8s/` output and every object the DAGs
render validate against the Kubernetes 1.32 schemas (EKS's oldest supported minor here) and the
project's pinned 1.33, and against the CRDs in ../shared/crds."""

from __future__ import annotations

import copy

import pytest

from include.evaluation.k8s_pod import manifest as evaluator_manifest
from include.settings import Settings
from include.training.k8s_job import render
from tests.k8s_schemas import (
    KUBERNETES_VERSION,
    REPO_ROOT,
    kustomize_build,
    kustomize_command,
    needs_crds,
    require_crds,
    validation_errors,
)
from tests.unit.test_eval_pod import job as eval_job
from tests.unit.test_k8s_job import plan as train_plan

VERSIONS = ("1.32", KUBERNETES_VERSION)
SETTINGS = Settings(profile="eks", data_root="s3://llmops-data/prod")


def kustomized() -> list[dict]:
    if kustomize_command() is None:
        pytest.fail("no kubectl/kustomize binary: run `make install` (it runs scripts/install_kubectl.py)")
    return kustomize_build(REPO_ROOT / "k8s")


def rendered() -> list[dict]:
    out = []
    for pool, nodes in (("production", 4), ("production", 1), ("experiment", 2)):
        launch = render(train_plan(pool=pool, nodes=nodes), SETTINGS)
        out += [*launch.manifests(), launch.child_job()]
    return [*out, evaluator_manifest(eval_job(), SETTINGS)]


def test_kustomize_output_has_the_least_privilege_objects():
    kinds = {(d["kind"], d["metadata"]["name"]) for d in kustomized()}
    assert {("ValidatingAdmissionPolicy", "llm-training-airflow-guard"),
            ("ValidatingAdmissionPolicyBinding", "llm-training-airflow-guard"),
            ("NetworkPolicy", "default-deny"), ("ServiceAccount", "llm-evaluator"),
            ("DaemonSet", "nvidia-device-plugin-daemonset"), ("DaemonSet", "aws-efa-k8s-device-plugin")} <= kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_kustomized_object_validates(version):
    docs = kustomized()
    if any(needs_crds(d) for d in docs):
        require_crds()
    errors = [e for d in docs for e in validation_errors(d, version)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_object_validates(version):
    docs = rendered()
    assert {d["kind"] for d in docs} == {"JobSet", "Job", "NetworkPolicy", "Pod"}
    require_crds()  # the JobSet validates against its CRD
    errors = [e for d in docs for e in validation_errors(d, version)]
    assert not errors, "\n".join(errors)


def test_the_validator_refuses_a_bad_network_policy_and_admission_policy():
    policy = copy.deepcopy(render(train_plan(), SETTINGS).manifests()[0])
    policy["spec"]["ingress"][0]["form"] = policy["spec"]["ingress"][0].pop("from")
    assert any("form" in e for e in validation_errors(policy, "1.32"))
    vap = next(d for d in kustomized() if d["kind"] == "ValidatingAdmissionPolicy")
    vap["spec"]["validations"][0]["expresion"] = vap["spec"]["validations"][0].pop("expression")
    assert validation_errors(vap, "1.32")
