"""Step checkpoints that are either complete and verified, or ignored with a logged reason.

Layout: `<root>/step-<N>/` holds the trainer's files and `manifest.json`, written last, with
each file's size and SHA-256. A checkpoint counts only if its manifest is there and every file
matches it. Writing goes to a hidden temp dir: files fsynced, manifest fsynced, the dir fsynced,
one rename publishes it, then the parent is fsynced. So a kill at any moment leaves the previous
checkpoints intact and at most a `.tmp-*` dir (removed on the next start).

Why checksums as well as the rename: a shared filesystem (FSx for Lustre on eks) can lose or
truncate data a client wrote but had not flushed before its node died, and a person or a sync
tool can copy a checkpoint directory half-way. `latest_complete` walks the steps newest first
and returns the first one that verifies, logging why each newer one was skipped; resuming from
the previous complete checkpoint costs one checkpoint interval, resuming from a corrupt one
costs the run.

No torch here: the trainer passes a `save(dir)` callable that writes its files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
LATEST = "latest"  # a hint for people and tools; the scan is the truth
STEP_PREFIX = "step-"
_TEMP_PREFIXES = (".tmp-step-", ".trash-step-", ".latest.tmp-")
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory; some filesystems refuse it for directories, the rename stays atomic."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_checkpoint(root: Path, step: int, save: Callable[[Path], None], meta: Mapping[str, Any]) -> Path:
    """Publish `root/step-<step>/` atomically: `save(tmpdir)` writes the files, then the manifest."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save(tmp)
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync_path(path)
        files[path.relative_to(tmp).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    if not files:
        raise ValueError(f"checkpoint step {step}: save() wrote no files")
    manifest = {"step": step, "files": files, "meta": dict(meta)}
    write_durable(tmp / MANIFEST, json.dumps(manifest, sort_keys=True, indent=1).encode())
    _fsync_path(tmp)
    if final.exists():  # the same step again (a restart re-ran it): replace it
        trash = root / f".trash-step-{step}-{os.getpid()}"
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_path(root)
    marker = root / f".latest.tmp-{os.getpid()}"
    write_durable(marker, f"{final.name}\n".encode())
    os.replace(marker, root / LATEST)
    _fsync_path(root)
    return final


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text())


def problem(path: Path, *, checksums: bool = True) -> str | None:
    """Why `path` is not a usable checkpoint, or None if it is (checksums off: sizes only)."""
    suffix = path.name.removeprefix(STEP_PREFIX)
    if not (path / MANIFEST).is_file():
        return "no manifest.json: half-written (or copied without it)"
    try:
        manifest = read_manifest(path)
        files = manifest["files"]
        step = manifest["step"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest.json ({exc})"
    if step != int(suffix):
        return f"manifest says step {step}, directory says {suffix}"
    for name, want in sorted(files.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, the manifest says {want['size']}: truncated or overwritten"
        if checksums and sha256_file(file) != want["sha256"]:
            return f"{name} fails its SHA-256 check: corrupt"
    return None


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every `step-<N>` directory, oldest first, complete or not."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        suffix = path.name.removeprefix(STEP_PREFIX)
        if path.name.startswith(STEP_PREFIX) and suffix.isdigit() and path.is_dir():
            found.append((int(suffix), path))
    return sorted(found)


def complete_checkpoints(root: Path, *, checksums: bool = False) -> list[tuple[int, Path]]:
    """Checkpoints whose manifest and file sizes agree (with `checksums`, their hashes too)."""
    return [(step, path) for step, path in step_dirs(root) if problem(path, checksums=checksums) is None]


def latest_complete(root: Path, report: Callable[[str], None] | None = None) -> tuple[int, Path] | None:
    """The newest checkpoint that verifies; each newer one skipped is reported with its reason."""
    say = report or log.warning
    for step, path in reversed(step_dirs(root)):
        why = problem(path)
        if why is None:
            return step, path
        say(f"checkpoint {path.name} skipped: {why}")
    return None


def clean_partial(root: Path) -> None:
    """Remove temp dirs a killed writer left behind (never a published step-<N>)."""
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(_TEMP_PREFIXES):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; delete older ones and incomplete ones below them."""
    complete = complete_checkpoints(root)
    if len(complete) <= keep:
        return
    oldest_kept = complete[-keep][0]
    for step, path in step_dirs(root):
        if step < oldest_kept:
            shutil.rmtree(path, ignore_errors=True)
