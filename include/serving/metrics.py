"""The metrics seam: a Prometheus HTTP API client; each platform says where its Prometheus is.

`PrometheusClient.query` runs an instant query and returns the vector's (labels, value) pairs;
an unreachable server, a non-2xx answer or an API error (bad PromQL) raises `MetricsError`, which
the analysis counts as an Error (not Inconclusive).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

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
