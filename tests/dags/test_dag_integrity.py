"""Every DAG imports cleanly on both profiles, is owned, tagged, retried where it does remote work,
and its file does no heavy import or I/O at parse time."""

import ast
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))
# Modules a DAG file must not import at top level: they cost seconds per parse, every parse.
HEAVY = {"torch", "pandas", "numpy", "pyarrow", "mlflow", "ragas", "datasketch", "boto3", "kubernetes",
         "transformers", "sentence_transformers", "langchain", "langchain_community", "sklearn"}
PROFILES = {
    "local": {"LLMOPS_PROFILE": "local"},
    "eks": {"LLMOPS_PROFILE": "eks", "LLMOPS_DATA_ROOT": "s3://llmops-data/prod"},
}
# Tasks that only compute from their inputs may skip retries; everything else touches storage or a cluster.
PURE_TASKS = {"validate_params"}  # checks params only; a retry cannot change its answer


def load_dagbag(env: dict, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from include.settings import get_settings

    get_settings.cache_clear()
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(autouse=True)
def fresh_settings():
    from include.settings import get_settings

    yield
    get_settings.cache_clear()


@pytest.fixture(params=sorted(PROFILES))
def dagbag(request, monkeypatch):
    return load_dagbag(PROFILES[request.param], monkeypatch)


def test_dags_import_without_errors(dagbag):
    assert not dagbag.import_errors, dagbag.import_errors
    assert {"prepare_dataset"} <= set(dagbag.dags)


def test_dags_have_tags_owner_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"
            if t.task_id not in PURE_TASKS:
                assert t.retries >= 1, f"{dag_id}.{t.task_id} does remote work without retries"


def test_both_profiles_build_the_same_graph(monkeypatch):
    graphs = {}
    for name, env in PROFILES.items():
        bag = load_dagbag(env, monkeypatch)
        graphs[name] = {d: sorted((t.task_id, sorted(t.downstream_task_ids)) for t in dag.tasks)
                        for d, dag in bag.dags.items()}
    assert graphs["local"] == graphs["eks"]


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_heavy_imports_or_io_at_top_level(path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in HEAVY, f"{path.name}: top-level import of {name}"
        if isinstance(node, ast.Expr | ast.Assign) and isinstance(getattr(node, "value", None), ast.Call):
            func = node.value.func
            called = getattr(func, "attr", getattr(func, "id", ""))
            assert called not in {"open", "read_text", "read_bytes", "get", "urlopen"}, (
                f"{path.name}: I/O at top level ({called})")


def heavy_modules_after(code: str, env: dict) -> tuple[float, list[str]]:
    probe = (f"import sys, time; t = time.perf_counter(); {code}; dt = time.perf_counter() - t; "
             f"print(repr((dt, sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r})))))")
    path = os.pathsep.join([str(DAGS.parent / "plugins"), os.environ.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=DAGS.parent, env={**os.environ, **env, "PYTHONPATH": path})
    assert out.returncode == 0, out.stderr[-3000:]
    return eval(out.stdout.strip().splitlines()[-1])


@functools.cache
def allowed_heavy_modules(profile: str) -> frozenset[str]:
    """What Airflow itself loads for our assets and, on eks, for the provider's Kubernetes operators."""
    operators = "from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator; " * (
        profile == "eks")
    _, baseline = heavy_modules_after(
        f"{operators}from airflow.sdk import Asset; from include.settings import get_settings; "
        "Asset(name='probe', uri=get_settings().data_root + '/probe')", PROFILES[profile])
    return frozenset(baseline)


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_light(path, profile):
    """Parse in a fresh interpreter; nothing heavier than allowed_heavy_modules(profile) is loaded."""
    # Seconds are not asserted: a timing on a shared machine is noise; the heavy modules are what costs.
    _, heavy = heavy_modules_after(f"import runpy; runpy.run_path({str(path)!r})", PROFILES[profile])
    extra = set(heavy) - allowed_heavy_modules(profile)
    assert not extra, f"{path.name} pulls in {sorted(extra)} at parse time"
