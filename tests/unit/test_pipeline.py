"""The curation stream end to end on crafted records, on the local filesystem."""

import json
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.data import catalog
from include.data.pipeline import SPLIT_FILES, PrepConfig, assign_split
from include.data.records import QUARANTINE_REASONS
from include.data.writers import HashingWriter as _HashingWriter
from include.errors import InputError
from include.storage.objectstore import storage_path


def qa(i, **extra):
    return {"question": f"Question {i}: how does component {i} of the platform behave under load?",
            "context": f"Component {i} scales horizontally and keeps state in S3.",
            "answer": f"Component {i} scales out horizontally and keeps its state in S3.", **extra}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else (json.dumps(row) + "\n").encode())


@pytest.fixture
def root(tmp_path):
    return tmp_path, f"file://{tmp_path}"


def run(data_root, sources, run_id="run-1", **config):
    manifest = catalog.stage(data_root, sources, PrepConfig(**config), run_id)
    return catalog.publish(data_root, manifest, run_id)


def read(uri):
    return [json.loads(line) for line in storage_path(uri).read_text().splitlines()]


def test_every_quarantine_reason_is_kept_with_source_and_line(root):
    tmp, data_root = root
    part = tmp / "raw" / "dt=2026-11-01"
    write_jsonl(part / "a.jsonl", [
        qa(1),
        b"\xff\xfe not utf-8\n",                                   # invalid_encoding
        b'{"question": "truncated\n',                              # malformed_json
        [1, 2],                                                     # not_an_object
        {"text": "free text"},                                      # unknown_shape
        {"question": "Q?", "answer": 42},                           # wrong_type
        {"question": "\u200b", "answer": "An answer long enough."},  # empty_question
        {"question": "What is EKS exactly?", "answer": "  "},       # empty_answer
        {"prompt": "Hi", "completion": "Yo"},                        # too_short
        {"prompt": "Tell me everything.", "completion": "word " * 3000},  # too_long
    ])
    (part / "b.parquet").write_bytes(b"PAR1 this is not parquet")    # unreadable_file
    (part / "notes.csv").write_text("a,b\n")                         # unreadable_file (type)
    live, ours = run(data_root, [f"{data_root}/raw/dt=2026-11-01"])
    assert ours
    expected = dict.fromkeys(QUARANTINE_REASONS, 1) | {"unreadable_file": 2}
    assert live["quarantine"] == expected
    assert live["counts"]["quarantined"] == sum(expected.values())
    assert live["counts"]["written"] == 1
    rows = read(live["uris"]["quarantine"])
    by_reason = {r["reason"]: r for r in rows}
    assert by_reason["wrong_type"]["line"] == 6
    assert by_reason["wrong_type"]["source"].endswith("dt=2026-11-01/a.jsonl")
    assert json.loads(by_reason["wrong_type"]["raw"]) == {"question": "Q?", "answer": 42}
    assert "\\xff" in by_reason["invalid_encoding"]["raw"]
    assert by_reason["too_long"]["detail"].startswith("3")


def test_parquet_sources_and_all_shapes_are_read(root):
    tmp, data_root = root
    part = tmp / "raw" / "dt=2026-11-02"
    part.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"instruction": "Explain Karpenter consolidation in detail.", "input": "",
         "output": "It removes or replaces underused nodes to cut cost."},
        {"instruction": "Explain vLLM paged attention in short.", "input": "Serving context.",
         "output": "It stores the KV cache in fixed-size blocks to avoid fragmentation."},
    ]), part / "rows.parquet")
    write_jsonl(part / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "What does MLflow's champion alias mean?"},
        {"role": "assistant", "content": "It names the model version that serves production."}]}])
    live, _ = run(data_root, [f"{data_root}/raw/dt=2026-11-02"])
    assert live["counts"]["read"] == 3 and live["counts"]["written"] == 3
    assert [s["records"] for s in live["sources"]] == [1, 2]  # sorted by name: chat.jsonl, rows.parquet


def test_pii_is_redacted_and_counted_per_kind(root):
    tmp, data_root = root
    write_jsonl(tmp / "raw" / "dt=2026-11-01" / "a.jsonl", [
        qa(1, answer="Mail ops@example.com or call +1 415-555-0132 from 10.1.2.3."),
        qa(2, context="Key AKIAIOSFODNN7EXAMPLE, card 4111 1111 1111 1111."),
    ])
    live, _ = run(data_root, [f"{data_root}/raw"], train_fraction=0.01, validation_fraction=0.01)
    assert live["pii"] == {"email": 1, "phone": 1, "ip": 1, "aws_access_key": 1, "card": 1}
    text = storage_path(live["uris"]["test"]).read_text()
    assert "example.com" not in text and "AKIA" not in text and "4111" not in text
    assert "[EMAIL]" in text and "[CARD]" in text
    off, _ = run(data_root, [f"{data_root}/raw"], run_id="run-2", redact_pii=False)
    assert off["pii"] == {} and off["version"] != live["version"]


def test_exact_and_near_duplicates_are_dropped_and_counted(root):
    tmp, data_root = root
    near = qa(1, answer="Component 1 scales out horizontally and keeps its state in S3 buckets.")
    write_jsonl(tmp / "raw" / "dt=2026-11-01" / "a.jsonl", [qa(1), qa(2), qa(1)])
    write_jsonl(tmp / "raw" / "dt=2026-11-02" / "a.jsonl", [qa(1, question=qa(1)["question"].upper()), near, qa(3)])
    live, _ = run(data_root, [f"{data_root}/raw"])
    assert live["counts"]["exact_duplicates"] == 2  # same line, and same text in other case
    assert live["counts"]["near_duplicates"] == 1
    assert live["counts"]["written"] == 3
    without, _ = run(data_root, [f"{data_root}/raw"], run_id="run-2", near_dedup=False)
    assert without["counts"]["written"] == 4 and "near_duplicates" not in without["counts"]


def test_splits_are_stable_across_reruns_and_new_data(root):
    tmp, data_root = root
    write_jsonl(tmp / "raw" / "dt=2026-11-01" / "a.jsonl", [qa(i) for i in range(200)])
    first, _ = run(data_root, [f"{data_root}/raw"])
    assert sum(first["splits"].values()) == 200 and all(first["splits"].values())
    split_of = {r["id"]: s for s in SPLIT_FILES for r in read(first["uris"][s])}
    write_jsonl(tmp / "raw" / "dt=2026-11-02" / "a.jsonl", [qa(i) for i in range(200, 260)])
    second, _ = run(data_root, [f"{data_root}/raw"], run_id="run-2")
    assert second["version"] != first["version"]
    again = {r["id"]: s for s in SPLIT_FILES for r in read(second["uris"][s])}
    assert all(again[i] == s for i, s in split_of.items())
    eval_rows = read(second["uris"]["eval"])
    assert len(eval_rows) == second["splits"]["test"]
    assert set(eval_rows[0]) == {"id", "user_input", "reference", "reference_contexts"}
    assert {r["id"] for r in eval_rows} == {i for i, s in again.items() if s == "test"}


def test_split_assignment_depends_on_content_only():
    c = PrepConfig()
    assert assign_split("some text", c) == assign_split("some text", c)
    splits = [assign_split(f"record {i}", c) for i in range(5000)]
    assert 0.77 < splits.count("train") / 5000 < 0.83


def test_rerun_is_idempotent_and_rewrites_nothing(root):
    tmp, data_root = root
    write_jsonl(tmp / "raw" / "dt=2026-11-01" / "a.jsonl", [qa(i) for i in range(20)])
    first, ours = run(data_root, [f"{data_root}/raw"], run_id="run-1")
    version_dir = tmp / "curated" / first["version"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in version_dir.iterdir()}
    second, ours2 = run(data_root, [f"{data_root}/raw"], run_id="run-2")
    assert ours and not ours2
    assert second == first  # the live manifest, still the first run's
    assert {p.name: p.stat().st_mtime_ns for p in version_dir.iterdir()} == mtimes
    retry, ours3 = run(data_root, [f"{data_root}/raw"], run_id="run-1")
    assert ours3, "a retry of the publishing run still owns the version (and re-emits its event)"
    manifest = catalog.stage(data_root, [f"{data_root}/raw"], PrepConfig(), "run-1")
    _, cleared = catalog.publish(data_root, manifest, "run-1", attempt_key="run-1#1")
    assert not cleared, "a cleared (reprocessed) run must not emit a second event"
    assert [d.name for d in (tmp / "curated").iterdir() if not d.name.startswith("_")] == [first["version"]]
    assert not any((tmp / "curated" / "_staging").iterdir())


def test_the_same_data_read_from_elsewhere_is_the_same_version(tmp_path):
    rows = [qa(i) for i in range(40)] + [b"not json\n"]
    versions = []
    for place in ("team-a", "team-b"):
        write_jsonl(tmp_path / place / "raw" / "dt=2026-11-01" / "a.jsonl", rows)
        data_root = f"file://{tmp_path / place}"
        manifest = run(data_root, [f"{data_root}/raw"])[0]
        [bad] = read(manifest["uris"]["quarantine"])
        assert bad["source"].startswith(data_root)  # the quarantine still names where it came from
        versions.append(manifest["version"])
    assert versions[0] == versions[1]


def test_a_failure_mid_write_leaves_no_version_and_no_files(root, monkeypatch):
    tmp, data_root = root
    write_jsonl(tmp / "raw" / "dt=2026-11-01" / "a.jsonl", [qa(i) for i in range(50)])
    real_write, written = _HashingWriter.write, []

    def failing_write(self, obj):
        if len(written) == 25:
            raise OSError("disk full")
        written.append(obj)
        real_write(self, obj)

    monkeypatch.setattr(_HashingWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        catalog.stage(data_root, [f"{data_root}/raw"], PrepConfig(), "run-1")
    assert catalog.list_versions(data_root) == []
    curated = tmp / "curated"
    assert [p for p in curated.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    live, ours = run(data_root, [f"{data_root}/raw"])
    assert ours and live["counts"]["written"] == 50


def test_a_version_without_manifest_is_invisible_and_replaced(root):
    tmp, data_root = root
    write_jsonl(tmp / "raw" / "dt=2026-11-01" / "a.jsonl", [qa(i) for i in range(5)])
    manifest = catalog.stage(data_root, [f"{data_root}/raw"], PrepConfig(), "run-1")
    half = tmp / "curated" / manifest["version"]
    half.mkdir(parents=True)
    (half / "training.jsonl").write_text("partial")
    assert catalog.list_versions(data_root) == []
    live, ours = catalog.publish(data_root, manifest, "run-1")
    assert ours and (half / "manifest.json").exists()
    assert (half / "training.jsonl").read_text() != "partial"


def test_asset_extra_carries_version_counts_and_uris(root):
    tmp, data_root = root
    write_jsonl(tmp / "raw" / "dt=2026-11-01" / "a.jsonl", [qa(i) for i in range(30)])
    live, _ = run(data_root, [f"{data_root}/raw"])
    extra = catalog.asset_extra(live)
    assert extra["version"] == live["version"]
    assert extra["uri"] == f"{data_root}/curated/{live['version']}"
    assert extra["manifest_uri"] == f"{extra['uri']}/manifest.json"
    assert extra["counts"]["written"] == 30 and sum(extra["splits"].values()) == 30
    assert extra["uris"]["train"].endswith("/training.jsonl")
    json.dumps(extra)  # event extras must be JSON
    assert catalog.latest_version(data_root)["version"] == live["version"]


def test_sources_resolve_from_params_or_logical_date(root):
    tmp, data_root = root
    (tmp / "raw" / "dt=2026-11-03").mkdir(parents=True)
    day = datetime(2026, 11, 3, tzinfo=UTC)
    assert catalog.resolve_sources(data_root, None, [], day) == [f"{data_root}/raw/dt=2026-11-03"]
    assert catalog.resolve_sources(data_root, "2026-11-03", None, None) == [f"{data_root}/raw/dt=2026-11-03"]
    explicit = [f"{data_root}/raw/dt=2026-11-03/x.jsonl"]
    assert catalog.resolve_sources(data_root, "2026-11-01", explicit, day) == explicit
    with pytest.raises(InputError, match="no raw partition"):
        catalog.resolve_sources(data_root, "2026-11-04", None, None)
    with pytest.raises(InputError, match="not under"):
        catalog.resolve_sources(data_root, None, [f"{data_root}/raw/../../etc/passwd"], None)
    with pytest.raises(InputError, match="not under"):
        catalog.resolve_sources(data_root, None, ["file:///etc/passwd"], None)
    with pytest.raises(InputError, match="no partition"):
        catalog.resolve_sources(data_root, None, [], None)
