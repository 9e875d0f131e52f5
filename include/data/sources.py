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


_scan_once = json.JSONDecoder().scan_once  # what json.loads ends in, with its default settings


def _loads(text: str) -> object:
    """`json.loads(text)` in about half the time for a line that is a JSON value and nothing else (most
    lines): its scanner called directly, without the checks and whitespace skips around it. Any other
    line (leading or trailing whitespace, a BOM, an error) goes the full way, for its exact result."""
    try:
        value, end = _scan_once(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError):
        pass
    return json.loads(text)


def parse_batch(batch: RawLines | list[Item]) -> list[Item]:
    """Items of a batch from `read_batches`."""
    if not isinstance(batch, RawLines):
        return batch
    loads = _loads
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


def _spans(f) -> Iterator[tuple[bytes, int, int, bool]]:
    """`(data, start, end, terminated)`: data[start:end] is whole physical lines joined by b"\\n", a big
    read at a time, left in place (only the line across two reads is joined); terminated: whether
    its last line had a b"\\n" (the last of a file may not). Each call on an ObjectStoragePath file
    goes through Airflow's lineage wrapper, so reading the file line by line costs more than parsing it."""
    tail = b""
    while chunk := f.read(BLOCK):
        first = chunk.find(b"\n")
        if first < 0:
            tail += chunk
            continue
        line = tail + chunk[:first]
        yield line, 0, len(line), True
        last = chunk.rfind(b"\n")
        if last > first:
            yield chunk, first + 1, last, True
        tail = chunk[last + 1:]
    if tail:
        yield tail, 0, len(tail), False


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


_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")  # what bytes.strip strips


def _read_jsonl(path: ObjectStoragePath, batch_size: int) -> Iterator[RawLines]:
    """Batches of `batch_size` non-blank lines. The lines are only found (bytes.find, a C scan), not
    split: a batch is one slice of what was read, or a few where a blank line or the end of a read
    falls inside it. Splitting every line into an object and joining them again cost the reading
    process, which with workers also dedups and writes, a quarter of its time."""
    numbers: list[int] = []
    parts: list[bytes] = []  # slices holding the batch's lines, each without its last b"\n"
    number = 0
    last_terminated = True
    with path.open("rb") as f:
        for data, pos, end, terminated in _spans(f):
            run = pos  # where the lines of the batch in this span start; run_lines: how many there are
            run_lines = 0
            while True:
                newline = data.find(b"\n", pos, end)
                stop = end if newline < 0 else newline
                number += 1
                if pos == stop or data[pos] in _WHITESPACE and not data[pos:stop].strip():  # blank: skipped
                    if run_lines:
                        parts.append(data[run:pos - 1])
                    run, run_lines = stop + 1, 0
                else:
                    numbers.append(number)
                    run_lines += 1
                    last_terminated = terminated or newline >= 0
                    if len(numbers) == batch_size:
                        parts.append(data[run:stop])
                        yield RawLines(numbers, b"\n".join(parts), last_terminated)
                        numbers, parts = [], []
                        run, run_lines = stop + 1, 0
                if newline < 0:
                    break
                pos = newline + 1
            if run_lines:
                parts.append(data[run:end])
    if numbers:
        yield RawLines(numbers, b"\n".join(parts), last_terminated)


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
