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


def _pattern_for(text: str) -> re.Pattern | None:
    """The alternatives that can match somewhere in `text`, in their order; None if none can."""
    digit = _DIGIT.search(text) is not None
    number = digit and _NUMBER_GATE.search(text) is not None
    kinds = tuple(kind for kind, possible in (
        ("aws_access_key", "A" in text and _ACCESS_KEY_GATE.search(text)),
        # a digit, and 40 characters without whitespace
        ("aws_secret_key", digit and max(map(len, text.split()), default=0) >= 40),
        ("email", "@" in text),
        ("ip", (number and _IPV4_GATE.search(text)) or (":" in text and _IPV6_GATE.search(text))),
        ("card", number and _CARD_GATE.search(text)),
        ("phone", number and _PHONE_GATE.search(text)),
    ) if possible)
    if not kinds:
        return None
    pattern = _PATTERNS.get(kinds)
    if pattern is None:
        pattern = _PATTERNS[kinds] = _compile(kinds)
    return pattern


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
