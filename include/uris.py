"""The one rule for URIs a user value can reach: file:// or s3://, absolute, no control characters,
no '..' segments. Shared by the trainer's plan and the evaluator's job, which run in images
without Airflow, so this stays plain Python."""

from __future__ import annotations

import re
from typing import Any

URI_SCHEMES = ("file", "s3")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def uri_problem(value: Any) -> str | None:
    """Why `value` is not an acceptable storage URI, or None when it is."""
    if not isinstance(value, str):
        return "expected a URI string"
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in URI_SCHEMES or not rest.strip("/"):
        return f"expected a URI with scheme {' or '.join(URI_SCHEMES)}://"
    if scheme == "file" and not rest.startswith("/"):
        return "a file:// URI needs an absolute path (file:///...)"
    if CONTROL_RE.search(value):
        return "control characters are not allowed"
    if ".." in rest.split("/"):
        return "'..' path segments are not allowed"
    return None
