"""The eks platform's one Kubernetes client: every object its seams touch, through the provider's hook.

One table says where each kind lives (API group, version, plural, namespaced or not); one set of
verbs (get, list, create, replace, patch, delete, scale) works for all of them and answers in
plain dicts, the way the objects are written in k8s/ and rendered in include/. The API's refusals
come back as the project's own errors (`include.errors.NotFound`, `Conflict`, `Forbidden`), naming
the verb and the object, and transient failures (429, 5xx, a lost connection) are retried with the
provider's own policy (`generic_api_retry`'s attempts, backoff and Retry-After), except 409, which
is an answer here, not a blip.

The connection is the Airflow connection `settings.kubernetes_conn_id`: in-cluster, Airflow's
ServiceAccount (its Roles in k8s/serving/rbac.yaml, k8s/training/rbac.yaml and
k8s/airflow/offhours-rbac.yaml say what it may do).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import tenacity
from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import (
    API_RETRIES,
    TRANSIENT_CONNECTION_ERRORS,
    TRANSIENT_STATUS_CODES,
    WaitRetryAfterOrExponential,
)
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from include.errors import Conflict, Forbidden, NotFound
from include.training.k8s_job import JOBSET_GROUP, JOBSET_PLURAL, JOBSET_VERSION


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool = True
    api: str = ""  # built-in kinds: the client's API class and its method suffix
    suffix: str = ""

    @property
    def custom(self) -> bool:
        return not self.api


KINDS = {
    "JobSet": Kind(JOBSET_GROUP, JOBSET_VERSION, JOBSET_PLURAL),
    "HTTPRoute": Kind("gateway.networking.k8s.io", "v1", "httproutes"),
    "ReferenceGrant": Kind("gateway.networking.k8s.io", "v1", "referencegrants"),
    "NodePool": Kind("karpenter.sh", "v1", "nodepools", namespaced=False),
    "NodeClaim": Kind("karpenter.sh", "v1", "nodeclaims", namespaced=False),
    "Deployment": Kind("apps", "v1", "deployments", api="AppsV1Api", suffix="deployment"),
    "Service": Kind("", "v1", "services", api="CoreV1Api", suffix="service"),
    "Pod": Kind("", "v1", "pods", api="CoreV1Api", suffix="pod"),
    "PodDisruptionBudget": Kind("policy", "v1", "poddisruptionbudgets", api="PolicyV1Api",
                                suffix="pod_disruption_budget"),
    "NetworkPolicy": Kind("networking.k8s.io", "v1", "networkpolicies", api="NetworkingV1Api",
                          suffix="network_policy"),
}


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status in TRANSIENT_STATUS_CODES and exc.status != 409
    return isinstance(exc, TRANSIENT_CONNECTION_ERRORS)


_retry = tenacity.retry(stop=tenacity.stop_after_attempt(API_RETRIES), wait=WaitRetryAfterOrExponential(),
                        retry=tenacity.retry_if_exception(_transient), reraise=True)


class Kube:
    def __init__(self, conn_id: str = "kubernetes_default", hook: Any = None):
        self.conn_id = conn_id
        if hook is not None:
            self.__dict__["hook"] = hook

    @cached_property
    def hook(self) -> Any:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        return KubernetesHook(conn_id=self.conn_id)

    @property
    def api_client(self) -> client.ApiClient:
        return self.hook.api_client

    # ---- the verbs ----
    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """The object; NotFound when there is none."""
        k = KINDS[kind]
        if k.custom and k.namespaced:
            return self._call("get", kind, name, namespace, self.hook.get_custom_object, group=k.group,
                              version=k.version, plural=k.plural, name=name, namespace=namespace)
        return self._verb("get", kind, name, namespace)

    def find(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        try:
            return self.get(kind, name, namespace)
        except NotFound:
            return None

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[dict[str, Any]]:
        out = self._verb("list", kind, "", namespace, label_selector=selector)
        return list(out.get("items") or [])

    def create(self, kind: str, body: Mapping[str, Any] | Any, namespace: str | None = None) -> dict[str, Any]:
        """Create; Conflict when an object of that name exists."""
        k = KINDS[kind]
        name = _name(body)
        if k.custom and k.namespaced:
            return self._call("create", kind, name, namespace, self.hook.create_custom_object, group=k.group,
                              version=k.version, plural=k.plural, body=dict(body), namespace=namespace)
        return self._verb("create", kind, name, namespace, body=body)

    def ensure(self, kind: str, body: Mapping[str, Any] | Any, namespace: str | None = None) -> bool:
        """Create unless it exists (a retry of the same step); True when this call created it."""
        try:
            self.create(kind, body, namespace)
        except Conflict:
            return False
        return True

    def replace(self, kind: str, body: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Write the whole object; Conflict when its resourceVersion is stale."""
        return self._verb("replace", kind, _name(body), namespace, body=dict(body))

    def patch(self, kind: str, name: str, patch: Mapping[str, Any] | list[dict[str, Any]],
              namespace: str | None = None) -> dict[str, Any]:
        """A mapping: a merge patch (strategic for built-in kinds). A list of operations: a JSON patch,
        for built-in kinds only (it can replace a whole field, and a `resourceVersion` set in it makes
        the write conditional). NotFound when there is no such object, Conflict when that
        resourceVersion is stale."""
        body = [dict(op) for op in patch] if isinstance(patch, list) else dict(patch)
        return self._verb("patch", kind, name, namespace, body=body)

    def scale(self, kind: str, name: str, replicas: int, namespace: str | None = None) -> dict[str, Any]:
        """Set the scale subresource's replicas (the Role grants `patch` on `deployments/scale` only)."""
        k = KINDS[kind]
        api = getattr(client, k.api)(self.api_client)
        call = getattr(api, f"patch_namespaced_{k.suffix}_scale")
        out = self._call("scale", kind, name, namespace, call, name, namespace, {"spec": {"replicas": replicas}})
        return self.api_client.sanitize_for_serialization(out)

    def delete(self, kind: str, name: str, namespace: str | None = None, *,
               propagation: str | None = None) -> bool:
        """Delete; False when it was already gone."""
        k = KINDS[kind]
        kwargs = {"propagation_policy": propagation} if propagation else {}
        try:
            if k.custom and k.namespaced:
                self._call("delete", kind, name, namespace, self.hook.delete_custom_object, group=k.group,
                           version=k.version, plural=k.plural, name=name, namespace=namespace, **kwargs)
            else:
                self._verb("delete", kind, name, namespace, **kwargs)
        except NotFound:
            return False
        return True

    def pod_log(self, name: str, namespace: str, container: str, tail_lines: int) -> str:
        """The last lines of a container's log, decoded (the raw body: the client turns a preloaded
        plain-text log into the repr of its bytes)."""
        response = self._call("read log of", "Pod", name, namespace, self.hook.core_v1_client.read_namespaced_pod_log,
                              name=name, namespace=namespace, container=container, tail_lines=tail_lines,
                              _preload_content=False)
        try:
            data = getattr(response, "data", response)
        finally:
            getattr(response, "release_conn", lambda: None)()
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data or "")

    # ---- plumbing ----
    def _verb(self, verb: str, kind: str, name: str, namespace: str | None, body: Any = None,
              **kwargs: Any) -> dict[str, Any]:
        """The client's method for (verb, kind), called with its positional arguments in its order."""
        k = KINDS[kind]
        scope = "namespaced" if k.namespaced else "cluster"
        named = [name] if verb not in ("list", "create") else []
        payload = [body] if verb in ("create", "replace", "patch") else []
        if k.custom:
            call = getattr(client.CustomObjectsApi(self.api_client), f"{verb}_{scope}_custom_object")
            args = [k.group, k.version, *([namespace] if k.namespaced else []), k.plural, *named, *payload]
        else:
            method = "read" if verb == "get" else verb
            call = getattr(getattr(client, k.api)(self.api_client),
                           f"{method}_namespaced_{k.suffix}" if k.namespaced else f"{method}_{k.suffix}")
            args = [*named, *([namespace] if k.namespaced else []), *payload]
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        out = self._call(verb, kind, name, namespace, call, *args, **kwargs)
        return out if isinstance(out, dict) else self.api_client.sanitize_for_serialization(out)

    def _call(self, verb: str, kind: str, name: str, namespace: str | None, call: Any, /, *args: Any,
              **kwargs: Any) -> Any:
        where = f"{kind} {namespace + '/' if namespace else ''}{name}".rstrip("/ ")
        # The hook's own custom-object methods carry the provider's retry already (get, delete) or
        # none, as the provider chose (create): not wrapped twice.
        retrying = call if getattr(call, "__self__", None) is self.hook else _retry(call)
        try:
            return retrying(*args, **kwargs)
        except ApiException as exc:
            detail = _reason(exc)
            if exc.status == 404:
                raise NotFound(f"{where}: not found ({detail})") from exc
            if exc.status == 409:
                raise Conflict(f"{verb} {where}: {detail}") from exc
            if exc.status == 403:
                raise Forbidden(f"{verb} {where}: forbidden for the connection {self.conn_id!r}'s identity "
                                f"({detail}); see its Role in k8s/") from exc
            raise


def _name(body: Mapping[str, Any] | Any) -> str:
    meta = body.get("metadata") if isinstance(body, Mapping) else body.metadata
    return (meta.get("name") if isinstance(meta, Mapping) else meta.name) or ""


def _reason(exc: ApiException) -> str:
    import json

    try:
        return json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)
