"""Workers wait for rank 0's DNS name; the launcher keeps the worker's exit code for the Job."""

from __future__ import annotations

import socket
import tempfile

import pytest

from include.training import rendezvous
from include.training.rendezvous import (
    PEER_LOST_EXIT_CODE,
    USER_ERROR_EXIT_CODE,
    master_address,
    node_rank,
    wait_for_master,
    with_host_flag,
)


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def flaky_resolver(failures: int):
    """NXDOMAIN `failures` times (pod 0 not created yet), then an address."""
    calls = []

    def resolve(host, port):
        calls.append((host, port))
        if len(calls) <= failures:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return ["10.0.3.7"]

    return resolve, calls


def test_waits_until_rank_zero_resolves():
    t = FakeTime()
    resolve, calls = flaky_resolver(5)
    host = master_address("job-x-1a2b", "job-x-1a2b", "llm-training")
    assert wait_for_master(host, 29500, resolve=resolve, sleep=t.sleep, clock=t.clock) == ["10.0.3.7"]
    assert len(calls) == 6 and calls[0] == ("job-x-1a2b-0.job-x-1a2b.llm-training.svc", 29500)
    assert t.sleeps == [1.0, 2.0, 4.0, 8.0, 15.0]  # backs off, capped


def test_gives_up_with_a_clear_reason():
    t = FakeTime()
    resolve, _ = flaky_resolver(10**6)
    with pytest.raises(TimeoutError, match=r"job-0\.svc\.ns\.svc did not resolve within 60s: pod 0"):
        wait_for_master("job-0.svc.ns.svc", timeout_s=60, resolve=resolve, sleep=t.sleep, clock=t.clock)
    assert t.now == 60  # never sleeps past the deadline


def test_empty_answer_is_not_success():
    t = FakeTime()
    answers = iter([[], ["10.0.0.1"]])
    assert wait_for_master("h", resolve=lambda h, p: next(answers), sleep=t.sleep, clock=t.clock) == ["10.0.0.1"]


def test_real_resolver_on_loopback():
    assert wait_for_master("localhost", timeout_s=5)


def test_node_rank_from_the_completion_index():
    assert node_rank({"NODE_RANK": "3", "JOB_COMPLETION_INDEX": "3"}) == 3
    assert node_rank({"JOB_COMPLETION_INDEX": "2"}) == 2
    assert node_rank({}) == 0


def test_host_flag_joins_existing_rdzv_conf():
    args = ["--nnodes=2", "--rdzv-conf=join_timeout=1800", "--module", "m", "--plan", "{}"]
    assert with_host_flag(args, True) == ["--nnodes=2", "--rdzv-conf=join_timeout=1800,is_host=true",
                                          "--module", "m", "--plan", "{}"]
    assert with_host_flag(["--nnodes=2", "m"], False) == ["--rdzv-conf=is_host=false", "--nnodes=2", "m"]


def test_host_flag_never_touches_the_script_arguments():
    plan = '{"run_name": "--rdzv-conf=evil"}'
    args = ["--rdzv-conf=a=1", "--module", "m", "--rdzv-conf=x", plan]
    assert with_host_flag(args, True)[-2:] == ["--rdzv-conf=x", plan]


def test_main_waits_then_runs_torchrun_with_rank_zero_hosting(monkeypatch):
    seen = {}
    monkeypatch.setattr(rendezvous, "wait_for_master", lambda host, port, timeout_s: seen.update(
        host=host, port=port, timeout=timeout_s) or ["10.0.0.1"])
    monkeypatch.setattr(rendezvous, "wait_for_store", lambda host, port, timeout_s: seen.update(
        store=(host, port, timeout_s)))
    monkeypatch.setattr(rendezvous, "run_torchrun", lambda args: seen.update(args=args) or 0)
    env = {"MASTER_ADDR": "j-0.j.ns.svc", "MASTER_PORT": "29500", "NODE_RANK": "0",
           "LLMOPS_RDZV_WAIT_TIMEOUT_S": "42"}
    assert rendezvous.main(["--rdzv-conf=join_timeout=1", "--module", "m"], env) == 0
    assert seen["host"] == "j-0.j.ns.svc" and seen["port"] == 29500 and seen["timeout"] == 42
    assert seen["args"][0] == "--rdzv-conf=join_timeout=1,is_host=true"
    assert "store" not in seen  # node 0 starts the store: it waits for its own name only
    rendezvous.main(["--rdzv-conf=join_timeout=1", "--module", "m"], {**env, "NODE_RANK": "2"})
    assert seen["args"][0].endswith("is_host=false")
    assert seen["store"] == ("j-0.j.ns.svc", 29500, 42)  # workers wait until the store accepts


def test_main_fails_fast_without_master_or_on_timeout(monkeypatch, capsys):
    assert rendezvous.main([], {}) == 1
    assert "MASTER_ADDR is not set" in capsys.readouterr().err

    def never(host, port, timeout_s):
        raise TimeoutError(f"{host} did not resolve")

    monkeypatch.setattr(rendezvous, "wait_for_master", never)
    assert rendezvous.main([], {"MASTER_ADDR": "j-0.j.ns.svc"}) == PEER_LOST_EXIT_CODE  # the group restarts
    assert "did not resolve" in capsys.readouterr().err


@pytest.fixture
def temp_dir_of_the_test(tmp_path, monkeypatch):
    """torchrun's agent makes a log dir in the temp dir and leaves it there: let that be the test's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def test_worker_exit_code_survives_torchrun(temp_dir_of_the_test):
    """torchrun alone exits 1 on any worker failure; the Job's FailJob rule needs the real code."""
    args = ["--nnodes=1", "--nproc-per-node=1", "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0",
            "--rdzv-conf=is_host=true", "--max-restarts=0", "--module", "json.tool", "--no-such-option"]
    assert rendezvous.run_torchrun(args) == USER_ERROR_EXIT_CODE  # argparse's exit code 2
    ok = [*args[:-2], "--module", "platform"]
    assert rendezvous.run_torchrun(ok) == 0


def test_an_agent_that_cannot_reach_the_store_exits_peer_lost(temp_dir_of_the_test):
    """torchrun on a worker node whose store (node 0) is gone: the group restarts, not this index."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-conf=is_host=false,read_timeout=3,join_timeout=3", "--max-restarts=0", "--module", "platform"]
    assert rendezvous.run_torchrun(args) == PEER_LOST_EXIT_CODE
