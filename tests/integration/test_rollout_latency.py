"""The canary rollout's timing on the local profile, alone on the machine (`serial`): a healthy canary
is promoted on its latency ratios, a regression is rolled back within two analysis intervals.

Real model servers, Envoy, Prometheus and MLflow (fixtures `rollout_world` / `fresh_rollout`); the
rollout's own operator and triggers run (tests/integration/rollout_harness.py).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from include.lifecycle import rollout
from include.platforms import get_platform
from include.serving import route as rt
from include.serving.analysis import load_policy
from tests.integration import rollout_harness as h

pytestmark = [pytest.mark.slow, pytest.mark.serial]


def set_faults(service: str, **faults) -> None:
    url = get_platform().servers().url(service) + "/admin/faults"
    req = urllib.request.Request(url, json.dumps(faults).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


class WeightWatch:
    """Polls the route; remembers when the canary's weight first went to 0 after having been > 0."""

    def __init__(self, service: str):
        self.service, self.zero_at, self.stop = service, None, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        router, seen = get_platform().router(), False
        while not self.stop.wait(0.05):
            w = h.canary_weight(router, self.service)
            seen = seen or bool(w)
            if seen and w == 0 and self.zero_at is None:
                self.zero_at = time.time()


def inject_later(service: str, delay: float, **faults) -> dict:
    """Inject `faults` `delay` s after the first analysis starts; returns a dict that gets 'at'."""
    out: dict = {}

    def on_defer(deferred) -> None:
        if "at" in out or not hasattr(deferred.trigger, "run_data"):
            return

        def fire() -> None:
            set_faults(service, **faults)
            out["at"] = time.time()

        threading.Timer(delay, fire).start()
        out["started"] = True

    out["hook"] = on_defer
    return out


def test_healthy_canary_is_promoted(fresh_rollout):
    req, plan = h.start("2", "healthy", steps=[50, 100], count=2, scale_down_delay_s=0)
    verdict, fired = h.run_steps({"validate_params": req, "resolve": plan})
    assert verdict["decision"] == "promote", verdict
    assert len(fired) == 2  # one analysis per step
    rollout.promote(plan)
    route = get_platform().router().get(rt.route_name(h.MODEL))
    assert rt.weights(route)[h.V2] == 100 and rt.weights(route)[h.V1] == 0
    assert rollout.scale_down_loser(plan) == h.V1
    assert get_platform().servers().url(h.V1) is None
    assert rt.weights(get_platform().router().get(rt.route_name(h.MODEL))) == {h.V2: 100}
    out = rollout.sync_aliases(plan)
    assert out == {"phase": "Promoted", "champion": "2", "challenger": None, "reason": None}
    # every step's record is in the canary's MLflow run, every measurement Successful
    c = fresh_rollout["client"]
    run_id = c.get_model_version(h.MODEL, "2").run_id
    rows = [r for i in (1, 2) for r in json.loads(Path(c.download_artifacts(
        run_id, f"rollout/healthy/step-{i}.json", dst_path=str(fresh_rollout["tmp"]))).read_text())]
    assert rows and {r["outcome"] for r in rows} == {"Successful"}
    assert {r["weight"] for r in rows} == {50, 100}
    assert any(r["metric"].startswith("probe:") for r in rows)


# 5xx: 40 req/s gives the error rate enough canary requests per window to tell 10 % from 5 %; at that
# rate two CPU cores saturate and queueing makes the latency ratios noise, so that run checks the
# error metric alone (a per-run policy override). Latency: the full default policy, unsaturated; the
# injected delay is 4x the local latency floor (policy.yaml), the small model's own ~5 ms is under it.
FLOOR_S = load_policy(profile="local")["thresholds"]["min_latency_s"]


@pytest.mark.parametrize("faults, metrics, rate, policy", [
    ({"error_rate": 0.1}, ("error-rate",), 40, h.NO_LATENCY),
    ({"delay_s": 4 * FLOOR_S}, ("latency-p95-ratio", "ttft-p95-ratio"), 20, {}),
])
def test_regression_rolled_back_within_two_intervals(fresh_rollout, faults, metrics, rate, policy):
    metric = metrics[0]
    req, plan = h.start("2", f"regress-{metric}", steps=[50, 100], count=4, traffic_rate=rate,
                      analysis_policy=policy)
    watch = WeightWatch(h.V2)
    # onset between the first measurement (initialDelay 2 s + 1 interval) and the second
    inj = inject_later(h.V2, 2 + h.INTERVAL * 1.5, **faults)
    try:
        verdict, _ = h.run_steps({"validate_params": req, "resolve": plan}, on_defer=inj["hook"])
    finally:
        watch.stop.set()
        set_faults(h.V2, error_rate=0.0, delay_s=0.0)
    assert verdict["decision"] == "abort" and any(m in verdict["reason"] for m in metrics), verdict
    assert watch.zero_at is not None and "at" in inj
    elapsed = watch.zero_at - inj["at"]
    print(f"{metric}: onset to weight 0 in {elapsed:.1f} s = {elapsed / h.INTERVAL:.2f} intervals")
    assert 0 < elapsed <= 2 * h.INTERVAL  # rolled back by the regression, not before it
    out = rollout.sync_aliases(plan)
    assert out["phase"] == "Aborted" and out["champion"] == "1"
    tags = fresh_rollout["client"].get_model_version(h.MODEL, "2").tags
    assert tags["llmops.rollout"] == "aborted" and any(m in tags["llmops.rollout_reason"] for m in metrics)
    # rolling back again is a no-op: same route object, same resourceVersion
    before = get_platform().router().get(rt.route_name(h.MODEL))
    rollout.abort(plan, "again")
    assert get_platform().router().get(rt.route_name(h.MODEL)) == before
