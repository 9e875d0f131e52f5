"""`make cluster`: the eks profile's local control plane for a person, until Ctrl-C.

Builds the programs when needed (scripts/build_control_plane.sh), starts etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok and the JobSet controller on 127.0.0.1, applies k8s/
with a kwok node per NodePool, and prints how to reach it. Ctrl-C or SIGTERM stops every process.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "cluster"))

from controlplane import ControlPlane, build  # noqa: E402


def main() -> int:
    build()
    root = Path(tempfile.mkdtemp(prefix="llmops-cluster-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with ControlPlane(root) as cp:
        cp.apply_project()
        print(f"control plane on {cp.server}; k8s/ applied, one kwok node per pool\n"
              f"  export KUBECONFIG={cp.kubeconfig}      # the admin\n"
              f"  as Airflow's ServiceAccount: {cp.kubeconfig_for('airflow', 'airflow-worker')}\n"
              f"  logs: {cp.logs}\nCtrl-C stops it.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
