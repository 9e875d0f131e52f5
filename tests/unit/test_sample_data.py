"""The shipped sample raw dataset: what the script generates, parseable, with every planted defect.

Each line is run through the same steps the pipeline uses (UTF-8 decode, JSON parse, `normalize`,
`clean_record`) and its outcome is compared with the label the build script planted, so a change
to either the data or the parsing rules that shifts a single line fails here.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from include.data.clean import clean_record, clean_text
from include.data.pii import PII_KINDS, redact
from include.data.records import Record, Rejected, normalize
from include.sample_data import build_sample

RAW = build_sample.OUT
GOOD_LABELS = {"good", "pii", "duplicate", "near_duplicate", "unicode_noise"}
DEFECTS = {"invalid_encoding", "malformed_json", "not_an_object", "unknown_shape", "wrong_type",
           "empty_answer", "empty_question"}


def _raw_items(name: str) -> list[object]:
    """Lines (bytes) of a JSONL file or rows (dicts) of a Parquet file, in file order."""
    path = RAW / name
    if name.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def _outcome(raw: object) -> Record | str:
    """A cleaned Record, or the quarantine reason the pipeline should give."""
    try:
        if isinstance(raw, bytes):
            try:
                raw = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                return "invalid_encoding"
            except json.JSONDecodeError:
                return "malformed_json"
        return clean_record(normalize(raw), min_tokens=1, max_tokens=100_000)
    except Rejected as e:
        return e.reason


@pytest.fixture(scope="module")
def items() -> list[tuple[str, str, object, Record | str]]:
    """(file, planted label, raw line or row, outcome) for everything shipped."""
    out = []
    for name, planned in build_sample.planned().items():
        raws = _raw_items(name)
        assert len(raws) == len(planned), name
        for (label, _), raw in zip(planned, raws, strict=True):
            out.append((name, label, raw, _outcome(raw)))
    return out


def _text(r: Record) -> str:
    return " ".join([r.system, r.question, *r.contexts, r.answer])


def _trigrams(text: str) -> frozenset:
    words = re.findall(r"\w+", text.lower())
    return frozenset(zip(words, words[1:], words[2:], strict=False))


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def test_three_partitions_jsonl_and_one_parquet():
    assert sorted(p.name for p in RAW.iterdir()) == list(build_sample.PARTITIONS)
    for part in build_sample.PARTITIONS:
        assert list((RAW / part).glob("*.jsonl")), part
    assert [p.relative_to(RAW).as_posix() for p in RAW.rglob("*.parquet")] == ["dt=2026-11-03/rag_qa.parquet"]
    assert sum(p.stat().st_size for p in RAW.rglob("*") if p.is_file()) < 300_000


def test_shipped_files_are_what_the_script_generates(tmp_path: Path):
    counts = build_sample.build(tmp_path)
    shipped = sorted(p.relative_to(RAW).as_posix() for p in RAW.rglob("*") if p.is_file())
    assert shipped == sorted(k.removeprefix("file:") for k in counts if k.startswith("file:"))
    for name in shipped:
        if name.endswith(".parquet"):
            assert pq.read_table(tmp_path / name).equals(pq.read_table(RAW / name)), name
        else:
            assert (tmp_path / name).read_bytes() == (RAW / name).read_bytes(), f"rerun build_sample: {name}"


def test_every_line_has_its_planted_outcome(items):
    for name, label, raw, outcome in items:
        expected = "ok" if label in GOOD_LABELS else label
        got = "ok" if isinstance(outcome, Record) else outcome
        assert got == expected, (name, label, raw)


def test_each_defect_kind_is_present_and_bad_lines_are_five_to_ten_percent(items):
    bad = Counter(label for _, label, _, _ in items if label in DEFECTS)
    assert set(bad) == DEFECTS
    assert 0.05 <= sum(bad.values()) / len(items) <= 0.10
    assert 250 <= len(items) <= 350


def test_good_lines_cover_all_four_shapes(items):
    shapes = Counter()
    for _, _, raw, outcome in items:
        if isinstance(outcome, Record):
            obj = json.loads(raw) if isinstance(raw, bytes) else raw
            shapes[next(k for k in ("messages", "question", "instruction", "prompt") if k in obj)] += 1
            if "contexts" in obj:
                shapes["contexts_list"] += 1
    assert set(shapes) == {"messages", "question", "instruction", "prompt", "contexts_list"}
    assert shapes["question"] > sum(shapes[k] for k in ("messages", "instruction", "prompt"))


def test_exact_duplicates_within_files_across_partitions_and_across_formats(items):
    def key(r: Record) -> tuple:
        return r.system, r.question, tuple(r.contexts), r.answer

    seen: dict[tuple, list[str]] = {}
    for name, _, _, outcome in items:
        if isinstance(outcome, Record):
            seen.setdefault(key(outcome), []).append(name)
    copies = {k: names for k, names in seen.items() if len(names) > 1}
    planted = sum(label == "duplicate" for _, label, _, _ in items)
    assert sum(len(names) - 1 for names in copies.values()) == planted
    assert any(len(set(names)) < len(names) for names in copies.values())  # same file
    assert any(len({n.split("/")[0] for n in names}) > 1 for names in copies.values())  # other day
    assert any({n.rsplit(".", 1)[1] for n in names} == {"jsonl", "parquet"} for names in copies.values())
    # the JSONL copies really are byte-identical lines
    lines = Counter(raw for _, label, raw, _ in items if isinstance(raw, bytes) and label in GOOD_LABELS)
    assert sum(n - 1 for n in lines.values()) == planted - 1  # one copy sits in the Parquet file


def test_near_duplicates_are_near_and_distinct_records_are_not(items):
    unique: dict[tuple, tuple[str, frozenset]] = {}
    for _, label, _, outcome in items:
        if isinstance(outcome, Record):
            k = (outcome.system, outcome.question, tuple(outcome.contexts), outcome.answer)
            unique.setdefault(k, (label, _trigrams(_text(outcome))))
    close = [(a[0], b[0]) for a, b in itertools.combinations(unique.values(), 2)
             if _jaccard(a[1], b[1]) >= 0.8]
    planted = sum(label == "near_duplicate" for _, label, _, _ in items)
    assert len(close) == planted
    assert all("near_duplicate" in pair for pair in close)


def test_pii_is_only_where_planted_and_covers_every_kind(items):
    kinds: Counter = Counter()
    for name, label, _, outcome in items:
        if not isinstance(outcome, Record):
            continue
        hits: Counter = Counter()
        for text in (outcome.system, outcome.question, outcome.answer, *outcome.contexts):
            redact(text, hits)
        assert bool(hits) == (label == "pii"), (name, outcome.question)
        kinds += hits
    assert set(kinds) == set(PII_KINDS)


def test_unicode_noise_is_removed_by_cleaning(items):
    noisy = [raw for _, label, raw, _ in items if label == "unicode_noise"]
    assert noisy
    for raw in noisy:
        obj = json.loads(raw) if isinstance(raw, bytes) else raw
        texts = [v for v in obj.values() if isinstance(v, str)]
        assert any(clean_text(t) != t for t in texts)
