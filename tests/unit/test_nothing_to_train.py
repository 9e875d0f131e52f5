"""A run nobody asked for skips when there is nothing new to train; a manual trigger still fails on bad input."""

import json
from types import SimpleNamespace

import pytest

from include.data import catalog
from include.data.pipeline import PrepConfig
from include.errors import InputError
from include.lifecycle.failfast import NothingToDo
from include.lifecycle.training import resolve_dataset
from include.registry import mlflow_registry as reg
from include.settings import get_settings

PARAMS = {"dataset_version": None, "base_model": "llama32_1b", "method": "lora"}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A data root with one published version, and a settings object pointing at it and a fresh MLflow store."""
    tmp = tmp_path_factory.mktemp("data")
    data_root = f"file://{tmp}"
    raw = tmp / "raw" / "dt=2026-11-01" / "a.jsonl"
    raw.parent.mkdir(parents=True)
    raw.write_text("".join(json.dumps({"question": f"How does component {i} scale under load?",
                                       "answer": f"Component {i} scales out and keeps its state in S3."}) + "\n"
                           for i in range(12)))
    live, _ = catalog.publish(data_root, catalog.stage(data_root, [f"{data_root}/raw"], PrepConfig(), "r"), "r")
    settings = get_settings().__class__(data_root=data_root,
                                        mlflow_tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    return settings, live["version"]


def event(version):
    return {"curated_dataset": [SimpleNamespace(extra={"version": version})]}


@pytest.mark.parametrize("run_type", ["scheduled", "asset_triggered", "backfill"])
def test_an_unasked_run_skips_when_nothing_is_published(tmp_path, run_type):
    settings = get_settings().__class__(data_root=f"file://{tmp_path}")
    with pytest.raises(NothingToDo, match=f"{run_type} run: nothing to train, no published dataset"):
        resolve_dataset(PARAMS, None, settings, run_type=run_type)


def test_a_manual_run_fails_when_nothing_is_published(tmp_path):
    settings = get_settings().__class__(data_root=f"file://{tmp_path}")
    with pytest.raises(InputError, match="no published dataset"):
        resolve_dataset(PARAMS, None, settings, run_type="manual")


def test_a_named_version_that_is_missing_fails_every_run(published):
    settings, _ = published
    for run_type in ("manual", "scheduled"):
        with pytest.raises(InputError, match="is not published") as err:
            resolve_dataset({**PARAMS, "dataset_version": "0123456789abcdef"}, None, settings, run_type=run_type)
        assert not isinstance(err.value, NothingToDo)


def test_a_version_trained_once_is_not_trained_twice_unless_asked(published, monkeypatch):
    settings, version = published
    monkeypatch.setenv("LLMOPS_MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    get_settings.cache_clear()
    try:
        for run_type in ("scheduled", "asset_triggered", "manual"):
            assert resolve_dataset(PARAMS, event(version), settings, run_type=run_type)["version"] == version

        tags = reg.lineage_tags(dag_id="finetune_lifecycle", run_id="scheduled__1", dataset_version=version,
                                base_model="llama32_1b", method="lora")
        run = reg.get_or_create_run(settings.mlflow_experiment, "finetune_lifecycle", "scheduled__1", tags)
        # gated but not yet decided (the DAG run failed before register/reject): may be trained again
        assert resolve_dataset(PARAMS, None, settings, run_type="scheduled")["version"] == version

        reg.tag_rejected(run, ["rouge_score below its floor"])
        for run_type, events in (("scheduled", None), ("asset_triggered", event(version))):
            with pytest.raises(NothingToDo, match=f"dataset {version} was already trained on .*scheduled__1"):
                resolve_dataset(PARAMS, events, settings, run_type=run_type)
        # a person asking is the explicit retrain; another recipe is new work
        assert resolve_dataset(PARAMS, None, settings, run_type="manual")["version"] == version
        assert resolve_dataset({**PARAMS, "base_model": "llama31_8b"}, None, settings,
                               run_type="scheduled")["version"] == version
    finally:
        get_settings.cache_clear()
