"""The eks client's retry policy is the provider's, except that 409 is an answer: a transient
failure is retried until it passes, a conflict is raised at once as the project's Conflict."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from include.errors import Conflict
from include.platforms.eks.kube import Kube


class Hook:
    api_client = client.ApiClient()


def flaky(monkeypatch, failures: list[int]) -> list[str]:
    calls = []

    def get(self, group, version, plural, name, **kwargs):
        calls.append(name)
        if failures:
            raise ApiException(status=failures.pop(0), reason="injected")
        return {"metadata": {"name": name}}

    monkeypatch.setattr(client.CustomObjectsApi, "get_cluster_custom_object", get)
    return calls


def test_a_transient_failure_is_retried_until_it_passes(monkeypatch):
    calls = flaky(monkeypatch, [503, 429])
    assert Kube(hook=Hook()).get("NodePool", "gpu-experiment-pool") == {"metadata": {"name": "gpu-experiment-pool"}}
    assert len(calls) == 3


def test_a_conflict_is_not_retried(monkeypatch):
    calls = flaky(monkeypatch, [409, 409])
    with pytest.raises(Conflict, match="get NodePool gpu-experiment-pool: injected"):
        Kube(hook=Hook()).get("NodePool", "gpu-experiment-pool")
    assert len(calls) == 1
