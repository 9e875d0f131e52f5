"""The dataset catalog on S3: stage, publish, rerun and a publish that dies midway.

Everything runs against moto's S3 server over HTTP, through the Airflow connection `aws_default`
(amazon provider S3Hook -> aiobotocore session -> s3fs), and every claim about what landed where is
checked with a plain boto3 client listing the bucket, not through the code under test.
"""

from __future__ import annotations

import io
import json
import time
import uuid

import pytest

from include.data import catalog
from include.data.pipeline import PrepConfig
from include.settings import get_settings
from include.storage.objectstore import MANIFEST, storage_path

VERSION_FILES = {"training.jsonl", "validation.jsonl", "test.jsonl", "eval.jsonl", "quarantine.jsonl", MANIFEST}
DAY = "2026-11-02"

TOPICS = ["glaciers", "compilers", "sourdough", "tidal power", "bee colonies", "chess openings",
          "volcanoes", "jazz harmony", "solar sails", "coral reefs"]


def good_records() -> list[dict]:
    """Distinct records in two raw shapes; no two are near-duplicates of each other."""
    out = []
    for i, topic in enumerate(TOPICS[:6]):
        out.append({"instruction": f"Explain in two sentences how {topic} work, example number {i}.",
                    "output": f"{topic.capitalize()} are described here in a short answer {i * 7919}: "
                              f"the mechanism of {topic} depends on conditions peculiar to {topic}."})
    for i, topic in enumerate(TOPICS[6:]):
        out.append({"question": f"What is the single most surprising fact about {topic}?",
                    "answer": f"Many people do not know that {topic} involve process {i * 104729}.",
                    "context": f"Background notes on {topic}, sheet {i}."})
    return out


def raw_partition_bytes() -> tuple[bytes, bytes, int]:
    """A JSONL file (good records, one exact duplicate, one malformed line) and a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = good_records()
    jsonl_records = records[:7]
    lines = [json.dumps(r) for r in jsonl_records]
    lines.insert(3, json.dumps(jsonl_records[0]))  # exact duplicate of the first record
    lines.insert(5, '{"instruction": "this line is cut off", "output": ')  # malformed JSON
    parquet = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records[7:]), parquet)
    return ("\n".join(lines) + "\n").encode(), parquet.getvalue(), len(records)


@pytest.fixture
def data_root(s3_server, monkeypatch):
    """A fresh prefix in the moto bucket as LLMOPS_DATA_ROOT, with one raw partition uploaded by boto3."""
    prefix = f"llmops-{uuid.uuid4().hex[:8]}"
    root = f"s3://{s3_server.bucket}/{prefix}"
    monkeypatch.setenv("LLMOPS_DATA_ROOT", root)
    monkeypatch.delenv("LLMOPS_AWS_CONN_ID", raising=False)
    monkeypatch.setenv("LLMOPS_PROFILE", "local")
    get_settings.cache_clear()
    jsonl, parquet, _ = raw_partition_bytes()
    client = s3_server.client()
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/raw/dt={DAY}/part-000.jsonl", Body=jsonl)
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/raw/dt={DAY}/part-001.parquet", Body=parquet)
    yield root
    get_settings.cache_clear()


def prefix_of(root: str) -> str:
    return root.split("/", 3)[3]


def stage_and_publish(root: str, run_id: str) -> tuple[dict, bool]:
    sources = catalog.resolve_sources(root, DAY, None, None)
    manifest = catalog.stage(root, sources, PrepConfig(), run_id)
    return catalog.publish(root, manifest, run_id)


def test_uses_the_amazon_provider_against_the_s3_api(s3_server, data_root):
    from s3fs import S3FileSystem

    assert get_settings().data_root == data_root
    assert get_settings().storage_conn_id() == "aws_default"
    path = storage_path(f"{data_root}/raw/dt={DAY}")
    assert path.conn_id == "aws_default"
    assert isinstance(path.fs, S3FileSystem)
    # s3fs talks to the endpoint from the Airflow connection's extra, i.e. the moto server.
    assert path.fs.endpoint_url == s3_server.endpoint_url

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id="aws_default")
    assert hook.conn_config.endpoint_url == s3_server.endpoint_url
    # The provider sees what boto3 uploaded, and vice versa below.
    assert sorted(p.name for p in path.iterdir()) == ["part-000.jsonl", "part-001.parquet"]
    assert hook.check_for_key(f"{prefix_of(data_root)}/raw/dt={DAY}/part-000.jsonl", bucket_name=s3_server.bucket)


def test_stage_publish_rerun_on_s3(s3_server, data_root):
    prefix = prefix_of(data_root)
    _, _, n_good = raw_partition_bytes()

    live, created = stage_and_publish(data_root, "backfill__2026-11-02T00:00:00+00:00")
    assert created
    version = live["version"]
    version_prefix = f"{prefix}/curated/{version}/"
    objects = s3_server.keys(version_prefix)
    assert {k.removeprefix(version_prefix) for k in objects} == VERSION_FILES
    assert s3_server.keys(f"{prefix}/curated/_staging/") == {}

    # The manifest is the last object written and carries the counts of what the raw data held.
    manifest = json.loads(s3_server.client().get_object(Bucket=s3_server.bucket,
                                                        Key=version_prefix + MANIFEST)["Body"].read())
    assert manifest["version"] == version
    assert manifest["uri"] == f"{data_root}/curated/{version}"
    assert manifest["source_uris"] == [f"{data_root}/raw/dt={DAY}"]
    counts = manifest["counts"]
    assert counts["read"] == n_good + 2
    assert counts["quarantined"] == 1
    assert manifest["quarantine"] == {"malformed_json": 1}
    assert counts["exact_duplicates"] == 1
    assert counts["written"] == n_good
    assert sum(manifest["splits"].values()) == n_good
    newest = max(o["LastModified"] for k, o in objects.items() if not k.endswith(MANIFEST))
    assert objects[version_prefix + MANIFEST]["LastModified"] >= newest
    for split, name in (("train", "training.jsonl"), ("validation", "validation.jsonl"), ("test", "test.jsonl")):
        body = s3_server.client().get_object(Bucket=s3_server.bucket, Key=version_prefix + name)["Body"].read()
        assert len(body.splitlines()) == manifest["splits"][split]

    # Read back through the catalog.
    latest = catalog.latest_version(data_root)
    assert latest == manifest
    assert [m["version"] for m in catalog.list_versions(data_root)] == [version]
    train = storage_path(latest["uris"]["train"]).read_text().splitlines()
    assert len(train) == manifest["splits"]["train"]

    # A rerun of the same partition (another run) computes the same version and rewrites nothing.
    time.sleep(1.1)  # S3 LastModified has one-second resolution: a rewrite would now show
    live2, created2 = stage_and_publish(data_root, "manual__2026-11-29T10:00:00+00:00")
    assert live2["version"] == version
    assert not created2
    assert live2["run_id"] == manifest["run_id"]
    after = s3_server.keys(version_prefix)
    assert {k: (o["ETag"], o["LastModified"]) for k, o in after.items()} == \
        {k: (o["ETag"], o["LastModified"]) for k, o in objects.items()}
    assert s3_server.keys(f"{prefix}/curated/_staging/") == {}
    assert [m["version"] for m in catalog.list_versions(data_root)] == [version]

    # A retry of the run that published it still counts as its publisher (and rewrites nothing).
    live3, ours = stage_and_publish(data_root, manifest["run_id"])
    assert ours and live3 == manifest
    assert s3_server.keys(version_prefix)[version_prefix + MANIFEST]["LastModified"] == \
        objects[version_prefix + MANIFEST]["LastModified"]


def test_publish_that_dies_midway_stays_invisible_then_completes(s3_server, data_root, monkeypatch):
    from airflow.sdk.io.path import ObjectStoragePath

    prefix = prefix_of(data_root)
    run_id = "scheduled__2026-11-02T00:00:00+00:00"
    sources = catalog.resolve_sources(data_root, DAY, None, None)
    manifest = catalog.stage(data_root, sources, PrepConfig(), run_id)
    version_prefix = f"{prefix}/curated/{manifest['version']}/"

    real_copy = ObjectStoragePath.copy
    copied: list[str] = []

    def copy_then_die(self, dst, *args, **kwargs):
        if copied:
            raise ConnectionResetError("simulated network failure during S3 CopyObject")
        copied.append(str(dst))
        return real_copy(self, dst, *args, **kwargs)

    monkeypatch.setattr(ObjectStoragePath, "copy", copy_then_die)
    with pytest.raises(ConnectionResetError):
        catalog.publish(data_root, manifest, run_id)
    monkeypatch.setattr(ObjectStoragePath, "copy", real_copy)

    partial = s3_server.keys(version_prefix)
    assert len(copied) == 1 and len(partial) == 1  # one data object made it, nothing else
    assert version_prefix + MANIFEST not in partial
    assert catalog.list_versions(data_root) == []
    assert catalog.latest_version(data_root) is None
    assert s3_server.keys(f"{prefix}/curated/_staging/")  # the staged run is kept for the retry

    # The task's retry publishes the whole version from the staged copy.
    live, created = catalog.publish(data_root, manifest, run_id)
    assert created
    assert {k.removeprefix(version_prefix) for k in s3_server.keys(version_prefix)} == VERSION_FILES
    assert s3_server.keys(f"{prefix}/curated/_staging/") == {}
    assert [m["version"] for m in catalog.list_versions(data_root)] == [manifest["version"]]
    assert live["files"] == manifest["files"]
