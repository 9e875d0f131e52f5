"""The rendered NeMo Job and headless Service: valid, rank-correct, shell-free, and in step with k8s/."""

from __future__ import annotations

import json
import re
from pathlib import Path
from unittest import mock

import pytest
import yaml

from include.cluster.pools import EFA, GPU, NODEPOOL_LABEL, get_instance_types
from include.cluster.preflight import PreflightError, as_manifest
from include.container import USER_ERROR_EXIT_CODE
from include.errors import InputError
from include.settings import Settings
from include.training.k8s_job import (
    CHECKPOINT_CLAIM,
    COMPLETION_INDEX_ANNOTATION,
    MAX_NAME_LENGTH,
    SERVICE_ACCOUNT,
    job_name,
    render,
)
from include.training.plan import trainer_plan
from tests.k8s_schemas import REPO_ROOT, manifests_from_files, validate

K8S = REPO_ROOT / "k8s"
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
INSTANCE = {"production": "p5.48xlarge", "experiment": "g6e.12xlarge"}
POOL_NAME = {"production": "gpu-training-pool", "experiment": "gpu-experiment-pool"}


def plan(pool: str = "production", nodes: int = 4, **extra) -> dict:
    instance = extra.pop("instance_type", INSTANCE[pool])
    gpus = extra.pop("gpus_per_node", get_instance_types()[instance].gpus)
    return {"run_name": "llama-lora", "dag_id": "llm_finetune", "run_id": "scheduled__2025-06-01T02:00:00+00:00",
            "pool": pool, "nodes": nodes, "gpus_per_node": gpus, "instance_type": instance,
            "backend": "nemo", "base_model": "llama31_8b", "dataset_uri": "s3://llmops-data/curated/v3",
            "output_uri": "s3://llmops-data/runs/llama-lora", "checkpoint_dir": "/checkpoints/llama-lora",
            **extra}


def pod_spec(launch) -> dict:
    return as_manifest(launch.job)["spec"]["template"]["spec"]


def env_of(launch) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod_spec(launch)["containers"][0]["env"]}


def k8s_objects() -> dict[tuple[str, str], dict]:
    """The repo's k8s/ objects straight from the files, so these tests do not trust pools.py."""
    return {(d["kind"], d["metadata"]["name"]): d for d in manifests_from_files(K8S)}


# ---- names ----

def test_job_name_is_deterministic_and_distinct_per_run():
    assert job_name("llm_finetune", "manual__1") == job_name("llm_finetune", "manual__1")
    assert job_name("llm_finetune", "manual__1") != job_name("llm_finetune", "manual__2")


@pytest.mark.parametrize("dag_id", ["llm_finetune", "X" * 200, "___", "9lives", "Ünïcode DAG!"])
def test_job_name_is_a_short_dns_label(dag_id):
    name = job_name(dag_id, "manual__2025-06-01T00:00:00+00:00")
    assert DNS_1035.fullmatch(name) and len(name) <= MAX_NAME_LENGTH
    assert len(f"{name}-999") <= 63  # pod hostnames `<job>-<index>` stay valid labels


def test_retry_renders_the_same_objects():
    assert render(plan()).manifests() == render(plan()).manifests()


# ---- schema validity ----

@pytest.mark.parametrize("pool", ["production", "experiment"])
@pytest.mark.parametrize("nodes", [1, 4])
def test_rendered_objects_validate(pool, nodes):
    launch = render(plan(pool, nodes))
    service, job = launch.manifests()
    validate(service)
    validate(job)
    # the pod each index becomes validates too
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{launch.name}-0-abcde", **job["spec"]["template"]["metadata"]},
           "spec": job["spec"]["template"]["spec"]}
    validate(pod)


# ---- rendezvous ----

@pytest.mark.parametrize("nodes", [1, 4])
def test_rank_zero_has_a_stable_dns_name(nodes):
    launch = render(plan(nodes=nodes))
    job, service, spec = as_manifest(launch.job), as_manifest(launch.service), pod_spec(launch)
    ns = launch.namespace
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == nodes
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert spec["subdomain"] == service["metadata"]["name"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # pod i is `<job>-i`; with the subdomain its name is <job>-i.<svc>.<ns>.svc
    env = env_of(launch)
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}.{ns}.svc"
    assert env["MASTER_PORT"] == "29500" and env["NNODES"] == str(nodes)


def test_every_index_gets_its_own_node_rank():
    """NODE_RANK comes from each pod's completion-index annotation, resolved as the kubelet does."""
    launch = render(plan(nodes=4))
    field = env_of(launch)["NODE_RANK"]["fieldRef"]["fieldPath"]
    key = re.fullmatch(r"metadata\.annotations\['(.+)'\]", field).group(1)
    assert key == COMPLETION_INDEX_ANNOTATION
    ranks, hosts = [], []
    for index in range(4):  # what the Job controller stamps on pod `index`
        pod_meta = {"annotations": {COMPLETION_INDEX_ANNOTATION: str(index)}}
        ranks.append(int(pod_meta["annotations"][key]))
        hosts.append(f"{launch.name}-{index}.{launch.service.metadata.name}.{launch.namespace}.svc")
    assert ranks == [0, 1, 2, 3]
    assert hosts[0] == env_of(launch)["MASTER_ADDR"] and len(set(hosts)) == 4


def test_torchrun_is_an_argument_list_with_the_plan_as_one_item():
    hostile = 's3://bucket/x"; rm -rf / #$(reboot)`id` && echo'  # a valid URI to the trainer
    launch = render(plan(dataset_uri=hostile))
    container = pod_spec(launch)["containers"][0]
    argv = container["command"] + container["args"]
    assert container["command"] == ["python", "-m", "include.training.rendezvous"]
    assert not {"bash", "sh", "-c", "/bin/sh", "/bin/bash"} & set(argv)
    assert argv[-2] == "--plan"
    sent = json.loads(argv[-1])
    assert sent["dataset_uri"] == hostile and sent == trainer_plan(plan(dataset_uri=hostile))
    assert all(hostile not in a for a in argv[:-1])
    assert not set(sent) & {"dag_id", "run_id", "pool", "instance_type", "image"}


def test_trainer_plan_is_checked_before_any_node_is_provisioned():
    with pytest.raises(InputError, match="trainer plan: plan key 'run_name'"):
        render(plan(run_name="x; reboot"))
    with pytest.raises(InputError, match="trainer plan: unknown plan key 'lr'"):
        render(plan(lr=0.1))


def test_torchrun_accepts_the_arguments():
    run = pytest.importorskip("torch.distributed.run")
    launch = render(plan(nodes=4))
    args = run.parse_args(pod_spec(launch)["containers"][0]["args"])
    assert (args.nnodes, args.nproc_per_node) == ("4", "8")
    assert args.rdzv_backend == "c10d"
    assert args.rdzv_endpoint == f"{env_of(launch)['MASTER_ADDR']}:29500"
    assert args.module and args.training_script == "include.training.entrypoint"
    assert args.training_script_args[0] == "--plan"
    conf = dict(kv.split("=") for kv in args.rdzv_conf.split(","))
    assert int(conf["join_timeout"]) >= 900  # the last node may still be provisioning


def test_failure_policy_retries_interruptions_and_fails_user_errors():
    spec = as_manifest(render(plan()).job)["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    assert {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [USER_ERROR_EXIT_CODE]}} in rules
    assert spec["backoffLimitPerIndex"] >= 1
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


# ---- EFA / NCCL ----

def test_multi_node_p5_uses_efa_with_rdma():
    launch = render(plan(nodes=4))
    limits = pod_spec(launch)["containers"][0]["resources"]["limits"]
    assert limits[EFA] == "32" and limits[GPU] == "8"
    env = env_of(launch)
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1"
    assert env["NCCL_DEBUG"] == "INFO" and env["FI_EFA_USE_HUGE_PAGE"] == "0"


def test_efa_without_rdma_on_g_instances():
    env = env_of(render(plan("experiment", nodes=2)))
    assert env["FI_PROVIDER"] == "efa" and "FI_EFA_USE_DEVICE_RDMA" not in env


def test_single_node_needs_no_fabric():
    launch = render(plan(nodes=1))
    assert EFA not in pod_spec(launch)["containers"][0]["resources"]["limits"]
    assert not any(k.startswith("FI_") for k in env_of(launch))
    assert pod_spec(launch).get("affinity") is None


def test_multi_node_ranks_share_a_zone():
    term = pod_spec(render(plan(nodes=4)))["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "topology.kubernetes.io/zone"


# ---- agreement with k8s/ ----

@pytest.mark.parametrize("pool", ["production", "experiment"])
@pytest.mark.parametrize("nodes", [1, 4])
def test_job_agrees_with_the_nodepool(pool, nodes):
    objects = k8s_objects()
    nodepool = objects[("NodePool", POOL_NAME[pool])]
    template = nodepool["spec"]["template"]
    launch = render(plan(pool, nodes))
    spec = pod_spec(launch)

    taints = [{k: str(t[k]) for k in ("key", "value", "effect")} for t in template["spec"]["taints"]]
    tolerations = [{k: t[k] for k in ("key", "value", "effect")} for t in spec["tolerations"]]
    assert sorted(tolerations, key=str) == sorted(taints, key=str)  # exactly the pool's taints

    assert spec["nodeSelector"][NODEPOOL_LABEL] == nodepool["metadata"]["name"]
    allowed = next(r["values"] for r in template["spec"]["requirements"]
                   if r["key"] == "node.kubernetes.io/instance-type")
    assert spec["nodeSelector"]["node.kubernetes.io/instance-type"] in allowed
    assert launch.job.spec.template.metadata.labels["llmops.io/workload"] == \
        template["metadata"]["labels"]["llmops.io/workload"]

    instance = get_instance_types()[spec["nodeSelector"]["node.kubernetes.io/instance-type"]]
    resources = spec["containers"][0]["resources"]
    assert resources["requests"][GPU] == resources["limits"][GPU] == str(instance.gpus)
    if nodes > 1:
        assert resources["requests"][EFA] == resources["limits"][EFA] == str(instance.efa_interfaces)
    assert nodes * instance.gpus <= int(nodepool["spec"]["limits"][GPU])

    assert ("PriorityClass", spec["priorityClassName"]) in objects
    assert spec["priorityClassName"] == nodepool["metadata"]["annotations"]["llmops.io/priority-class"]


def test_job_uses_objects_that_exist_in_its_namespace():
    objects = k8s_objects()
    launch = render(plan())
    spec = pod_spec(launch)
    assert ("Namespace", launch.namespace) in objects
    sa = objects[("ServiceAccount", spec["serviceAccountName"])]
    assert spec["serviceAccountName"] == SERVICE_ACCOUNT and sa["metadata"]["namespace"] == launch.namespace
    claim = next(v for v in spec["volumes"] if v["name"] == "checkpoints")["persistentVolumeClaim"]["claimName"]
    pvc = objects[("PersistentVolumeClaim", claim)]
    assert claim == CHECKPOINT_CLAIM and pvc["metadata"]["namespace"] == launch.namespace
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every rank mounts it


def test_pod_protections():
    launch = render(plan())
    job, spec = as_manifest(launch.job), pod_spec(launch)
    assert job["spec"]["template"]["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    container = spec["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "persistentVolumeClaim" in volumes[mounts["/checkpoints"]]
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                       "fsGroupChangePolicy": "OnRootMismatch",
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["automountServiceAccountToken"] is False


def test_namespace_follows_settings():
    launch = render(plan(), Settings(training_namespace="ft-team-a"))
    assert launch.namespace == launch.service.metadata.namespace == "ft-team-a"
    assert env_of(launch)["MASTER_ADDR"].endswith(".ft-team-a.svc")


# ---- refusals ----

def test_plan_errors_are_listed_together():
    bad = plan(nodes=0, gpus_per_node=9, checkpoint_dir="/tmp/ckpt")
    with pytest.raises(InputError) as info:
        render(bad)
    message = str(info.value)
    assert "nodes=0" in message and "gpus_per_node=9" in message and "checkpoint_dir='/tmp/ckpt'" in message


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"pool": "inference"}, "expected one of production, experiment"),
        ({"instance_type": "g5.xlarge"}, "pool gpu-training-pool allows p5.48xlarge, p4d.24xlarge"),
        ({"gpus_per_node": 4}, "multi-node runs take whole nodes; set it to 8"),
        ({"image": "bad image"}, "an image reference"),
    ],
)
def test_plan_refusals(change, match):
    with pytest.raises(InputError, match=match):
        render({**plan(), **change})


def test_missing_keys_are_named():
    with pytest.raises(InputError, match="dag_id: required; run_id: required"):
        render({"run_name": "r", "pool": "production", "nodes": 1, "gpus_per_node": 8,
                "instance_type": "p5.48xlarge"})


def test_over_the_pool_limit_is_refused_before_submission():
    with pytest.raises(PreflightError, match="over pool gpu-training-pool's limit"):
        render(plan(nodes=9))


# ---- what KubernetesJobOperator actually submits ----

def test_operator_submits_the_rendered_job():
    job_module = pytest.importorskip("airflow.providers.cncf.kubernetes.operators.job")
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    launch = render(plan(nodes=4))
    from llmops_operators.k8s_training import constant_kwargs, job_kwargs

    operator = job_module.KubernetesJobOperator(task_id="train", **{**constant_kwargs(), **job_kwargs(launch)})
    with mock.patch.object(KubernetesHook, "is_in_cluster", new_callable=mock.PropertyMock, return_value=True):
        submitted = as_manifest(operator.build_job_request_obj(None))
    expected = as_manifest(launch.job)
    assert submitted["metadata"]["name"] == expected["metadata"]["name"]
    assert {k: submitted["spec"][k] for k in ("parallelism", "completions", "completionMode",
                                               "backoffLimitPerIndex", "podFailurePolicy")} == \
        {k: expected["spec"][k] for k in ("parallelism", "completions", "completionMode",
                                          "backoffLimitPerIndex", "podFailurePolicy")}
    got, want = submitted["spec"]["template"]["spec"], expected["spec"]["template"]["spec"]
    for key in ("nodeSelector", "tolerations", "subdomain", "priorityClassName", "serviceAccountName", "volumes"):
        assert got[key] == want[key], key
    assert len(got["containers"]) == 1
    for key, value in want["containers"][0].items():
        assert got["containers"][0][key] == value, key


def test_manifests_can_be_written_as_yaml(tmp_path: Path):
    """What a reviewer or `kubectl apply -f` would get."""
    out = tmp_path / "launch.yaml"
    out.write_text(yaml.safe_dump_all(render(plan()).manifests()))
    assert [d["kind"] for d in yaml.safe_load_all(out.read_text())] == ["Service", "Job"]


def test_the_rendezvous_service_alone_is_the_rendered_one():
    """setup_rendezvous creates the Service without rendering the Job again: the same object."""
    from include.training.k8s_job import rendezvous_service

    assert as_manifest(rendezvous_service(plan())) == as_manifest(render(plan()).service)
    with pytest.raises(InputError, match="pool="):
        rendezvous_service({**plan(), "pool": "inference"})
