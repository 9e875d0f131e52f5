"""The curation stream: read -> normalize -> clean -> redact -> dedup -> split -> write.

Records flow through in batches, so memory holds one batch plus the dedup index, whatever the
input size. Output goes to a staging directory; `include.storage.publish_dir` makes it visible.
The dataset version is the hash of the bytes written, so the same inputs and settings always give
the same version.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import xxhash

from include.data.clean import clean_record
from include.data.dedup import ExactDeduplicator, NearDuplicateIndex, content_hash, normalize_for_dedup
from include.data.pii import redact
from include.data.records import SCHEMA_VERSION, Record, Rejected, format_prompt, normalize
from include.data.sources import list_files, read_lines
from include.errors import InputError

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

SPLITS = ("train", "validation", "test")
# NeMo 2's FineTuningDataModule reads these names from its dataset_root.
SPLIT_FILES = {"train": "training.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
EVAL_FILE = "eval.jsonl"  # the test split in RAGAS' columns
QUARANTINE_FILE = "quarantine.jsonl"


@dataclass(frozen=True)
class PrepConfig:
    min_tokens: int = 8
    max_tokens: int = 2048
    redact_pii: bool = True
    near_dedup: bool = True
    dedup_threshold: float = 0.85
    num_perm: int = 128
    train_fraction: float = 0.8
    validation_fraction: float = 0.1
    split_salt: str = "split-v1"
    batch_size: int = 2048

    def __post_init__(self) -> None:
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 0 < min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")
        if not (0 < self.train_fraction < 1 and 0 <= self.validation_fraction < 1
                and self.train_fraction + self.validation_fraction < 1):
            raise ValueError("train and validation fractions must leave room for a test split")
        if not 0.5 <= self.dedup_threshold <= 0.95:  # above 0.95 LSH has too few bands to be useful
            raise ValueError(f"dedup_threshold must be within [0.5, 0.95], got {self.dedup_threshold}")


def assign_split(normalized: str, config: PrepConfig) -> str:
    """Stable in the content alone: a record lands in the same split on every rerun."""
    u = xxhash.xxh64_intdigest((config.split_salt + normalized).encode()) / 2**64
    if u < config.train_fraction:
        return "train"
    if u < config.train_fraction + config.validation_fraction:
        return "validation"
    return "test"


class _HashingWriter:
    """A staged output file that hashes what it writes; the hashes make the version.

    Lines are passed on in blocks of about 1 MiB: each call on an ObjectStoragePath file goes
    through Airflow's lineage wrapper, which costs more than encoding the line.
    """

    BLOCK = 1 << 20

    def __init__(self, path: ObjectStoragePath):
        self.file = path.open("wb")
        self.sha = hashlib.sha256()
        self.records = 0
        self.bytes = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, obj: dict) -> None:
        data = json.dumps(obj, ensure_ascii=False, default=str).encode() + b"\n"
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.sha.update(data)
        self.records += 1
        self.bytes += len(data)
        if self._pending_bytes >= self.BLOCK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.file.write(b"".join(self._pending))
            self._pending.clear()
            self._pending_bytes = 0

    def close(self) -> dict:
        try:
            self._flush()
        finally:
            self.file.close()
        return {"sha256": self.sha.hexdigest(), "records": self.records, "bytes": self.bytes}


class Curator:
    """One pass over the sources; counts everything the manifest reports."""

    def __init__(self, config: PrepConfig, staging: ObjectStoragePath):
        self.config = config
        self.staging = staging
        self.counts: Counter = Counter()
        self.quarantined: Counter = Counter()
        self.pii: Counter = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.exact = ExactDeduplicator()
        self.near = NearDuplicateIndex(config.dedup_threshold, config.num_perm) if config.near_dedup else None

    def run(self, source_uris: list[str], paths: list[ObjectStoragePath]) -> dict:
        self.staging.mkdir(parents=True, exist_ok=True)
        names = {**SPLIT_FILES, "eval": EVAL_FILE, "quarantine": QUARANTINE_FILE}
        self._out = {key: _HashingWriter(self.staging / name) for key, name in names.items()}
        sources = []
        try:
            for path in paths:
                before = self.counts["read"]
                batches = read_lines(path, self.config.batch_size)
                while True:
                    start = time.perf_counter()
                    batch = next(batches, None)
                    self.seconds["read"] += time.perf_counter() - start
                    if batch is None:
                        break
                    self._process(str(path), batch)
                sources.append({"uri": str(path), "records": self.counts["read"] - before})
        finally:
            files = {names[key]: w.close() for key, w in self._out.items()}
        version = hashlib.sha256(
            json.dumps({"schema": SCHEMA_VERSION, "files": {n: f["sha256"] for n, f in files.items()}},
                       sort_keys=True).encode()
        ).hexdigest()[:16]
        return {
            "schema_version": SCHEMA_VERSION,
            "version": version,
            "source_uris": source_uris,
            "sources": sources,
            "config": asdict(self.config),
            "counts": dict(self.counts),
            "quarantine": dict(self.quarantined),
            "pii": dict(self.pii),
            "splits": {s: files[SPLIT_FILES[s]]["records"] for s in SPLITS},
            "files": files,
        }

    def _reject(self, source: str, line: int, raw: object, error: Rejected) -> None:
        """Keep the original (text for JSONL, the row for Parquet) with where it came from."""
        self.quarantined[error.reason] += 1
        self.counts["quarantined"] += 1
        self._out["quarantine"].write({"reason": error.reason, "detail": error.detail, "source": source,
                                       "line": line,
                                       "raw": raw if isinstance(raw, str) else json.dumps(raw, default=str)})

    def _process(self, source: str, batch: list) -> None:
        config = self.config
        self.counts["read"] += len(batch)
        records: list[tuple[Record, object]] = []
        start = time.perf_counter()
        for line, value, raw in batch:
            if isinstance(value, Rejected):
                self._reject(source, line, raw, value)
                continue
            try:
                record = normalize(value)
            except Rejected as e:
                self._reject(source, line, raw or value, e)
                continue
            record.source, record.line = source, line
            records.append((record, raw or value))
        self.counts["normalized"] += len(records)
        self.seconds["normalize"] += time.perf_counter() - start

        start = time.perf_counter()
        kept = []
        for record, raw in records:
            try:
                kept.append(clean_record(record, config.min_tokens, config.max_tokens))
            except Rejected as e:
                self._reject(source, record.line, raw, e)
        self.counts["cleaned"] += len(kept)
        self.seconds["clean"] += time.perf_counter() - start

        if config.redact_pii:
            start = time.perf_counter()
            pii = self.pii
            for r in kept:
                r.question = redact(r.question, pii)
                r.answer = redact(r.answer, pii)
                r.contexts = [redact(c, pii) for c in r.contexts]
                if r.system:
                    r.system = redact(r.system, pii)
            self.seconds["pii"] += time.perf_counter() - start

        start = time.perf_counter()
        unique: list[tuple[Record, str]] = []
        for r in kept:
            norm = normalize_for_dedup(f"{r.question}\n{r.answer}")
            if self.exact.is_duplicate(norm):
                self.counts["exact_duplicates"] += 1
            else:
                unique.append((r, norm))
        self.seconds["exact_dedup"] += time.perf_counter() - start

        if self.near is not None:
            start = time.perf_counter()
            flags = self.near.add_batch([norm for _, norm in unique])
            self.counts["near_duplicates"] += sum(flags)
            unique = [u for u, dup in zip(unique, flags, strict=True) if not dup]
            self.seconds["near_dedup"] += time.perf_counter() - start

        start = time.perf_counter()
        for r, norm in unique:
            split = assign_split(norm, config)
            rid = f"{content_hash(norm):016x}"
            self._out[split].write({"id": rid, "input": format_prompt(r.question, r.contexts, r.system),
                                    "output": r.answer})
            if split == "test":
                self._out["eval"].write({"id": rid, "user_input": r.question, "reference": r.answer,
                                         "reference_contexts": r.contexts})
        self.counts["written"] += len(unique)
        self.seconds["split_write"] += time.perf_counter() - start


def curate(source_uris: list[str], staging: ObjectStoragePath, config: PrepConfig,
           conn_id: str | None = None) -> tuple[dict, dict[str, float]]:
    """Run the stream into `staging`; returns the manifest (without publish fields) and stage timings.

    On any failure the staging directory is removed: nothing partial is left behind.
    """
    from include.storage import remove_tree, storage_path

    paths = [f for uri in source_uris for f in list_files(storage_path(uri, conn_id))]
    if not paths:
        raise InputError(f"no raw files under {', '.join(source_uris)}")
    curator = Curator(config, staging)
    try:
        manifest = curator.run(source_uris, paths)
    except BaseException:
        remove_tree(staging)
        raise
    return manifest, dict(curator.seconds)
