"""The curation's output lines and files: byte-exact JSON lines, written in blocks and hashed.

The hashes of these files are the dataset version, so the encoders must stay byte for byte what
`json.dumps(..., ensure_ascii=False)` writes (tests/unit/test_dataprep_fast_paths.py checks it).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


class HashingWriter:
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

    def write(self, data: bytes) -> None:
        """One serialized line, b"\\n" included; counted and hashed a block at a time."""
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.BLOCK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            block = b"".join(self._pending)
            self.file.write(block)
            self.sha.update(block)
            self.records += len(self._pending)
            self.bytes += len(block)
            self._pending.clear()
            self._pending_bytes = 0

    def close(self) -> dict:
        try:
            self._flush()
        finally:
            self.file.close()
        return {"sha256": self.sha.hexdigest(), "records": self.records, "bytes": self.bytes}


_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode  # what json.dumps(obj, ensure_ascii=False,
# default=str) does, without building an encoder every call


def json_line(obj: dict) -> bytes:
    return (_encode(obj) + "\n").encode()


def _quote_clean(text: str) -> str:
    """json.dumps(text, ensure_ascii=False) for text from `clean_text` (and what is built of it):
    no control character but "\\n" is left, so three replaces, each one C scan, escape all that
    json's escaping would, in a third of its time (it walks every character)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# The two lines every kept record makes, assembled by hand: byte for byte what `json_line` writes for
# their dicts (same string escaping, same separators), in half the time. They take cleaned texts
# (and what is built of them): `_quote_clean` escapes only what `clean_text` leaves.
def train_line(rid: str, prompt: str, answer: str) -> bytes:
    return f'{{"id": "{rid}", "input": {_quote_clean(prompt)}, "output": {_quote_clean(answer)}}}\n'.encode()


def eval_line(rid: str, question: str, answer: str, contexts: list[str]) -> bytes:
    return (f'{{"id": "{rid}", "user_input": {_quote_clean(question)}, "reference": {_quote_clean(answer)}, '
            f'"reference_contexts": [{", ".join(map(_quote_clean, contexts))}]}}\n').encode()
