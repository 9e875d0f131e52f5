"""Text hygiene: Unicode normalization, control characters, whitespace, length bounds."""

from __future__ import annotations

import re
import unicodedata

from include.data.records import Record, Rejected

# C0/C1 controls except tab and newline, plus zero-width and bidi marks that hide in copied text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")
_ODD_SPACE = re.compile(r"[\t\u00a0\u2000-\u200a\u3000]")  # every space but " "
_BLANK_LINES = re.compile(r"\s*\n\s*\n\s*")
_LINE_EDGES = re.compile(r" ?\n ?")


# The ASCII characters _CONTROL matches, for bytes.translate: deleting them is one C pass.
_ASCII_CONTROL = bytes([*range(0x09), *range(0x0B, 0x20), 0x7F])
_ASCII_ODD = _ASCII_CONTROL + b"\t"  # and "\r": everything but "\n" that needs work


# The non-ASCII characters that a step below removes, replaces or takes for whitespace (\s), and
# lone surrogates, which JSON can carry and UTF-8 cannot: text with none of them, once in NFKC,
# cleans as ASCII text does.
_SPECIAL = re.compile(r"[\s\x80-\x9f\u00a0\u2000-\u200f\u202a-\u202e\u2060-\u2064\u3000\ufeff\ud800-\udfff]")
_ASCII = bytes(range(128))


def clean_text(text: str) -> str:
    if text.isascii():
        return _clean_ascii(text)
    text = unicodedata.normalize("NFKC", text)
    if not _SPECIAL.search(_non_ascii(text)):
        return _clean_ascii(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if "  " in text or _ODD_SPACE.search(text):  # else every run is a single " " already
        text = _SPACES.sub(" ", text)
    if "\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
        text = _LINE_EDGES.sub("\n", text)
    return text.strip()


def _non_ascii(text: str) -> str:
    """The non-ASCII characters of `text`, few in most text: its UTF-8 without the ASCII bytes."""
    return text.encode("utf-8", "surrogatepass").translate(None, _ASCII).decode("utf-8", "surrogatepass")


def _plain(text: str) -> bool:
    """No control character but "\\n", no tab, no double space: nothing for the first steps of
    `clean_text` to do, if `text` is ASCII or passed the `_SPECIAL` check."""
    if "  " in text:
        return False
    raw = text.encode()
    return len(raw.translate(None, _ASCII_ODD)) == len(raw)


def _clean_ascii(text: str) -> str:
    """`clean_text` for most text, ASCII or with no `_SPECIAL` character: substring tests and
    bytes.translate (single C passes; on UTF-8 they leave the non-ASCII characters alone) stand in
    for regex scans where they show that the regex would change nothing."""
    if not _plain(text):
        text = text.replace("\r\n", "\n").replace("\r", "\n").encode().translate(None, _ASCII_CONTROL).decode()
        text = _SPACES.sub(" ", text)
    return _clean_lines(text)


def _clean_lines(text: str) -> str:
    """The last steps of `clean_text`, for text where " " and "\\n" are the only whitespace, and no
    space follows another: the blank-line and line-edge subs change nothing without one of these
    (a blank line that is just "\\n\\n", as between paragraphs, is what the first one writes)."""
    if "\n" in text and (" \n" in text or "\n " in text or "\n\n\n" in text):
        text = _BLANK_LINES.sub("\n\n", text)
        text = _LINE_EDGES.sub("\n", text)
    return text.strip()


def estimate_tokens(text: str) -> int:
    """About four characters a token for English BPE vocabularies; cheap and stable across runs."""
    return (len(text) + 3) // 4


def clean_record(record: Record, min_tokens: int, max_tokens: int) -> Record:
    # One `_plain` check for the whole record, most often true: what it finds in none of the texts
    # joined by "\n" is in none of them, so each needs only the last steps.
    joined = "\n".join([record.question, record.answer, record.system, *record.contexts])
    clean = _clean_lines if joined.isascii() and _plain(joined) else clean_text
    record.question = clean(record.question)
    record.answer = clean(record.answer)
    record.system = clean(record.system) if record.system else ""
    record.contexts = [c for c in map(clean, record.contexts) if c]
    if not record.question:
        raise Rejected("empty_question", "empty after cleaning")
    if not record.answer:
        raise Rejected("empty_answer", "empty after cleaning")
    tokens = estimate_tokens(record.question) + estimate_tokens(record.answer)
    tokens += sum(estimate_tokens(c) for c in record.contexts) + estimate_tokens(record.system)
    if tokens < min_tokens:
        raise Rejected("too_short", f"{tokens} estimated tokens < {min_tokens}")
    if tokens > max_tokens:
        raise Rejected("too_long", f"{tokens} estimated tokens > {max_tokens}")
    return record
