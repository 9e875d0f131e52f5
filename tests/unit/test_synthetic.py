"""The synthetic benchmark input: deterministic, about 1 KB a record, realistic mix of defects."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter

import pytest

from benchmarks import synthetic
from include.data.clean import clean_record
from include.data.pii import redact
from include.data.records import Record, Rejected, normalize

N = 10_000


@pytest.fixture(scope="module")
def labelled() -> list[tuple[str, bytes]]:
    return list(synthetic.generate_labelled(N, seed=7))


def _outcome(line: bytes) -> Record | str:
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "invalid_encoding"
    except json.JSONDecodeError:
        return "malformed_json"
    try:
        return clean_record(normalize(obj), min_tokens=1, max_tokens=100_000)
    except Rejected as e:
        return e.reason


def _trigrams(line: bytes) -> frozenset:
    words = re.findall(rb"[a-z0-9]+", line.lower())
    return frozenset(zip(words, words[1:], words[2:], strict=False))


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b)


def test_same_seed_same_bytes_other_seed_other_bytes():
    a = list(synthetic.generate_lines(2_000, seed=3))
    assert a == list(synthetic.generate_lines(2_000, seed=3))
    assert a != list(synthetic.generate_lines(2_000, seed=4))
    assert a == [line for _, line in synthetic.generate_labelled(2_000, seed=3)]


def test_lines_are_single_jsonl_lines_of_about_one_kilobyte(labelled):
    assert len(labelled) == N
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for _, line in labelled)
    mean = sum(len(line) for _, line in labelled) / N
    assert 900 <= mean <= 1150, mean


def test_kind_rates_match_the_documented_mix(labelled):
    kinds = Counter(kind for kind, _ in labelled)
    malformed = sum(kinds[k] for k in synthetic.MALFORMED_KINDS)
    assert set(synthetic.MALFORMED_KINDS) <= set(kinds)
    for count, rate in [(kinds["duplicate"], synthetic.DUPLICATE_RATE),
                        (kinds["near_duplicate"], synthetic.NEAR_DUPLICATE_RATE),
                        (kinds["pii"], synthetic.PII_RATE), (malformed, synthetic.MALFORMED_RATE)]:
        assert 0.6 * rate * N <= count <= 1.4 * rate * N, (count, rate)


def test_every_line_gets_the_outcome_its_kind_promises(labelled):
    for kind, line in labelled:
        outcome = _outcome(line)
        if kind in synthetic.MALFORMED_KINDS:
            assert outcome == kind, (kind, line[:200])
        else:
            assert isinstance(outcome, Record), (kind, outcome, line[:200])


def test_mostly_question_context_answer_with_every_shape_mixed_in(labelled):
    shapes = Counter()
    for kind, line in labelled:
        if kind in ("good", "pii"):
            obj = json.loads(line)
            shapes[next(k for k in ("messages", "contexts", "context", "instruction", "prompt") if k in obj)] += 1
    total = sum(shapes.values())
    assert set(shapes) == {"messages", "contexts", "context", "instruction", "prompt"}
    assert (shapes["context"] + shapes["contexts"]) / total > 0.6
    assert min(shapes.values()) / total > 0.03


def test_pii_only_in_pii_lines_and_every_kind_appears(labelled):
    kinds: Counter = Counter()
    for kind, line in labelled:
        outcome = _outcome(line)
        if not isinstance(outcome, Record):
            continue
        hits: Counter = Counter()
        for text in (outcome.system, outcome.question, outcome.answer, *outcome.contexts):
            redact(text, hits)
        if kind != "duplicate" and kind != "near_duplicate":
            assert bool(hits) == (kind == "pii"), (kind, line[:200])
        kinds += hits
    assert set(kinds) == {"email", "phone", "card", "ip", "aws_access_key", "aws_secret_key"}


def test_duplicates_repeat_earlier_lines_exactly(labelled):
    earlier: set[bytes] = set()
    for kind, line in labelled:
        if kind == "duplicate":
            assert line in earlier
        elif kind in ("good", "pii"):
            assert line not in earlier
        earlier.add(line)


def test_near_duplicates_are_close_to_an_earlier_record_but_not_equal(labelled):
    by_length: dict[int, list[list[bytes]]] = {}
    for kind, line in labelled:
        tokens = line.split(b" ")
        if kind == "good":
            by_length.setdefault(len(tokens), []).append(tokens)
        elif kind == "near_duplicate":
            diffs = [sum(a != b for a, b in zip(tokens, other, strict=True))
                     for other in by_length.get(len(tokens), [])]
            assert diffs and 1 <= min(diffs) <= 3, line[:200]
            source = by_length[len(tokens)][diffs.index(min(diffs))]
            assert _jaccard(_trigrams(line), _trigrams(b" ".join(source))) >= 0.75


def test_distinct_records_share_few_word_trigrams(labelled):
    good = [_trigrams(line) for kind, line in labelled if kind == "good"][:400]
    worst = max(_jaccard(a, b) for a, b in itertools.combinations(good, 2))
    assert worst < 0.2, worst


def test_cli_writes_the_same_bytes_to_a_path_or_file_uri(tmp_path):
    expected = b"".join(synthetic.generate_lines(300, seed=5))
    out = tmp_path / "nested" / "raw.jsonl"
    assert synthetic.main(["--records", "300", "--out", str(out), "--seed", "5"]) == 0
    assert out.read_bytes() == expected
    uri_out = tmp_path / "uri.jsonl"
    assert synthetic.main(["--records", "300", "--out", uri_out.as_uri(), "--seed", "5"]) == 0
    assert uri_out.read_bytes() == expected
