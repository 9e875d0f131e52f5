"""checkov on the kustomize output and the rendered objects (training and serving): every failure left is
in README's Security table with its reason, and the table lists nothing that no longer fails."""

from __future__ import annotations

import fnmatch
import re
import sys

import pytest

from tests.k8s_schemas import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import checkov_scan  # noqa: E402


def documented() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Security", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) < 4 or not cells[1].strip().startswith("CKV"):
            continue
        for check in re.findall(r"CKV_K8S_\d+", cells[1]):
            rows += [(check, pattern) for pattern in re.findall(r"`([^`]+)`", cells[2])]
    return rows


def test_every_checkov_failure_is_documented_and_every_entry_still_fails():
    if not checkov_scan.CHECKOV.is_file():
        pytest.fail("checkov is missing: run `make install` (it runs scripts/install_checkov.sh)")
    failed = checkov_scan.scan()
    rows = documented()
    assert rows, "README's Security table is missing"
    undocumented = [f for f in failed if not any(f[0] == c and fnmatch.fnmatch(f[1], p) for c, p in rows)]
    assert not undocumented, f"failures without a reason in README's Security section: {undocumented}"
    stale = [r for r in rows if not any(f[0] == r[0] and fnmatch.fnmatch(f[1], r[1]) for f in failed)]
    assert not stale, f"README lists failures checkov no longer reports: {stale}"
    workloads = [f for f in failed if "/llm-training/" in f[1]]
    assert {c for c, _ in workloads} <= {"CKV_K8S_11", "CKV_K8S_35", "CKV_K8S_8", "CKV_K8S_9"}
    serving = [f for f in failed if "/llm-serving/" in f[1]]
    assert {c for c, _ in serving} <= {"CKV_K8S_11"}


def test_the_scan_covers_the_serving_objects():
    """What the rollout's deploy creates is scanned: a version's Deployment (full and LoRA), Service and PDB."""
    rendered = checkov_scan.objects()["rendered.yaml"]
    kinds = {(d["kind"], d["metadata"]["namespace"]) for d in rendered}
    assert {("Deployment", "llm-serving"), ("Service", "llm-serving"),
            ("PodDisruptionBudget", "llm-serving")} <= kinds
    inits = [d for d in rendered if d["kind"] == "Deployment" and d["spec"]["template"]["spec"].get("initContainers")]
    assert inits, "the LoRA Deployment (with its adapter fetcher) is not scanned"
