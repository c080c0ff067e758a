"""An application's own table behind RLS with apikeys.current_workspace() and
apikeys.has_scope() (the recipe in docs/postgrest.md)."""

from __future__ import annotations

from helpers import ALICE, NO_KEY, key, ok, projects, refused
from postgrest import request

INSERT = ('INSERT INTO "api"."projects" ("workspace_id", "name", "created_by") '
          'VALUES (%s, %s, %s) RETURNING "workspace_id", "name", "created_by"')


def test_get_with_a_key_returns_only_its_workspace(conn, world):
    a = ok(projects(conn, headers=key(world.reader_a["key"])))
    b = ok(projects(conn, headers=key(world.reader_b["key"])))
    assert [r["name"] for r in a if r["name"].startswith(("a-", "b-"))] == ["a-one", "a-two"]
    assert {r["workspace_id"] for r in a} == {world.ws_a}
    assert [r["name"] for r in b if r["name"].startswith(("a-", "b-"))] == ["b-one", "b-three", "b-two"]
    assert {r["workspace_id"] for r in b} == {world.ws_b}


def test_get_without_a_key_returns_nothing(conn, world):
    assert ok(projects(conn, headers=NO_KEY)) == []
    assert ok(projects(conn, claims=ALICE, headers=NO_KEY)) == []


def test_post_needs_the_write_scope_and_stamps_the_owner(conn, world):
    writer = world.mint(ALICE, world.ws_a, "writer-a", ["projects:write"])
    r = request(conn, "POST", "/projects", INSERT, (world.ws_a, "c-new", "mallory"), headers=key(writer["key"]))
    assert r.status == 201, r
    # stamp_created_by: the key's owner, whatever the client sent
    assert r.rows == [{"workspace_id": world.ws_a, "name": "c-new", "created_by": "alice"}]


def test_post_without_the_scope_is_42501(conn, world):
    before = world.writes()
    body = refused(request(conn, "POST", "/projects", INSERT, (world.ws_a, "c-denied", None),
                           headers=key(world.reader_a["key"])), "42501", 401)
    assert "row-level security" in body["message"]
    assert world.writes() == before


def test_post_into_another_workspace_is_42501(conn, world):
    writer = world.mint(ALICE, world.ws_a, "writer-a2", ["projects:write"])
    before = world.writes()
    refused(request(conn, "POST", "/projects", INSERT, (world.ws_b, "c-elsewhere", None),
                    headers=key(writer["key"])), "42501", 401)
    assert world.writes() == before


def test_anonymous_post_is_42501(conn, world):
    refused(request(conn, "POST", "/projects", INSERT, (world.ws_a, "c-anon", None), headers=NO_KEY),
            "42501", 401)


def test_member_role_is_confined_to_the_keys_workspace(conn, world):
    # apikeys.member_role() for an application's own policies: with a key,
    # the owner's role in the key's workspace only; with a JWT, every workspace
    q = "SELECT apikeys.member_role(%s) AS a, apikeys.member_role(%s) AS b"
    ws = (world.ws_a, world.ws_b)
    assert ok(request(conn, "GET", "/rpc/member_role", q, ws, headers=key(world.reader_a["key"]))) \
        == [{"a": "admin", "b": None}]
    assert ok(request(conn, "GET", "/rpc/member_role", q, ws, headers=key(world.reader_b["key"]))) \
        == [{"a": None, "b": "admin"}]
    assert ok(request(conn, "GET", "/rpc/member_role", q, ws, claims=ALICE, headers=NO_KEY)) \
        == [{"a": "admin", "b": "admin"}]
    assert ok(request(conn, "GET", "/rpc/member_role", q, ws, headers=NO_KEY)) == [{"a": None, "b": None}]
