"""Container image references: tag or digest, and the pull policy that follows from it.

Deploy with digests (`registry/name@sha256:<64 hex>`): a digest names one immutable image, so
`IfNotPresent` is both safe and fast. A tag can be moved to another image, so a tagged reference
is pulled `Always` and every node runs what the tag names now, not what it cached.
"""

from __future__ import annotations

import re

# registry/path[:tag][@sha256:digest], after the distribution reference grammar (lower-case path).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
REFERENCE = re.compile(
    rf"(?P<name>{_DOMAIN}{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>[\w][\w.-]{{0,127}}))?(?:@(?P<digest>sha256:[0-9a-f]{{64}}))?"
)


def check_reference(field: str, value: object) -> str:
    """The reference itself, or ValueError naming the field and the accepted forms."""
    if not isinstance(value, str) or not (m := REFERENCE.fullmatch(value)) or not (m["tag"] or m["digest"]):
        raise ValueError(f"{field}={value!r}: expected an image reference 'registry/name@sha256:<64 hex>' "
                         "(recommended) or 'registry/name:tag'")
    return value


def has_digest(reference: str) -> bool:
    m = REFERENCE.fullmatch(reference)
    return bool(m and m["digest"])


def pull_policy(reference: str) -> str:
    """IfNotPresent for a digest (immutable), Always for a tag (mutable)."""
    return "IfNotPresent" if has_digest(reference) else "Always"


def registry(reference: str) -> str:
    """The registry host of a reference ('docker.io' when it names none)."""
    first, _, rest = reference.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else "docker.io"
