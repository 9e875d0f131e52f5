"""The data-prep fast paths give exactly what the plain versions give: same bytes, same version."""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter

import pytest

from benchmarks import synthetic
from include.data import catalog, pii, sources
from include.data.clean import clean_text
from include.data.dedup import normalize_for_dedup
from include.data.pipeline import PrepConfig
from include.data.writers import _quote_clean
from include.data.writers import eval_line as _eval_line
from include.data.writers import json_line as _line
from include.data.writers import train_line as _train_line
from include.storage.objectstore import storage_path

ALPHABET = ([chr(i) for i in range(128)] + list("abcdefghij0123456789") * 3 + [" "] * 20 + ["\n"] * 4
            + list("ßİıſKÅé١٢\u00a0\u200b\u2028\u3000\x85_"))


def random_texts(n: int, seed: int, alphabet: list[str] = ALPHABET, length: int = 40) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, length))) for _ in range(n)]


def test_dedup_normalization_matches_the_regex():
    non_word = re.compile(r"[\W_]+")
    texts = random_texts(20_000, seed=1) + [f"a{chr(i)}b" for i in range(256)] + ["__A__b  c__", "", "  "]
    texts += ["Zürich ß x", "STRASSE straße", "a\ud800b", "K\u212a é١ b", "\u00a0é\u2028x_ü"]  # casefold, surrogate
    for text in texts:
        assert normalize_for_dedup(text) == non_word.sub(" ", text.casefold()).strip(), repr(text)


def test_clean_text_ascii_path_matches_the_general_steps():
    from include.data.clean import _BLANK_LINES, _CONTROL, _LINE_EDGES, _SPACES

    def general(text: str) -> str:
        text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
        text = _SPACES.sub(" ", _CONTROL.sub("", text))
        if "\n" in text:
            text = _LINE_EDGES.sub("\n", _BLANK_LINES.sub("\n\n", text))
        return text.strip()

    mostly_ascii = [chr(i) for i in range(128)] * 3 + list("abc  \n\n") * 20 + list("éüßİ١\u00a0\u2028\x85\u200b")
    for text in random_texts(20_000, seed=2) + random_texts(20_000, seed=5, alphabet=mostly_ascii, length=80):
        assert clean_text(text) == general(text), repr(text)


def test_cleaned_text_is_quoted_like_json_dumps_does():
    """`_quote_clean` leaves control characters but "\\n" unescaped: `clean_text` removes them."""
    texts = [clean_text(t) for t in random_texts(20_000, seed=6)] + ['quote " and backslash \\ \n']
    for text in texts:
        assert not any(c < " " and c != "\n" for c in text), repr(text)
        assert _quote_clean(text) == json.dumps(text, ensure_ascii=False), repr(text)


def test_quick_json_parse_matches_json_loads():
    lines = ['{"a": [1, 2.5, null, true], "b": {"c": "\\u00e9"}}', " {}", "{} ", "{}\r", "\ufeff{}", "{}x",
             "{} {}", "[NaN, -Infinity]", "1e400", "12345678901234567890", "", "  ", '"a"', "{", '{"a": "\\ud800"}',
             "[" * 50 + "]" * 50, '{"a": 1,}', "tru", "0", "-", '{"a"\t:\n1}']
    for line in lines:
        try:
            expected = ("ok", json.loads(line))
        except ValueError as e:
            expected = ("error", type(e))
        try:
            got = ("ok", sources._loads(line))
        except ValueError as e:
            got = ("error", type(e))
        assert repr(got) == repr(expected), line


PII_ALPHABET = list("0123456789") * 6 + list(" .-:@()+/_aAbKIzZ=\n") + ["AKIA", "ASIA", "\u0661", "é"]


def test_pii_gates_never_change_what_is_redacted():
    def ungated(text: str, counts: Counter) -> str:
        def replace(match: re.Match) -> str:
            kind, value = match.lastgroup, match.group()
            if kind == "card" and not pii.luhn_valid(value):
                return value
            counts[kind] += 1
            return pii._PLACEHOLDER[kind]
        return pii._PATTERN.sub(replace, text)

    rng = random.Random(3)
    texts = random_texts(30_000, seed=3, alphabet=PII_ALPHABET, length=60)
    texts += [f"{a}.{b}.{c}.{d} or {a}{b}{c}{d}{a}{b}{c}{d}{a}{b}" for a, b, c, d in
              (rng.choices(range(300), k=4) for _ in range(2000))]
    texts += ["key AKIA" + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=16)) + " and "
              + "".join(rng.choices("abcXYZ0129/+", k=rng.randint(38, 42))) for _ in range(2000)]
    # mostly ASCII with a non-ASCII letter, the shape path's other case; a key whose only digit is
    # an Arabic-Indic one right after it, which the lookahead's \\d takes
    texts += [f"{text} Zürich" if i % 2 else f"é{text}" for i, text in enumerate(texts[-6000:])]
    texts += ["key " + "".join(rng.choices("abcXYZ/+", k=40)) + "\u0661 end" for _ in range(200)]
    for text in texts:
        gated, plain = Counter(), Counter()
        assert pii.redact(text, gated) == ungated(text, plain), repr(text)
        assert gated == plain, repr(text)
    for i in range(0, len(texts) - 3, 3):  # a record's texts: no gate passes on them, no hits
        record = texts[i:i + 3]
        if not pii.may_contain_pii(record):
            assert all(ungated(t, Counter()) == t for t in record), record


@pytest.mark.parametrize("seed", range(3))
def test_hand_built_lines_match_json_dumps(seed):
    texts = [clean_text(t) for t in random_texts(3000, seed=seed) + ['quote " backslash \\ tab \t',
                                                                      "\x00\x1f\x7f\u2028 é 😀\nnext line"]]
    for q, a, c in zip(texts, texts[1:], texts[2:], strict=False):
        assert _train_line("00ff", q, a) == _line({"id": "00ff", "input": q, "output": a})
        for contexts in ([], [c], [c, q]):
            assert _eval_line("00ff", q, a, contexts) == _line(
                {"id": "00ff", "user_input": q, "reference": a, "reference_contexts": contexts})


def test_block_reads_give_the_same_items_as_reading_line_by_line(tmp_path, monkeypatch):
    lines = [b'{"a": 1}\r\n', b"\n", b"  \t\n", b'{"a":\n', b"\xff\xfe bad\n", b'{"b": "\xe2\n',
             b'{"c": "x\xe2\x80\xa8y"}\n', b"\x0c\n", b"[1, 2]\n", b'"\xe2']  # last line unterminated
    path = tmp_path / "a.jsonl"

    def per_line(batch_size: int) -> list:
        items, number = [], 0
        for number, line in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
            if line.strip():
                items.append(sources._parse(number, line))
        return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]

    def as_comparable(batches: list) -> list:
        return [[(n, (v.reason, v.detail) if isinstance(v, sources.Rejected) else v, raw) for n, v, raw in b]
                for b in batches]

    for content in (b"".join(lines), b"".join(lines[:-1]) + b'{"d":\n  ', b"".join(lines[:-1]) + b'{"d":'):
        path.write_bytes(content)
        for block in (1, 2, 7, 1 << 20):
            monkeypatch.setattr(sources, "BLOCK", block)
            for batch_size in (1, 3, 100):
                got = list(sources.read_lines(storage_path(f"file://{path}"), batch_size))
                assert as_comparable(got) == as_comparable(per_line(batch_size))


def test_batches_of_random_lines_hold_every_non_blank_line_once(tmp_path, monkeypatch):
    rng = random.Random(7)
    pieces = [b'{"a": 1}', b"", b" ", b"\t\r", b"\r", b"x", b'{"b": "\xc3\xa9"}', b"\xff", b"  {}  ", b"\x0b\x0c"]
    path = tmp_path / "r.jsonl"
    for trial in range(40):
        lines = rng.choices(pieces, k=rng.randint(0, 60))
        content = b"\n".join(lines) + (b"\n" if trial % 2 else b"")
        path.write_bytes(content)
        expected = [(n, line) for n, line in enumerate(content.split(b"\n"), start=1) if line.strip()]
        for block in (1, 3, 16, 1 << 20):
            monkeypatch.setattr(sources, "BLOCK", block)
            for batch_size in (1, 4, 1000):
                batches = list(sources.read_batches(storage_path(f"file://{path}"), batch_size))
                assert all(len(b.numbers) == batch_size for b in batches[:-1])
                got = [(n, line) for b in batches for n, line in zip(b.numbers, b.data.split(b"\n"), strict=True)]
                assert got == expected, (content, block, batch_size)
                if batches:  # whether the last line had a b"\n"
                    assert batches[-1].terminated == (expected[-1][0] <= content.count(b"\n"))


def test_workers_do_not_change_the_output(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    synthetic.write(str(raw / "a.jsonl"), 3000, seed=5)
    (raw / "b.jsonl").write_bytes(b'{"prompt": "Hi", "completion": "Yo"}\n\n' + json.dumps(
        {"question": "What does the operator do on retry?", "answer": "It resumes from the last checkpoint."}
    ).encode())
    data_root = f"file://{tmp_path}"
    manifests = [catalog.stage(data_root, [f"{data_root}/raw"], PrepConfig(batch_size=256, workers=workers),
                               f"run-{workers}") for workers in (1, 2)]
    one, two = ({k: m[k] for k in ("version", "counts", "quarantine", "pii", "files", "config")} for m in manifests)
    assert one == two
    assert one["counts"]["quarantined"] > 0 and one["counts"]["exact_duplicates"] > 0
    assert "workers" not in one["config"]


def test_clean_record_checks_a_record_at_once_with_the_same_result():
    from include.data.clean import clean_record
    from include.data.records import Record

    texts = random_texts(8000, seed=4) + ["plain words here", "two\nlines", "edge \n space", "a\n\nb"] * 50
    rng = random.Random(4)
    for _ in range(4000):
        q, a, s, *contexts = rng.sample(texts, rng.randint(3, 6))
        record = clean_record(Record(q, a, contexts, s), min_tokens=1, max_tokens=10**6) if (
            clean_text(q) and clean_text(a)) else None
        if record is not None:
            assert (record.question, record.answer, record.system) == (clean_text(q), clean_text(a),
                                                                       clean_text(s) if s else "")
            assert record.contexts == [c for c in map(clean_text, contexts) if c]
