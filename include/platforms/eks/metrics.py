"""Prometheus on eks: the Airflow connection `prometheus_default` (host = base URL). With extra
`{"sigv4": true, "region": ...}` requests are signed for Amazon Managed Prometheus (service `aps`)
with the credentials of the amazon provider's AWS connection (IRSA / Pod Identity on the cluster)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

from include.serving.metrics import PrometheusClient

PROMETHEUS_CONN_ID = "prometheus_default"


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
