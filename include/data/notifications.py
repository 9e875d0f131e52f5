"""S3 `ObjectCreated` notifications (through SQS) -> the raw partitions that landed.

The triggerer only moves messages into an asset event; it never parses them, so a malformed or
foreign message cannot crash it. This reads them in the run instead: every message either names a
partition under `<data root>/raw/dt=YYYY-MM-DD/` or is dropped with the reason, and a run whose
messages name nothing skips instead of failing.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote_plus

_PARTITION = re.compile(r"dt=(\d{4}-\d{2}-\d{2})/[^/].*")


def _records(body: str) -> tuple[list[dict], str | None]:
    try:
        doc = json.loads(body)
    except (TypeError, ValueError):
        return [], "not JSON"
    if isinstance(doc, dict) and isinstance(doc.get("Message"), str) and "Records" not in doc:
        return _records(doc["Message"])  # S3 -> SNS -> SQS wraps the event once more
    if isinstance(doc, dict) and doc.get("Event") == "s3:TestEvent":
        return [], "an S3 test event"
    records = doc.get("Records") if isinstance(doc, dict) else None
    if not isinstance(records, list) or not records:
        return [], "no S3 event records"
    return records, None


def _partition(record: dict, raw_root: str) -> tuple[str | None, str | None]:
    if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
        return None, "not an S3 event"
    if not str(record.get("eventName", "")).startswith("ObjectCreated:"):
        return None, f"event {record.get('eventName')!r} is not ObjectCreated"
    try:
        bucket = record["s3"]["bucket"]["name"]
        key = unquote_plus(record["s3"]["object"]["key"])  # S3 URL-encodes keys in notifications
    except (KeyError, TypeError):
        return None, "S3 record without bucket or key"
    uri = f"s3://{bucket}/{key}"
    prefix = f"{raw_root}/"
    match = _PARTITION.fullmatch(uri[len(prefix):]) if uri.startswith(prefix) else None
    if match is None or ".." in key.split("/"):
        return None, f"{uri} is not a file under {prefix}dt=YYYY-MM-DD/"
    return match.group(1), None


def landed_partitions(payloads: list[dict], data_root: str) -> tuple[list[str], list[str]]:
    """The partitions named by the SQS message batches in `payloads`, and why each other message was dropped."""
    raw_root = f"{data_root.rstrip('/')}/raw"
    days: set[str] = set()
    dropped: list[str] = []
    for payload in payloads:
        batch = payload.get("message_batch") if isinstance(payload, dict) else None
        for message in batch if isinstance(batch, list) else [payload]:
            message_id = message.get("MessageId", "?") if isinstance(message, dict) else "?"
            body = message.get("Body") if isinstance(message, dict) else None
            records, why = _records(body) if isinstance(body, str) else ([], "no message body")
            if why:
                dropped.append(f"message {message_id}: {why}")
            for record in records:
                day, why = _partition(record, raw_root)
                if day:
                    days.add(day)
                else:
                    dropped.append(f"message {message_id}: {why}")
    return sorted(days), dropped
