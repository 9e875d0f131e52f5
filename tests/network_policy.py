"""Enough of NetworkPolicy semantics to ask "may pod A reach pod B (or a CIDR) on port P?" offline.

Policies are additive: traffic is allowed in a direction when no policy selecting the pod has that
policyType (not isolated), or when some rule of a policy that selects it admits the peer and port.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """A LabelSelector: {} selects everything; None selects nothing."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    namespace: str = ""
    labels: dict = field(default_factory=dict)
    namespace_labels: dict = field(default_factory=dict)
    ip: str | None = None  # set for a destination outside the cluster

    @staticmethod
    def pod(namespace: str, labels: dict) -> Endpoint:
        return Endpoint(namespace, dict(labels), {"kubernetes.io/metadata.name": namespace})


def _peer_admits(peer: dict, policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(c) for c in block.get("except", []))
    if other.ip is not None:
        return False
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    ns_ok = selects(ns_sel, other.namespace_labels) if ns_sel is not None else other.namespace == policy_ns
    return ns_ok and (pod_sel is None or selects(pod_sel, other.labels))


def _port_admits(ports: list[dict] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == protocol and ("port" not in p or p["port"] == port
                                                           or (p.get("endPort") and p["port"] <= port <= p["endPort"]))
               for p in ports)


def allowed(policies: list[dict], pod: Endpoint, other: Endpoint, direction: str, port: int,
            protocol: str = "TCP") -> bool:
    """Is traffic in `direction` ("Ingress": other -> pod, "Egress": pod -> other) allowed at pod's end?"""
    mine = [p for p in policies if p["metadata"]["namespace"] == pod.namespace
            and selects(p["spec"].get("podSelector", {}), pod.labels)
            and direction in p["spec"].get("policyTypes", ["Ingress"])]
    if not mine:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in mine:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_admits(p, policy["metadata"]["namespace"], other) for p in peers)) \
                    and _port_admits(rule.get("ports"), port, protocol):
                return True
    return False


def connects(policies: list[dict], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """Both ends must allow it: the source's egress and (for a pod) the destination's ingress."""
    out = allowed(policies, src, dst, "Egress", port, protocol)
    return out and (dst.ip is not None or allowed(policies, dst, src, "Ingress", port, protocol))
