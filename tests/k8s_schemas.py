"""Validate Kubernetes manifests against the real schemas, without a cluster.

Core kinds (Job, Service, Role, ...) go through `kubernetes_validate` in strict mode for
KUBERNETES_VERSION, so an unknown or misspelt field fails as it would with kubectl's server-side
field validation. Karpenter, Gateway API and JobSet kinds go through the openAPIV3Schema of their CRD,
read from the shared CRDs directory (LLMOPS_CRDS_DIR, default ../shared/crds beside the repo;
never copied into the repo), with unknown fields refused the same way. CEL rules
(x-kubernetes-validations) are not evaluated: only the API server can.

Also builds the kustomize tree: with a real kustomize or kubectl when one is found (KUSTOMIZE or
KUBECTL env, then .tools/bin/kubectl from scripts/install_kubectl.py, then PATH), else by reading
the files each kustomization lists (enough for this repo's plain resource lists).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_VERSION = "1.33"  # EKS standard support; Job podFailurePolicy and backoffLimitPerIndex are GA


class ManifestError(AssertionError):
    """A manifest does not match its schema; the message names the object and the field."""


def crds_dir() -> Path | None:
    """The shared CRDs directory, or None when this checkout has none beside it."""
    path = Path(os.environ.get("LLMOPS_CRDS_DIR") or REPO_ROOT.parent / "shared" / "crds")
    return path if path.is_dir() else None


def require_crds() -> Path:
    """The CRDs directory, or skip the calling test with the reason."""
    import pytest

    path = crds_dir()
    if path is None:
        pytest.skip("CRD schemas not found: set LLMOPS_CRDS_DIR or place them at ../shared/crds")
    return path


def to_manifest(obj: Any) -> dict:
    """kubernetes client models become the API's camelCase dicts; dicts pass through."""
    if isinstance(obj, dict):
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def _closed(schema: Any) -> Any:
    """A structural schema with unknown fields refused (what the API server prunes or rejects)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=1)
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> closed openAPIV3Schema for every served version of every CRD."""
    root = crds_dir()
    schemas: dict[tuple[str, str], dict] = {}
    if root is None:
        return schemas
    for path in sorted(root.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                if version.get("served", True):
                    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                    schemas[(f"{group}/{version['name']}", kind)] = _closed(schema)
    return schemas


CRD_GROUPS = ("karpenter.sh", "karpenter.k8s.aws", "gateway.networking.k8s.io", "monitoring.coreos.com",
              "jobset.x-k8s.io")


def _is_core(api_version: str) -> bool:
    """Built-in API (schemas in kubernetes_validate) rather than a CRD's."""
    return api_version.rpartition("/")[0] not in CRD_GROUPS


def validation_errors(obj: Any, version: str = KUBERNETES_VERSION) -> list[str]:
    """Every schema error of one manifest, as 'Kind/name: field.path: message'."""
    manifest = to_manifest(obj)
    api_version, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
    label = f"{kind}/{(manifest.get('metadata') or {}).get('name', '?')}"
    if _is_core(api_version):
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{label}: {'.'.join(map(str, exc.path)) or '(root)'}: {exc.message}"]
        except kubernetes_validate.SchemaNotFoundError as exc:
            return [f"{label}: {exc.message}"]
        return []
    schema = crd_schemas().get((api_version, kind))
    if schema is None:
        where = crds_dir() or "no CRDs directory"
        return [f"{label}: no CRD schema for {api_version} {kind} in {where}"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"{label}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.path)))]


def validate(obj: Any) -> dict:
    """Raise ManifestError listing every problem; return the manifest dict when valid."""
    errors = validation_errors(obj)
    if errors:
        raise ManifestError("\n".join(errors))
    return to_manifest(obj)


def needs_crds(obj: Any) -> bool:
    return not _is_core(to_manifest(obj).get("apiVersion", ""))


# ---- kustomize ----

def kustomize_command() -> list[str] | None:
    """How to run `kustomize build` here, or None when no binary is available."""
    if os.environ.get("KUSTOMIZE"):
        return [os.environ["KUSTOMIZE"], "build"]
    if os.environ.get("KUBECTL"):
        return [os.environ["KUBECTL"], "kustomize"]
    pinned = REPO_ROOT / ".tools" / "bin" / "kubectl"  # scripts/install_kubectl.py
    if pinned.is_file():
        return [str(pinned), "kustomize"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    return None


def kustomize_build(path: Path) -> list[dict]:
    """The real `kustomize build` output, parsed. Raises RuntimeError if no binary is found."""
    command = kustomize_command()
    if command is None:
        raise RuntimeError("no kustomize or kubectl binary (run scripts/install_kubectl.py)")
    out = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise ManifestError(f"{' '.join(command)} {path} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kustomization_files(path: Path) -> list[Path]:
    """Files a kustomization lists as resources, followed through nested kustomizations."""
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    files: list[Path] = []
    for entry in kustomization.get("resources") or []:
        target = path / entry
        files.extend(kustomization_files(target) if target.is_dir() else [target])
    return files


def manifests_from_files(path: Path) -> list[dict]:
    """The objects the kustomization's files hold, without kustomize's transformations."""
    return [d for f in kustomization_files(path) for d in yaml.safe_load_all(f.read_text()) if d]
