"""The shipped sample raw dataset (see README.md here) and a way to put it in a data root."""

from __future__ import annotations

from pathlib import Path

SAMPLE_RAW = Path(__file__).resolve().parent / "raw"


def stage_sample(data_root: str) -> str:
    """Copy the sample partitions under <data root>/raw, skipping files already there; returns that URI."""
    from include.storage.objectstore import storage_path

    raw = storage_path(f"{data_root}/raw")
    for src in sorted(p for p in SAMPLE_RAW.rglob("*") if p.is_file()):
        dest = raw / src.relative_to(SAMPLE_RAW).as_posix()
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read_bytes())
    return f"{data_root}/raw"
