"""Restart policy, exit codes and the eks failure policy: validated, in the plan, agreeing everywhere."""

from __future__ import annotations

import socket
import threading

import pytest

from include.registry.mlflow_registry import flatten
from include.training import entrypoint, rendezvous, restarts
from include.training import plan as trainer_plans
from include.training.restarts import (
    PEER_LOST_EXIT_CODE,
    RESTART_KEYS,
    RestartPolicy,
    RestartPolicyError,
    is_peer_loss,
    jobset_failure_policy,
    restart_policy,
)
from tests.k8s_schemas import crd_schemas, require_crds
from tests.unit.test_planning import DATASET, EKS, LOCAL, params


def test_defaults_are_short_locally_and_sized_for_an_image_pull_on_eks():
    local, eks = restart_policy({"backend": "tiny"}), restart_policy({"backend": "nemo"})
    assert local.rendezvous_timeout_s <= 60 and eks.rendezvous_timeout_s >= 20 * 60
    assert rendezvous.DEFAULT_WAIT_TIMEOUT_S == eks.rendezvous_timeout_s
    assert local.max_restarts >= 1 and eks.max_restarts >= 1
    assert restart_policy({"backend": "tiny", "max_restarts": 0}).max_restarts == 0


@pytest.mark.parametrize(("key", "value"), [
    ("max_restarts", -1), ("max_restarts", 101), ("max_restarts", True), ("max_restarts", 1.5),
    ("restart_backoff_s", -0.1), ("restart_backoff_s", float("nan")), ("restart_backoff_s", "1"),
    ("max_wall_s", 0), ("max_wall_s", float("inf")), ("rendezvous_timeout_s", 0.5),
])
def test_bad_restart_values_name_the_key_and_the_range(key, value):
    with pytest.raises(RestartPolicyError, match=rf"plan key '{key}'=.*: expected .* <= value <= "):
        restart_policy({"backend": "tiny", key: value})


def test_backoff_doubles_and_is_capped():
    policy = RestartPolicy(restart_backoff_s=30.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [30.0, 60.0, 120.0, 240.0]
    assert policy.backoff(10) == restarts.MAX_BACKOFF_S


@pytest.mark.parametrize("settings", [LOCAL, EKS], ids=["local", "eks"])
def test_the_plan_carries_the_restart_policy_so_mlflow_logs_it(settings):
    from include.lifecycle.training import plan as build_plan
    from include.lifecycle.training import validate_params

    sized = params(gpus_per_node=2) if settings.profile == "local" else params()
    plan = build_plan(validate_params(sized, settings), DATASET, "finetune_lifecycle", "manual__1", settings)["plan"]
    expected = restart_policy({"backend": plan["backend"]}).as_plan()
    assert {k: plan[k] for k in RESTART_KEYS} == expected
    logged = flatten(plan)  # what log_training sends to MLflow as params
    assert {k: logged[k] for k in RESTART_KEYS} == {k: str(v) for k, v in expected.items()}
    # the trainer never sees them, the launcher does
    assert not set(RESTART_KEYS) & set(trainer_plans.trainer_keys(plan))
    assert restart_policy(plan) == RestartPolicy.from_plan(plan) == RestartPolicy(**expected)


def test_exit_codes_agree_across_the_modules():
    assert set(RESTART_KEYS) <= set(trainer_plans.LAUNCH_KEYS)
    assert entrypoint.USER_ERROR_EXIT_CODE == rendezvous.USER_ERROR_EXIT_CODE == restarts.USER_ERROR_EXIT_CODE == 2
    assert rendezvous.PEER_LOST_EXIT_CODE == PEER_LOST_EXIT_CODE not in (0, 1, 2)


def test_peer_loss_is_told_apart_from_a_rank_s_own_failure():
    import torch.distributed as dist

    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:33927: "
                        "Connection reset by peer. This is typically caused by a remote worker hanging")
    assert is_peer_loss(gloo)
    assert is_peer_loss(dist.DistNetworkError("store gone"))
    assert is_peer_loss(rendezvous.StoreUnavailable("rank 0's store did not come up"))
    assert not is_peer_loss(RuntimeError("CUDA out of memory"))
    assert not is_peer_loss(ValueError("Connection reset by peer"))  # not from the transport
    assert not is_peer_loss(FileNotFoundError("dataset: no training.jsonl"))


def test_main_exits_peer_lost_when_the_store_never_comes(monkeypatch, capsys):
    plan = {"run_name": "r", "backend": "tiny", "base_model": "tiny-byte-lm", "dataset_uri": "file:///nowhere",
            "output_uri": "file:///out", "checkpoint_dir": "/ckpt", "nodes": 2, "gpus_per_node": 1}
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv(rendezvous.WAIT_TIMEOUT_ENV, "1")
    import json

    assert entrypoint.main(["--plan", json.dumps(plan)]) == PEER_LOST_EXIT_CODE
    assert f"127.0.0.1:{port} resolved but accepted no connection within 1s" in capsys.readouterr().err


def test_wait_for_store_returns_once_a_listener_accepts():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    timer = threading.Timer(0.5, server.listen)  # the store comes up half a second late
    timer.start()
    try:
        rendezvous.wait_for_store("127.0.0.1", port, timeout_s=10, interval_s=0.05)
    finally:
        timer.cancel()
        server.close()


def test_wait_for_store_is_not_satisfied_by_dns_alone():
    class Clock:
        now = 0.0

    def sleep(s):
        Clock.now += s

    with pytest.raises(rendezvous.StoreUnavailable, match="resolved but accepted no connection within 60s"):
        rendezvous.wait_for_store("job-0.svc.ns.svc", 29500, timeout_s=60, resolve=lambda h, p: ["10.0.0.9"],
                                  connects=lambda h, p, t: False, sleep=sleep, clock=lambda: Clock.now)
    assert Clock.now == 60


def test_rank_order_is_torch_s_sorted_node_descriptors_not_the_completion_index():
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import _NodeDesc

    nodes = 12
    order = rendezvous.group_rank_order("ft-abc", "ft-abc", "llm-training", nodes)
    # torch: ranks are assigned by enumerate(sorted(participants)); descriptors start with the FQDN
    descs = {_NodeDesc(f"ft-abc-{i}.ft-abc.llm-training.svc.cluster.local", 1, 0): i for i in range(nodes)}
    assert [descs[d] for d in sorted(descs)] == order
    assert order[:2] == [0, 1] and order[2:4] == [10, 11]  # index 10 is group rank 2
    assert rendezvous.group_rank_order("j", "j", "ns", 10) == list(range(10))


def test_jobset_failure_policy_validates_against_the_crd():
    require_crds()
    import jsonschema

    schema = crd_schemas()[("jobset.x-k8s.io/v1alpha2", "JobSet")]
    job_template = {"spec": {"backoffLimit": 0, "podFailurePolicy": restarts.child_job_pod_failure_policy(),
                             "template": {"spec": {"restartPolicy": "Never",
                                                   "containers": [{"name": "trainer", "image": "t:1"}]}}}}
    jobset = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "ft-x"},
              "spec": {"failurePolicy": jobset_failure_policy(RestartPolicy(max_restarts=4)),
                       "replicatedJobs": [{"name": "trainer", "replicas": 1, "template": job_template}]}}
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(jobset)]
    assert errors == []
    policy = jobset["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == 4 and policy["restartStrategy"] == "BlockingRecreate"


def test_jobset_rules_match_the_child_job_s_failure_messages():
    """The rule indexes in the JobSet patterns are the positions in the child's podFailurePolicy."""
    import re

    rules = restarts.child_job_pod_failure_policy()["rules"]
    user = rules[restarts.USER_ERROR_RULE_INDEX]
    assert user["onExitCodes"]["values"] == [restarts.USER_ERROR_EXIT_CODE]
    assert rules[0]["onPodConditions"][0]["type"] == "DisruptionTarget"
    bad_plan, disruption = jobset_failure_policy(RestartPolicy())["rules"]
    # the messages the Job controller writes when a FailJob rule fires (pkg/controller/job/pod_failure_policy.go)
    exit_msg = ("Container trainer for pod llm-training/ft-x-trainer-0-0-abcde failed with exit code 2 "
                "matching FailJob rule at index 1")
    disrupted = ("Pod llm-training/ft-x-trainer-0-1-fghij has condition DisruptionTarget "
                 "matching FailJob rule at index 0")
    assert any(re.search(p, exit_msg) for p in bad_plan["onJobFailureMessagePatterns"])
    assert not any(re.search(p, disrupted) for p in bad_plan["onJobFailureMessagePatterns"])
    assert any(re.search(p, disrupted) for p in disruption["onJobFailureMessagePatterns"])
    assert bad_plan["action"] == "FailJobSet" and disruption["action"] == "RestartJobSetAndIgnoreMaxRestarts"
