"""Airflow's Role in llm-training grants exactly the verbs the DAG code calls.

Two sources, both read: the project's own code (include/, plugins/, dags/), scanned for the verbs
it calls on the eks platform's one client (include/platforms/eks/kube.py: `kube.find("JobSet", ...)`,
mapped through its KINDS table), and for any Kubernetes client call or provider hook helper called
directly; and the calls the provider's operators make on our behalf (KubernetesPodOperator and its
trigger, and the custom-object helpers `Kube` uses for the JobSet), listed below and each checked to
still exist in the installed provider's source, so an upgrade that changes them fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import airflow.providers.cncf.kubernetes as provider
import yaml

from include.platforms.eks.kube import KINDS
from tests.k8s_schemas import REPO_ROOT

PROVIDER = Path(provider.__file__).parent
SERVING = REPO_ROOT / "include" / "serving"
# The eks serving seams work in llm-serving, under its own Role (checked in test_serving_k8s); the
# client itself serves every seam, so its calls are counted where its verbs are called.
NOT_LLM_TRAINING = {SERVING, *(REPO_ROOT / "include" / "platforms" / "eks" / f for f in ("servers.py", "router.py")),
                    REPO_ROOT / "include" / "platforms" / "eks" / "kube.py"}
# The only namespaced custom objects the DAGs touch in llm-training are the training JobSets
# (the HTTPRoutes live in llm-serving, under its own Role).
RESOURCES = {"job": ("batch", "jobs"), "pod": ("", "pods"), "service": ("", "services"), "event": ("", "events"),
             "network_policy": ("networking.k8s.io", "networkpolicies"),
             "custom_object": ("jobset.x-k8s.io", "jobsets")}
VERBS = {"create": "create", "read": "get", "get": "get", "list": "list", "patch": "patch", "delete": "delete",
         "replace": "update"}
# A call or a reference to the client method (`for delete in (api.delete_namespaced_x, ...)`).
CALL = re.compile(r"\b(create|read|get|list|patch|delete|replace)_namespaced_([a-z_]+?)(_status|_log)?\b(?=\s*[(,)])")
# The client's verbs (`Kube.<verb>("<Kind>", ...)`, or the bound method handed on) and the API verb
# of each; `scale` patches the kind's scale subresource, `pod_log` reads a pod's log.
KUBE_VERB = re.compile(r'\bkube\.(get|find|list|create|ensure|replace|patch|scale|delete)\b\W{1,3}"(\w+)"')
KUBE_VERBS = {"get": "get", "find": "get", "list": "list", "create": "create", "ensure": "create",
              "replace": "update", "patch": "patch", "scale": "patch", "delete": "delete"}
POD_LOG = re.compile(r"\bkube\.pod_log\(")
# Provider hook helpers our code calls, and the client call behind each.
HOOK_HELPERS = {"get_job_status": "read_namespaced_job_status(", "get_pod": "read_namespaced_pod(",
                "create_custom_object": "create_namespaced_custom_object(",
                "get_custom_object": "get_namespaced_custom_object(",
                "delete_custom_object": "delete_namespaced_custom_object("}
# (provider file, the call as written there, why our DAGs reach it)
PROVIDER_CALLS = [
    ("utils/pod_manager.py", "create_namespaced_pod(", "KubernetesPodOperator creates the evaluator pod"),
    ("utils/pod_manager.py", "read_namespaced_pod(", "both operators follow their pods"),
    ("operators/pod.py", "list_namespaced_pod(", "KubernetesPodOperator finds its pod to re-attach"),
    ("operators/pod.py", "patch_namespaced_pod(", "KubernetesPodOperator labels a finished pod as checked"),
    ("utils/pod_manager.py", "delete_namespaced_pod(", "delete_succeeded_pod"),
    ("utils/pod_manager.py", "read_namespaced_pod_log(", "get_logs"),
    ("hooks/kubernetes.py", "read_namespaced_pod_log(", "the triggers read logs asynchronously"),
    ("utils/pod_manager.py", "list_namespaced_event(", "log_events_on_failure"),
    ("hooks/kubernetes.py", "v1_api.list_namespaced_event,", "WATCH: the pod trigger watches events"),
    # The custom-object helpers our code calls, each a namespaced CustomObjectsApi call.
    ("hooks/kubernetes.py", "create_namespaced_custom_object(", "the training operator creates the JobSet"),
    ("hooks/kubernetes.py", "get_namespaced_custom_object(", "re-attach, follow, teardown read the JobSet"),
    ("hooks/kubernetes.py", "delete_namespaced_custom_object(", "on_kill, relaunch, teardown delete the JobSet"),
]


def _permission(call: str) -> tuple[str, str, str]:
    m = CALL.search(call if call.rstrip().endswith(("(", ",", ")")) else f"{call}(")
    assert m, call
    action, kind, sub = m.groups()
    group, resource = RESOURCES[kind]
    if sub == "_status":
        resource += "/status"
    elif sub == "_log":
        resource += "/log"
    return group, resource, VERBS[action]


def _llm_training_sources() -> list[tuple[Path, str]]:
    """The project's modules whose Kubernetes calls land in llm-training (or are cluster-scoped)."""
    return [(path, path.read_text()) for root in ("include", "plugins", "dags")
            for path in sorted((REPO_ROOT / root).rglob("*.py"))
            if not (NOT_LLM_TRAINING & {path, *path.parents})]


def _kube_permission(verb: str, kind: str) -> tuple[str, str, str] | None:
    """(apiGroup, resource, verb) of a client verb on a kind; None for a cluster-scoped kind (the
    off-hours ClusterRole's, checked in test_offhours_cleanup)."""
    k = KINDS[kind]
    if not k.namespaced:
        return None
    return k.group, k.plural + ("/scale" if verb == "scale" else ""), KUBE_VERBS[verb]


def project_calls() -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for _, text in _llm_training_sources():
        found |= {_permission(m.group(0)) for m in CALL.finditer(text)}
        found |= {_permission(call) for helper, call in HOOK_HELPERS.items()
                  if re.search(rf"\bhook\.{helper}\(", text)}
        found |= {p for verb, kind in KUBE_VERB.findall(text) if (p := _kube_permission(verb, kind))}
        if POD_LOG.search(text):
            found.add(("", "pods/log", "get"))
    return found


def provider_calls() -> set[tuple[str, str, str]]:
    found = set()
    for file, call, why in PROVIDER_CALLS:
        assert call in (PROVIDER / file).read_text(), f"provider {file} no longer calls {call} ({why})"
        group, resource, verb = _permission(call)
        found.add((group, resource, "watch" if why.startswith("WATCH") else verb))
    return found


def role_grants() -> set[tuple[str, str, str]]:
    docs = yaml.safe_load_all((REPO_ROOT / "k8s" / "training" / "rbac.yaml").read_text())
    role = next(d for d in docs if d and d["kind"] == "Role")
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def test_the_project_code_calls_are_found():
    calls = project_calls()
    jobsets = {(g, r, v) for g, r, v in calls if r == "jobsets"}
    assert jobsets == {("jobset.x-k8s.io", "jobsets", v) for v in ("create", "get", "list", "delete")}
    assert ("networking.k8s.io", "networkpolicies", "delete") in calls
    assert ("", "pods", "list") in calls and ("", "pods/log", "get") in calls
    assert not {r for _, r, _ in calls} & {"jobs", "jobs/status", "services"}  # the JobSet controller's now


def test_the_custom_objects_in_llm_training_are_jobsets():
    """The RESOURCES mapping above holds: every namespaced custom-object call outside the serving seams
    names the JobSet plural, or through the client, the JobSet kind."""
    used = set()
    for path, text in _llm_training_sources():
        for verb, kind in KUBE_VERB.findall(text):
            used.add(kind)
            if KINDS[kind].custom and KINDS[kind].namespaced:
                assert kind == "JobSet", (path, verb, kind)
        if re.search(r"_namespaced_custom_object|hook\.\w+_custom_object\(", text):
            assert "JOBSET_PLURAL" in text, path
    assert "JobSet" in used


def test_role_grants_exactly_what_the_code_calls():
    needed = project_calls() | provider_calls()
    granted = role_grants()
    assert not needed - granted, f"the code calls these but the Role does not grant them: {sorted(needed - granted)}"
    assert not granted - needed, f"granted but never called: {sorted(granted - needed)}"


def test_no_wildcards_secrets_or_exec():
    text = (REPO_ROOT / "k8s" / "training" / "rbac.yaml").read_text()
    grants = role_grants()
    assert "*" not in {v for *_, v in grants} | {r for _, r, _ in grants}
    assert not {r for _, r, _ in grants} & {"secrets", "configmaps", "pods/exec", "serviceaccounts", "roles",
                                            "rolebindings"}
    assert "ClusterRole" not in text
