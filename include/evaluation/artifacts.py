"""Reading eval sets and models, writing evaluation outputs: file:// or s3://, with or without Airflow.

In Airflow (both profiles' workers) paths go through `include.storage.storage_path`, the project's
ObjectStoragePath with the AWS connection from settings. The evaluator image has no Airflow; there
the same fsspec filesystems are used directly and S3 credentials come from the pod's identity
(IRSA / Pod Identity). Either way the code below talks to an fsspec filesystem and a path in it.

Output layout under an evaluation's output URI (readers key off the last file written):
    responses.jsonl   {"id", "response"} per sample: what the model answered
    scores.jsonl      {"id", <metric>: float | null, ...} per sample, in eval-set order
    summary.json      means, counts, n, metric list, eval-set digest: its presence = scores complete
    result.json       what `evaluate_model` returns (the pod's XCom, read back from storage)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVAL_FILE = "eval.jsonl"
RESPONSES_FILE = "responses.jsonl"
SCORES_FILE = "scores.jsonl"
SUMMARY_FILE = "summary.json"
RESULT_FILE = "result.json"


class EvalSetError(ValueError):
    """The eval set cannot be read as RAGAS samples; the message names the line."""


@dataclass(frozen=True)
class EvalSample:
    id: str
    user_input: str
    reference: str
    reference_contexts: list[str] = field(default_factory=list)


def _airflow_storage() -> bool:
    try:
        import airflow.sdk  # noqa: F401
    except ImportError:
        return False
    return True


def fs_and_path(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a file:// or s3:// URI."""
    if _airflow_storage():
        from include.storage import storage_path

        p = storage_path(uri)
        return p.fs, p.path
    import fsspec

    return fsspec.core.url_to_fs(uri)


def local_path(uri: str) -> Path | None:
    return Path(uri[len("file://"):]) if uri.startswith("file://") else None


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def read_bytes(uri: str) -> bytes:
    local = local_path(uri)
    if local is not None:
        return local.read_bytes()
    fs, path = fs_and_path(uri)
    return fs.cat_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object; locally through a temp file and a rename, so a reader never sees half of it."""
    local = local_path(uri)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", dir=local.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    fs, path = fs_and_path(uri)
    fs.pipe_file(path, data)


def exists(uri: str) -> bool:
    local = local_path(uri)
    if local is not None:
        return local.exists()
    fs, path = fs_and_path(uri)
    return fs.exists(path)


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode())


def write_jsonl(uri: str, rows: Iterable[Mapping[str, Any]]) -> None:
    body = "".join(json.dumps(dict(r), sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n" for r in rows)
    write_bytes(uri, body.encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_bytes(uri).decode("utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------- eval set


def eval_file_uri(eval_uri: str) -> str:
    """A curated dataset version dir means its eval.jsonl; a .jsonl URI is taken as is."""
    return eval_uri if eval_uri.endswith(".jsonl") else join(eval_uri, EVAL_FILE)


def _sample(lineno: int, raw: Any) -> EvalSample:
    where = f"line {lineno}"
    if not isinstance(raw, dict):
        raise EvalSetError(f"{where}: expected a JSON object")
    for key in ("id", "user_input", "reference"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise EvalSetError(f"{where}: {key!r} must be a non-empty string")
    contexts = raw.get("reference_contexts") or []
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise EvalSetError(f"{where}: 'reference_contexts' must be a list of strings")
    return EvalSample(raw["id"], raw["user_input"], raw["reference"], [c for c in contexts if c.strip()])


def parse_eval_set(data: bytes, limit: int | None = None) -> list[EvalSample]:
    samples: list[EvalSample] = []
    seen: set[str] = set()
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise EvalSetError(f"line {lineno}: not JSON ({exc})") from None
        sample = _sample(lineno, raw)
        if sample.id in seen:  # scores are paired with the champion's by id: ids must be unique
            raise EvalSetError(f"line {lineno}: duplicate id {sample.id!r}")
        seen.add(sample.id)
        samples.append(sample)
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise EvalSetError("the eval set is empty")
    return samples


def load_eval_set(eval_uri: str, limit: int | None = None) -> list[EvalSample]:
    """The first `limit` samples (all without one), in file order."""
    uri = eval_file_uri(eval_uri)
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        raise EvalSetError(f"{uri}: not found") from None
    try:
        return parse_eval_set(data, limit)
    except EvalSetError as exc:
        raise EvalSetError(f"{uri}: {exc}") from None


def eval_digest(samples: Iterable[EvalSample]) -> str:
    """Identity of the samples scored: two score files compare only when their digests match."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.id, s.user_input, s.reference, s.reference_contexts], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


# ---------------------------------------------------------------- models


def stage_dir(uri: str, dest: Path) -> Path:
    """A local directory with the files under `uri`: the directory itself for file://, else a copy."""
    local = local_path(uri)
    if local is not None:
        if not local.is_dir():
            raise FileNotFoundError(f"{uri}: no such directory")
        return local
    fs, root = fs_and_path(uri)
    root = root.rstrip("/")
    files = [f for f in fs.find(root) if not f.endswith("/")]
    if not files:
        raise FileNotFoundError(f"{uri}: no files")
    dest.mkdir(parents=True, exist_ok=True)
    for remote in files:
        target = dest / remote[len(root):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))
    return dest
