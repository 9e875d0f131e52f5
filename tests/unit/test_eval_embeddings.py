"""The local embeddings load on the device they report (LLMOPS_EMBEDDINGS_DEVICE or the default)."""

from __future__ import annotations

from include.evaluation import embeddings


def test_the_model_loads_on_the_configured_device(monkeypatch):
    loaded = []
    monkeypatch.setattr(embeddings, "_load", lambda path, device: loaded.append((path, device)) or object())
    monkeypatch.setenv(embeddings.DEVICE_ENV, "cpu")
    local = embeddings.LocalEmbeddings("/models/minilm")
    assert loaded == [("/models/minilm", "cpu")] and local.describe()["device"] == "cpu"
