"""The curation stream: read -> normalize -> clean -> redact -> dedup -> split -> write.

Records flow through in batches, so memory holds one batch plus the dedup index, whatever the
input size. Output goes to a staging directory; `include.storage.objectstore.publish_staged` makes it visible.
The dataset version is the hash of the data files written (the splits and the evaluation set), so
the same inputs and settings always give the same version. The quarantine is left out of it: it
names the raw files by URI, and the same data read from elsewhere is the same dataset.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import multiprocessing
import time
from collections import Counter, defaultdict, deque
from collections.abc import Generator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from include.data.clean import clean_record
from include.data.dedup import ExactDeduplicator, NearDuplicateIndex, content_hash, normalized_utf8
from include.data.pii import may_contain_pii, redact
from include.data.records import SCHEMA_VERSION, Record, Rejected, normalize
from include.data.sources import RawLines, list_files, parse_batch, read_batches
from include.data.writers import HashingWriter, eval_line, json_line, train_line
from include.errors import InputError
from include.logs import Progress
from include.prompts import format_prompt
from include.validation import Rule

if TYPE_CHECKING:
    from concurrent.futures import Future

    from airflow.sdk import ObjectStoragePath

SPLITS = ("train", "validation", "test")
# NeMo 2's FineTuningDataModule reads these names from its dataset_root.
SPLIT_FILES = {"train": "training.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
EVAL_FILE = "eval.jsonl"  # the test split in RAGAS' columns
QUARANTINE_FILE = "quarantine.jsonl"
log = logging.getLogger(__name__)


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
    workers: int = 1  # processes for the per-record steps; the output is the same for any number

    def __post_init__(self) -> None:
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 0 < min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")
        if not (0 < self.train_fraction < 1 and 0 <= self.validation_fraction < 1
                and self.train_fraction + self.validation_fraction < 1):
            raise ValueError("train and validation fractions must leave room for a test split")
        # above 0.95 LSH has too few bands to be useful
        Rule("dedup_threshold", "number", 0.5, 0.95, error=ValueError).check(self.dedup_threshold)
        Rule("workers", "integer", 1, error=ValueError).check(self.workers)


def assign_split(normalized: str | bytes, config: PrepConfig) -> str:
    """Stable in the content alone: a record lands in the same split on every rerun. `normalized`
    is a text from `normalize_for_dedup` or its UTF-8 bytes."""
    if isinstance(normalized, str):
        normalized = normalized.encode()
    u = xxhash.xxh64_intdigest(config.split_salt.encode() + normalized) / 2**64
    if u < config.train_fraction:
        return "train"
    if u < config.train_fraction + config.validation_fraction:
        return "validation"
    return "test"


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
        # Progress: records so far, and the share of the input bytes read (for the ETA: the records to come
        # are not known before they are read). A Parquet file counts when it is done.
        self.progress = Progress("curate", "records", emit=log.info)
        self.bytes_total = self.bytes_done = 0

    def report(self, force: bool = False) -> str | None:
        c = self.counts
        fraction = min(self.bytes_done / self.bytes_total, 1.0) if self.bytes_total else None
        return self.progress.update(c["read"], {"written": c["written"], "quarantined": c["quarantined"],
                                                "exact duplicates": c["exact_duplicates"],
                                                "near duplicates": c["near_duplicates"]},
                                    force=force, fraction=fraction)

    @contextmanager
    def _pool(self) -> Generator[ProcessPoolExecutor | None, None, None]:
        """Worker processes for `_prepare` when `config.workers` > 1: forked, so they start fast; an
        executor rather than a Pool, so a worker that dies fails the run instead of hanging it."""
        if self.config.workers <= 1:
            yield None
            return
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        with ProcessPoolExecutor(self.config.workers, mp_context=multiprocessing.get_context(method),
                                 initializer=_init_worker, initargs=(self.config,)) as pool:
            yield pool

    def run(self, source_uris: list[str], paths: list[ObjectStoragePath]) -> dict:
        self.staging.mkdir(parents=True, exist_ok=True)
        names = {**SPLIT_FILES, "eval": EVAL_FILE, "quarantine": QUARANTINE_FILE}
        self._out = {key: HashingWriter(self.staging / name) for key, name in names.items()}
        sources = []
        sizes = [_size(p) for p in paths]
        self.bytes_total = sum(sizes)
        # A full collection walks every live container, the growing dedup sets included, for no
        # gain: the stream makes no reference cycles. Young generations are still collected.
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(thresholds[0], thresholds[1], 1 << 30)
        try:
            with self._pool() as pool:
                for i, path in enumerate(paths):
                    before = self.counts["read"]
                    self._run_path(path, pool)
                    self.bytes_done = sum(sizes[:i + 1])
                    sources.append({"uri": str(path), "records": self.counts["read"] - before})
                self.report(force=True)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
            files = {names[key]: w.close() for key, w in self._out.items()}
        version = hashlib.sha256(
            json.dumps({"schema": SCHEMA_VERSION,
                        "files": {n: f["sha256"] for n, f in files.items() if n != QUARANTINE_FILE}},
                       sort_keys=True).encode()
        ).hexdigest()[:16]
        return {
            "schema_version": SCHEMA_VERSION,
            "version": version,
            "source_uris": source_uris,
            "sources": sources,
            # `workers` changes how fast, never what: left out, like the timings
            "config": {k: v for k, v in asdict(self.config).items() if k != "workers"},
            "counts": dict(self.counts),
            "quarantine": dict(self.quarantined),
            "pii": dict(self.pii),
            "splits": {s: files[SPLIT_FILES[s]]["records"] for s in SPLITS},
            "files": files,
        }

    def _run_path(self, path: ObjectStoragePath, pool: ProcessPoolExecutor | None) -> None:
        """Prepare batches (in the pool when there is one, at most two a worker in flight so memory
        stays bounded) and commit them in input order: the output does not depend on `workers`."""
        source, seconds = str(path), self.seconds
        batches = read_batches(path, self.config.batch_size)
        pending: deque[Future] = deque()
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            seconds["read"] += time.perf_counter() - start
            if batch is None:
                break
            if isinstance(batch, RawLines):
                self.bytes_done += len(batch.data) + len(batch.numbers)  # the lines and their newlines
            if pool is None:
                self._commit(_prepare(self.config, source, batch))
                continue
            pending.append(pool.submit(_prepare_in_worker, source, batch))
            if len(pending) >= 2 * self.config.workers:
                self._commit(pending.popleft().result())
        while pending:
            self._commit(pending.popleft().result())

    def _commit(self, prepared: _Prepared) -> None:
        """The part that depends on earlier records: dedup against the indexes, then write."""
        self.counts.update(prepared.counts)
        self.quarantined.update(prepared.quarantined)
        self.pii.update(prepared.pii)
        for stage, secs in prepared.seconds.items():
            self.seconds[stage] += secs
        out = self._out
        quarantine = out["quarantine"]
        for line in prepared.quarantine_lines:
            quarantine.write(line)

        start = time.perf_counter()
        seen = self.exact._seen
        unique = []  # indexes into the batch's columns
        for i, key in enumerate(prepared.keys):
            if key in seen:
                self.counts["exact_duplicates"] += 1
            else:
                seen.add(key)
                unique.append(i)
        self.seconds["exact_dedup"] += time.perf_counter() - start

        if self.near is not None:
            start = time.perf_counter()
            flags = self.near.add_keys(prepared.band_keys[unique].tolist())
            self.counts["near_duplicates"] += sum(flags)
            unique = [i for i, dup in zip(unique, flags, strict=True) if not dup]
            self.seconds["near_dedup"] += time.perf_counter() - start

        start = time.perf_counter()
        splits, lines, eval_lines = prepared.splits, prepared.lines, prepared.eval_lines
        for i in unique:
            out[splits[i]].write(lines[i])
            if eval_lines[i] is not None:
                out["eval"].write(eval_lines[i])
        self.counts["written"] += len(unique)
        self.seconds["split_write"] += time.perf_counter() - start
        self.report()


@dataclass
class _Prepared:
    """One batch after every step that looks at a record alone; small to send between processes.

    The records that passed, in input order, as columns (cheaper to pickle than a tuple each):
    exact dedup key, split, output line, eval line or None; with near dedup, a row of band keys.
    """

    counts: Counter
    quarantined: Counter
    pii: Counter
    seconds: dict[str, float]
    quarantine_lines: list[bytes]
    keys: list[int]
    band_keys: np.ndarray | None
    splits: list[str]
    lines: list[bytes]
    eval_lines: list[bytes | None]


def _prepare(config: PrepConfig, source: str, batch: list) -> _Prepared:
    """Parse, normalize, clean, redact, and serialize one batch; no state shared across batches."""
    counts: Counter = Counter()
    quarantined: Counter = Counter()
    pii: Counter = Counter()
    seconds: dict[str, float] = {}
    quarantine_lines: list[bytes] = []

    def reject(line: int, raw: object, error: Rejected) -> None:
        """Keep the original (text for JSONL, the row for Parquet) with where it came from."""
        quarantined[error.reason] += 1
        counts["quarantined"] += 1
        quarantine_lines.append(json_line({"reason": error.reason, "detail": error.detail, "source": source,
                                       "line": line,
                                       "raw": raw if isinstance(raw, str) else json.dumps(raw, default=str)}))

    start = time.perf_counter()
    batch = parse_batch(batch)
    seconds["read"] = time.perf_counter() - start
    counts["read"] += len(batch)
    records: list[tuple[Record, object]] = []
    start = time.perf_counter()
    for line, value, raw in batch:
        if isinstance(value, Rejected):
            reject(line, raw, value)
            continue
        try:
            record = normalize(value)
        except Rejected as e:
            reject(line, raw or value, e)
            continue
        record.source, record.line = source, line
        records.append((record, raw or value))
    counts["normalized"] += len(records)
    seconds["normalize"] = time.perf_counter() - start

    start = time.perf_counter()
    kept = []
    for record, raw in records:
        try:
            kept.append(clean_record(record, config.min_tokens, config.max_tokens))
        except Rejected as e:
            reject(record.line, raw, e)
    counts["cleaned"] += len(kept)
    seconds["clean"] = time.perf_counter() - start

    if config.redact_pii:
        start = time.perf_counter()
        for r in kept:
            if not may_contain_pii([r.question, r.answer, r.system, *r.contexts]):
                continue
            r.question = redact(r.question, pii)
            r.answer = redact(r.answer, pii)
            r.contexts = [redact(c, pii) for c in r.contexts]
            if r.system:
                r.system = redact(r.system, pii)
        seconds["pii"] = time.perf_counter() - start

    start = time.perf_counter()
    norms = [normalized_utf8(f"{r.question}\n{r.answer}") for r in kept]
    keys = [content_hash(norm) for norm in norms]
    seconds["exact_dedup"] = time.perf_counter() - start

    start = time.perf_counter()
    splits, lines, eval_lines = [], [], []
    for r, norm, key in zip(kept, norms, keys, strict=True):
        split = assign_split(norm, config)
        rid = f"{key:016x}"
        splits.append(split)
        lines.append(train_line(rid, format_prompt(r.question, r.contexts, r.system), r.answer))
        eval_lines.append(eval_line(rid, r.question, r.answer, r.contexts) if split == "test"
                          else None)
    seconds["split_write"] = time.perf_counter() - start
    band_keys = None
    if config.near_dedup:  # the MinHash signatures, the costly part of near dedup, are per record too
        start = time.perf_counter()
        band_keys = _near_index(config.dedup_threshold, config.num_perm).keys(norms)
        seconds["near_dedup"] = time.perf_counter() - start
    return _Prepared(counts, quarantined, pii, seconds, quarantine_lines, keys, band_keys, splits, lines,
                     eval_lines)


def _size(path: ObjectStoragePath) -> int:
    try:
        return int(path.stat().st_size)
    except (OSError, AttributeError, TypeError, ValueError):
        return 0


@lru_cache(maxsize=4)
def _near_index(threshold: float, num_perm: int) -> NearDuplicateIndex:
    """An index used only for its hash functions, which its parameters fix: the keys it computes
    are the ones the Curator's own index would."""
    return NearDuplicateIndex(threshold, num_perm)


_worker_config: PrepConfig | None = None


def _init_worker(config: PrepConfig) -> None:
    global _worker_config
    _worker_config = config


def _prepare_in_worker(source: str, batch: list) -> _Prepared:
    return _prepare(_worker_config, source, batch)


def curate(source_uris: list[str], staging: ObjectStoragePath, config: PrepConfig,
           conn_id: str | None = None) -> tuple[dict, dict[str, float]]:
    """Run the stream into `staging`; returns the manifest (without publish fields) and stage timings.

    On any failure the staging directory is removed: nothing partial is left behind.
    """
    from include.storage.objectstore import remove_tree, storage_path

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
