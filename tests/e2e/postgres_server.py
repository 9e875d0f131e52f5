"""A throwaway PostgreSQL server on 127.0.0.1 for the Airflow metadata DB, as the deployment has.

SQLite cannot carry a scheduler, a dag-processor, an API server and the CLI writing at once: a
reader that must upgrade to a writer gets "database is locked" at once, whatever the busy timeout.
So the deployments under test use Postgres, like docker-compose.yaml and the Helm chart.

The server runs from the machine's PostgreSQL binaries, found as `include/prereqs.py` finds them
(`make install` installs Debian's `postgresql` when they are missing). PostgreSQL refuses to run as
root, so as root it runs as the `postgres` system user. `stop()` shuts it down and removes its data directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from airflow_stack import free_port

from include import prereqs

SUPERUSER = "airflow"


class PostgresUnavailable(RuntimeError):
    pass


def _binary(name: str) -> str:
    try:
        return prereqs.find(name)
    except prereqs.Missing as e:
        raise PostgresUnavailable(str(e)) from e


class PostgresServer:
    """One server; `create_database()` hands each deployment its own empty database."""

    def __init__(self) -> None:
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="llmops-pg-"))
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as e:
                raise PostgresUnavailable("as root, the server needs a `postgres` user to run as") from e
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]  # util-linux
        self.proc: subprocess.Popen | None = None

    def _run(self, argv: list[str]) -> None:
        out = subprocess.run([*self._as_user, *argv], capture_output=True, text=True, timeout=120)
        if out.returncode:
            raise PostgresUnavailable(f"{argv[0]} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")

    def start(self, timeout: float = 60) -> PostgresServer:
        pgdata = self.data_dir / "pgdata"
        self._run([_binary("initdb"), "-D", str(pgdata), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                   "--no-sync"])
        self.log = self.data_dir / "postgres.log"
        log = open(self.log, "ab")  # noqa: SIM115 -- the child holds its own descriptor
        self.proc = subprocess.Popen(
            [*self._as_user, _binary("postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(self.port),
             "-k", str(self.data_dir), "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "timezone=UTC"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        # Ready when this postmaster says so in its pid file: a connection alone could reach another
        # server that took the port first.
        pid_file = pgdata / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while not (pid_file.exists() and "ready" in pid_file.read_text(errors="replace").split()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text(errors="replace")[-4000:]  # before stop() removes it
                self.stop()
                raise PostgresUnavailable(f"postgres did not start on 127.0.0.1:{self.port}:\n{log}")
            time.sleep(0.2)
        return self

    def connect(self, dbname: str):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=dbname, connect_timeout=5)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, template: str | None = None) -> str:
        """A new empty database, or a copy of `template` (which must have no open connections)."""
        name = f"airflow_{uuid.uuid4().hex[:12]}"
        con = self.connect("postgres")
        con.autocommit = True
        try:
            with con.cursor() as cur:  # generated identifiers, never user input
                cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        finally:
            con.close()
        return name

    def stop(self, grace: float = 20) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)  # postgres' "fast" shutdown
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.data_dir, ignore_errors=True)
