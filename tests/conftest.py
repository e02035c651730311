import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
# Read-only public captures live beside the checkout (../shared) in development and CI.
PUBLIC = (ROOT.parent / "shared" / "captures" / "public")
if not PUBLIC.is_dir():
    PUBLIC = Path("/work/shared/captures/public")


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    return CAPTURES


@pytest.fixture(scope="session")
def public_dir() -> Path:
    if not PUBLIC.is_dir():
        pytest.skip("../shared/captures/public not present")
    return PUBLIC


def require_tshark():
    if not shutil.which("tshark"):
        pytest.skip("tshark not installed (make test installs it when run as root)")


@pytest.fixture
def tshark():
    require_tshark()
    return shutil.which("tshark")


# --- PostgreSQL (issue 15): one throwaway cluster per session, one fresh database per test ------------------


@pytest.fixture(scope="session")
def postgres_cluster():
    from pgcluster import PostgresCluster, server_bin_dir

    if server_bin_dir() is None or importlib.util.find_spec("psycopg") is None:
        if os.geteuid() == 0:  # make test as root installs both: missing here is a broken setup, not a skip
            pytest.fail("PostgreSQL server binaries or psycopg missing (make test installs them)")
        pytest.skip("PostgreSQL server binaries or psycopg not installed (make test installs them when run as root)")
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster):
    """SQLAlchemy URL of a new empty database on the session's cluster, dropped after the test."""
    url = postgres_cluster.create_database()
    try:
        yield url
    finally:
        postgres_cluster.drop_database(url)


DB_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=DB_BACKENDS)
def db_url(request, tmp_path):
    """Each backend the web service supports: a SQLite file in tmp_path or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "mailpush-test.db")
    return request.getfixturevalue("postgres_url")


def wait_until_healthy(proc, url: str, timeout: float = 30) -> None:
    """Wait until a `mailpush serve` started as ``proc`` answers /healthz at ``url``; fail if it exits or takes
    longer than ``timeout`` seconds."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "mailpush serve did not come up"
        time.sleep(0.2)
