"""Stale staging cleanup on an S3 data root, through include/storage, against the moto S3 server."""

from __future__ import annotations

import time

from include.scheduling import cleanup
from include.settings import Settings


def test_stale_staging_prefixes_on_s3_are_listed_then_deleted(s3_server, tmp_path):
    s3 = s3_server.client()
    root = f"s3://{s3_server.bucket}/cleanup-it"
    keys = {
        "curated/_staging/manual__1-0a1b2c3d/train.jsonl": b"x" * 300,  # a dataset run that never published
        "curated/_staging/manual__1-0a1b2c3d/eval.jsonl": b"y" * 200,
        "models/.ft-orphan00003.ab12cd34/model.bin": b"z" * 1000,  # an interrupted publish
        "models/ft-running0001/.tmp-step-60-1/state.pt": b"r" * 50,  # a running run's: kept
        "curated/0123456789abcdef/manifest.json": b"{}",  # published: never staging
        "curated/0123456789abcdef/train.jsonl": b"p" * 10,
    }
    for key, body in keys.items():
        s3.put_object(Bucket=s3_server.bucket, Key=f"cleanup-it/{key}", Body=body)
    settings = Settings(profile="eks", data_root=root, checkpoint_root=str(tmp_path / "ckpt"))
    running = {"ft-running0001"}

    # Just written: younger than the TTL, nothing goes.
    assert cleanup.data_actions(settings, registered={}, running=running, days=14, staging_hours=24) == []

    later = time.time() + 48 * 3600
    actions = cleanup.data_actions(settings, registered={}, running=running, days=14, staging_hours=24, now=later)
    assert sorted((a.name, a.bytes) for a in actions) == [
        (f"{root}/curated/_staging/manual__1-0a1b2c3d", 500), (f"{root}/models/.ft-orphan00003.ab12cd34", 1000)]
    cleanup.apply(actions, dry_run=True, log=lambda _: None)
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_server.bucket, Prefix="cleanup-it/")["Contents"]}
    assert len(listed) == len(keys)  # a dry run deletes nothing

    cleanup.apply(actions, dry_run=False, log=lambda _: None)
    assert all(a.done and not a.error for a in actions)
    assert cleanup.summary(actions, dry_run=False)["freed"]["bytes"] == 1500
    left = {o["Key"].removeprefix("cleanup-it/")
            for o in s3.list_objects_v2(Bucket=s3_server.bucket, Prefix="cleanup-it/")["Contents"]}
    assert left == {"models/ft-running0001/.tmp-step-60-1/state.pt", "curated/0123456789abcdef/manifest.json",
                    "curated/0123456789abcdef/train.jsonl"}
