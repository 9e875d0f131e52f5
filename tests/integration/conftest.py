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


@pytest.fixture(autouse=True)
def fresh_object_stores() -> None:
    """Each test attaches S3 from the current connection: a store another module attached to its own
    S3 server (the cluster tests', stopped since) never answers for this one."""
    reset_object_storage_cache()


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


# --------------------------------------------------------------------------- MLflow tracking server

@dataclass(frozen=True)
class MlflowServer:
    url: str
    s3: S3Server
    artifact_prefix: str  # key prefix in the bucket where the server writes proxied artifacts
    log_path: str

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url, registry_uri=self.url)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc, log_path, timeout: float = 120.0) -> None:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    with open(log_path, errors="replace") as f:
        tail = f.read()[-4000:]
    raise RuntimeError(f"mlflow server at {url} not healthy (exit code {proc.poll()}); log tail:\n{tail}")


def _stop(proc) -> None:
    """Terminate the server's own process group (the CLI plus the uvicorn worker it spawns)."""
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)  # the group this fixture created (start_new_session)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the CLI is gone; stragglers of its group are not left behind
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        break


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory) -> Iterator[MlflowServer]:
    """A real `mlflow server` on 127.0.0.1: SQLite backend, artifacts proxied to the moto bucket.

    Started as a subprocess from an argument list in its own process group, waited for on /health,
    and always terminated. Its AWS settings point at moto only, so nothing reaches real AWS.
    """
    import subprocess
    import sys
    from pathlib import Path

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    prefix = "mlflow"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", f"s3://{s3_server.bucket}/{prefix}",
           "--workers", "1"]
    env = {**os.environ,
           "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
           "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           # MLflow 3 servers start a job runner with seven huey consumer processes (GenAI jobs);
           # the registry needs none of it, and on a small CI box it costs seconds at start and stop.
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_SESSION_TOKEN", None)
    log_path = root / "server.log"
    saved = os.environ.get("MLFLOW_DISABLE_TELEMETRY")
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # the test process's own client, too
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_healthy(url, proc, log_path)
        yield MlflowServer(url=url, s3=s3_server, artifact_prefix=prefix, log_path=str(log_path))
    finally:
        _stop(proc)
        if saved is None:
            os.environ.pop("MLFLOW_DISABLE_TELEMETRY", None)
        else:
            os.environ["MLFLOW_DISABLE_TELEMETRY"] = saved


# --------------------------------------------------------------------------- the canary rollout's stack

@pytest.fixture(scope="module")
def rollout_world(tmp_path_factory):
    """The canary rollout's local stack for one module (tests/integration/rollout_harness.py): settings
    in a temp dir, three registered versions (v1 fitted to the eval answers, v2 = v1's weights, v3 = a
    broken checkpoint that answers nothing), v1 serving."""
    import shutil

    from include.platforms import get_platform
    from include.registry.mlflow_registry import get_client
    from include.serving import processes
    from include.serving import route as rt
    from include.settings import get_settings
    from tests.integration import rollout_harness as h

    tmp = tmp_path_factory.mktemp("rollout")
    saved = {k: os.environ.get(k) for k in ("LLMOPS_DATA_ROOT", "LLMOPS_MLFLOW_TRACKING_URI")}
    os.environ["LLMOPS_DATA_ROOT"] = f"file://{tmp / 'data'}"
    os.environ["LLMOPS_MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    get_settings.cache_clear()
    h.write_eval_set(tmp / "data")
    good = h.export_model(tmp / "m1", seed=1, train_steps=150)
    shutil.copytree(good.removeprefix("file://"), tmp / "m2")
    client = get_client()
    h.register(client, [good, f"file://{tmp / 'm2'}", h.export_model(tmp / "m3", seed=3, mute=True)],
               tmp / "artifacts")
    # first rollout: no champion server, so v1 serves at 100 % once ready, without analysis
    verdict, fired = h.first_rollout()
    assert verdict["decision"] == "promote" and "without analysis" in verdict["reason"] and not fired
    route = get_platform().router().get(rt.route_name(h.MODEL))
    assert rt.weights(route) == {h.V1: 100} and rt.state(route)["phase"] == "Promoted"
    yield {"client": client, "tmp": tmp}
    root = processes.run_dir()
    for info in processes.running("", root):
        processes.stop(info.name, root)
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    get_settings.cache_clear()


@pytest.fixture
def fresh_rollout(rollout_world):
    """Before each test: v1 alone at 100 %, no rollout state, no faults, v1 champion and v2 challenger."""
    from include.platforms import get_platform
    from include.platforms.local import prometheus as prometheus_local
    from include.serving import route as rt
    from include.settings import get_settings
    from tests.integration import rollout_harness as h

    router, servers = get_platform().router(), get_platform().servers()
    route = router.get(rt.route_name(h.MODEL))
    clean = rt.new_route(h.MODEL, get_settings().serving_namespace, backends={h.V1: 100})
    clean["metadata"]["resourceVersion"] = route["metadata"]["resourceVersion"]
    for svc in (h.V2, h.V3):
        servers.scale_down(svc)
    servers.deploy(h.V1, rollout_world["client"].get_model_version(h.MODEL, "1").source)
    router.replace(clean)
    servers.stop_traffic()
    prometheus_local.ensure_running()
    c = rollout_world["client"]
    c.set_registered_model_alias(h.MODEL, "champion", "1")
    c.set_registered_model_alias(h.MODEL, "challenger", "2")
    return rollout_world
