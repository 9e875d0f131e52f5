"""The eval set (RAGAS samples from a curated version's eval.jsonl) and the evaluation's output files.

Storage itself is include/storage/files.py (file:// or s3://, with or without Airflow).

Output layout under an evaluation's output URI (readers key off the last file written):
    responses.jsonl   {"id", "response"} per sample: what the model answered
    scores.jsonl      {"id", <metric>: float | null, ...} per sample, in eval-set order
    summary.json      means, counts, n, metric list, eval-set digest: its presence = scores complete
    result.json       what `run_job` returns (the pod's XCom, read back from storage)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from include.storage import files

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


# ---------------------------------------------------------------- eval set


def eval_file_uri(eval_uri: str) -> str:
    """A curated dataset version dir means its eval.jsonl; a .jsonl URI is taken as is."""
    return eval_uri if eval_uri.endswith(".jsonl") else files.join(eval_uri, EVAL_FILE)


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
        data = files.read_bytes(uri)
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
