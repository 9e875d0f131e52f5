"""Where curated datasets live and how runs find, stage and publish them.

    <data root>/raw/dt=YYYY-MM-DD/...        raw partitions (JSONL, Parquet)
    <data root>/curated/_staging/<run>/      a run's output before it is published
    <data root>/curated/<version>/           a published version: visible once manifest.json exists
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import UTC, datetime

from include.data.pipeline import EVAL_FILE, QUARANTINE_FILE, SPLIT_FILES, PrepConfig, curate
from include.errors import InputError
from include.storage.objectstore import MANIFEST, is_published, publish_staged, read_json, storage_path
from include.validation import is_dataset_version

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
log = logging.getLogger(__name__)


def curated_root(data_root: str) -> str:
    return f"{data_root}/curated"


def resolve_sources(data_root: str, partition: str | None, source_uris: list[str] | None,
                    logical_date: datetime | None) -> list[str]:
    """Explicit URIs win, then the partition param, then the run's logical date.

    Sources must lie under `<data root>/raw/`: a trigger form must not become a way to read
    arbitrary files on a worker.
    """
    raw_root = f"{data_root}/raw"
    if source_uris:
        for uri in source_uris:
            if ".." in uri.split("/") or not (uri == raw_root or uri.startswith(raw_root + "/")):
                raise InputError(f"source {uri!r} is not under {raw_root}/")
        return list(source_uris)
    day = partition or (logical_date.date().isoformat() if logical_date else None)
    if not day:
        raise InputError("no partition: give `partition` or `source_uris`, or run on a schedule")
    if not _DAY.fullmatch(day):
        raise InputError(f"partition {day!r} is not a YYYY-MM-DD date")
    uri = f"{raw_root}/dt={day}"
    if not storage_path(uri).exists():
        raise InputError(f"no raw partition at {uri}")
    return [uri]


def landed_sources(data_root: str, payloads: list[dict]) -> list[str]:
    """The raw partitions that S3 notifications (raw-data asset events) announce; every other message is
    logged and dropped. Empty when the messages announce nothing."""
    from include.data.notifications import landed_partitions

    days, dropped = landed_partitions(payloads, data_root)
    for reason in dropped:
        log.warning("dropped notification %s", reason)
    if not days:
        log.warning("no new raw partition announced (%d message(s) dropped)", len(dropped))
        return []
    sources = [resolve_sources(data_root, day, None, None)[0] for day in days]
    log.info("curating %d partition(s) that landed: %s", len(days), ", ".join(days))
    return sources


def staging_uri(data_root: str, run_id: str) -> str:
    """One staging directory per run, so a retry overwrites its own leftovers."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)
    return f"{curated_root(data_root)}/_staging/{safe}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def stage(data_root: str, sources: list[str], config: PrepConfig, run_id: str) -> dict:
    """Curate into this run's staging directory; returns the manifest to publish."""
    manifest, seconds = curate(sources, storage_path(staging_uri(data_root, run_id)), config)
    manifest["stage_seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    return manifest


def publish(data_root: str, manifest: dict, run_id: str, attempt_key: str | None = None) -> tuple[dict, bool]:
    """Publish the staged run as its version. Returns the live manifest and whether this run made it.

    Idempotent: if the version is already published the staged copy is dropped and nothing is
    rewritten. `attempt_key` tells a retry (same key: still the publisher, so its asset event is
    not lost) from a cleared or reprocessed run (new key: not the publisher, no second event).
    """
    version_uri = f"{curated_root(data_root)}/{manifest['version']}"
    final = storage_path(version_uri)
    manifest = {
        **manifest,
        "uri": version_uri,
        "run_id": run_id,
        "publisher": attempt_key or run_id,
        "created_at": datetime.now(UTC).isoformat(timespec="microseconds"),
        "uris": {**{split: f"{version_uri}/{name}" for split, name in SPLIT_FILES.items()},
                 "eval": f"{version_uri}/{EVAL_FILE}", "quarantine": f"{version_uri}/{QUARANTINE_FILE}"},
    }
    created = publish_staged(storage_path(staging_uri(data_root, run_id)), final, manifest)
    live = read_json(final / MANIFEST)
    return live, created or live.get("publisher") == (attempt_key or run_id)


def list_versions(data_root: str) -> list[dict]:
    """Published manifests, oldest first."""
    root = storage_path(curated_root(data_root))
    if not root.exists():
        return []
    manifests = [read_json(d / MANIFEST) for d in root.iterdir()
                 if not d.name.startswith("_") and is_published(d)]
    return sorted(manifests, key=lambda m: (m["created_at"], m["version"]))


def latest_version(data_root: str) -> dict | None:
    versions = list_versions(data_root)
    return versions[-1] if versions else None


def asset_extra(manifest: dict) -> dict:
    """What a curated-dataset asset event carries: enough for retraining to start without a lookup."""
    return {
        "version": manifest["version"],
        "uri": manifest["uri"],
        "manifest_uri": f"{manifest['uri']}/{MANIFEST}",
        "uris": manifest["uris"],
        "counts": manifest["counts"],
        "splits": manifest["splits"],
        "schema_version": manifest["schema_version"],
    }


def summary(manifest: dict) -> str:
    c, s = manifest["counts"], manifest["splits"]
    lines = [
        f"dataset version {manifest['version']} at {manifest['uri']}",
        f"  read {c.get('read', 0)}  quarantined {c.get('quarantined', 0)}  "
        f"exact duplicates {c.get('exact_duplicates', 0)}  near duplicates {c.get('near_duplicates', 0)}  "
        f"written {c.get('written', 0)}",
        f"  splits: train {s['train']}  validation {s['validation']}  test {s['test']}",
        "  quarantine: " + (", ".join(f"{k} {v}" for k, v in sorted(manifest["quarantine"].items())) or "none"),
        "  pii redacted: " + (", ".join(f"{k} {v}" for k, v in sorted(manifest["pii"].items())) or "none"),
    ]
    return "\n".join(lines)


class NoDatasetYet(InputError):
    """Nothing is published yet: bad input for a run that asked to train, nothing to do for a scheduled one."""


def resolve_version(data_root: str, requested: str | None, event_versions: list[str]) -> dict:
    """The dataset a training run uses: the param, else the triggering asset event's, else the latest."""
    version = requested or (event_versions[-1] if event_versions else None)
    if version is None:
        latest = latest_version(data_root)
        if latest is None:
            raise NoDatasetYet(f"no published dataset under {curated_root(data_root)}: run prepare_dataset first")
        return latest
    directory = storage_path(f"{curated_root(data_root)}/{version}")
    if not is_dataset_version(version) or not is_published(directory):
        raise InputError(f"dataset version {version!r} is not published under {curated_root(data_root)}")
    return read_json(directory / MANIFEST)
