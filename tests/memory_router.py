"""An HTTPRoute store with the API server's resourceVersion rule, for the rollout's unit tests:
it records every successful write; `grants` are the ReferenceGrants per namespace."""

from __future__ import annotations

import copy

from include.errors import Conflict
from include.serving.router import Router


class MemoryRouter(Router):
    def __init__(self, namespace: str = "llm-serving", grants: dict[str, list] | None = None):
        self.namespace = namespace
        self.objs: dict[str, dict] = {}
        self.writes: list[dict] = []
        self.grants = grants or {}

    def get(self, name):
        return copy.deepcopy(self.objs.get(name))

    def create(self, obj):
        if obj["metadata"]["name"] in self.objs:
            raise Conflict("exists")
        obj = copy.deepcopy(dict(obj))
        obj["metadata"]["resourceVersion"] = "1"
        self.objs[obj["metadata"]["name"]] = obj
        return obj

    def replace(self, obj):
        current = self.objs[obj["metadata"]["name"]]
        if obj["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise Conflict("stale")
        obj = copy.deepcopy(dict(obj))
        obj["metadata"]["resourceVersion"] = str(int(current["metadata"]["resourceVersion"]) + 1)
        self.objs[obj["metadata"]["name"]] = obj
        self.writes.append(copy.deepcopy(obj))
        return obj

    def reference_grants(self, namespace):
        return copy.deepcopy(self.grants.get(namespace, []))
