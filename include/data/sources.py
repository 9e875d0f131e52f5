"""Reading raw partitions: JSONL and Parquet, file by file, line by line, never all at once.

Every physical line or row comes out as `(line, raw_object, raw_text)` or as a `Rejected` the
caller quarantines, so a corrupt file or a bad line never stops the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from include.data.records import Rejected

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)

BLOCK = 8 << 20  # bytes a read
Item = tuple[int, object, str]  # line number (1-based), parsed value or Rejected, raw text for quarantine


def partition_uri(data_root: str, day: str) -> str:
    return f"{data_root}/raw/dt={day}"


def list_files(path: ObjectStoragePath) -> list[ObjectStoragePath]:
    """A file, or every file under a directory, in a stable order; hidden and _marker files skipped."""
    if path.is_file():
        return [path]
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))]
    return sorted(files, key=str)


def read_lines(path: ObjectStoragePath, batch_size: int = 4096) -> Iterator[list[Item]]:
    """Batches of parsed lines; unreadable content comes out as Rejected items."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        yield from _read_jsonl(path, batch_size)
    elif name.endswith(PARQUET_SUFFIXES):
        yield from _read_parquet(path, batch_size)
    else:
        yield [(0, Rejected("unreadable_file", f"unsupported file type: {path.name}"), "")]


def _lines(f, block: int = BLOCK) -> Iterator[bytes]:
    """Physical lines (without b"\\n") from big reads: each call on an ObjectStoragePath file goes
    through Airflow's lineage wrapper, so iterating the file line by line costs more than parsing."""
    tail = b""
    while chunk := f.read(block):
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail


def _read_jsonl(path: ObjectStoragePath, batch_size: int) -> Iterator[list]:
    loads = json.loads
    batch: list = []
    with path.open("rb") as f:
        for number, line in enumerate(_lines(f), start=1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                batch.append((number, Rejected("invalid_encoding", str(e)),
                              line.decode("utf-8", "backslashreplace").rstrip("\r")))
            else:
                try:
                    batch.append((number, loads(text), text.rstrip("\r")))
                except ValueError as e:
                    batch.append((number, Rejected("malformed_json", str(e)), text.rstrip("\r")))
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _read_parquet(path: ObjectStoragePath, batch_size: int) -> Iterator[list]:
    import pyarrow.parquet as pq

    row = 0
    try:
        with path.open("rb") as f:
            for table in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
                rows = table.to_pylist()
                yield [(row + i + 1, r, "") for i, r in enumerate(rows)]
                row += len(rows)
    except Exception as e:  # pyarrow raises several types for corrupt files; all mean the same here
        yield [(row + 1, Rejected("unreadable_file", f"{type(e).__name__}: {e}"), "")]
