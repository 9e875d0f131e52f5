"""The eks platform's metrics client: the Prometheus endpoint from an Airflow connection, SigV4-signed for
Amazon Managed Prometheus, against a stub HTTP API on 127.0.0.1; and the client's error mapping."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from include.platforms.eks import metrics as eks_metrics
from include.serving import metrics


class Stub:
    def __init__(self, answer: dict, status: int = 200):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                seen.append({"path": self.path, "headers": dict(self.headers), "form": urllib.parse.parse_qs(body)})
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


VECTOR = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "0.25"]}]}}


def test_amp_requests_are_sigv4_signed_with_the_aws_connection(monkeypatch):
    stub = Stub(VECTOR)
    try:
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
            "conn_type": "aws", "login": "AKIAEXAMPLEKEY000000", "password": "secret-example-key-0000000000000000",
            "extra": {"region_name": "eu-west-1"}}))
        monkeypatch.setenv("AIRFLOW_CONN_PROMETHEUS_DEFAULT", json.dumps({
            "conn_type": "http", "host": stub.url, "extra": {"sigv4": True, "region": "eu-west-1",
                                                             "path": "workspaces/ws-123"}}))
        client = eks_metrics.eks_client()
        assert client.scalar('sum(rate(http_requests_total{service="m-v2"}[1m]))') == 0.25
        [req] = stub.seen
        assert req["path"] == "/workspaces/ws-123/api/v1/query"
        auth = req["headers"]["Authorization"]
        assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEKEY000000/")
        assert "/eu-west-1/aps/aws4_request" in auth and "X-Amz-Date" in req["headers"]
        assert req["form"]["query"] == ['sum(rate(http_requests_total{service="m-v2"}[1m]))']
    finally:
        stub.close()


def test_in_cluster_prometheus_is_not_signed(monkeypatch):
    stub = Stub(VECTOR)
    try:
        host = stub.url.removeprefix("http://")
        monkeypatch.setenv("AIRFLOW_CONN_PROMETHEUS_DEFAULT", json.dumps({
            "conn_type": "http", "host": host.split(":")[0], "port": int(host.split(":")[1])}))
        assert eks_metrics.eks_client().scalar("up") == 0.25
        assert "Authorization" not in stub.seen[0]["headers"]
    finally:
        stub.close()


@pytest.mark.parametrize("answer, status, expected", [
    ({"status": "error", "error": "parse error"}, 400, metrics.MetricsError),
    ({"status": "success", "data": {"resultType": "vector", "result": []}}, 200, None),
    ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]}},
     200, None),
])
def test_bad_query_is_an_error_and_empty_or_nan_is_no_value(answer, status, expected):
    stub = Stub(answer, status)
    try:
        client = metrics.PrometheusClient(stub.url)
        if expected is metrics.MetricsError:
            with pytest.raises(metrics.MetricsError, match="400"):
                client.scalar("sum(")
        else:
            assert client.scalar("x") is None
    finally:
        stub.close()


def test_unreachable_is_an_error():
    with pytest.raises(metrics.MetricsError, match="unreachable"):
        metrics.PrometheusClient("http://127.0.0.1:9", timeout=1).query("up")
