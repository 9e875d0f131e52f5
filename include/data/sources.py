"""Reading raw partitions: JSONL and Parquet, file by file, line by line, never all at once.

Every physical line or row comes out as `(line, raw_object, raw_text)` or as a `Rejected` the
caller quarantines, so a corrupt file or a bad line never stops the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
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
    for batch in read_batches(path, batch_size):
        yield parse_batch(batch)


def read_batches(path: ObjectStoragePath, batch_size: int = 4096) -> Iterator[list]:
    """`read_lines` without the parsing, which `parse_batch` does, so that it can run elsewhere:
    JSONL comes out as `RawLines`, everything else already parsed."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        yield from _read_jsonl(path, batch_size)
    elif name.endswith(PARQUET_SUFFIXES):
        yield from _read_parquet(path, batch_size)
    else:
        yield [(0, Rejected("unreadable_file", f"unsupported file type: {path.name}"), "")]


@dataclass(frozen=True)
class RawLines:
    """JSONL lines not parsed yet, compact to send to another process: the non-blank lines joined
    by b"\\n", their numbers, and whether the last one had a b"\\n" (the last of a file may not)."""

    numbers: list[int]
    data: bytes
    terminated: bool


def parse_batch(batch: RawLines | list[Item]) -> list[Item]:
    """Items of a batch from `read_batches`."""
    if not isinstance(batch, RawLines):
        return batch
    loads = json.loads
    items = []
    lines = batch.data.split(b"\n")
    for number, line in zip(batch.numbers, lines, strict=True):
        try:
            text = line.decode("utf-8")
            items.append((number, loads(text), text.rstrip("\r")))
        except ValueError:  # also UnicodeDecodeError; parse again as read, for the same detail
            terminated = batch.terminated or number != batch.numbers[-1]
            items.append(_parse(number, line + b"\n" if terminated else line))
    return items


def _blocks(f) -> Iterator[tuple[list[bytes], bool]]:
    """Physical lines without their b"\\n", a big read at a time, and whether they had one (the last
    line of a file may not). Each call on an ObjectStoragePath file goes through Airflow's lineage
    wrapper, so reading the file line by line costs more than parsing it."""
    tail = b""
    while chunk := f.read(BLOCK):
        lines = chunk.split(b"\n")
        lines[0] = tail + lines[0]
        tail = lines.pop()
        yield lines, True
    if tail:
        yield [tail], False


def _parse(number: int, line: bytes) -> Item:
    """One physical line, "\\n" included, exactly as read: the slow path that explains a bad line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return number, Rejected("invalid_encoding", str(e)), line.decode("utf-8", "backslashreplace").rstrip("\r\n")
    try:
        return number, json.loads(text), text.rstrip("\r\n")
    except ValueError as e:
        return number, Rejected("malformed_json", str(e)), text.rstrip("\r\n")


def _read_jsonl(path: ObjectStoragePath, batch_size: int) -> Iterator[RawLines]:
    """Batches of `batch_size` non-blank lines; built a block at a time with C loops (map, slices)."""
    numbers: list[int] = []
    batch: list[bytes] = []
    number = 0
    with path.open("rb") as f:
        for lines, terminated in _blocks(f):
            first, number = number + 1, number + len(lines)
            if b"" in map(bytes.strip, lines):  # blank lines are rare: skip them the slow way
                kept = [(n, line) for n, line in enumerate(lines, first) if line.strip()]
                block_numbers, lines = [n for n, _ in kept], [line for _, line in kept]
            else:
                block_numbers = range(first, number + 1)
            pos = 0
            while pos < len(lines):
                take = batch_size - len(batch)
                numbers.extend(block_numbers[pos:pos + take])
                batch.extend(lines[pos:pos + take])
                pos += take
                last_terminated = terminated
                if len(batch) >= batch_size:
                    yield RawLines(numbers, b"\n".join(batch), last_terminated)
                    numbers, batch = [], []
    if batch:
        yield RawLines(numbers, b"\n".join(batch), last_terminated)


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
