"""Airflow's Role in llm-training grants exactly the verbs the DAG code calls.

Two sources, both read: the project's own code (include/, plugins/, dags/), scanned for Kubernetes
client calls; and the calls the provider's operators make on our behalf (KubernetesJobOperator,
KubernetesPodOperator, their triggers), listed below and each checked to still exist in the
installed provider's source, so an upgrade that changes them fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import airflow.providers.cncf.kubernetes as provider
import yaml

from tests.k8s_schemas import REPO_ROOT

PROVIDER = Path(provider.__file__).parent
SERVING = REPO_ROOT / "include" / "serving"
RESOURCES = {"job": ("batch", "jobs"), "pod": ("", "pods"), "service": ("", "services"), "event": ("", "events"),
             "network_policy": ("networking.k8s.io", "networkpolicies")}
VERBS = {"create": "create", "read": "get", "list": "list", "patch": "patch", "delete": "delete",
         "replace": "update"}
# A call or a reference to the client method (`for delete in (api.delete_namespaced_x, ...)`).
CALL = re.compile(r"\b(create|read|list|patch|delete|replace)_namespaced_([a-z_]+?)(_status|_log)?\b(?=\s*[(,)])")
# Provider hook helpers our code calls, and the client call behind each.
HOOK_HELPERS = {"get_job_status": "read_namespaced_job_status(", "get_pod": "read_namespaced_pod("}
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
    ("hooks/kubernetes.py", "read_namespaced_job_status(", "the Job trigger polls the Job"),
    ("operators/job.py", "delete_namespaced_job(", "on_kill deletes the Job"),
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


def project_calls() -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for root in ("include", "plugins", "dags"):
        for path in (REPO_ROOT / root).rglob("*.py"):
            if SERVING in path.parents:
                continue  # llm-serving's own Role is checked against the rollout's calls (test_serving_k8s)
            text = path.read_text()
            found |= {_permission(m.group(0)) for m in CALL.finditer(text)}
            found |= {_permission(call) for helper, call in HOOK_HELPERS.items()
                      if re.search(rf"\bhook\.{helper}\(", text)}
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
    assert ("batch", "jobs", "create") in calls and ("", "services", "create") in calls
    assert ("networking.k8s.io", "networkpolicies", "delete") in calls
    assert ("batch", "jobs/status", "get") in calls and ("", "pods", "list") in calls


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
