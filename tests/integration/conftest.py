"""Fixtures for integration tests: a real S3 API (moto's server) behind an Airflow connection.

`s3_server` starts moto's threaded HTTP server on 127.0.0.1 once per session, creates a bucket and
publishes the Airflow connection `aws_default` through `AIRFLOW_CONN_AWS_DEFAULT` (JSON form), so
`ObjectStoragePath("s3://...", conn_id="aws_default")` goes through the amazon provider's S3Hook and
s3fs to that server over HTTP, exactly as it would to AWS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

S3_BUCKET = "llmops-it"
REGION = "us-east-1"
# moto accepts any credentials; these only have to look like keys so botocore signs requests.
ACCESS_KEY = "AKIAMOTOTESTKEY00000"
SECRET_KEY = "moto-test-secret-key-0000000000000000000"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    conn_id: str = "aws_default"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def keys(self, prefix: str) -> dict[str, dict]:
        """Every object under `prefix` (paginated), key -> the list entry (ETag, LastModified, Size)."""
        out: dict[str, dict] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj
        return out


def connection_json(endpoint_url: str) -> str:
    return json.dumps({
        "conn_type": "aws",
        "login": ACCESS_KEY,
        "password": SECRET_KEY,
        "extra": {"endpoint_url": endpoint_url, "region_name": REGION},
    })


def reset_object_storage_cache() -> None:
    """Forget attached S3 stores, so the next ObjectStoragePath reads the current connection."""
    from airflow.sdk.io import store

    for alias in [a for a in store._STORE_CACHE if a.startswith(("s3", "s3a", "s3n"))]:
        del store._STORE_CACHE[alias]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AIRFLOW_CONN_AWS_DEFAULT", "AWS_ACCESS_KEY_ID",
                                             "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = connection_json(endpoint)
    # Nothing may fall through to real AWS credentials on the machine running the tests.
    os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    os.environ["AWS_DEFAULT_REGION"] = REGION
    reset_object_storage_cache()
    info = S3Server(endpoint_url=endpoint, bucket=S3_BUCKET)
    try:
        info.client().create_bucket(Bucket=S3_BUCKET)
        yield info
    finally:
        reset_object_storage_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
