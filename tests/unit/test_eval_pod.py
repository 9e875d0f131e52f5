"""The evaluator pod: schema-valid, placeable on the inference pool, shell-free, secret-free, and what
KubernetesPodOperator actually submits."""

from __future__ import annotations

import json
import re

import pytest

from include.cluster.pools import GPU, NODEPOOL_LABEL, get_pool
from include.cluster.preflight import as_manifest, check_pod_placement
from include.evaluation.job import JobError, validate_job
from include.evaluation.judge import JudgeConfig
from include.evaluation.k8s_pod import (
    COMMAND,
    CONTAINER,
    JUDGE_SECRET,
    SERVICE_ACCOUNT,
    manifest,
    pod_name,
    render_pod,
)
from include.settings import Settings
from tests.k8s_schemas import REPO_ROOT, manifests_from_files, validate

SETTINGS = Settings(profile="eks", data_root="s3://llmops-data/prod")
SECRET = "sk-live-NEVER-IN-A-MANIFEST"
JUDGE = JudgeConfig(provider="openai", model="judge-70b", base_url="http://judge.llm-serving.svc:8000/v1",
                    api_key=SECRET)
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def job(**overrides) -> dict:
    return validate_job({
        "model_uri": "s3://llmops-data/prod/runs/ft-1/model",
        "eval_uri": "s3://llmops-data/prod/curated/0123456789abcdef",
        "output_uri": "s3://llmops-data/prod/evaluations/ft-1/candidate",
        "generator": "vllm", "metrics_profile": "eks", "judge": JUDGE.public(), **overrides})


def container(m: dict) -> dict:
    return m["spec"]["containers"][0]


def operator_pod(job_arg, **kwargs) -> dict:
    """What the provider's KubernetesPodOperator builds from the plugin's mapping of the rendered pod."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from llmops_operators.k8s_evaluation import constant_kwargs, pod_kwargs

    pod = render_pod(job_arg, SETTINGS, **kwargs)
    evaluate_candidate = KubernetesPodOperator(task_id="evaluate_candidate",
                                               **{**constant_kwargs(), **pod_kwargs(pod)})
    return as_manifest(evaluate_candidate.build_pod_request_obj(None, dry_run=True))


def test_rendered_pod_validates_and_fits_the_inference_pool():
    m = validate(manifest(job(), SETTINGS))
    pool = get_pool(SETTINGS.inference_pool)
    check_pod_placement(m, pool)
    check_pod_placement(m)  # and the pool it selects is that one
    assert m["spec"]["nodeSelector"] == {NODEPOOL_LABEL: "gpu-inference-pool"}
    assert m["spec"]["tolerations"] == pool.tolerations()
    assert m["spec"]["priorityClassName"] == pool.priority_class == "llmops-inference"
    res = container(m)["resources"]
    assert res["limits"][GPU] == res["requests"][GPU] == "1"


def test_requests_fit_every_instance_type_the_pool_may_launch():
    pool = get_pool(SETTINGS.inference_pool)
    res = container(manifest(job(), SETTINGS))["resources"]
    cpu, memory = int(res["requests"]["cpu"]), int(res["requests"]["memory"].removesuffix("Gi"))
    for instance in pool.instances():
        assert instance.gpus >= 1 and cpu < instance.vcpu and memory < instance.memory_gib, instance.name


def test_pod_is_non_root_and_restricted():
    m = manifest(job(), SETTINGS)
    pod_sc, c_sc = m["spec"]["securityContext"], container(m)["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c_sc == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                    "readOnlyRootFilesystem": True}
    assert m["spec"]["automountServiceAccountToken"] is False
    assert m["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"


def test_argv_is_a_list_with_the_job_as_one_item_and_no_shell():
    nasty = "s3://llmops-data/prod/runs/x; rm -rf / $(id) `whoami` 'q' \"dq\" && echo/model"
    j = job(model_uri=nasty)
    c = container(manifest(j, SETTINGS))
    assert c["command"] == COMMAND == ["python", "-m", "include.evaluation.entrypoint"]
    assert not {"sh", "bash", "/bin/sh", "/bin/bash", "-c"} & set(c["command"] + c["args"])
    assert len(c["args"]) == 2 and c["args"][0] == "--job"
    assert json.loads(c["args"][1]) == j and json.loads(c["args"][1])["model_uri"] == nasty


def test_the_judge_key_is_never_in_the_pod():
    m = manifest(job(), SETTINGS)
    assert SECRET not in json.dumps(m)
    env = {e["name"]: e for e in container(m)["env"]}
    ref = env["LLMOPS_JUDGE_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": JUDGE_SECRET, "key": "api-key", "optional": True}
    assert env["HF_HUB_OFFLINE"]["value"] == "1" and env["RAGAS_DO_NOT_TRACK"]["value"] == "true"
    assert env["LLMOPS_PROFILE"]["value"] == "eks"
    with pytest.raises(JobError, match="secrets never travel"):
        render_pod({**job(), "judge": {**JUDGE.public(), "api_key": SECRET}}, SETTINGS)


def test_jinja_markers_in_a_job_are_refused():
    with pytest.raises(JobError, match="Jinja"):
        render_pod(job(output_uri="s3://llmops-data/prod/evaluations/{{ var.value.x }}"), SETTINGS)


def test_namespace_and_identity_exist_in_k8s():
    """The pod runs where Airflow's Role lets KubernetesPodOperator create pods, as an existing SA."""
    m = manifest(job(), SETTINGS)
    ns = m["metadata"]["namespace"]
    assert ns == SETTINGS.training_namespace
    objects = {(d["kind"], d["metadata"]["name"]): d for d in manifests_from_files(REPO_ROOT / "k8s")}
    assert objects[("ServiceAccount", SERVICE_ACCOUNT)]["metadata"]["namespace"] == ns
    assert ("PriorityClass", m["spec"]["priorityClassName"]) in objects
    role = next(d for (kind, _), d in objects.items() if kind == "Role" and d["metadata"]["namespace"] == ns)
    pods = [r for r in role["rules"] if "pods" in r["resources"]]
    assert pods and {"create", "get", "list", "delete"} <= set(pods[0]["verbs"])


def test_operator_submits_the_rendered_pod():
    rendered = manifest(job(), SETTINGS, name="llm-eval-candidate")
    submitted = validate(operator_pod(job(), name="llm-eval-candidate"))
    check_pod_placement(submitted, get_pool(SETTINGS.inference_pool))
    assert submitted["metadata"]["name"].startswith("llm-eval-candidate-")  # the operator's random suffix
    assert submitted["metadata"]["namespace"] == rendered["metadata"]["namespace"]
    for key in ("nodeSelector", "tolerations", "securityContext", "priorityClassName", "serviceAccountName",
                "volumes", "activeDeadlineSeconds", "automountServiceAccountToken"):
        assert submitted["spec"][key] == rendered["spec"][key], key
    sub, ren = container(submitted), container(rendered)
    assert sub["name"] == CONTAINER
    for key in ("image", "command", "args", "env", "resources", "securityContext", "volumeMounts"):
        assert sub[key] == ren[key], key
    assert len(submitted["spec"]["containers"]) == 1  # no XCom sidecar: the Role grants no pods/exec


def test_pod_names_are_stable_dns_labels():
    a = pod_name("finetune_lifecycle", "scheduled__2026-11-29T02:00:00+00:00", "candidate")
    assert a == pod_name("finetune_lifecycle", "scheduled__2026-11-29T02:00:00+00:00", "candidate")
    assert a != pod_name("finetune_lifecycle", "scheduled__2026-11-29T02:00:00+00:00", "champion")
    assert DNS_1123.fullmatch(a) and len(a) <= 53
    with pytest.raises(ValueError, match="DNS-1123"):
        render_pod(job(), SETTINGS, name="Bad_Name")
