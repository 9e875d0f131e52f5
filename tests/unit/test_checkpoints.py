"""Checkpoints count only when complete and verified; resume skips the rest and says why."""

from __future__ import annotations

import json

import pytest

from include.training import checkpoints


def save_bytes(payload: bytes):
    def save(directory):
        (directory / "state.pt").write_bytes(payload)
        (directory / "extra").mkdir()
        (directory / "extra" / "rng.bin").write_bytes(payload[::-1])

    return save


def write(root, step, payload=None):
    return checkpoints.write_checkpoint(root, step, save_bytes(payload or f"state {step}".encode() * 100), {"k": step})


def test_manifest_lists_every_file_with_size_and_checksum(tmp_path):
    path = write(tmp_path, 10)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 10 and manifest["meta"] == {"k": 10}
    assert set(manifest["files"]) == {"state.pt", "extra/rng.bin"}
    assert manifest["files"]["state.pt"]["sha256"] == checkpoints.sha256_file(path / "state.pt")
    assert checkpoints.problem(path) is None
    assert (tmp_path / "latest").read_text() == "step-10\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda p: (p / "manifest.json").unlink(), "no manifest.json: half-written"),
    (lambda p: (p / "manifest.json").write_text('{"step": 3'), "unreadable manifest.json"),
    (lambda p: (p / "extra" / "rng.bin").unlink(), "extra/rng.bin is missing"),
    (lambda p: (p / "state.pt").write_bytes(b"short"), "state.pt has 5 bytes, the manifest says"),
    (lambda p: (p / "state.pt").write_bytes(b"X" * (p / "state.pt").stat().st_size), "state.pt fails its SHA-256"),
])
def test_resume_skips_damaged_checkpoints_with_a_reason(tmp_path, damage, reason):
    write(tmp_path, 10)
    damage(write(tmp_path, 20))
    said = []
    assert checkpoints.latest_complete(tmp_path, report=said.append) == (10, tmp_path / "step-10")
    assert len(said) == 1 and said[0].startswith("checkpoint step-20 skipped: ") and reason in said[0]


def test_the_default_report_is_a_logged_warning(tmp_path):
    """A handler of its own, not pytest's caplog: the suite also runs with `-p no:logging`."""
    import logging

    write(tmp_path, 10)
    (write(tmp_path, 20) / "manifest.json").unlink()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("include.training.checkpoints")
    logger.addHandler(handler)
    try:
        assert checkpoints.latest_complete(tmp_path)[0] == 10
    finally:
        logger.removeHandler(handler)
    assert any("checkpoint step-20 skipped: no manifest.json" in r.getMessage() and r.levelno == logging.WARNING
               for r in records)


def test_nothing_usable_means_a_fresh_start(tmp_path):
    assert checkpoints.latest_complete(tmp_path / "missing") is None
    (write(tmp_path, 10) / "manifest.json").unlink()
    assert checkpoints.latest_complete(tmp_path, report=lambda _: None) is None


def test_a_killed_writer_leaves_only_a_temp_dir_and_the_previous_checkpoint(tmp_path):
    write(tmp_path, 10)

    def dies(directory):
        (directory / "state.pt").write_bytes(b"half")
        raise KeyboardInterrupt  # the process is killed mid-write

    with pytest.raises(KeyboardInterrupt):
        checkpoints.write_checkpoint(tmp_path, 20, dies, {})
    assert [s for s, _ in checkpoints.step_dirs(tmp_path)] == [10]
    assert checkpoints.latest_complete(tmp_path)[0] == 10
    checkpoints.clean_partial(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-10"]


def test_rewriting_a_step_replaces_it_and_prune_keeps_the_newest_complete(tmp_path):
    write(tmp_path, 10, b"one")
    write(tmp_path, 10, b"two")
    assert (tmp_path / "step-10" / "state.pt").read_bytes() == b"two"
    for step in (20, 30, 40):
        write(tmp_path, step)
    (tmp_path / "step-50").mkdir()  # half-written, newer than every complete one: left for the next write
    checkpoints.prune(tmp_path, keep=2)
    assert [s for s, _ in checkpoints.step_dirs(tmp_path)] == [30, 40, 50]
    assert [s for s, _ in checkpoints.complete_checkpoints(tmp_path, checksums=True)] == [30, 40]


def test_a_save_that_writes_nothing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="save\\(\\) wrote no files"):
        checkpoints.write_checkpoint(tmp_path, 10, lambda d: None, {})
