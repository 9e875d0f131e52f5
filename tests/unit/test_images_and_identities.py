"""Image references (digest or tag, and the pull policy each gets) and the evaluator's own identity."""

from __future__ import annotations

import json

import pytest

from include.evaluation.k8s_pod import SERVICE_ACCOUNT as EVALUATOR_SA
from include.evaluation.k8s_pod import manifest as evaluator_manifest
from include.images import check_reference, has_digest, pull_policy, registry
from include.settings import Settings, SettingsError
from include.training.k8s_job import SERVICE_ACCOUNT as TRAINER_SA
from include.training.k8s_job import render
from tests.k8s_schemas import REPO_ROOT, manifests_from_files
from tests.unit.test_eval_pod import job as eval_job
from tests.unit.test_k8s_job import plan as train_plan

DIGEST = "sha256:" + "ab" * 32
TRAINER_BY_DIGEST = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/llmops/nemo-trainer@{DIGEST}"
EVALUATOR_BY_DIGEST = f"ghcr.io/llmops-finetune/evaluator:0.1.0@{DIGEST}"


def eks(**kw) -> Settings:
    return Settings(profile="eks", data_root="s3://llmops-data/prod", **kw)


@pytest.mark.parametrize("ref", [TRAINER_BY_DIGEST, EVALUATOR_BY_DIGEST, "localhost:5000/a/b:dev", "nginx:1.27"])
def test_references_accepted(ref):
    assert check_reference("image", ref) == ref


@pytest.mark.parametrize("ref", ["", "ghcr.io/x/y", "ghcr.io/x/y@sha256:abc", "ghcr.io/X/Y:1", "a b:1",
                                 "ghcr.io/x/y:1; rm -rf /", f"ghcr.io/x/y@md5:{'0' * 32}", None, 3])
def test_references_refused_with_the_field_name(ref):
    with pytest.raises(ValueError, match=r"^image=.*sha256"):
        check_reference("image", ref)


def test_pull_policy_follows_the_reference():
    assert pull_policy(TRAINER_BY_DIGEST) == pull_policy(EVALUATOR_BY_DIGEST) == "IfNotPresent"
    assert pull_policy("ghcr.io/llmops-finetune/evaluator:0.1.0") == "Always"
    assert registry(TRAINER_BY_DIGEST) == "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert registry("nginx:1.27") == "docker.io"


def test_settings_accept_digests_and_name_the_variable_when_refusing():
    s = eks(trainer_image=TRAINER_BY_DIGEST, evaluator_image=EVALUATOR_BY_DIGEST)
    assert s.trainer_image == TRAINER_BY_DIGEST
    env = {"LLMOPS_PROFILE": "eks", "LLMOPS_DATA_ROOT": "s3://b/p", "LLMOPS_EVALUATOR_IMAGE": "evaluator latest"}
    with pytest.raises(SettingsError, match="LLMOPS_EVALUATOR_IMAGE='evaluator latest'"):
        Settings.from_env(env)


@pytest.mark.parametrize(("trainer", "evaluator", "policy"), [
    (TRAINER_BY_DIGEST, EVALUATOR_BY_DIGEST, "IfNotPresent"),
    ("ghcr.io/llmops-finetune/nemo-trainer:0.1.0", "ghcr.io/llmops-finetune/evaluator:0.1.0", "Always"),
])
def test_rendered_pods_pull_by_the_reference_kind(trainer, evaluator, policy):
    settings = eks(trainer_image=trainer, evaluator_image=evaluator)
    job = render(train_plan(image=trainer), settings).child_job()
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == (trainer, policy)
    container = evaluator_manifest(eval_job(), settings)["spec"]["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == (evaluator, policy)


def test_the_plan_carries_the_checked_setting_s_image():
    """The renderer trusts the plan's image: it is the setting, which refuses a reference without a tag or
    digest when the settings are read."""
    from include.lifecycle.training import plan as build_plan
    from include.lifecycle.training import validate_params
    from tests.unit.test_planning import DATASET, params

    settings = eks(trainer_image=TRAINER_BY_DIGEST)
    assert build_plan(validate_params(params(), settings), DATASET, "d", "r", settings)["plan"]["image"] == \
        TRAINER_BY_DIGEST
    env = {"LLMOPS_PROFILE": "eks", "LLMOPS_DATA_ROOT": "s3://b/p", "LLMOPS_TRAINER_IMAGE": "ghcr.io/x/y"}
    with pytest.raises(SettingsError, match="LLMOPS_TRAINER_IMAGE='ghcr.io/x/y'"):
        Settings.from_env(env)


IMAGE_FIELDS = ("trainer_image", "evaluator_image", "serving_image", "aws_cli_image")


def rendered_containers(settings: Settings) -> list[dict]:
    """Every container the eks profile renders: the trainer's child Job, the evaluator pod, the vLLM
    Deployment for a full model and for a LoRA adapter (with its fetcher init container)."""
    from include.serving.k8s_objects import version_objects

    specs = [render(train_plan(image=settings.trainer_image), settings).child_job()["spec"]["template"]["spec"],
             evaluator_manifest(eval_job(), settings)["spec"]]
    for method in ("full", "lora"):
        dep = version_objects("llmops-assistant", 3, "s3://llmops-data/prod/models/a", settings=settings,
                              method=method, base_model_uri="s3://llmops-data/prod/base/b")["deployment"]
        specs.append(dep["spec"]["template"]["spec"])
    return [c for spec in specs for c in [*spec.get("initContainers", []), *spec["containers"]]]


def test_every_rendered_image_is_a_setting_or_pinned_by_digest():
    """No image is written into the code by tag: each is a setting (checked when read, deployed by
    digest) or, if ever hard-coded, pinned by digest; its pull policy follows the reference."""
    settings = eks()
    configured = {getattr(settings, f) for f in IMAGE_FIELDS}
    containers = rendered_containers(settings)
    assert {c["name"] for c in containers} >= {"fetch-adapter", "vllm"}
    for c in containers:
        assert c["image"] in configured or has_digest(c["image"]), c["name"]
        assert c["imagePullPolicy"] == pull_policy(c["image"]), c["name"]


def test_with_every_setting_by_digest_every_rendered_image_is_pinned():
    settings = eks(**{f: f"123456789012.dkr.ecr.us-east-1.amazonaws.com/llmops/{f}@{DIGEST}" for f in IMAGE_FIELDS})
    for c in rendered_containers(settings):
        assert has_digest(c["image"]) and c["imagePullPolicy"] == "IfNotPresent", c["name"]
    env = {"LLMOPS_PROFILE": "eks", "LLMOPS_DATA_ROOT": "s3://b/p", "LLMOPS_AWS_CLI_IMAGE": "aws-cli"}
    with pytest.raises(SettingsError, match="LLMOPS_AWS_CLI_IMAGE='aws-cli'"):
        Settings.from_env(env)


def test_readme_says_deploy_with_digests():
    text = (REPO_ROOT / "README.md").read_text()
    assert "@sha256:" in text and "LLMOPS_TRAINER_IMAGE" in text and "IfNotPresent" in text


# ---- the evaluator's identity ----

def _service_accounts() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in manifests_from_files(REPO_ROOT / "k8s") if d["kind"] == "ServiceAccount"}


def test_evaluator_runs_as_its_own_service_account():
    spec = evaluator_manifest(eval_job(), eks())["spec"]
    assert spec["serviceAccountName"] == EVALUATOR_SA != TRAINER_SA
    sas = _service_accounts()
    role = sas[EVALUATOR_SA]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role != sas[TRAINER_SA]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert sas[EVALUATOR_SA]["metadata"]["namespace"] == eks().training_namespace
    assert sas[EVALUATOR_SA]["automountServiceAccountToken"] is False


def test_evaluator_policy_writes_only_its_results():
    policy = json.loads((REPO_ROOT / "k8s/training/iam/llm-evaluator-policy.json").read_text())
    writes = [s for s in policy["Statement"]
              if any(a.startswith("s3:") and not a.startswith(("s3:Get", "s3:List")) for a in s["Action"])]
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    assert {a for s in writes for a in s["Action"]} <= {"s3:PutObject", "s3:AbortMultipartUpload"}
    resources = [r for s in writes for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]
    assert resources and all(r.endswith("/evaluations/*") for r in resources)
    assert "*" not in {a for s in policy["Statement"] for a in s["Action"]}
