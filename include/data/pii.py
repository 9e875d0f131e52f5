"""PII redaction: e-mail, phone, payment card (Luhn-checked), IP address, AWS keys.

One combined pattern scans each text once; the order of the alternatives decides ties (an AWS key
before a generic token, a card before a phone number). Each hit becomes a typed placeholder so the
model still learns the sentence shape, and the manifest counts hits per kind.
"""

from __future__ import annotations

import re
from collections import Counter

PII_KINDS = ("aws_access_key", "aws_secret_key", "email", "ip", "card", "phone")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_PATTERN = re.compile(
    r"|".join(
        [
            r"(?P<aws_access_key>\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b)",
            # 40 base64 characters with upper, lower and a digit: the shape of a secret access key,
            # not of a git SHA (lowercase hex) or a word.
            r"(?P<aws_secret_key>(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])"
            r"(?=[A-Za-z0-9/+]*\d)[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=]))",
            r"(?P<email>\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b)",
            rf"(?P<ip>(?<![\d.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\d.]*\d)"
            r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:]))",
            r"(?P<card>(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-]))",
            r"(?P<phone>(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w-]))",
        ]
    )
)
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

    return _PATTERN.sub(replace, text)
