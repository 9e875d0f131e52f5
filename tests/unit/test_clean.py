import pytest

from include.data.clean import clean_record, clean_text, estimate_tokens
from include.data.records import Record, Rejected


def test_unicode_is_nfkc_normalized_and_controls_removed():
    assert clean_text("ﬁne\u200b tuning\x00 on\u00a0EKS\x07") == "fine tuning on EKS"
    assert clean_text("Ｋｕｂｅｒｎｅｔｅｓ") == "Kubernetes"


def test_whitespace_is_collapsed_but_paragraphs_survive():
    assert clean_text("  a \t b\r\n\r\n\r\n  c  \n d ") == "a b\n\nc\nd"


def test_bounds_and_empty_fields_are_rejected():
    ok = clean_record(Record("What is EKS?", "Managed Kubernetes on AWS."), 4, 100)
    assert ok.question == "What is EKS?"
    with pytest.raises(Rejected, match="empty_answer"):
        clean_record(Record("What is EKS?", " \u200b\t "), 1, 100)
    with pytest.raises(Rejected, match="empty_question"):
        clean_record(Record("\x00", "answer"), 1, 100)
    with pytest.raises(Rejected, match="too_short"):
        clean_record(Record("Q?", "A."), 8, 100)
    with pytest.raises(Rejected, match="too_long"):
        clean_record(Record("Q?", "word " * 200), 1, 100)


def test_token_estimate_is_about_four_chars_a_token():
    assert estimate_tokens("") == 0
    assert estimate_tokens("x" * 400) == 100
