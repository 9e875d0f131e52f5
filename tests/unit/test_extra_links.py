"""Extra links: URL builders (include/links.py) and the links on the tasks, fed the XCom values the
tasks' own functions return (a published dataset, a real gate decision and registration in MLflow)."""

import json
from types import SimpleNamespace

import pytest

from include import links
from include.settings import Settings, get_settings


def test_object_urls():
    # A file:// object opens through the api-server's file view (the UI drops file:// links) ...
    manifest = "file:///data/root/curated/0123456789abcdef/manifest.json"
    assert links.object_url(manifest, data_root="file:///data/root") == (
        "/llmops/files/curated/0123456789abcdef/manifest.json")
    assert links.object_url("file:///data/root/evaluations/ft 1/gate/report.html", data_root="file:///data/root/",
                            airflow_base="https://airflow.example.com/") == (
        "https://airflow.example.com/llmops/files/evaluations/ft%201/gate/report.html")
    # ... only when a link names it and it lies under the data root; else no link at all (never file://).
    for uri in ("file:///data/root/raw/dt=2026-11-01/a.jsonl", "file:///data/root/curated/v/quarantine.jsonl",
                "file:///elsewhere/curated/v/manifest.json", "file:///data/root/../etc/curated/v/manifest.json",
                "file:///data/rootx/curated/v/manifest.json"):
        assert links.object_url(uri, data_root="file:///data/root") is None, uri
    assert links.object_url(manifest) is None, "no data root: nothing the view could serve"
    assert links.object_url("s3://bucket/llmops/curated/v/manifest.json") == (
        "https://console.aws.amazon.com/s3/object/bucket?prefix=llmops/curated/v/manifest.json")
    minio = "http://localhost:9001/browser/{bucket}/{key}"
    assert links.object_url("s3://b/a b/report.html", minio) == "http://localhost:9001/browser/b/a%20b/report.html"
    for bad in (None, "", "s3://bucket-only", "/no/scheme", "http://elsewhere/x"):
        assert links.object_url(bad) is None


def test_mlflow_ui_base_prefers_the_setting_then_the_connection_then_the_tracking_server():
    local = Settings()
    assert links.mlflow_ui_base(local) == links.LOCAL_MLFLOW_UI
    assert links.mlflow_ui_base(local, "https://mlflow.example.com/") == "https://mlflow.example.com"
    server = Settings(profile="eks", data_root="s3://b/llmops", mlflow_tracking_uri="http://mlflow.mlflow:5000")
    assert links.mlflow_ui_base(server) == "http://mlflow.mlflow:5000"
    ui = Settings(profile="eks", data_root="s3://b/llmops", mlflow_ui_url="https://mlflow.example.com")
    assert links.mlflow_ui_base(ui, "https://other") == "https://mlflow.example.com"
    assert links.mlflow_ui_base(Settings(profile="eks", data_root="s3://b/x", mlflow_tracking_uri="databricks")) is None


def test_mlflow_and_console_urls():
    assert links.mlflow_run_url("http://m", {"mlflow_run_id": "abc", "mlflow_experiment_id": "3"}) == (
        "http://m/#/experiments/3/runs/abc")
    assert links.mlflow_run_url("http://m", {"mlflow_run_id": "abc"}) is None
    assert links.mlflow_run_url(None, {"mlflow_run_id": "abc", "mlflow_experiment_id": "3"}) is None
    assert links.model_version_url("http://m", {"model_name": "llmops assistant", "version": "4"}) == (
        "http://m/#/models/llmops%20assistant/versions/4")
    assert links.model_version_url("http://m", {"rejected": True}) is None
    template = "https://console.example/{resource}/{namespace}/{name}?labelSelector={selector}"
    assert links.k8s_console_url(template, "pods", "llm-training", "job-x", "llmops.io/job=job-x") == (
        "https://console.example/pods/llm-training/job-x?labelSelector=llmops.io%2Fjob%3Djob-x")
    assert links.k8s_console_url("", "jobs", "ns", "n") is None


# --------------------------------------------------------------------------- links on the tasks


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_DATA_ROOT", f"file://{tmp_path / 'data'}")
    monkeypatch.setenv("LLMOPS_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("LLMOPS_MLFLOW_UI_URL", "http://127.0.0.1:5000")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def xcom(monkeypatch):
    """XCom.get_value answering with the values a test sets, per (task_id, key)."""
    from airflow.sdk.execution_time import xcom as module

    values: dict[tuple[str, str], object] = {}
    monkeypatch.setattr(module.XCom, "get_value",
                        classmethod(lambda cls, *, ti_key, key: values.get((ti_key.task_id, key))))
    return values


def key(task_id: str, dag_id: str = "finetune_lifecycle", run_id: str = "scheduled__2026-11-02T02:00:00+00:00"):
    return SimpleNamespace(dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=-1, try_number=1)


def link(cls, task_id, operator=None):
    return cls().get_link(operator, ti_key=key(task_id))


def test_dataset_manifest_links_from_publish_and_resolve_dataset(env, xcom, tmp_path):
    from llmops_operators.links import DatasetManifestLink

    from include.data import catalog
    from include.data.pipeline import PrepConfig
    from include.lifecycle.training import resolve_dataset

    raw = tmp_path / "data" / "raw" / "dt=2026-11-01" / "a.jsonl"
    raw.parent.mkdir(parents=True)
    raw.write_text("".join(json.dumps({"question": f"How does component {i} scale?",
                                       "answer": f"Component {i} scales out and keeps state in S3."}) + "\n"
                           for i in range(12)))
    data = env.data_root
    live, _ = catalog.publish(data, catalog.stage(data, [f"{data}/raw"], PrepConfig(), "r"), "r")
    xcom[("publish", "return_value")] = catalog.asset_extra(live)  # what the publish task returns
    xcom[("resolve_dataset", "return_value")] = resolve_dataset({"dataset_version": None}, None, env)
    expected = f"/llmops/files/curated/{live['version']}/manifest.json"  # the api-server's file view
    assert link(DatasetManifestLink, "publish") == expected
    assert link(DatasetManifestLink, "resolve_dataset") == expected
    manifest = links.served_file(tmp_path / "data", expected.removeprefix("/llmops/files/"))[0]
    assert json.loads(manifest.read_text())["version"] == live["version"]
    assert link(DatasetManifestLink, "curate") == "", "no value: the link shows disabled"


def test_mlflow_run_gate_report_and_model_version_links(env, xcom, tmp_path):
    from llmops_operators.links import GateReportLink, MlflowRunLink, ModelVersionLink
    from mlflow import MlflowClient

    from include.lifecycle import release
    from include.storage import files

    data = env.data_root
    plan = {"run_name": "ft-links", "dag_id": "finetune_lifecycle", "run_id": "manual__links",
            "base_model": "llama32_1b", "method": "lora", "image": "trainer:1", "backend": "tiny",
            "output_uri": f"{data}/models/ft-links"}
    dataset = {"version": "0123456789abcdef", "uri": f"{data}/curated/0123456789abcdef"}
    files.write_json(f"{dataset['uri']}/manifest.json", {"version": dataset["version"]})
    candidate = release.evaluation_uri(env, plan, "candidate")
    scores = [{"id": f"q{i}", "non_llm_string_similarity": 0.5, "bleu_score": 0.2, "rouge_score": 0.4,
               "semantic_similarity": 0.7} for i in range(12)]
    files.write_bytes(f"{candidate}/scores.jsonl", "\n".join(json.dumps(s) for s in scores).encode())
    files.write_json(f"{candidate}/result.json", {"scores_uri": f"{candidate}/scores.jsonl"})
    files.write_json(f"{plan['output_uri']}/metrics.json", {"history": [{"step": 1, "loss": 2.0}]})

    from include.evaluation.gate import load_policy

    policy = load_policy(profile=env.profile).to_dict()  # validate_params' output: the run's policy
    decision = release.gate(plan, dataset, {"candidate": {"output_uri": candidate}, "champion": None}, policy, env)
    assert decision["passed"], decision["reasons"]
    result = {"model_uri": f"{plan['output_uri']}/model", "metrics": {"steps": 1}}
    registered = release.register(plan, result, dataset, decision, env)
    xcom[("gate", "return_value")] = decision
    xcom[("register", "return_value")] = registered

    run = MlflowClient(env.mlflow_tracking_uri).get_run(decision["mlflow_run_id"])
    run_url = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert link(MlflowRunLink, "gate") == run_url
    assert link(MlflowRunLink, "register") == run_url
    report = decision["report_uri"].removeprefix(f"{data}/")
    assert link(GateReportLink, "gate") == f"/llmops/files/{report}"
    assert links.served_file(tmp_path / "data", report)[0].read_text().lstrip().lower().startswith("<!doctype html")
    assert link(ModelVersionLink, "register") == (
        f"http://127.0.0.1:5000/#/models/{registered['model_name']}/versions/{registered['version']}")
    assert registered["version"] == "1"
    assert link(ModelVersionLink, "gate") == "", "the gate registers nothing"


def test_training_jobset_links_follow_the_launcher_names(monkeypatch):
    from llmops_operators.links import TrainingJobLink, TrainingPodsLink

    from include.training.k8s_job import jobset_name

    get_settings.cache_clear()
    monkeypatch.setenv("LLMOPS_K8S_CONSOLE_URL", "https://headlamp.example/c/main/{resource}/{namespace}/{name}"
                                                 "?labelSelector={selector}")
    try:
        name = jobset_name("finetune_lifecycle", "scheduled__2026-11-02T02:00:00+00:00")
        assert link(TrainingJobLink, "launch_training") == (
            f"https://headlamp.example/c/main/jobsets/llm-training/{name}?labelSelector=llmops.io%2Fjob%3D{name}")
        assert link(TrainingPodsLink, "launch_training").startswith("https://headlamp.example/c/main/pods/")
        monkeypatch.delenv("LLMOPS_K8S_CONSOLE_URL")
        get_settings.cache_clear()
        assert link(TrainingJobLink, "launch_training") == ""
    finally:
        get_settings.cache_clear()


def test_the_plugin_registers_every_link_and_the_tasks_carry_theirs():
    import llmops_plugin
    from llmops_operators import links as task_links
    from llmops_operators.k8s_training import KubernetesTrainingJobOperator

    assert {type(x) for x in llmops_plugin.LlmopsPlugin.operator_extra_links} == set(task_links.ALL_LINKS)
    assert all(not cls.operators for cls in task_links.ALL_LINKS), "no link is attached behind a task's back"
    assert [x.name for x in KubernetesTrainingJobOperator.operator_extra_links] == ["Training JobSet", "Training pods"]
