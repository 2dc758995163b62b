"""The machine's PostgreSQL for tests: started if it is not running, one fresh database a test."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import psycopg

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def ensure_running(admin_url: str = ADMIN_URL) -> None:
    """Start the local cluster (Debian's pg_ctlcluster) if it does not answer.

    Raises:
        RuntimeError: PostgreSQL is not installed or would not start.
    """
    if _reachable(admin_url):
        return
    versions = (
        sorted(p.name for p in Path("/etc/postgresql").glob("*"))
        if Path("/etc/postgresql").exists()
        else []
    )
    if not versions:
        raise RuntimeError("PostgreSQL is not installed here (no /etc/postgresql)")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
        check=False, capture_output=True, timeout=60,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _reachable(admin_url):
            return
        time.sleep(0.5)
    raise RuntimeError(f"PostgreSQL at {admin_url} did not start")


def create_database(admin_url: str = ADMIN_URL) -> str:
    """Create an empty database; returns its URL."""
    ensure_running(admin_url)
    name = f"cai_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    """Drop a database made by create_database."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
