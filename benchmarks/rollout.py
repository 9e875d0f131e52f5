"""Canary rollout: the router's added latency, and how fast a regression is rolled back.

    python benchmarks/rollout.py [--requests 2000] [--interval 5] [--no-fail]

(a) router    GET /v1/models on a model server directly and through Envoy (the route's weighted
              clusters, keep-alive connections), interleaved, sequential: p50 and p99 of each and
              the added latency (gateway - direct). /v1/models costs the server no generation,
              so the difference is the router's own. Goal: under 1 ms at p50.
(b) rollback  A real rollout (operator + triggers, tests/integration/rollout_harness.py) with the
              load generator on; 5xx on 10 % of the canary's requests injected between the first two
              measurements of the first step; reports onset -> canary weight 0 in seconds and as a multiple of the
              analysis interval (acceptance: at most 2).

Everything runs on 127.0.0.1 under a temporary data root and is stopped at the end.
Exits 1 when a goal is missed, unless --no-fail.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


def timed_gets(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        resp.read()
        out.append((time.perf_counter() - t) * 1000)
        assert resp.status == 200, resp.status
    conn.close()
    return out


def bench_router(tmp: Path, n: int) -> float:
    from include.serving import processes
    from include.serving import route as rt
    from tests.integration.serving_stack import export_tiny, start_stack

    v1 = rt.served_name("llmops-assistant", 1)
    stack = start_stack(tmp / "data", {v1: export_tiny(tmp / "m1", 1)})
    try:
        direct_port = processes.read(processes.model_server_name(v1), stack.root).port
        gateway_port = int(stack.gateway().rsplit(":", 1)[1])
        timed_gets(direct_port, 200), timed_gets(gateway_port, 200)  # warm both paths
        direct, gateway = [], []
        for _ in range(10):
            direct += timed_gets(direct_port, n // 10)
            gateway += timed_gets(gateway_port, n // 10)
    finally:
        stack.stop_all()
    d50, d99, g50, g99 = pct(direct, .5), pct(direct, .99), pct(gateway, .5), pct(gateway, .99)
    print(f"(a) router: {n} GET /v1/models each way")
    print(f"    direct   p50 {d50:.3f} ms  p99 {d99:.3f} ms")
    print(f"    gateway  p50 {g50:.3f} ms  p99 {g99:.3f} ms")
    print(f"    added    p50 {g50 - d50:.3f} ms  p99 {g99 - d99:.3f} ms  (goal p50 < 1 ms)")
    return g50 - d50


def bench_rollback(tmp: Path, interval: int) -> float:
    os.environ["LLMOPS_DATA_ROOT"] = f"file://{tmp / 'data'}"
    os.environ["LLMOPS_MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    from llmops_operators.canary import ServerReadyTrigger

    from include.lifecycle import rollout
    from include.platforms import get_platform
    from include.registry.mlflow_registry import get_client
    from include.serving import processes
    from include.serving import route as rt
    from tests.integration import rollout_harness as h

    h.write_eval_set(tmp / "data")
    good = h.export_model(tmp / "m1", seed=1)
    shutil.copytree(good.removeprefix("file://"), tmp / "m2")
    h.register(get_client(), [good, f"file://{tmp / 'm2'}"], tmp / "artifacts")
    try:
        for version, run in (("1", "bench-first"), ("2", "bench-canary")):
            req = rollout.validate_params({"model_version": version, "interval_s": interval, "count": 4,
                                           "steps": [50, 100], "traffic_rate": 40, "probe_size": 0})
            plan = rollout.resolve(req, run)
            rollout.deploy(plan)
            url = get_platform().servers().url(plan["canary"]["service"])
            h.first_event(ServerReadyTrigger(url, plan["canary"]["service"], time.time() + 120, 0.2))
            if version == "1":
                h.run_steps({"validate_params": req, "resolve": plan})
        canary = plan["canary"]["service"]
        onset: dict = {}
        zero: dict = {}
        stop = threading.Event()

        def watch() -> None:
            """Poll the route; one last read after the steps return, so an abort just before is seen."""
            router, seen, done = get_platform().router(), False, False
            while not done:
                done = stop.wait(0.05)
                w = rt.weights(router.get(rt.route_name(plan["model"]))).get(canary)
                seen = seen or bool(w)
                if seen and w == 0 and "at" not in zero:
                    zero["at"] = time.time()

        def on_defer(deferred) -> None:
            if onset or not hasattr(deferred.trigger, "run_data"):
                return
            onset["armed"] = True

            def fire() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=5)
                conn.request("POST", "/admin/faults", '{"error_rate": 0.1}', {"Content-Type": "application/json"})
                conn.getresponse().read()
                onset["at"] = time.time()

            threading.Timer(2 + interval * 1.5, fire).start()  # between the first two measurements

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        verdict, _ = h.run_steps({"validate_params": req, "resolve": plan}, on_defer=on_defer)
        stop.set()
        watcher.join()
    finally:
        root = processes.run_dir()
        for info in processes.running("", root):
            processes.stop(info.name, root)
    elapsed = zero["at"] - onset["at"]
    print(f"(b) rollback: verdict {verdict['decision']} ({verdict['reason']})")
    print(f"    onset -> weight 0: {elapsed:.2f} s = {elapsed / interval:.2f} x the {interval} s interval (goal <= 2)")
    return elapsed / interval


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--no-fail", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        added = bench_router(Path(tmp) / "a", args.requests)
        ratio = bench_rollback(Path(tmp) / "b", args.interval)
    ok = added < 1.0 and ratio <= 2.0
    print("PASS" if ok else "FAIL")
    return 0 if ok or args.no_fail else 1


if __name__ == "__main__":
    raise SystemExit(main())
