"""The key binding's lifetime, last_used_at in read-only and read-write
requests, and apikeys.key_role."""

from __future__ import annotations

import pytest

from conftest import DB
from helpers import ALICE, BOB, NO_KEY, key, ok, projects, refused, whoami
from postgrest import request

ANONYMOUS = {"principal": None, "key_id": None, "workspace_id": None, "db_role": "anon", "can_read": False}


def test_binding_ends_at_commit(conn, world):
    assert ok(whoami(conn, "POST", headers=key(world.reader_a["key"])))[0]["key_id"] == world.reader_a["id"]
    # next request, same connection, no header
    assert ok(whoami(conn, "POST", headers=NO_KEY)) == [ANONYMOUS]
    assert ok(projects(conn, headers=NO_KEY)) == []


def test_binding_ends_at_rollback(conn, world):
    # the request's own query fails after authenticate(): 22012 -> 400, ROLLBACK
    r = request(conn, "POST", "/rpc/boom", "SELECT 1 / 0", headers=key(world.reader_a["key"]))
    refused(r, "22012", 400)
    assert ok(whoami(conn, "GET", headers=NO_KEY)) == [ANONYMOUS]
    # and after a refused key
    refused(whoami(conn, headers=key("sk_live_not-a-key")), "PT401", 401)
    assert ok(whoami(conn, headers=NO_KEY)) == [ANONYMOUS]


def test_binding_does_not_leak_into_a_jwt_request(conn, world):
    ok(whoami(conn, headers=key(world.reader_a["key"])))
    [me] = ok(whoami(conn, claims=BOB, headers=NO_KEY))
    assert (me["principal"], me["key_id"], me["db_role"]) == ("bob", None, "authenticated")


def test_get_is_read_only_and_does_not_write_last_used_at(conn, world):
    if world.usage_mode() != "in_transaction":
        pytest.skip("in_transaction mode only; test_get_records_use_with_the_usage_engine covers the other")
    k = world.mint(ALICE, world.ws_a, "touch-me", ["read"])
    rows = ok(projects(conn, headers=key(k["key"])))
    assert {r["workspace_id"] for r in rows} == {world.ws_a}
    ok(whoami(conn, "GET", headers=key(k["key"])))
    # POST to a STABLE function: PostgREST runs it READ ONLY too
    ok(whoami(conn, "POST", headers=key(k["key"]), read_only=True))
    assert world.key_row(k["id"])["last_used_at"] is None
    # a read-write request writes it, once per apikeys.last_used_interval (60 s),
    # and writes no audit row
    audit = world.writes()[0]
    ok(whoami(conn, "POST", headers=key(k["key"])))
    first = world.key_row(k["id"])["last_used_at"]
    assert first is not None
    assert world.writes()[0] == audit
    ok(whoami(conn, "POST", headers=key(k["key"])))
    assert world.key_row(k["id"])["last_used_at"] == first


def test_get_records_use_with_the_usage_engine(conn, world):
    """With the preload, a GET (READ ONLY) records its use like any request:
    nothing is written by the request itself, the worker writes
    last_used_at and key_usage."""
    if world.usage_mode() != "shared_memory":
        pytest.skip("needs shared_preload_libraries = 'pg_apikeys'")
    k = world.mint(ALICE, world.ws_a, "touch-me-too", ["read"])
    before = world.writes()
    ok(projects(conn, headers=key(k["key"])))
    ok(whoami(conn, "GET", headers=key(k["key"])))
    ok(whoami(conn, "POST", headers=key(k["key"]), read_only=True))
    ok(whoami(conn, "POST", headers=key(k["key"])))
    # the requests wrote nothing: no audit row, no last_used_at
    assert world.writes() == before
    assert world.key_row(k["id"])["last_used_at"] is None
    world.flush()
    assert world.key_row(k["id"])["last_used_at"] is not None
    row = world.su.execute("SELECT sum(verified), sum(rejected) FROM apikeys.key_usage WHERE key_id = %s",
                           (k["id"],)).fetchone()
    assert row == (4, 0)


def test_read_only_transaction_refuses_writes_after_authenticate(conn, world):
    # a GET that tries to write (say, a VOLATILE function called by GET):
    # PostgreSQL's 25006 -> PostgREST's 405
    writer = world.mint(ALICE, world.ws_a, "ro-writer", ["projects:write"])
    r = request(conn, "GET", "/rpc/sneaky",
                'INSERT INTO "api"."projects" ("workspace_id", "name") VALUES (%s, %s) RETURNING "name"',
                (world.ws_a, "c-sneaky"), headers=key(writer["key"]))
    refused(r, "25006", 405)


@pytest.fixture
def key_role_conn(su, new_conn):
    """A new connection as authenticator with apikeys.key_role set (on the
    authenticator role, in this database; superuser only)."""
    def make(role: str):
        su.execute(f"ALTER ROLE authenticator IN DATABASE {DB} SET apikeys.key_role = '{role}'")
        return new_conn()
    try:
        yield make
    finally:
        su.execute(f"ALTER ROLE authenticator IN DATABASE {DB} RESET apikeys.key_role")


def test_key_role_switches_after_a_good_key(key_role_conn, world):
    c = key_role_conn("api_key_user")
    [me] = ok(whoami(c, headers=key(world.reader_a["key"])))
    assert (me["principal"], me["db_role"], me["key_id"]) == ("alice", "api_key_user", world.reader_a["id"])
    assert {r["workspace_id"] for r in ok(projects(c, headers=key(world.reader_a["key"])))} == {world.ws_a}
    # no header: the role PostgREST chose stays
    assert ok(whoami(c, headers=NO_KEY)) == [ANONYMOUS]
    assert ok(whoami(c, claims=BOB, headers=NO_KEY))[0]["db_role"] == "authenticated"
    # a refused key never switches
    refused(whoami(c, headers=key("sk_live_not-a-key")), "PT401", 401)
    # and the switch ends with the transaction
    assert ok(whoami(c, headers=NO_KEY))[0]["db_role"] == "anon"


def test_key_role_unset_on_other_connections(conn, world):
    # the shared connection was opened without the setting
    assert ok(whoami(conn, headers=key(world.reader_a["key"])))[0]["db_role"] == "anon"


def test_key_role_not_granted_to_authenticator_refuses_good_keys(key_role_conn, world):
    # a misconfiguration: authenticator is not a member of the key role
    # (here: postgres). PostgreSQL refuses the switch, so every good key fails
    # with 42501 (PostgREST: 401) instead of reaching the query
    c = key_role_conn("postgres")
    body = refused(whoami(c, headers=key(world.reader_a["key"])), "42501", 401)
    assert body["message"] == 'permission denied to set role "postgres"'
    assert ok(whoami(c, headers=NO_KEY)) == [ANONYMOUS]
