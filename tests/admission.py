"""Run a ValidatingAdmissionPolicy's CEL offline: match, matchConditions, variables, validations.

The expressions are evaluated by a real CEL implementation (common-expression-language), with the
API server's rules around them: an object is checked when a binding's namespace selector and the
policy's resource rules match and every matchCondition is true; a validation that is false, or
that fails to evaluate (failurePolicy: Fail), denies with its message.
"""

from __future__ import annotations

from dataclasses import dataclass

import cel

RESOURCES = {"Pod": ("", "pods"), "Service": ("", "services"), "Job": ("batch", "jobs"),
             "JobSet": ("jobset.x-k8s.io", "jobsets"),
             "NetworkPolicy": ("networking.k8s.io", "networkpolicies")}


@dataclass
class Admission:
    policy: dict
    binding: dict

    def matches(self, obj: dict, operation: str) -> bool:
        group, resource = RESOURCES[obj["kind"]]
        rules = self.policy["spec"]["matchConstraints"]["resourceRules"]
        if not any(group in r["apiGroups"] and resource in r["resources"] and operation in r["operations"]
                   for r in rules):
            return False
        labels = self.binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]
        namespace_labels = {"kubernetes.io/metadata.name": obj["metadata"].get("namespace", "")}
        return all(namespace_labels.get(k) == v for k, v in labels.items())

    def review(self, obj: dict, username: str, operation: str = "CREATE") -> list[str]:
        """The denial messages; [] means admitted."""
        if not self.matches(obj, operation):
            return []
        request = {"operation": operation, "userInfo": {"username": username}, "namespace":
                   obj["metadata"].get("namespace", "")}
        context = {"object": obj, "oldObject": None, "request": request, "variables": {}}
        for condition in self.policy["spec"].get("matchConditions", []):
            if not cel.evaluate(condition["expression"], context):
                return []
        for variable in self.policy["spec"].get("variables", []):
            context["variables"] = {**context["variables"],
                                    variable["name"]: cel.evaluate(variable["expression"], context)}
        denials = []
        for validation in self.policy["spec"]["validations"]:
            try:
                ok = cel.evaluate(validation["expression"], context)
            except Exception as exc:  # noqa: BLE001 - an evaluation error denies under failurePolicy Fail
                ok, validation = False, {**validation, "message": f"{validation['message']} (error: {exc})"}
            if ok is not True:
                denials.append(validation["message"])
        return denials
