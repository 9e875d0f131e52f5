"""PII redaction: e-mail, phone, payment card (Luhn-checked), IP address, AWS keys.

One combined pattern, cut down to the kinds a text can contain, scans each text once; the order of
the alternatives decides ties (an AWS key before a generic token, a card before a phone number).
Each hit becomes a typed placeholder so the model still learns the sentence shape, and the
manifest counts hits per kind.
"""

from __future__ import annotations

import re
from collections import Counter

PII_KINDS = ("aws_access_key", "aws_secret_key", "email", "ip", "card", "phone")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_ALTERNATIVES = {
    "aws_access_key": r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
    # 40 base64 characters with upper, lower and a digit: the shape of a secret access key,
    # not of a git SHA (lowercase hex) or a word.
    "aws_secret_key": r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])"
                      r"(?=[A-Za-z0-9/+]*\d)[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])",
    "email": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
    "ip": rf"(?<![\d.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\d.]*\d)"
          r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])",
    "card": r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])",
    "phone": r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w-])",
}


def _compile(kinds: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(f"(?P<{kind}>{_ALTERNATIVES[kind]})" for kind in kinds))


_PATTERN = _compile(PII_KINDS)

# Scanning every position with all six alternatives is slow (about 250 ns a character), so each
# text first gets cheap necessary conditions: a substring that every match of a kind contains.
# Kinds whose condition fails cannot match anywhere in the text and are left out of its pattern;
# dropping alternatives that match nowhere leaves an ordered alternation's matches unchanged.
_DIGIT = re.compile(r"\d")
_ACCESS_KEY_GATE = re.compile(r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}")
_IPV4_GATE = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
_IPV6_GATE = re.compile(r":(?:[0-9A-Fa-f]{1,4}:){6}[0-9A-Fa-f]")
_CARD_GATE = re.compile(r"\d(?:[ -]?\d){12}")
_PHONE_GATE = re.compile(r"\d{3}[ .-]\d{3}")
_NUMBER_GATE = re.compile(r"\d(?:\.\d{1,3}\.\d{1,3}\.\d|(?:[ -]?\d){12}|\d{2}[ .-]\d{3})")  # any of the three
_PATTERNS: dict[tuple[str, ...], re.Pattern] = {PII_KINDS: _PATTERN}


# For most text the gates above get cheaper necessary conditions still, found in the shape of its
# UTF-8 bytes: bytes.translate, `in` and a regex with a literal first byte run at C speed, where the
# regex gates try a match at every digit. Every character the digit-based kinds match is ASCII as
# long as the text has no non-ASCII digit (\d matches those too), so that is all the shape needs;
# other non-ASCII characters (an "é", a "ü") are like punctuation to every kind. In the shape
# every digit is "0", " " and "-" are "s", "." stays, the other characters of a secret key (ASCII
# letters, "/" and "+") are "k", all else is "x".
_SHAPE = bytes(ord("0") if chr(c) in "0123456789" else ord("s") if chr(c) in " -" else c if c == ord(".")
               else ord("k") if chr(c).isascii() and (chr(c).isalpha() or chr(c) in "/+") else ord("x")
               for c in range(256))
_SHAPE_IPV4 = re.compile(rb"\.0{1,3}\.")  # its second octet, between two dots
_SHAPE_CARD = re.compile(rb"0[0s]{12}")
_SHAPE_PHONE = re.compile(rb"000[s.]000")
# The three in one scan, which rarely matches: each alternative starts at a "0", so the scan jumps
# from digit to digit (an alternation without that common first byte is tried at every byte).
_SHAPE_NUMBER = re.compile(rb"0(?:(?<=\.0)0{0,2}\.|[0s]{12}|00[s.]000)")
_KEY_RUN = b"k" * 40  # in the shape with its digits made "k" too: 40 characters of a secret key
_ASCII = bytes(range(128))


def _shape_kinds(text: str, raw: bytes) -> tuple[str, ...]:
    """The kinds that can match in `text` (UTF-8 `raw`), which holds no non-ASCII digit."""
    shape = raw.translate(_SHAPE)
    digit = b"0" in shape
    number = digit and _SHAPE_NUMBER.search(shape) is not None
    kinds = []
    if "A" in text and _ACCESS_KEY_GATE.search(text):
        kinds.append("aws_access_key")
    if digit and _KEY_RUN in shape.replace(b"0", b"k"):
        kinds.append("aws_secret_key")
    if "@" in text:
        kinds.append("email")
    if number and _SHAPE_IPV4.search(shape) and _IPV4_GATE.search(text) or ":" in text and _IPV6_GATE.search(text):
        kinds.append("ip")
    if number and _SHAPE_CARD.search(shape) and _CARD_GATE.search(text):
        kinds.append("card")
    if number and _SHAPE_PHONE.search(shape):
        kinds.append("phone")
    return tuple(kinds)


def _fast_kinds(text: str) -> tuple[str, ...] | None:
    """`_shape_kinds` where it applies; None for text with a non-ASCII digit, which needs `_kinds`.
    The non-ASCII characters, found by deleting every ASCII byte, are few in most text. (JSON can
    carry a lone surrogate: "surrogatepass" keeps this check from failing on one.)"""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) != len(text) and _DIGIT.search(raw.translate(None, _ASCII).decode("utf-8", "surrogatepass")):
        return None
    return _shape_kinds(text, raw)


def _kinds(text: str) -> tuple[str, ...]:
    digit = _DIGIT.search(text) is not None
    number = digit and _NUMBER_GATE.search(text) is not None
    return tuple(kind for kind, possible in (
        ("aws_access_key", "A" in text and _ACCESS_KEY_GATE.search(text)),
        # a digit, and 40 characters without whitespace
        ("aws_secret_key", digit and max(map(len, text.split()), default=0) >= 40),
        ("email", "@" in text),
        ("ip", (number and _IPV4_GATE.search(text)) or (":" in text and _IPV6_GATE.search(text))),
        ("card", number and _CARD_GATE.search(text)),
        ("phone", number and _PHONE_GATE.search(text)),
    ) if possible)


def _pattern_for(text: str) -> re.Pattern | None:
    """The alternatives that can match somewhere in `text`, in their order; None if none can."""
    kinds = _fast_kinds(text)
    if kinds is None:
        kinds = _kinds(text)
    if not kinds:
        return None
    pattern = _PATTERNS.get(kinds)
    if pattern is None:
        pattern = _PATTERNS[kinds] = _compile(kinds)
    return pattern


def may_contain_pii(texts: list[str]) -> bool:
    """False when no kind can match anywhere in `texts`: one check for a whole record. The gates
    only look for substrings, so what fails on the texts joined by "\\n" fails on each of them."""
    kinds = _fast_kinds("\n".join(texts))
    if kinds is not None:
        return bool(kinds)
    return any(_pattern_for(text) for text in texts)  # keep the other texts on their fast path


_PLACEHOLDER = {kind: f"[{kind.upper()}]" for kind in PII_KINDS}


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def redact(text: str, counts: Counter) -> str:
    """Replace every PII hit with its placeholder, adding one per hit to `counts[kind]`."""

    def replace(match: re.Match) -> str:
        kind = match.lastgroup
        value = match.group()
        if kind == "card" and not luhn_valid(value):
            return value  # a long number that is not a card: an order id, a timestamp
        counts[kind] += 1
        return _PLACEHOLDER[kind]

    pattern = _pattern_for(text)
    return pattern.sub(replace, text) if pattern else text
