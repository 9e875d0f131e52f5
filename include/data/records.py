"""One schema for every raw shape people actually have.

Raw records arrive as instruction/input/output (Alpaca), prompt/completion, question/context/answer
(RAG) or chat `messages`. `normalize` turns each into a `Record` or raises `Rejected` with a
reason from `QUARANTINE_REASONS`; nothing here crashes on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEMA_VERSION = "1"

# Every reason a raw record can be quarantined for; the manifest counts each.
QUARANTINE_REASONS = (
    "unreadable_file",  # the file itself cannot be read (corrupt Parquet, unknown format)
    "invalid_encoding",  # a JSONL line that is not UTF-8
    "malformed_json",  # a JSONL line that does not parse
    "not_an_object",  # valid JSON, but not an object
    "unknown_shape",  # none of the supported shapes matches the keys
    "wrong_type",  # a known shape with a field of the wrong type
    "empty_question",  # nothing to ask after cleaning
    "empty_answer",  # nothing to learn after cleaning
    "too_short",  # under the minimum estimated tokens
    "too_long",  # over the maximum estimated tokens
)


class Rejected(Exception):
    """A record that cannot enter the dataset, with the reason the manifest counts."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in QUARANTINE_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Record:
    question: str
    answer: str
    contexts: list[str] = field(default_factory=list)
    system: str = ""
    source: str = ""
    line: int = 0


def _text(raw: dict, key: str, required: bool = True) -> str:
    value = raw.get(key)
    if value is None:
        if required:
            raise Rejected("wrong_type", f"{key} is missing or null")
        return ""
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"{key} must be a string, got {type(value).__name__}")
    return value


def _contexts(value: object, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v for v in value if v.strip()]
    raise Rejected("wrong_type", f"{key} must be a string or a list of strings")


def _from_messages(raw: dict) -> Record:
    messages = raw["messages"]
    if not isinstance(messages, list) or not messages:
        raise Rejected("wrong_type", "messages must be a non-empty list")
    turns = []
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise Rejected("wrong_type", f"messages[{i}] needs string role and content")
        turns.append((m["role"], m["content"]))
    system = "\n".join(c for r, c in turns if r == "system")
    dialog = [(r, c) for r, c in turns if r != "system"]
    if not dialog or dialog[-1][0] != "assistant":
        raise Rejected("empty_answer", "the conversation does not end with an assistant turn")
    if len(dialog) < 2 or dialog[-2][0] != "user":
        raise Rejected("empty_question", "no user turn before the final assistant turn")
    history = "\n".join(f"{r}: {c}" for r, c in dialog[:-2])
    question = f"{history}\nuser: {dialog[-2][1]}" if history else dialog[-2][1]
    return Record(question=question, answer=dialog[-1][1], system=system)


def normalize(raw: object) -> Record:
    """Map one raw object of any supported shape onto `Record` (source and line left to the caller)."""
    if not isinstance(raw, dict):
        raise Rejected("not_an_object", f"got {type(raw).__name__}")
    if "messages" in raw:
        return _from_messages(raw)
    if "question" in raw and "answer" in raw:
        ctx_key = "contexts" if "contexts" in raw else "context"
        return Record(question=_text(raw, "question"), answer=_text(raw, "answer"),
                      contexts=_contexts(raw.get(ctx_key), ctx_key))
    if "instruction" in raw and "output" in raw:
        extra = _text(raw, "input", required=False)
        return Record(question=_text(raw, "instruction"), answer=_text(raw, "output"),
                      contexts=[extra] if extra.strip() else [])
    if "prompt" in raw and "completion" in raw:
        return Record(question=_text(raw, "prompt"), answer=_text(raw, "completion"))
    keys = ", ".join(sorted(map(str, raw))[:8])
    raise Rejected("unknown_shape", f"keys: {keys}")
