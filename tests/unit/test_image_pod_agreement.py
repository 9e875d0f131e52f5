"""Each image and the pods that run it agree: user, environment, writable paths.

Both sides are read, not restated: the image from images/<name>/Dockerfile and README.md
(tests/image_contract.py), the pod from the renderers in include/ (the trainer JobSet's child Job,
the evaluator pod, the serving Deployment). Changing either side alone fails here.
"""

from __future__ import annotations

import pytest

from include.evaluation.k8s_pod import manifest as evaluator_manifest
from include.serving.k8s_objects import version_objects
from include.settings import Settings
from include.training.k8s_job import render
from tests.image_contract import IMAGES, read_image, under_a_mount
from tests.unit.test_eval_pod import job as eval_job
from tests.unit.test_k8s_job import plan as train_plan

SETTINGS = Settings(profile="eks", data_root="s3://llmops-data/prod")


def trainer_pod(nodes: int = 4) -> tuple[dict, dict]:
    p = train_plan(nodes=nodes)
    return render(p, SETTINGS).child_job()["spec"]["template"]["spec"], p


def evaluator_pod() -> tuple[dict, dict]:
    return evaluator_manifest(eval_job(), SETTINGS)["spec"], {}


def serving_pod(method: str = "full") -> tuple[dict, dict]:
    objs = version_objects("llama-support", 7, "s3://llmops-data/prod/models/llama-support/7", settings=SETTINGS,
                           method=method, base_model_uri="s3://llmops-data/prod/base/llama31_8b")
    return objs["deployment"]["spec"]["template"]["spec"], {}


PODS = {"nemo-trainer": trainer_pod, "evaluator": evaluator_pod, "vllm": serving_pod}
# The setting naming each image: the rendered pod must run the project's image, not an upstream one
# (upstream vLLM runs as root, which the pods' securityContext refuses).
IMAGE_SETTINGS = {"nemo-trainer": "trainer_image", "evaluator": "evaluator_image", "vllm": "serving_image"}
# Images that run outside llm-training/llm-serving pods (the Airflow and MLflow deployments).
NOT_RENDERED = {"airflow", "mlflow"}


def test_every_workload_image_is_paired_with_its_pods():
    dockerfiles = {p.parent.name for p in IMAGES.glob("*/Dockerfile")}
    assert dockerfiles - NOT_RENDERED == set(PODS) == set(IMAGE_SETTINGS)


@pytest.mark.parametrize("image", sorted(PODS))
def test_pod_runs_the_project_image(image):
    spec, _ = PODS[image]()
    reference = getattr(SETTINGS, IMAGE_SETTINGS[image])
    assert spec["containers"][0]["image"] == reference
    repository = reference.split("@")[0].rsplit(":", 1)[0]
    assert repository.rsplit("/", 1)[-1] == image, f"{IMAGE_SETTINGS[image]}={reference!r} is not images/{image}"


def pod_env(spec: dict) -> dict[str, dict]:
    return {e["name"]: e for e in spec["containers"][0].get("env", [])}


@pytest.mark.parametrize("image", sorted(PODS))
def test_pod_runs_as_the_image_user(image):
    contract = read_image(image)
    spec, _ = PODS[image]()
    ctx = spec["securityContext"]
    assert contract.uid and contract.uid != 0, f"{image}: the Dockerfile must end as a non-root numeric USER"
    assert (ctx["runAsUser"], ctx["runAsGroup"], ctx["fsGroup"]) == (contract.uid, contract.gid, contract.gid)
    assert ctx["runAsNonRoot"] is True
    assert spec["containers"][0]["securityContext"].get("runAsUser", contract.uid) == contract.uid


def test_the_lora_servers_adapter_fetcher_runs_as_the_server_user():
    """The init container (upstream aws-cli) inherits the pod's uid; it must not override it."""
    spec, _ = serving_pod("lora")
    uid = read_image("vllm").uid
    assert spec["securityContext"]["runAsUser"] == uid
    for container in spec["initContainers"]:
        assert container["securityContext"].get("runAsUser", uid) == uid
        assert container["securityContext"].get("runAsNonRoot", True) is True


@pytest.mark.parametrize("image", sorted(PODS))
def test_pod_sets_every_variable_the_image_readme_promises(image):
    contract = read_image(image)
    assert contract.readme_env, f"{image}/README.md lost its environment table"
    missing = contract.readme_env - set(pod_env(PODS[image]()[0]))
    assert not missing, f"{image}: README promises {sorted(missing)} but the rendered pod does not set them"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_every_path_the_server_writes_is_a_volume(method):
    """vLLM's caches under HOME and VLLM_CACHE_ROOT, /tmp (temporary files, its IPC sockets), and the
    adapter fetcher's HOME: all emptyDirs, so every container's image filesystem is read-only."""
    contract = read_image("vllm")
    spec, _ = serving_pod(method)
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    env = {**contract.env, **{k: e["value"] for k, e in pod_env(spec).items() if "value" in e}}
    assert {"/cache", "/tmp", env["HOME"], env["HF_HOME"], env["VLLM_CACHE_ROOT"]} <= contract.writable_paths(env)
    outside = sorted(p for p in contract.writable_paths(env) if not under_a_mount(p, mounts))
    assert not outside, f"vllm: {outside} would be written to the image's own filesystem"
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
        assert all("emptyDir" in volumes[m["name"]] for m in container["volumeMounts"]), container["name"]
    for container in spec.get("initContainers", []):
        home = {e["name"]: e["value"] for e in container["env"]}["HOME"]
        assert under_a_mount(home, {m["mountPath"] for m in container["volumeMounts"]}), container["name"]


@pytest.mark.parametrize("image", ["evaluator", "nemo-trainer"])
def test_every_writable_path_is_a_volume(image):
    contract = read_image(image)
    spec, plan = PODS[image]()
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    env = {k: e["value"] for k, e in pod_env(spec).items() if "value" in e}
    paths = contract.writable_paths(env) | ({plan["checkpoint_dir"]} if plan else set())
    assert {"/tmp", "/airflow/xcom", contract.env["HOME"]} <= paths
    outside = sorted(p for p in paths if not under_a_mount(p, mounts))
    assert not outside, f"{image}: {outside} would be written to the image's own filesystem"
    volumes = {v["name"] for v in spec["volumes"]}
    assert {m["name"] for m in spec["containers"][0]["volumeMounts"]} <= volumes
    # so the image's own filesystem can be, and is, read-only
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_trainer_nemo_home_is_on_the_shared_volume_and_the_hf_token_a_secret():
    spec, _ = trainer_pod()
    env = pod_env(spec)
    claims = {v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    shared = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"] if m["name"] in claims}
    assert under_a_mount(env["NEMO_HOME"]["value"], shared), "NEMO_HOME must be on the shared FSx claim"
    ref = env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True and ref["name"] and "value" not in env["HF_TOKEN"]


def test_the_contract_reader_sees_a_wrong_user(tmp_path, monkeypatch):
    """The parser is not vacuous: a Dockerfile with another uid gives another contract."""
    import tests.image_contract as ic

    image = tmp_path / "x"
    image.mkdir()
    text = (ic.IMAGES / "nemo-trainer" / "Dockerfile").read_text().replace("TRAINER_UID=10001", "TRAINER_UID=1000")
    (image / "Dockerfile").write_text(text)
    (image / "README.md").write_text("## Environment the Job provides\n| `FOO` | x |\n")
    monkeypatch.setattr(ic, "IMAGES", tmp_path)
    contract = ic.read_image("x")
    assert (contract.uid, contract.gid, contract.readme_env) == (1000, 1000, {"FOO"})
    assert not under_a_mount("/home/trainer/.cache", {"/checkpoints", "/tmp"})
