"""The lifecycle on the local profile through real `airflow dags test` runs."""

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from include.sample_data import stage_sample

pytestmark = pytest.mark.slow


def models(local_airflow) -> list[Path]:
    return sorted((local_airflow.root / "data" / "models").glob("*/result.json"))


def prepare(local_airflow) -> None:
    raw = stage_sample(local_airflow.data_root)
    local_airflow.dags_test("prepare_dataset", {"source_uris": [raw]})


def steps_logged(checkpoints: Path) -> list[int]:
    lines = (checkpoints / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


class Webhook:
    """An alert receiver on 127.0.0.1 standing in for the team's chat webhook."""

    def __init__(self):
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_lifecycle_trains_gates_registers_then_rejects_a_worse_candidate(local_airflow):
    from mlflow import MlflowClient

    prepare(local_airflow)
    hook = Webhook()
    local_airflow.env["AIRFLOW_CONN_LLMOPS_ALERTS"] = json.dumps({"conn_type": "http", "host": hook.url})
    try:
        local_airflow.dags_test("finetune_lifecycle")
        [result_file] = models(local_airflow)
        result = json.loads(result_file.read_text())
        m = result["metrics"]
        assert result["backend"] == "tiny" and m["world_size"] == 2
        assert m["final_loss"] < m["initial_loss"], m
        model_dir = Path(result["model_uri"].removeprefix("file://"))
        assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
        [ckpt] = (local_airflow.root / "checkpoints").iterdir()
        assert steps_logged(ckpt) == list(range(1, m["steps"] + 1))

        client = MlflowClient(local_airflow.env["LLMOPS_MLFLOW_TRACKING_URI"])
        [v1] = client.search_model_versions("name='llmops-assistant'")
        assert v1.source == result["model_uri"], "the version points at the weights where training wrote them"
        # registration sets challenger only: champion moves when the rollout promotes (done here by hand)
        assert client.get_registered_model("llmops-assistant").aliases == {"challenger": v1.version}
        client.set_registered_model_alias("llmops-assistant", "champion", v1.version)
        run = client.get_run(v1.run_id)
        assert run.data.tags["llmops.decision"] == "accepted"
        assert [p.step for p in client.get_metric_history(run.info.run_id, "train_loss")] == list(
            range(1, m["steps"] + 1))
        assert not hook.received

        local_airflow.dags_test("finetune_lifecycle", {"max_steps": 5, "checkpoint_interval": 5})
        versions = client.search_model_versions("name='llmops-assistant'")
        assert [v.version for v in versions] == [v1.version], "a rejected candidate is never registered"
        assert client.get_registered_model("llmops-assistant").aliases["champion"] == v1.version
        rejected = client.search_runs([run.info.experiment_id], "tags.`llmops.decision` = 'rejected'")
        assert len(rejected) == 1
        reasons = json.loads(rejected[0].data.tags["llmops.reasons"])
        assert any("regress" in r for r in reasons), reasons
        [alert] = hook.received
        assert alert["reasons"] == reasons and "rejected" in alert["text"]
    finally:
        hook.close()


def test_killed_rank_resumes_from_last_checkpoint_on_retry(local_airflow):
    prepare(local_airflow)
    proc = local_airflow.popen_dags_test("finetune_lifecycle", {"max_steps": 100, "checkpoint_interval": 20})
    try:
        ckpt_root = local_airflow.root / "checkpoints"
        deadline = time.monotonic() + 240
        while not list(ckpt_root.glob("*/step-40")) and time.monotonic() < deadline:
            assert proc.poll() is None, (local_airflow.root / "finetune_lifecycle.log").read_text()[-5000:]
            time.sleep(0.2)
        victims = [p for p in psutil.process_iter(["cmdline", "environ"])
                   if "include.training.entrypoint" in " ".join(p.info["cmdline"] or [])
                   and (p.info["environ"] or {}).get("RANK") == "1"
                   and (p.info["environ"] or {}).get("LLMOPS_DATA_ROOT") == local_airflow.data_root]
        assert len(victims) == 1, victims
        os.kill(victims[0].pid, signal.SIGKILL)
        assert proc.wait(timeout=400) == 0, (local_airflow.root / "finetune_lifecycle.log").read_text()[-8000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (local_airflow.root / "finetune_lifecycle.log").read_text()
    assert "rank 1 failed with exit code -9 (SIGKILL)" in log  # the first attempt says which rank died, how
    [result_file] = models(local_airflow)
    m = json.loads(result_file.read_text())["metrics"]
    assert m["resumed_from_step"] >= 40 and m["final_loss"] < m["initial_loss"]
    [ckpt] = ckpt_root.iterdir()
    steps = steps_logged(ckpt)
    assert steps == list(range(1, 101)), "every step exactly once: nothing before the checkpoint was redone"
