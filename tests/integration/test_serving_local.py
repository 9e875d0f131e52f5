"""The local serving stack on real parts: model servers (OpenAI API, vLLM metrics), Envoy from the
HTTPRoute, Prometheus scraping both; the measured traffic share matches the route's weight."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from include.platforms.local import prometheus as prometheus_local
from include.serving import metrics, processes
from include.serving import route as rt
from tests.integration.serving_stack import MODEL, export_tiny, loadgen, start_stack

pytestmark = pytest.mark.slow
V1, V2 = rt.served_name(MODEL, 1), rt.served_name(MODEL, 2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    s = start_stack(tmp / "data", {V1: export_tiny(tmp / "m1", 1), V2: export_tiny(tmp / "m2", 2)})
    s.router.update(s.route_name, lambda r: rt.attach(r, V1, V2))
    yield s
    s.stop_all()
    assert processes.running("", s.root) == []


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_model_server_speaks_openai_and_exports_vllm_metrics(stack):
    base = stack.servers.url(V2)
    models = json.loads(urllib.request.urlopen(base + "/v1/models").read())
    assert [m["id"] for m in models["data"]] == [V2]
    assert urllib.request.urlopen(base + "/health").status == 200
    code, body = _post(base + "/v1/completions", {"model": V2, "prompt": "What is a canary?", "max_tokens": 8})
    assert code == 200 and body["model"] == V2 and isinstance(body["choices"][0]["text"], str)
    code, body = _post(base + "/v1/chat/completions",
                       {"messages": [{"role": "user", "content": "What is a canary?"}], "max_tokens": 8})
    assert code == 200 and body["choices"][0]["message"]["role"] == "assistant"
    code, body = _post(base + "/v1/completions", {"prompt": "x", "max_tokens": 100000})
    assert code == 400 and "max_tokens" in body["error"]["message"]
    code, body = _post(base + "/v1/completions", {"model": "other", "prompt": "x"})
    assert code == 404

    # fault injection: every request fails, and the failures are counted as vLLM counts them
    assert _post(base + "/admin/faults", {"error_rate": 1.0})[0] == 200
    try:
        assert _post(base + "/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 500
    finally:
        assert _post(base + "/admin/faults", {"error_rate": 0.0})[0] == 200
    assert _post(base + "/admin/faults", {"error_rate": 2})[0] == 400
    text = urllib.request.urlopen(base + "/metrics").read().decode()
    for name in ("vllm:e2e_request_latency_seconds_bucket", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:num_requests_waiting", "vllm:request_success_total"):
        assert f'{name}{{' in text and f'model_name="{V2}"' in text, name
    assert 'http_requests_total{handler="/v1/completions",method="POST",status="5xx"} 1.0' in text


@pytest.mark.parametrize("weight", [10, 25, 50])
def test_measured_share_matches_weight(stack, weight):
    """2,000 requests through Envoy, counted by Prometheus at Envoy: canary share within +-3 points."""
    stack.router.update(stack.route_name, lambda r: rt.set_weights(r, V1, V2, weight))
    q = 'sum(envoy_cluster_upstream_rq_total{{envoy_cluster_name="{}"}})'
    before = {s: stack.prom.scalar(q.format(s)) or 0.0 for s in (V1, V2)}
    counts = loadgen.burst(stack.gateway(), 2000, max_tokens=1, concurrency=6)
    assert sum(n for (status, _), n in counts.items() if status == 200) == 2000, counts
    total_before = sum(before.values())
    stack.wait_scraped(f'sum(envoy_cluster_upstream_rq_total{{envoy_cluster_name=~"{V1}|{V2}"}})',
                       total_before + 2000)
    after = {s: stack.prom.scalar(q.format(s)) or 0.0 for s in (V1, V2)}
    canary, stable = after[V2] - before[V2], after[V1] - before[V1]
    assert canary + stable == 2000
    share = 100 * canary / 2000
    print(f"weight {weight}: measured canary share {share:.2f} % over 2000 requests")
    assert abs(share - weight) <= 3


def test_weight_changes_drop_no_request(stack):
    """Reloading the split (RDS file swap) under keep-alive traffic: every request still answers 200."""
    stop = threading.Event()
    results: list = []

    def traffic():
        results.append(loadgen.burst(stack.gateway(), 400, max_tokens=1, concurrency=4))
        stop.set()

    t = threading.Thread(target=traffic)
    t.start()
    weight = 0
    while not stop.wait(0.05):
        weight = (weight + 30) % 100
        stack.router.update(stack.route_name, lambda r, w=weight: rt.set_weights(r, V1, V2, w))
    t.join()
    assert {status for status, _ in results[0]} == {200}, results[0]


def test_prometheus_down_is_an_error_and_restart_keeps_its_port(stack):
    port = prometheus_local.url(stack.root)
    assert prometheus_local.stop(stack.root)
    with pytest.raises(metrics.MetricsError, match="unreachable"):
        stack.prom.query("up")
    prometheus_local.ensure_running(stack.root)
    assert prometheus_local.url(stack.root) == port
    with pytest.raises(metrics.MetricsError, match="400"):
        stack.prom.query("sum(")
    assert stack.prom.query("vector(1)")[0][1] == 1.0
