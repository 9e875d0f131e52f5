"""The router seam: read and write the model's HTTPRoute.

Every platform holds the same `gateway.networking.k8s.io/v1` HTTPRoute object with a
`metadata.resourceVersion` and refuses a write made from a stale read (`Conflict`); `update`
re-reads and re-applies the edit on conflict, the optimistic concurrency the Kubernetes API gives.
The implementations are the platforms' (include/platforms/<name>/router.py).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from include.errors import Conflict
from include.serving import route as routes

log = logging.getLogger(__name__)
MAX_CONFLICT_RETRIES = 5


class Router(ABC):
    namespace: str

    @abstractmethod
    def get(self, name: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Write `obj`; raise Conflict when its resourceVersion is not the stored one."""

    def update(self, name: str, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Read, edit, write; on conflict read again and redo the edit (at most a few times)."""
        for attempt in range(MAX_CONFLICT_RETRIES):
            current = self.get(name)
            if current is None:
                raise routes.RouteError(f"HTTPRoute {self.namespace}/{name} does not exist")
            new = edit(current)
            if new == current:
                return current
            try:
                return self.replace(new)
            except Conflict:
                log.info("HTTPRoute %s changed under us (attempt %d): re-reading", name, attempt + 1)
        raise Conflict(f"HTTPRoute {self.namespace}/{name}: still conflicting after {MAX_CONFLICT_RETRIES} tries")

    def reference_grants(self, namespace: str) -> list[dict[str, Any]]:
        """The ReferenceGrants in `namespace`: what lets the route refer to a backend there. A platform
        without them has none, so the rollout refuses every cross-namespace backendRef on it."""
        return []

    def apply_backends(self, obj: Mapping[str, Any]) -> None:  # noqa: B027 - local only
        """Make the data plane follow the route (local: Envoy); the eks gateway does it itself."""
