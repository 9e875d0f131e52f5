from collections import Counter

import pytest

from include.data.pii import PII_KINDS, luhn_valid, redact


@pytest.mark.parametrize(
    "text, kind",
    [
        ("mail jane.doe+ml@example.co.uk now", "email"),
        ("call +1 415-555-0132 today", "phone"),
        ("call (02) 9876 5432 today", "phone"),
        ("card 4111 1111 1111 1111 expires", "card"),
        ("card 5500-0000-0000-0004 expires", "card"),
        ("node at 10.0.12.7 is down", "ip"),
        ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 here", "ip"),
        ("key AKIAIOSFODNN7EXAMPLE leaked", "aws_access_key"),
        ("secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY leaked", "aws_secret_key"),
    ],
)
def test_each_kind_is_redacted_and_counted(text, kind):
    counts = Counter()
    out = redact(text, counts)
    assert counts == Counter({kind: 1}), out
    assert f"[{kind.upper()}]" in out
    assert kind in PII_KINDS


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 shipped",  # fails Luhn: not a card
        "commit 3f786850e387550fdab836ed7e6dc881de23001b",  # lowercase hex SHA, not a secret
        "use Kubernetes 1.29.0 with NCCL 2.18.5",  # versions, not IPs
        "set replicas: 3 and 4096 MiB",
        "an AKIA prefix alone",
    ],
)
def test_lookalikes_are_left_alone(text):
    counts = Counter()
    assert redact(text, counts) == text
    assert not counts


def test_luhn():
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("4111")


def test_several_hits_in_one_text():
    counts = Counter()
    out = redact("a@b.io, c@d.io and 192.168.0.1", counts)
    assert out == "[EMAIL], [EMAIL] and [IP]"
    assert counts == Counter({"email": 2, "ip": 1})
