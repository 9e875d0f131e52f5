"""The storage core: read, write, stage and publish on file:// or s3://, without Airflow.

Local paths are used directly (atomic writes through a temp file and a rename); anything else
goes through fsspec. Inside Airflow the filesystem comes from the ObjectStoragePath adapter, so
the project's AWS connection applies; the images have no Airflow and use the pod's identity.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_PLAIN_FSSPEC = False


def use_plain_fsspec() -> None:
    """Never route through Airflow in this process: a container entrypoint (trainer ranks are
    processes of their own even locally; they get credentials from the environment, not a task)."""
    global _PLAIN_FSSPEC
    _PLAIN_FSSPEC = True


def _airflow_storage() -> bool:
    if _PLAIN_FSSPEC:
        return False
    try:
        import airflow.sdk  # noqa: F401
    except ImportError:
        return False
    return True


def fs_and_path(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a file:// or s3:// URI."""
    if _airflow_storage():  # the project's AWS connection applies (objectstore.storage_path builds the same)
        from airflow.sdk import ObjectStoragePath

        from include.settings import get_settings

        p = ObjectStoragePath(uri, conn_id=get_settings().aws_conn_id if uri.startswith("s3://") else None)
        return p.fs, p.path
    import fsspec

    return fsspec.core.url_to_fs(uri)


def local_path(uri: str) -> Path | None:
    return Path(uri[len("file://"):]) if uri.startswith("file://") else None


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def _modified(info: Mapping[str, Any]) -> float | None:
    """An fsspec entry's modification time as epoch seconds (local `mtime`, S3 `LastModified`)."""
    from datetime import UTC, datetime

    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return None


def walk(uri: str) -> list[tuple[str, int, float | None]]:
    """Every file (object) under `uri`: (path relative to it, size in bytes, modified time or None)."""
    fs, root = fs_and_path(uri)
    root = root.rstrip("/")
    if not fs.exists(root):
        return []
    found = fs.find(root, detail=True)
    return [(path[len(root) + 1:], int(info.get("size") or 0), _modified(info))
            for path, info in sorted(found.items()) if path.startswith(root + "/")]


def remove_tree(uri: str) -> None:
    """Delete a directory (prefix) and everything under it; nothing there is fine."""
    local = local_path(uri)
    if local is not None:
        if local.is_dir():
            shutil.rmtree(local)
        else:
            local.unlink(missing_ok=True)
        return
    fs, path = fs_and_path(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    local = local_path(uri)
    if local is not None:
        return local.read_bytes()
    fs, path = fs_and_path(uri)
    return fs.cat_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write one object; locally through a temp file and a rename, so a reader never sees half of it."""
    local = local_path(uri)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", dir=local.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    fs, path = fs_and_path(uri)
    fs.pipe_file(path, data)


def exists(uri: str) -> bool:
    local = local_path(uri)
    if local is not None:
        return local.exists()
    fs, path = fs_and_path(uri)
    return fs.exists(path)


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode())


def write_jsonl(uri: str, rows: Iterable[Mapping[str, Any]]) -> None:
    body = "".join(json.dumps(dict(r), sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n" for r in rows)
    write_bytes(uri, body.encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_bytes(uri).decode("utf-8").splitlines() if line.strip()]


def stage_dir(uri: str, dest: Path, names: Iterable[str] | None = None) -> Path:
    """A local directory with the files under `uri`: the directory itself for file://, else a copy
    in `dest` (only `names`, when given, and those that exist)."""
    local = local_path(uri)
    if local is not None:
        if not local.is_dir():
            raise FileNotFoundError(f"{uri}: no such directory")
        return local
    fs, root = fs_and_path(uri)
    root = root.rstrip("/")
    if names is None:
        files = [f for f in fs.find(root) if not f.endswith("/")]
    else:
        files = [f"{root}/{n}" for n in names if fs.exists(f"{root}/{n}")]
    if not files:
        raise FileNotFoundError(f"{uri}: no files")
    dest.mkdir(parents=True, exist_ok=True)
    for remote in files:
        target = dest / remote[len(root):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))
    return dest


def swap_into_place(staging: Path, final: Path, *, replace: bool) -> bool:
    """Rename the complete directory `staging` to `final` (same filesystem): the one local publish step.

    replace=False: an existing `final` wins (a concurrent publisher of the same content); staging
    is dropped and False returned. replace=True: the old `final` is moved aside first, then removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if replace and final.exists():
        trash = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(trash)
        staging.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
        return True
    try:
        os.rename(staging, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return True


def publish_dir(local_dir: Path, uri: str) -> None:
    """Copy a finished local directory to `uri`, replacing what was there (the contract above:
    one rename locally; on S3 object by object, the caller's marker object written after)."""
    local = local_path(uri)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
        shutil.copytree(local_dir, staging, dirs_exist_ok=True)
        swap_into_place(staging, local, replace=True)
        return
    fs, root = fs_and_path(uri)
    root = root.rstrip("/")
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{root}/{path.relative_to(local_dir).as_posix()}")


def publish_file(local_file: Path, uri: str) -> None:
    """One object, atomically replaced (a marker: write it after what it vouches for)."""
    write_bytes(uri, Path(local_file).read_bytes())


def write_result(result: Mapping[str, Any], path: str | Path) -> Path:
    """A container's result file (what the pod's XCom or the local launcher reads), written atomically."""
    path = Path(path)
    write_bytes(path.resolve().as_uri(), json.dumps(result, sort_keys=True).encode())
    return path
