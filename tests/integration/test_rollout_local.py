"""The canary rollout's failure cases on the local profile: a worse model, no traffic, Prometheus gone,
the analysing worker killed. Real model servers, Envoy, Prometheus and MLflow (fixtures
`rollout_world` / `fresh_rollout`); the rollout's own operator and triggers run
(tests/integration/rollout_harness.py). The latency ratios are off (`h.NO_LATENCY`): these verdicts
must not hinge on other tests sharing the machine. The timing cases are in test_rollout_latency.py.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from include.lifecycle import rollout
from include.platforms import get_platform
from include.platforms.local import prometheus as prometheus_local
from include.serving import processes
from include.serving import route as rt
from tests.integration import rollout_harness as h

pytestmark = pytest.mark.slow


def test_quality_probe_fails_a_worse_model(fresh_rollout):
    """v3 answers nothing (a broken checkpoint) where v1 answers the eval questions: no errors, its
    answers are not fine: the verdict is the probe's."""
    req, plan = h.start("3", "worse", steps=[50, 100], count=1, probe_size=8, analysis_policy=h.NO_LATENCY)
    verdict, _ = h.run_steps({"validate_params": req, "resolve": plan})
    assert verdict["decision"] == "abort" and "quality probe Failed" in verdict["reason"], verdict
    assert h.canary_weight(get_platform().router(), h.V3) == 0


def test_no_data_is_inconclusive_then_abort(fresh_rollout):
    req, plan = h.start("2", "nodata", steps=[50, 100], count=1, traffic_rate=0)
    verdict, _ = h.run_steps({"validate_params": req, "resolve": plan})
    assert verdict["decision"] == "inconclusive", verdict
    # the approval task times out with its default, "abort": the abort task sets the weight to 0
    assert rt.in_progress(get_platform().router().get(rt.route_name(h.MODEL)))
    rollout.abort(plan, "approval timed out")
    assert h.canary_weight(get_platform().router(), h.V2) == 0


def test_a_stable_server_that_is_gone_serves_again_before_the_canary_gets_traffic(fresh_rollout):
    """The route says v1 serves 100 % but its server is gone (`stop-all`, a reboot): the next rollout
    starts it again from its registered weights, as a Deployment's controller would, then attaches v2."""
    servers = get_platform().servers()
    assert servers.scale_down(h.V1) and servers.url(h.V1) is None
    req, plan = h.start("2", "stable-gone", steps=[100], count=1, traffic_rate=0, probe_size=0)
    assert plan["stable"]["source"] == fresh_rollout["client"].get_model_version(h.MODEL, "1").source
    assert processes.http_ok(servers.url(h.V1) + "/v1/models")
    assert rt.weights(get_platform().router().get(rt.route_name(h.MODEL))) == {h.V1: 100, h.V2: 0}
    rollout.abort(plan, "test over")


@pytest.mark.parametrize("restart_after", [None, h.INTERVAL * 2.5])
def test_prometheus_stopped_is_error(fresh_rollout, restart_after):
    # A Prometheus that just came back has no samples in the first window after the outage: this run
    # tolerates that one Inconclusive (a per-run policy override), the errors count against their own limit.
    override = {"defaults": {"inconclusiveLimit": 1}} if restart_after else {}
    req, plan = h.start("2", f"prom-{restart_after}", steps=[50, 100], count=2,
                        analysis_policy={**h.NO_LATENCY, **override}, probe_size=0)
    done: dict = {}

    def on_defer(deferred) -> None:
        if done or not hasattr(deferred.trigger, "run_data"):
            return
        done["stopped"] = prometheus_local.stop()
        if restart_after:
            threading.Timer(restart_after, prometheus_local.ensure_running).start()

    verdict, _ = h.run_steps({"validate_params": req, "resolve": plan}, on_defer=on_defer)
    assert done["stopped"]
    if restart_after is None:
        assert verdict["decision"] == "abort" and "Error" in verdict["reason"], verdict
        assert h.canary_weight(get_platform().router(), h.V2) == 0
    else:
        assert verdict["decision"] == "promote", verdict


KILLED_STEP = """
import json, sys
sys.path[:0] = ['.', 'plugins']
from tests.integration import rollout_harness as h
xcoms = json.loads(sys.argv[1])
h.run_steps(xcoms)
"""


def test_sigkill_mid_step_resumes_at_the_same_step(fresh_rollout):
    req, plan = h.start("2", "killed", steps=[25, 100], count=2, probe_size=0, analysis_policy=h.NO_LATENCY)
    xcoms = {"validate_params": req, "resolve": plan}
    from include.settings import PROJECT_ROOT

    worker = subprocess.Popen([sys.executable, "-c", KILLED_STEP, json.dumps(xcoms)], cwd=PROJECT_ROOT,
                              env=processes.child_env())
    router = get_platform().router()
    deadline = time.time() + 60
    while rt.state(router.get(rt.route_name(h.MODEL))).get("step", -1) < 0:
        assert time.time() < deadline and worker.poll() is None
        time.sleep(0.1)
    time.sleep(random.uniform(0.5, 2 * h.INTERVAL - 1))  # somewhere inside step 1's analysis
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    killed = rt.state(router.get(rt.route_name(h.MODEL)))
    assert (killed["step"], killed["weight"], killed["attempts"]) == (0, 25, 1)
    assert h.canary_weight(router, h.V2) == 25

    seen: list = []

    def on_defer(deferred) -> None:
        route = router.get(rt.route_name(h.MODEL))
        seen.append((rt.state(route)["step"], rt.state(route)["attempts"], rt.weights(route)[h.V2]))

    verdict, _ = h.run_steps(xcoms, on_defer=on_defer)  # the retry
    assert seen[0] == (0, 2, 25)  # same step, same weight, a second attempt: no extra shift
    assert [s[2] for s in seen] == [25, 100]
    assert verdict["decision"] == "promote"
