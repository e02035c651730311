"""A throwaway PostgreSQL cluster for the tests: Debian's own server binaries, ``initdb`` as a non-root user in a
temporary directory, listening on a random port on 127.0.0.1 only, stopped and deleted at the end.

``make test`` installs Debian's ``postgresql`` package when run as root; without the binaries the PostgreSQL
variants of the tests are skipped (with that reason), the SQLite ones still run.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

# The server refuses to run as root; under root the cluster belongs to this user (created by the Debian package).
CLUSTER_USER = "postgres"
SUPERUSER = "mailpush_test"


def server_bin_dir() -> Path | None:
    """Directory holding initdb/pg_ctl: Debian keeps them out of PATH in /usr/lib/postgresql/VERSION/bin."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


class PostgresCluster:
    def __init__(self) -> None:
        self.as_root = os.geteuid() == 0
        bindir = server_bin_dir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.bindir = bindir
        # under root the cluster's user must reach the directory: /tmp, not a TMPDIR that may sit under /root
        self.root = Path(tempfile.mkdtemp(prefix="mailpush-pg-", dir="/tmp" if self.as_root else None))
        self.data = self.root / "data"
        self.port = 0
        self.started = False
        if self.as_root:
            owner = pwd.getpwnam(CLUSTER_USER)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", CLUSTER_USER, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)

    def start(self) -> "PostgresCluster":
        r = self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr or r.stdout}")
        last_error = ""
        for _ in range(5):  # the free port found here could be taken before the server binds it: try another
            self.port = _free_port()
            options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
            r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options,
                          "-w", "-t", "60", "start")
            if r.returncode == 0:
                self.started = True
                return self
            last_error = (self.root / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
