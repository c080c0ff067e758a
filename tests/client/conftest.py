"""Fixtures: a fresh database, PostgREST's roles, an application table, and
workspaces, members and keys made the way a real client makes them (JWT users
calling the extension's functions through the request helper).

Everything connects over TCP to 127.0.0.1:$PGPORT (scripts/env.sh), the
superuser as `postgres`, requests as `authenticator`.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Callable

import psycopg
import pytest
from psycopg.rows import dict_row

from app_schema import SETUP_DATABASE, SETUP_ROLES
from helpers import ALICE, ok, rpc

HOST = "127.0.0.1"
PORT = int(os.environ.get("PGPORT", "28815"))
DB = "pg_apikeys_client"


def connect(dbname: str = DB, user: str = "authenticator", retries: int = 3) -> psycopg.Connection:
    """A connection over TCP. Autocommit on: the request helper sends
    BEGIN/COMMIT itself, as PostgREST's driver does. A refused connection is
    retried (the cluster may be restarting under another job)."""
    for attempt in range(retries):
        try:
            return psycopg.connect(
                host=HOST, port=PORT, dbname=dbname, user=user,
                autocommit=True, connect_timeout=10, application_name="pg_apikeys_client_tests",
            )
        except psycopg.OperationalError:
            if attempt == retries - 1:
                raise
            time.sleep(30)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def database():
    """Drop and create pg_apikeys_client; drop it again at the end."""
    admin = connect("postgres", "postgres")
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DB}")
    admin.execute(SETUP_ROLES)
    su = connect(DB, "postgres")
    su.execute(SETUP_DATABASE)
    su.close()
    yield DB
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="session")
def su(database) -> psycopg.Connection:
    """A superuser connection to the test database (for set-up and for reading
    what clients cannot: key_hashes, the whole audit log)."""
    c = connect(database, "postgres")
    yield c
    c.close()


@pytest.fixture(scope="session")
def new_conn(database) -> Callable[[], psycopg.Connection]:
    """Open further `authenticator` connections (closed at the end)."""
    opened: list[psycopg.Connection] = []

    def make() -> psycopg.Connection:
        c = connect(database, "authenticator")
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


@pytest.fixture(scope="session")
def conn(new_conn) -> psycopg.Connection:
    """The connection most requests share, as a PostgREST pool would."""
    return new_conn()


class World:
    """Workspaces, members and keys every test may use. Keys a test changes
    (revokes, expires, touches) are minted by that test, not taken from here."""

    def __init__(self, conn: psycopg.Connection, su: psycopg.Connection):
        self.conn = conn
        self.su = su
        # alice creates two workspaces through the API, as a JWT user
        self.ws_a = ok(rpc(conn, "create_workspace", {"name": "Acme"}, claims=ALICE))[0]["create_workspace"]
        self.ws_b = ok(rpc(conn, "create_workspace", {"name": "Beta"}, claims=ALICE))[0]["create_workspace"]
        # alice invites bob and carol; each joins by accepting as themself
        for who in ("bob", "carol"):
            ok(rpc(conn, "add_member", {"workspace_id": self.ws_a, "principal": who,
                                        "role": "member", "scopes": ["read"]}, claims=ALICE))
            ok(rpc(conn, "accept_invitation", {"workspace_id": self.ws_a},
                   claims={"sub": who, "role": "authenticated"}))
        # the application's rows (written by its own back office)
        with su.cursor() as cur:
            for ws, names in ((self.ws_a, ["a-one", "a-two"]), (self.ws_b, ["b-one", "b-two", "b-three"])):
                for n in names:
                    cur.execute("INSERT INTO api.projects (workspace_id, name, created_by) VALUES (%s, %s, 'seed')",
                                (ws, n))
        self.reader_a = self.mint(ALICE, self.ws_a, "reader-a", ["read"])
        self.reader_b = self.mint(ALICE, self.ws_b, "reader-b", ["read"])

    def mint(self, claims: dict, ws: uuid.UUID, name: str | None = None, scopes: list[str] | None = None,
             **extra: Any) -> dict[str, Any]:
        """create_key as a JWT user; returns {id, name, prefix, key}."""
        args: dict[str, Any] = {"workspace_id": ws, "scopes": scopes or []}
        if name is not None:
            args["name"] = name
        args.update(extra)
        rows = ok(rpc(self.conn, "create_key", args, claims=claims))
        assert len(rows) == 1
        return rows[0]

    def usage_mode(self) -> str:
        """How use is recorded: shared_memory (the cluster preloads the
        library) or in_transaction."""
        return self.su.execute("SELECT apikeys.usage_mode()").fetchone()[0]

    def flush(self) -> None:
        """Let the usage engine's worker write what is pending (nothing to
        do without the engine)."""
        assert self.su.execute("SELECT apikeys.flush_usage()").fetchone()[0] is True

    def key_row(self, key_id: uuid.UUID) -> dict[str, Any]:
        with self.su.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT * FROM apikeys.keys WHERE id = %s", (key_id,))
            return cur.fetchone()

    def writes(self) -> tuple[Any, ...]:
        """What a request may have written: audit rows, keys, the latest
        last_used_at of any key, application rows."""
        return self.su.execute(
            """SELECT (SELECT count(*) FROM apikeys.audit_log),
                      (SELECT count(*) FROM apikeys.keys),
                      (SELECT max(last_used_at) FROM apikeys.keys),
                      (SELECT count(*) FROM api.projects)"""
        ).fetchone()


@pytest.fixture(scope="session")
def world(conn, su) -> World:
    return World(conn, su)
