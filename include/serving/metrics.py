"""The metrics seam: a Prometheus HTTP API client; local Prometheus or in-cluster / AMP on eks.

`PrometheusClient.query` runs an instant query and returns the vector's (labels, value) pairs;
an unreachable server, a non-2xx answer or an API error (bad PromQL) raises `MetricsError`, which
the analysis counts as an Error (not Inconclusive). `get_metrics` is the one place the profile
picks the endpoint:
- local: the local Prometheus (`prometheus_local`), at the port it runs on now;
- eks: the Airflow connection `prometheus_default` (host = base URL). With extra
  `{"sigv4": true, "region": ...}` requests are signed for Amazon Managed Prometheus (service `aps`)
  with the credentials of the amazon provider's AWS connection (IRSA / Pod Identity on the cluster).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from include.settings import Settings, get_settings

PROMETHEUS_CONN_ID = "prometheus_default"
QUERY_TIMEOUT_S = 5.0


class MetricsError(RuntimeError):
    """Prometheus could not answer: unreachable, refused, or the query is invalid."""


class PrometheusClient:
    def __init__(self, base_url: str | Callable[[], str | None], *,
                 sign: Callable[[urllib.request.Request], None] | None = None,
                 timeout: float = QUERY_TIMEOUT_S):
        self._base = base_url
        self.sign = sign
        self.timeout = timeout

    @property
    def base_url(self) -> str:
        base = self._base() if callable(self._base) else self._base
        if not base:
            raise MetricsError("no Prometheus endpoint is configured or running")
        return base.rstrip("/")

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(f"{self.base_url}/api/v1/query", data=data, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        if self.sign:
            self.sign(req)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - configured endpoint
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                detail = exc.reason
            raise MetricsError(f"Prometheus answered {exc.code}: {detail}") from exc
        except (OSError, ValueError) as exc:
            raise MetricsError(f"Prometheus unreachable at {self.base_url}: {exc}") from exc
        if body.get("status") != "success":
            raise MetricsError(f"Prometheus query failed: {body.get('error')}")
        result = body["data"]
        if result["resultType"] == "scalar":
            return [({}, float(result["result"][1]))]
        if result["resultType"] != "vector":
            raise MetricsError(f"expected an instant vector, got {result['resultType']}")
        return [(s["metric"], float(s["value"][1])) for s in result["result"]]

    def scalar(self, promql: str, at: float | None = None) -> float | None:
        """The single value of a query, None when empty or NaN (no data); raises on several series."""
        rows = self.query(promql, at)
        if not rows:
            return None
        if len(rows) > 1:
            raise MetricsError(f"query returned {len(rows)} series, expected one: {promql}")
        value = rows[0][1]
        return None if math.isnan(value) else value


def _sigv4_signer(conn: Any) -> Callable[[urllib.request.Request], None]:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    extra = conn.extra_dejson
    region = extra.get("region") or extra.get("region_name")
    hook = AwsBaseHook(aws_conn_id=extra.get("aws_conn_id", "aws_default"), client_type="sts")

    def sign(req: urllib.request.Request) -> None:
        creds = hook.get_session(region_name=region).get_credentials().get_frozen_credentials()
        aws = AWSRequest(method=req.get_method(), url=req.full_url, data=req.data,
                         headers=dict(req.header_items()))
        SigV4Auth(creds, "aps", region).add_auth(aws)
        for key, value in aws.headers.items():
            req.add_unredirected_header(key, value)

    return sign


def eks_client(conn_id: str = PROMETHEUS_CONN_ID) -> PrometheusClient:
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    base = conn.host if "://" in (conn.host or "") else f"{conn.schema or 'http'}://{conn.host}"
    if conn.port:
        base = f"{base}:{conn.port}"
    extra = conn.extra_dejson
    if extra.get("path"):
        base = base.rstrip("/") + "/" + extra["path"].strip("/")
    return PrometheusClient(base, sign=_sigv4_signer(conn) if extra.get("sigv4") else None)


def get_metrics(settings: Settings | None = None) -> PrometheusClient:
    """The one place the profile picks the Prometheus endpoint."""
    settings = settings or get_settings()
    if settings.is_local:
        from include.serving import processes, prometheus_local

        root = processes.run_dir(settings.data_root)
        return PrometheusClient(lambda: prometheus_local.url(root))
    return eks_client()
