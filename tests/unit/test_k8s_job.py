"""The rendered NeMo JobSet and NetworkPolicy: valid (the JobSet CRD), rank-correct, all-or-nothing,
shell-free, and in step with k8s/."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

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
    JOB_LABEL,
    JOBSET_NAME_LABEL,
    MAX_NAME_LENGTH,
    SERVICE_ACCOUNT,
    jobset_name,
    render,
)
from include.training.params import MAX_NODES
from include.training.plan import trainer_keys, validate_plan
from include.training.restarts import PEER_LOST_EXIT_CODE, child_job_pod_failure_policy
from tests.k8s_schemas import REPO_ROOT, manifests_from_files, require_crds, validate, validation_errors

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


def job_spec(launch) -> dict:
    """The child Job spec inside the JobSet, as sent."""
    return launch.jobset["spec"]["replicatedJobs"][0]["template"]["spec"]


def pod_spec(launch) -> dict:
    return job_spec(launch)["template"]["spec"]


def env_of(launch) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod_spec(launch)["containers"][0]["env"]}


def k8s_objects() -> dict[tuple[str, str], dict]:
    """The repo's k8s/ objects straight from the files, so these tests do not trust pools.py."""
    return {(d["kind"], d["metadata"]["name"]): d for d in manifests_from_files(K8S)}


# ---- names ----

def test_jobset_name_is_deterministic_and_distinct_per_run():
    assert jobset_name("llm_finetune", "manual__1") == jobset_name("llm_finetune", "manual__1")
    assert jobset_name("llm_finetune", "manual__1") != jobset_name("llm_finetune", "manual__2")


@pytest.mark.parametrize("dag_id", ["llm_finetune", "X" * 200, "___", "9lives", "Ünïcode DAG!"])
def test_jobset_name_is_a_short_dns_label(dag_id):
    name = jobset_name(dag_id, "manual__2025-06-01T00:00:00+00:00")
    assert DNS_1035.fullmatch(name) and len(name) <= MAX_NAME_LENGTH
    # The JobSet webhook's own rule: the longest pod name, with the Job controller's 5-char suffix,
    # is a DNS-1035 label (<jobset>-<replicatedJob>-<jobIndex>-<podIndex>-xxxxx).
    assert len(f"{name}-node-0-{MAX_NODES - 1}-abcde") <= 63
    assert len(f"{name}-node-0-999-abcde") <= 63  # room for three-digit node counts


def test_retry_renders_the_same_objects():
    assert render(plan()).manifests() == render(plan()).manifests()


# ---- schema validity ----

@pytest.mark.parametrize("pool", ["production", "experiment"])
@pytest.mark.parametrize("nodes", [1, 4])
def test_rendered_objects_validate(pool, nodes):
    require_crds()
    launch = render(plan(pool, nodes))
    policy, jobset = launch.manifests()
    assert (policy["kind"], jobset["kind"]) == ("NetworkPolicy", "JobSet")
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    validate(policy)
    validate(jobset)  # against the JobSet CRD's schema, unknown fields refused
    job = launch.child_job()  # the Job the JobSet controller creates from the template
    validate(job)
    # the pod each index becomes validates too
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{launch.name}-node-0-0-abcde", **job["spec"]["template"]["metadata"]},
           "spec": job["spec"]["template"]["spec"]}
    validate(pod)


def test_the_jobset_schema_check_is_live():
    """A misspelt field anywhere in the JobSet, down to its pod template, is refused."""
    require_crds()
    jobset = copy.deepcopy(render(plan()).jobset)
    jobset["spec"]["failurePolicy"]["maxRestart"] = jobset["spec"]["failurePolicy"].pop("maxRestarts")
    jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["imagePolicy"] = "x"
    errors = "\n".join(validation_errors(jobset))
    assert "maxRestart" in errors and "imagePolicy" in errors


# ---- rendezvous ----

@pytest.mark.parametrize("nodes", [1, 4])
def test_rank_zero_has_a_stable_dns_name(nodes):
    launch = render(plan(nodes=nodes))
    jobset, spec, job = launch.jobset, pod_spec(launch), job_spec(launch)
    ns, name = launch.namespace, launch.name
    assert [r["name"] for r in jobset["spec"]["replicatedJobs"]] == ["node"]
    assert jobset["spec"]["replicatedJobs"][0]["replicas"] == 1
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == nodes
    # The controller creates the headless Service `subdomain`, publishing not-ready pods.
    assert jobset["spec"]["network"] == {"enableDNSHostnames": True, "subdomain": name,
                                         "publishNotReadyAddresses": True}
    assert spec["subdomain"] == name
    # pod i of child Job 0 has the hostname <jobset>-node-0-i; rank 0 is <jobset>-node-0-0.<subdomain>
    env = env_of(launch)
    assert env["MASTER_ADDR"] == f"{name}-node-0-0.{name}.{ns}.svc" == launch.master_addr
    assert env["MASTER_PORT"] == "29500" and env["NNODES"] == str(nodes)


def test_every_index_gets_its_own_node_rank():
    """NODE_RANK comes from each pod's completion-index annotation, resolved as the kubelet does."""
    launch = render(plan(nodes=4))
    field = env_of(launch)["NODE_RANK"]["fieldRef"]["fieldPath"]
    key = re.fullmatch(r"metadata\.annotations\['(.+)'\]", field).group(1)
    assert key == COMPLETION_INDEX_ANNOTATION
    ranks, hosts = [], []
    for index in range(4):  # what the Job controller stamps on pod `index` of the one child Job
        pod_meta = {"annotations": {COMPLETION_INDEX_ANNOTATION: str(index)}}
        ranks.append(int(pod_meta["annotations"][key]))
        hosts.append(f"{launch.name}-node-0-{index}.{launch.name}.{launch.namespace}.svc")
    assert ranks == [0, 1, 2, 3]
    assert hosts[0] == env_of(launch)["MASTER_ADDR"] and len(set(hosts)) == 4


def test_group_rank_order_follows_the_jobset_pod_names():
    """torch orders nodes by FQDN: with JobSet's names, index order up to 10 nodes, not beyond."""
    from include.training.k8s_job import pod_host_prefix
    from include.training.rendezvous import group_rank_order

    name = render(plan()).name
    assert group_rank_order(pod_host_prefix(name), name, "llm-training", 4) == [0, 1, 2, 3]
    assert group_rank_order(pod_host_prefix(name), name, "llm-training", 12)[:4] == [0, 1, 10, 11]


def test_torchrun_is_an_argument_list_with_the_plan_as_one_item():
    hostile = 's3://bucket/x"; rm -rf / #$(reboot)`id` && echo'  # a valid URI to the trainer
    launch = render(plan(dataset_uri=hostile))
    container = pod_spec(launch)["containers"][0]
    argv = container["command"] + container["args"]
    assert container["command"] == ["python", "-m", "include.training.rendezvous"]
    assert not {"bash", "sh", "-c", "/bin/sh", "/bin/bash"} & set(argv)
    assert argv[-2] == "--plan"
    sent = json.loads(argv[-1])
    assert sent["dataset_uri"] == hostile and sent == trainer_keys(plan(dataset_uri=hostile))
    assert all(hostile not in a for a in argv[:-1])
    assert not set(sent) & {"dag_id", "run_id", "pool", "instance_type", "image"}


def test_the_pod_receives_a_complete_plan_its_own_validator_accepts_unchanged():
    """The renderer trusts the planning task's plan (validate_params checked its values) and sends the
    trainer's part as it is; the pod's trainer checks it again, and a planned plan passes unchanged:
    every default the run uses is in the JobSet."""
    from include.lifecycle.training import plan as build_plan
    from include.lifecycle.training import validate_params
    from tests.unit.test_planning import DATASET, EKS, params

    launch_plan = build_plan(validate_params(params(nodes=2), EKS), DATASET, "d", "r", EKS)["plan"]
    sent = json.loads(pod_spec(render(launch_plan, EKS))["containers"][0]["args"][-1])
    assert validate_plan(sent) == sent == trainer_keys(launch_plan)


def test_torchrun_accepts_the_arguments():
    from torch.distributed import run  # requirements-dev.txt
    launch = render(plan(nodes=4))
    args = run.parse_args(pod_spec(launch)["containers"][0]["args"])
    assert (args.nnodes, args.nproc_per_node) == ("4", "8")
    assert args.rdzv_backend == "c10d"
    assert args.rdzv_endpoint == f"{env_of(launch)['MASTER_ADDR']}:29500"
    assert args.module and args.training_script == "include.training.entrypoint"
    assert args.training_script_args[0] == "--plan"
    conf = dict(kv.split("=") for kv in args.rdzv_conf.split(","))
    assert int(conf["join_timeout"]) >= 900  # the last node may still be provisioning
    assert args.max_restarts == 0  # restarts belong to the JobSet: never one node's workers in place


# ---- all-or-nothing restarts ----

def test_any_failed_pod_fails_the_child_job_at_once():
    job = job_spec(render(plan()))
    assert job["backoffLimitPerIndex"] == 0 and "backoffLimit" not in job  # no index is ever retried alone
    assert job["podFailurePolicy"] == child_job_pod_failure_policy()
    assert job["podReplacementPolicy"] == "Failed"
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    rules = job["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1] == {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [USER_ERROR_EXIT_CODE]}}
    # A lost peer is a consequence: its index fails alone and the cause (a crash, a reclaim) decides.
    assert rules[2] == {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [PEER_LOST_EXIT_CODE]}}
    assert rules[3] == {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [PEER_LOST_EXIT_CODE]}}
    assert "Ignore" not in {r["action"] for r in rules}  # nothing retries one index alone


def test_the_jobset_restarts_the_whole_group_within_the_plans_budget():
    jobset = render(plan(max_restarts=5, restart_backoff_s=60.0, max_wall_s=36000.0)).jobset
    policy = jobset["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == 5
    assert policy["restartStrategy"] == "BlockingRecreate"  # old pods gone before new ones start
    by_name = {r["name"]: r for r in policy["rules"]}
    assert by_name["badPlan"]["action"] == "FailJobSet"
    assert f"exit code {USER_ERROR_EXIT_CODE} matching FailJob rule at index 1" in \
        by_name["badPlan"]["onJobFailureMessagePatterns"]
    assert by_name["disruption"]["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    assert jobset["spec"]["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["node"]}
    assert jobset["metadata"]["annotations"]["llmops.io/max-restarts"] == "5"
    assert jobset["metadata"]["annotations"]["llmops.io/max-wall-s"] == "36000"


def test_the_nemo_defaults_apply_without_restart_keys():
    assert render(plan()).jobset["spec"]["failurePolicy"]["maxRestarts"] == 3


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
    assert launch.job_template.spec.template.metadata.labels["llmops.io/workload"] == \
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
    job, spec = job_spec(launch), pod_spec(launch)
    assert job["template"]["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
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
    assert launch.namespace == launch.network_policy.metadata.namespace == "ft-team-a"
    assert env_of(launch)["MASTER_ADDR"].endswith(".ft-team-a.svc")


# ---- refusals ----
# The plan's values were checked once, by validate_params (pool, nodes, gpus_per_node against the pool's
# instance types: tests/unit/test_planning.py), and the image by the settings: the renderer refuses
# only what the settings and the pools decide, a checkpoint root off the shared volume and a pool's limit.

def test_a_checkpoint_root_off_the_shared_volume_is_refused():
    with pytest.raises(InputError, match="checkpoint_dir='/tmp/ckpt': must be under /checkpoints/"):
        render(plan(checkpoint_dir="/tmp/ckpt"))


def test_over_the_pool_limit_is_refused_before_submission():
    with pytest.raises(PreflightError, match="over pool gpu-training-pool's limit"):
        render(plan(nodes=9))


# ---- the run label: NetworkPolicy, affinity, logs ----

def test_the_run_label_is_on_every_pod_and_the_policy_selects_it():
    launch = render(plan(nodes=4))
    labels = job_spec(launch)["template"]["metadata"]["labels"]
    assert labels[JOB_LABEL] == launch.name
    policy = as_manifest(launch.network_policy)
    assert policy["metadata"]["name"] == launch.name
    assert policy["spec"]["podSelector"] == {"matchLabels": {JOB_LABEL: launch.name}}
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {JOB_LABEL: launch.name}}}]}]
    term = pod_spec(launch)["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["labelSelector"] == {"matchLabels": {JOB_LABEL: launch.name}}
    assert launch.child_job()["metadata"]["labels"][JOBSET_NAME_LABEL] == launch.name


def test_manifests_can_be_written_as_yaml(tmp_path: Path):
    """What a reviewer or `kubectl apply -f` would get."""
    out = tmp_path / "launch.yaml"
    out.write_text(yaml.safe_dump_all(render(plan()).manifests()))
    assert [d["kind"] for d in yaml.safe_load_all(out.read_text())] == ["NetworkPolicy", "JobSet"]


def test_the_network_policy_alone_is_the_rendered_one():
    """setup_rendezvous creates the policy without rendering the JobSet again: the same object."""
    from include.training.k8s_job import rendezvous_network_policy

    assert as_manifest(rendezvous_network_policy(plan())) == as_manifest(render(plan()).network_policy)
