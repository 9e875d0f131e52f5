"""Run checkov on the eks objects: the `kubectl kustomize k8s/` output and the objects the DAGs render.

    bash scripts/install_checkov.sh          # checkov in its own venv under .tools/checkov
    python scripts/checkov_scan.py [--json]  # prints each failed check as CHECK_ID Kind/namespace/name

Rendered objects (trainer Job and Service for a multi-node and a single-node run, the run's
NetworkPolicy, the evaluator pod, a served version's vLLM Deployment, Service and PodDisruptionBudget
for a full model and for a LoRA adapter) are written to a temporary directory beside the kustomize
output.
Every failure left is listed, with the reason, in README.md's "Security" section;
tests/unit/test_checkov.py runs this and compares.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"


def objects() -> dict[str, list[dict]]:
    sys.path.insert(0, str(ROOT))
    from include.evaluation.job import validate_job
    from include.evaluation.k8s_pod import manifest as evaluator_manifest
    from include.serving.k8s_objects import version_objects
    from include.settings import Settings
    from include.training.k8s_job import render
    from tests.k8s_schemas import kustomize_build

    digest = "@sha256:" + "0" * 64  # deploy by digest (README); a real one comes from the registry
    settings = Settings(profile="eks", data_root="s3://llmops-data/prod",
                        trainer_image=f"ghcr.io/llmops-finetune/nemo-trainer{digest}",
                        evaluator_image=f"ghcr.io/llmops-finetune/evaluator{digest}",
                        serving_image=f"ghcr.io/llmops-finetune/vllm{digest}",
                        aws_cli_image=f"public.ecr.aws/aws-cli/aws-cli{digest}")
    rendered = []
    for nodes in (4, 1):
        plan = {"run_name": "scan", "dag_id": "finetune_lifecycle", "run_id": f"scan__{nodes}", "pool": "production",
                "nodes": nodes, "gpus_per_node": 8, "instance_type": "p5.48xlarge", "backend": "nemo",
                "base_model": "llama31_8b", "dataset_uri": "s3://llmops-data/prod/curated/0123456789abcdef",
                "output_uri": "s3://llmops-data/prod/models/scan", "checkpoint_dir": "/checkpoints/scan"}
        launch = render(plan, settings)
        # checkov knows Jobs, not JobSets: scan the child Job the JobSet controller creates from it.
        rendered += [*launch.manifests(), launch.child_job()]
    job = validate_job({"model_uri": "s3://llmops-data/prod/models/scan", "eval_uri":
                        "s3://llmops-data/prod/curated/0123456789abcdef", "output_uri":
                        "s3://llmops-data/prod/evaluations/scan/candidate", "generator": "vllm",
                        "metrics_profile": "eks",
                        "judge": {"provider": "bedrock", "model": "judge", "region_name": "us-east-1"}})
    rendered.append(evaluator_manifest(job, settings))
    # What the rollout's deploy creates (EksServers.deploy): version 1 a full model, version 2 an adapter.
    for version, method in ((1, "full"), (2, "lora")):
        rendered += version_objects(settings.registered_model_name, version, f"s3://llmops-data/prod/models/v{version}",
                                    settings=settings, method=method,
                                    base_model_uri="s3://llmops-data/prod/base/llama31_8b").values()
    return {"kustomize.yaml": kustomize_build(ROOT / "k8s"), "rendered.yaml": rendered}


def scan() -> list[tuple[str, str]]:
    """(check id, Kind/namespace/name) for every failed check."""
    if not CHECKOV.is_file():
        raise FileNotFoundError(f"{CHECKOV} missing: run scripts/install_checkov.sh")
    with tempfile.TemporaryDirectory() as tmp:
        for name, docs in objects().items():
            (Path(tmp) / name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
        out = subprocess.run([str(CHECKOV), "-d", tmp, "--framework", "kubernetes", "-o", "json", "--quiet",
                              "--compact", "--skip-download"], capture_output=True, text=True, timeout=900)
    if not out.stdout.strip():
        raise RuntimeError(f"checkov produced no report:\n{out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = set()
    for r in reports:
        for check in r.get("results", {}).get("failed_checks", []):
            kind, namespace, name = (check["resource"].split(".") + ["", ""])[:3]
            failed.add((check["check_id"], f"{kind}/{namespace}/{name}"))
    return sorted(failed)


if __name__ == "__main__":
    for check_id, resource in scan():
        print(check_id, resource)
