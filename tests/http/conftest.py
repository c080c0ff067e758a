"""Fixtures for tests/http: the world and the server from harness.py, made
once per run and torn down at the end (tests/http/README.md)."""

from __future__ import annotations

import pytest

from harness import HarnessError, drop_world, make_world, start_server, stop_server


@pytest.fixture(scope="session")
def world():
    w, admin = make_world()
    yield w
    drop_world(w, admin)


@pytest.fixture(scope="session")
def server(world, tmp_path_factory):
    """postrust, started with PostgREST's settings; stopped at the end."""
    try:
        proc = start_server(tmp_path_factory.mktemp("postrust") / "postrust.log")
    except HarnessError as e:
        pytest.fail(str(e))
    yield proc
    stop_server(proc)
