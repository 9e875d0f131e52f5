import json

from include.data.notifications import landed_partitions

ROOT = "s3://lake/llmops"


def s3_event(key: str, bucket: str = "lake", name: str = "ObjectCreated:Put") -> str:
    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": name,
                                    "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}]})


def batch(*bodies, start: int = 0) -> dict:
    return {"status": "success", "message_batch": [{"MessageId": f"m{start + i}", "Body": b}
                                                   for i, b in enumerate(bodies)]}


def test_partitions_from_object_created_events_across_batches():
    days, dropped = landed_partitions([
        batch(s3_event("llmops/raw/dt=2026-11-02/part-0.jsonl"), s3_event("llmops/raw/dt=2026-11-01/a+b.jsonl")),
        batch(s3_event("llmops/raw/dt=2026-11-02/part-1.parquet"), start=2),
    ], ROOT)
    assert days == ["2026-11-01", "2026-11-02"]
    assert dropped == []


def test_sns_wrapped_events_are_unwrapped():
    wrapped = json.dumps({"Type": "Notification", "Message": s3_event("llmops/raw/dt=2026-11-03/x.jsonl")})
    assert landed_partitions([batch(wrapped)], ROOT) == (["2026-11-03"], [])


def test_malformed_and_foreign_messages_are_dropped_with_their_reason():
    days, dropped = landed_partitions([batch(
        "{not json",
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}),
        json.dumps({"hello": "world"}),
        s3_event("llmops/raw/dt=2026-11-01/x.jsonl", name="ObjectRemoved:Delete"),
        s3_event("llmops/raw/dt=2026-11-01/x.jsonl", bucket="other"),
        s3_event("llmops/curated/abc/manifest.json"),
        s3_event("llmops/raw/dt=2026-11-01/../../curated/x.jsonl"),
        s3_event("llmops/raw/dt=tomorrow/x.jsonl"),
        json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}),
    ), {"unexpected": "shape"}, "not even a dict"], ROOT)
    assert days == []
    reasons = "\n".join(dropped)
    for expected in ("m0: not JSON", "m1: an S3 test event", "m2: no S3 event records",
                     "m3: event 'ObjectRemoved:Delete' is not ObjectCreated",
                     "m4: s3://other/llmops/raw/dt=2026-11-01/x.jsonl is not a file under s3://lake/llmops/raw/",
                     "m5: s3://lake/llmops/curated/abc/manifest.json is not a file under",
                     "m6: ", "m7: ", "m8: S3 record without bucket or key", "?: no message body"):
        assert expected in reasons, expected
    assert len(dropped) == 11
