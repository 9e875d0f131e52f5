"""The local Prometheus: Debian's `prometheus` binary on 127.0.0.1, scraping Envoy and the model servers.

Targets come from a file_sd JSON file rewritten (atomically) whenever a server starts or stops, so
Prometheus follows the servers without a restart. Scrape and evaluation intervals are the local
profile's short ones (`timing.py`). The TSDB lives under the data root, so a restarted Prometheus
keeps its history and comes back on the same port when it is free.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from include import prereqs
from include.platforms.local import envoy
from include.serving import processes
from include.serving.timing import EVALUATION_INTERVAL_S, SCRAPE_INTERVAL_S

NAME = "prometheus"


def binary() -> str:
    return prereqs.find("prometheus")


def home(root: Path | None = None) -> Path:
    path = (root or processes.run_dir()) / "prometheus"
    (path / "data").mkdir(parents=True, exist_ok=True)
    return path


def config(targets_file: Path) -> dict:
    every = f"{SCRAPE_INTERVAL_S}s"
    return {
        "global": {"scrape_interval": every, "evaluation_interval": f"{EVALUATION_INTERVAL_S}s",
                   "scrape_timeout": every},
        "scrape_configs": [
            {"job_name": "envoy", "metrics_path": "/stats/prometheus",
             "file_sd_configs": [{"files": [str(targets_file.with_name("envoy.json"))], "refresh_interval": every}]},
            {"job_name": "model-servers", "metrics_path": "/metrics",
             "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": every}]},
        ],
    }


def sync_targets(root: Path | None = None) -> None:
    """Write the scrape targets for the model servers and the gateway running now."""
    h = home(root)
    models = [{"targets": [f"127.0.0.1:{port}"], "labels": {"service": svc}}
              for svc, port in sorted(processes.model_server_ports(root).items())]
    gateway = []
    if processes.read(envoy.NAME, root) is not None:
        gateway = [{"targets": [envoy.admin_url(root).removeprefix("http://")], "labels": {"service": "gateway"}}]
    for name, groups in (("models.json", models), ("envoy.json", gateway)):
        tmp = h / f".{name}.tmp"
        tmp.write_text(json.dumps(groups))
        tmp.replace(h / name)


def ensure_running(root: Path | None = None) -> processes.ProcessInfo:
    h = home(root)
    sync_targets(root)
    current = processes.read(NAME, root)
    if current is not None:
        return current
    (h / "prometheus.yml").write_text(yaml.safe_dump(config(h / "models.json"), sort_keys=False))
    port_file = h / "port"
    port = None
    if port_file.exists():
        port = int(port_file.read_text())
        if not _free(port):
            port = None
    port = port or processes.free_port()
    port_file.write_text(str(port))

    def argv(p: int) -> list[str]:
        return [binary(), f"--config.file={h / 'prometheus.yml'}", f"--storage.tsdb.path={h / 'data'}",
                f"--web.listen-address=127.0.0.1:{p}", "--storage.tsdb.retention.time=2d",
                "--log.level=warn", f"--web.external-url=http://127.0.0.1:{p}/"]

    return processes.ensure_running(NAME, argv, ready_path="/-/ready", port=port, root=root)


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Prometheus binds: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop(root: Path | None = None) -> bool:
    return processes.stop(NAME, root)


def url(root: Path | None = None) -> str | None:
    h = home(root)
    port_file = h / "port"
    return f"http://127.0.0.1:{port_file.read_text().strip()}" if port_file.exists() else None
