"""Every Kubernetes API call the code makes is made at least once against the real control plane,
as the identity the code has on EKS (Airflow's ServiceAccount; the admin's setup calls do not count).

Runs in make test's serial part, after the parallel part has run tests/cluster with the calls
recorded to $LLMOPS_K8S_CALLS (scripts/test.sh sets it; k8s_calls.py records).
"""

from __future__ import annotations

import os

import k8s_calls
import pytest

pytestmark = pytest.mark.serial


def test_every_api_call_in_the_code_ran_against_the_control_plane():
    path = os.environ.get("LLMOPS_K8S_CALLS")
    made = k8s_calls.read(path) if path else []
    assert made, ("no recorded calls: run the whole suite with `make test` (scripts/test.sh records the "
                  "cluster tests' calls to $LLMOPS_K8S_CALLS before this check)")
    in_code = k8s_calls.calls_in_code()
    assert in_code, "the scan found no client call in include/ or plugins/: its method list is broken"
    succeeded = {c["method"] for c in made if c["as_production"] and (c["status"] < 400 or c["status"] in (404, 409))}
    untested = {m: places for m, places in in_code.items() if m not in succeeded}
    assert not untested, "never made against the control plane (or only refused):\n" + "\n".join(
        f"  {m}: {', '.join(places)}" for m, places in sorted(untested.items()))
