"""The storage adapter for Airflow tasks: ObjectStoragePath with the project's connection.

Publishing follows the package's one contract (include/storage/__init__.py): a directory is
visible to readers only once its `manifest.json` exists. Locally the staged directory, manifest
included, is renamed into place (`files.swap_into_place`); on S3 the data objects are copied first
and the manifest last, so a reader that trusts only manifests never sees half a dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from include.storage.files import swap_into_place

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

MANIFEST = "manifest.json"


def storage_path(uri: str, conn_id: str | None = None) -> ObjectStoragePath:
    from airflow.sdk import ObjectStoragePath

    if conn_id is None and uri.startswith("s3://"):
        from include.settings import get_settings

        conn_id = get_settings().aws_conn_id
    return ObjectStoragePath(uri, conn_id=conn_id)


def on_local_disk(path: ObjectStoragePath) -> bool:
    return path.protocol in ("file", "local")


def remove_tree(path: ObjectStoragePath) -> None:
    if path.exists():
        path.fs.rm(path.path, recursive=True)


def read_json(path: ObjectStoragePath) -> dict:
    return json.loads(path.read_bytes())


def is_published(directory: ObjectStoragePath) -> bool:
    return (directory / MANIFEST).exists()


def publish_staged(staging: ObjectStoragePath, final: ObjectStoragePath, manifest: dict) -> bool:
    """Make `staging` visible as `final`; False (and nothing rewritten) if `final` already is."""
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    if is_published(final):
        remove_tree(staging)
        return False
    remove_tree(final)  # an earlier publish that died before its manifest: invisible, start over
    if on_local_disk(staging) and on_local_disk(final):
        (staging / MANIFEST).write_bytes(body)
        # False: a concurrent publisher of the same content won the rename
        return swap_into_place(Path(staging.path), Path(final.path), replace=False)
    for item in sorted(staging.iterdir(), key=lambda p: p.name):
        item.copy(final / item.name)
    (final / MANIFEST).write_bytes(body)
    remove_tree(staging)
    return True
