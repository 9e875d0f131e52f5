"""New data lands in S3 -> its ObjectCreated notification reaches SQS -> the raw-data asset's watcher
(common-messaging's MessageQueueTrigger, in a real triggerer) turns it into an asset event -> an
asset-triggered prepare_dataset run curates that partition and publishes a version.

moto's server on 127.0.0.1 plays S3 and SQS, with S3 sending the notifications itself. A malformed
message goes through the same queue first: it is dropped with a reason in the task log, and the
triggerer keeps running. As writers of multi-file partitions should, the notification is filtered on
the `_SUCCESS` marker written last, so a run never curates half a partition.
"""

from __future__ import annotations

import json

import boto3
import pytest

from include.sample_data import SAMPLE_RAW

pytestmark = pytest.mark.slow

BUCKET, PREFIX, REGION = "lake", "llmops", "us-east-1"
KEY, SECRET = "AKIAMOTOTESTKEY00000", "moto-test-secret-key-0000000000000000000"
DAY = "2026-11-05"


@pytest.fixture
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def client(service: str, endpoint: str):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id=KEY,
                        aws_secret_access_key=SECRET)


def test_an_object_landing_in_s3_curates_its_partition(airflow_stack, moto_server, tmp_path):
    s3, sqs = client("s3", moto_server), client("sqs", moto_server)
    s3.create_bucket(Bucket=BUCKET)
    queue = sqs.create_queue(QueueName="raw-data-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
         "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": f"{PREFIX}/raw/"},
                                            {"Name": "suffix", "Value": "/_SUCCESS"}]}}}]})
    sqs.send_message(QueueUrl=queue, MessageBody="{this is not an S3 event")

    stack = airflow_stack(
        env={"LLMOPS_PROFILE": "local", "LLMOPS_DATA_ROOT": f"s3://{BUCKET}/{PREFIX}",
             "LLMOPS_RAW_EVENTS_QUEUE": queue, "LLMOPS_RAW_EVENTS_POLL_SECONDS": "2",
             "LLMOPS_CHECKPOINT_ROOT": str(tmp_path / "checkpoints"),
             "LLMOPS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
             "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws", "login": KEY, "password": SECRET,
                                                     "extra": {"endpoint_url": moto_server,
                                                               "region_name": REGION}}),
             "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": REGION},
        components=("dag-processor", "scheduler", "triggerer", "api-server"))
    stack.wait_for_dag("prepare_dataset")
    stack.airflow("dags", "unpause", "prepare_dataset")
    asset_runs = lambda r: r["run_type"] == "asset_triggered"  # noqa: E731 -- the nightly run may start too

    # The foreign messages alone: one run that skips, having logged why each was dropped.
    [first] = stack.wait_for_runs("prepare_dataset", 1, timeout=180, where=asset_runs)
    states = {t["task_id"]: t["state"] for t in stack.task_states("prepare_dataset")
              if t["run_id"] == first["run_id"]}
    assert states["resolve_sources"] == "skipped", states
    assert "not JSON" in stack.logs()

    for path in sorted((SAMPLE_RAW / "dt=2026-11-01").iterdir()):
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/raw/dt={DAY}/{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/raw/dt={DAY}/_SUCCESS", Body=b"")

    def published():
        return [e for e in stack.asset_events("curated_dataset") if e["source_dag_id"] == "prepare_dataset"]

    [event] = stack.wait_until(published, timeout=240, what="a curated version from the landed partition")
    runs = [r for r in stack.dag_runs("prepare_dataset") if r["run_id"] == event["source_run_id"]]
    assert runs and runs[0]["run_type"] == "asset_triggered"
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/curated/{event['extra']['version']}/"
                                                              "manifest.json")["Body"].read())
    assert manifest["source_uris"] == [f"s3://{BUCKET}/{PREFIX}/raw/dt={DAY}"]
    assert len(manifest["sources"]) == len(list((SAMPLE_RAW / "dt=2026-11-01").iterdir()))
    assert manifest["counts"]["written"] > 0
    stack.check_alive()  # the triggerer survived the malformed message
    assert "Messages" not in sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0)
