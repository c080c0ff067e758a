"""Fixtures for the ops tests: throw-away clusters (see cluster.py).

`clusters(name)` makes a cluster object for the current test module; every
cluster made is stopped (pg_ctl stop -m immediate) and its directory removed
when the module ends, whatever happened. One run at a time holds the port
range (a lock in /tmp/pg_apikeys_ops).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

import pytest

from cluster import BASE, IS_ROOT, PGBIN, Cluster, PortPool, run

# PostgREST's request sequence, shared with the client tests (postgrest.py
# is self-contained); appended, so that our own modules win any name clash
sys.path.append(str(Path(__file__).resolve().parent.parent / "client"))


@pytest.fixture(scope="session")
def ports():
    """The port range 28830-28839 and /tmp/pg_apikeys_ops belong to one run
    at a time: wait for (at most 120 s) and hold an exclusive lock."""
    BASE.mkdir(exist_ok=True)
    try:
        os.chmod(BASE, 0o1777)
    except PermissionError:
        pass
    fd = os.open(BASE / ".lock", os.O_RDONLY | os.O_CREAT, 0o644)
    deadline = time.monotonic() + 120
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail("another ops run holds /tmp/pg_apikeys_ops/.lock")
            time.sleep(1)
    yield PortPool()
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@pytest.fixture(scope="session", autouse=True)
def prerequisites():
    """Fail early and clearly when the machine cannot run the layer."""
    if IS_ROOT:
        run(["id", "postgres"])  # initdb needs a non-root owner
    for tool in ("initdb", "pg_ctl", "pg_dump", "pg_restore", "pg_basebackup", "psql"):
        assert (PGBIN / tool).exists(), f"{PGBIN / tool} is missing"
    sharedir = run([PGBIN / "pg_config", "--sharedir"]).stdout.strip()
    assert Path(sharedir, "extension", "pg_apikeys.control").exists(), \
        "pg_apikeys is not installed in this PostgreSQL: run make install first"


@pytest.fixture(scope="module")
def clusters(ports):
    made: list[Cluster] = []

    def make(name: str, pgbin: Path | None = None) -> Cluster:
        c = Cluster(name, ports, pgbin)
        made.append(c)
        return c

    yield make
    errors = []
    for c in reversed(made):  # standbys before their primaries
        try:
            c.destroy()
        except Exception as e:  # keep stopping the others
            errors.append(f"{c.name}: {e}")
    assert not errors, errors
