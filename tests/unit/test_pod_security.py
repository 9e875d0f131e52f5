"""The namespaces enforce Pod Security "restricted", and every pod rendered for them meets it.

The checks are the restricted profile's (kubernetes.io/docs/concepts/security/pod-security-standards),
applied to the rendered pod specs: what the API server's PodSecurity admission would refuse.
"""

from __future__ import annotations

import pytest

from include.evaluation.k8s_pod import manifest as evaluator_manifest
from include.serving.k8s_objects import version_objects
from include.settings import Settings
from include.training.k8s_job import render
from tests.k8s_schemas import REPO_ROOT, manifests_from_files
from tests.unit.test_eval_pod import job as eval_job
from tests.unit.test_k8s_job import plan as train_plan

SETTINGS = Settings(profile="eks", data_root="s3://llmops-data/prod")
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_violations(spec: dict) -> list[str]:
    out = []
    pod_ctx = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(key)
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: {sorted(kinds - RESTRICTED_VOLUMES)}")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    for c in [*spec["containers"], *(spec.get("initContainers") or [])]:
        ctx = c.get("securityContext") or {}
        name = c["name"]
        if ctx.get("privileged"):
            out.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds {caps['add']}")
        if not (ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))):
            out.append(f"{name}: runAsNonRoot")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        if (ctx.get("seccompProfile") or {}).get("type", pod_seccomp) not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{name}: hostPort")
    return out


def rendered_pods() -> dict[str, dict]:
    return {
        "trainer-production": render(train_plan(), SETTINGS).child_job()["spec"]["template"]["spec"],
        "trainer-experiment": render(train_plan(pool="experiment"), SETTINGS).child_job()["spec"]["template"]
        ["spec"],
        "trainer-single-node": render(train_plan(nodes=1), SETTINGS).child_job()["spec"]["template"]["spec"],
        "evaluator": evaluator_manifest(eval_job(), SETTINGS)["spec"],
        **{f"vllm-{method}": version_objects("llmops-assistant", 2, "s3://llmops-data/prod/models/a", settings=SETTINGS,
                                             method=method, base_model_uri="s3://llmops-data/prod/base/b")[
            "deployment"]["spec"]["template"]["spec"] for method in ("full", "lora")},
    }


@pytest.mark.parametrize("name", sorted(rendered_pods()))
def test_rendered_pods_meet_restricted(name):
    assert restricted_violations(rendered_pods()[name]) == []


def test_efa_pods_need_nothing_beyond_restricted():
    spec = rendered_pods()["trainer-production"]  # 4 x p5: requests vpc.amazonaws.com/efa
    assert "vpc.amazonaws.com/efa" in spec["containers"][0]["resources"]["limits"]
    assert restricted_violations(spec) == []


def test_the_checker_sees_violations():
    spec = rendered_pods()["evaluator"]
    bad = {**spec, "hostNetwork": True, "volumes": [{"name": "dev", "hostPath": {"path": "/dev/infiniband"}}],
           "containers": [{**spec["containers"][0], "securityContext": {"privileged": True}}]}
    found = "\n".join(restricted_violations(bad))
    assert "hostNetwork" in found and "hostPath" in found and "privileged" in found
    plugin = next(d for d in manifests_from_files(REPO_ROOT / "k8s")
                  if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "aws-efa-k8s-device-plugin")
    assert plugin["metadata"]["namespace"] == "kube-system"  # needs host access: not in a restricted namespace
    assert restricted_violations(plugin["spec"]["template"]["spec"])


@pytest.mark.parametrize("namespace", [SETTINGS.training_namespace, SETTINGS.serving_namespace])
def test_workload_namespaces_enforce_restricted(namespace):
    ns = next(d for d in manifests_from_files(REPO_ROOT / "k8s")
              if d["kind"] == "Namespace" and d["metadata"]["name"] == namespace)
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == labels["pod-security.kubernetes.io/warn"] == "restricted"
