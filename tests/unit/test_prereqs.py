"""The machine's prerequisites: one table (include/prereqs.py) behind `make install`, the preflight
of `make run`, and every lookup the code makes, so a missing program stops a run in one line,
before any task does work, and CI installs nothing a newcomer's `make install` would not.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from include import prereqs

REPO = Path(__file__).resolve().parents[2]


def path_without(names: set[str], farm: Path, extra: dict[str, str] | None = None) -> str:
    """PATH with `names` gone: a directory that holds one of them is replaced by a copy made of
    symlinks to everything else in it. `extra` adds scripts (name -> body) in front."""
    entries = []
    if extra:
        stubs = farm / "stubs"
        stubs.mkdir(parents=True)
        for name, body in extra.items():
            (stubs / name).write_text(body)
            (stubs / name).chmod(0o755)
        entries.append(str(stubs))
    for i, entry in enumerate(os.environ["PATH"].split(os.pathsep)):
        d = Path(entry)
        if not any((d / n).exists() for n in names):
            entries.append(entry)
            continue
        copy = farm / f"path{i}"
        copy.mkdir(parents=True)
        for child in d.iterdir():
            if child.name not in names:
                (copy / child.name).symlink_to(child)
        entries.append(str(copy))
    return os.pathsep.join(entries)


def isolated_env(tmp_path: Path, path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LLMOPS_")) and k != "PROMETHEUS_BIN"}
    return {**env, "PATH": path, "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "LLMOPS_DATA_ROOT": f"file://{tmp_path / 'data'}", "LLMOPS_CHECKPOINT_ROOT": str(tmp_path / "ckpt"),
            "LLMOPS_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def run(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return out, time.monotonic() - started


def test_the_code_finds_prometheus_where_the_preflight_does(tmp_path, monkeypatch):
    from include.platforms.local import prometheus as prometheus_local

    monkeypatch.delenv("PROMETHEUS_BIN", raising=False)
    monkeypatch.setenv("PATH", path_without({"prometheus"}, tmp_path))
    with pytest.raises(prereqs.Missing, match=r"^prometheus is missing \(.*\): run `make install`"):
        prometheus_local.binary()
    assert "prometheus" in [p.name for p in prereqs.missing("run")]

    stand_in = tmp_path / "bin" / "prom"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    monkeypatch.setenv("PROMETHEUS_BIN", str(stand_in))
    assert prometheus_local.binary() == str(stand_in)


def test_make_run_stops_before_prepare_dataset_when_prometheus_is_missing(tmp_path):
    env = isolated_env(tmp_path, path_without({"prometheus"}, tmp_path / "farm"))
    out, took = run(["bash", "scripts/run_local.sh"], env)

    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert re.match(r"preflight: prometheus is missing \(.+\): run `make install` \(it runs: .*apt-get install "
                    r".* prometheus\)$", lines[0]), lines[0]
    assert "prepare_dataset" not in out.stdout
    assert not (tmp_path / "airflow" / "airflow.db").exists(), "the preflight runs before anything is migrated"
    assert took < 15


@pytest.mark.parametrize("apt", ["absent", "failing"])
def test_make_run_with_a_prerequisite_that_cannot_be_installed_stops_in_seconds(tmp_path, apt):
    stubs = {"apt-get": "#!/bin/sh\necho 'E: Unable to locate package prometheus' >&2\nexit 100\n"}
    hidden = {"prometheus", "apt-get"}
    env = isolated_env(tmp_path, path_without(hidden, tmp_path / "farm", stubs if apt == "failing" else None))
    out, took = run(["make", "--no-print-directory", "run"], env)

    assert out.returncode != 0
    assert took < 15
    why = "no apt-get here" if apt == "absent" else "`apt-get update -q` failed: E: Unable to locate package"
    assert f"make install: cannot install prometheus ({why}" in out.stderr, out.stderr
    assert re.search(r"^  prometheus +Debian package prometheus ", out.stderr, re.M), out.stderr
    assert "prepare_dataset" not in out.stdout
    assert not (tmp_path / "airflow").exists()


def test_preflight_names_an_unwritable_data_root_and_a_taken_port(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        problems = prereqs.preflight("nothing", f"file://{blocker}/data", ports=[port])
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"the data root {blocker}/data is not writable")
    assert problems[1].startswith(f"port {port} on 127.0.0.1 is taken")
    assert prereqs.preflight("nothing", f"file://{tmp_path}/data") == []


def test_postgres_is_found_off_path_newest_version_first(tmp_path, monkeypatch):
    for version in ("9", "15", "16"):
        binary = tmp_path / version / "bin" / "initdb"
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755 if version != "16" else 0o644)  # 16's is not runnable: skipped
    program = prereqs.Program("initdb", "a test", package="postgresql", also=(f"{tmp_path}/*/bin/initdb",))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert program.find() == str(tmp_path / "15" / "bin" / "initdb")


def test_ci_takes_the_readme_path_and_installs_nothing_itself():
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "make test", commands
    assert not any(re.search(r"\b(apt|apt-get|pip|install|curl|wget)\b", c) for c in commands), commands
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make run" in readme


def test_every_program_the_code_looks_up_is_one_make_install_brings():
    """A new `shutil.which("x")` anywhere is a new prerequisite: it belongs in include/prereqs.py."""
    brought_by_make_install = {"kubectl", "kustomize"}  # scripts/install_kubectl.py, into .tools/bin
    looked_up = set()
    installer = {REPO / "include" / "prereqs.py", Path(__file__).resolve()}  # apt-get, sudo; this docstring
    for folder in ("include", "plugins", "dags", "scripts", "tests", "benchmarks"):
        for path in set((REPO / folder).rglob("*.py")) - installer:
            looked_up |= set(re.findall(r"""shutil\.which\(\s*["']([\w.-]+)["']""", path.read_text()))
    assert looked_up, "the scan found no lookups: its pattern is broken"
    assert looked_up - brought_by_make_install <= set(prereqs.PROGRAMS), looked_up


def test_a_missing_go_is_named_but_does_not_stop_make_run(tmp_path, monkeypatch, capsys):
    """Go builds only the tests' control plane: `make install` names it, `make run` goes on."""
    monkeypatch.setenv("PATH", path_without({"go"}, tmp_path))
    assert [p.name for p in prereqs.missing()] == ["go"], "needs every other prerequisite installed"
    assert prereqs.install() == 0
    assert "make install: go is missing (the tests build" in capsys.readouterr().err
    with pytest.raises(prereqs.Missing, match=r"^go is missing .*: install Go 1\.26 or newer"):
        prereqs.find("go")
