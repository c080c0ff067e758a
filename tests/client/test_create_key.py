"""Minting through POST /rpc/create_key, and how far a key-authenticated
request reaches.

PostgREST maps 42501 to 403 only when the request's JWT role differs from
db-anon-role; a request authenticated by an API key alone carries no JWT, so
PostgREST answers its 42501 errors with 401 (see postgrest.http_status).
"""

from __future__ import annotations

import pytest

from helpers import (ALICE, BOB, NOBODY, NO_KEY, key, keys, ok, refused, rpc, whoami)


def count_keys(su) -> int:
    return su.execute("SELECT count(*) FROM apikeys.keys").fetchone()[0]


def test_jwt_admin_mints_a_key_that_then_verifies(conn, world):
    rows = ok(rpc(conn, "create_key", {"workspace_id": world.ws_a, "name": "Minted-By-JWT",
                                       "scopes": ["read"]}, claims=ALICE))
    assert len(rows) == 1
    new = rows[0]
    assert new["name"] == "minted-by-jwt"
    assert new["key"].startswith(new["prefix"]) and new["prefix"].startswith("sk_")
    # anyone may verify (GET /rpc/verify_key, anonymous)
    [v] = ok(rpc(conn, "verify_key", {"key": new["key"], "required_scopes": ["read"]}, method="GET"))
    assert (v["key_id"], v["workspace_id"], v["owner"], v["scopes"]) == (new["id"], world.ws_a, "alice", ["read"])
    # and it authenticates a request
    assert ok(whoami(conn, headers=key(new["key"])))[0]["key_id"] == new["id"]
    # the table holds no secret
    row = world.key_row(new["id"])
    assert new["key"] not in str(row)


def test_anonymous_mint_is_42501_401(conn, world, su):
    before = count_keys(su)
    body = refused(rpc(conn, "create_key", {"workspace_id": world.ws_a}), "42501", 401)
    assert body["message"].startswith("no principal")
    assert count_keys(su) == before


def test_jwt_without_sub_is_42501_but_403(conn, world, su):
    # no sub: anonymous to the extension (the error table says 401), but the JWT
    # role is not db-anon-role, so PostgREST answers 403
    before = count_keys(su)
    body = refused(rpc(conn, "create_key", {"workspace_id": world.ws_a}, claims=NOBODY), "42501", 403)
    assert body["message"].startswith("no principal")
    assert count_keys(su) == before


def test_member_beyond_own_scopes_is_42501_403(conn, world):
    body = refused(rpc(conn, "create_key", {"workspace_id": world.ws_a, "scopes": ["write"]}, claims=BOB),
                   "42501", 403)
    assert body["message"] == "permission denied: scopes beyond the caller's own"


def test_jwt_user_outside_the_workspace_is_42501_403(conn, world):
    body = refused(rpc(conn, "create_key", {"workspace_id": world.ws_b}, claims=BOB), "42501", 403)
    assert body["message"] == "permission denied: the caller is not a member of this workspace"


def test_unknown_workspace_is_PT404_404(conn, world):
    body = refused(rpc(conn, "create_key", {"workspace_id": "00000000-0000-4000-8000-000000000000"},
                       claims=ALICE), "PT404", 404)
    assert body["message"] == "workspace not found"


def test_name_taken_is_23505_409(conn, world):
    refused(rpc(conn, "create_key", {"workspace_id": world.ws_a, "name": "reader-a"}, claims=ALICE),
            "23505", 409)


def test_bad_argument_is_22023_400(conn, world):
    refused(rpc(conn, "create_key", {"workspace_id": world.ws_a, "name": "no spaces allowed"}, claims=ALICE),
            "22023", 400)


def test_key_without_manage_cannot_mint(conn, world, su):
    before = count_keys(su)
    msg = "permission denied: the API key in use lacks scope apikeys:manage"
    # an API key alone: no JWT, so PostgREST says 401
    body = refused(rpc(conn, "create_key", {"workspace_id": world.ws_a, "scopes": ["read"]},
                       headers=key(world.reader_a["key"])), "42501", 401)
    assert body["message"] == msg
    # the same with a JWT whose role is not anon: 403
    body = refused(rpc(conn, "create_key", {"workspace_id": world.ws_a, "scopes": ["read"]},
                       claims=NOBODY, headers=key(world.reader_a["key"])), "42501", 403)
    assert body["message"] == msg
    assert count_keys(su) == before


@pytest.fixture(scope="module")
def manager(world):
    return world.mint(ALICE, world.ws_a, "manager-a", ["apikeys:manage", "read"])


def test_key_with_manage_mints_in_its_workspace(conn, world, manager):
    [new] = ok(rpc(conn, "create_key", {"workspace_id": world.ws_a, "name": "minted-by-key",
                                        "scopes": ["read"]}, headers=key(manager["key"])))
    row = world.key_row(new["id"])
    assert (row["owner"], row["workspace_id"], row["scopes"]) == ("alice", world.ws_a, ["read"])
    assert ok(whoami(conn, headers=key(new["key"])))[0]["principal"] == "alice"


def test_key_with_manage_never_beyond_its_scopes(conn, world, manager):
    body = refused(rpc(conn, "create_key", {"workspace_id": world.ws_a, "scopes": ["write"]},
                       headers=key(manager["key"])), "42501", 401)
    assert body["message"] == "permission denied: scopes beyond the caller's own"


def test_key_with_manage_cannot_mint_in_another_workspace(conn, world, manager, su):
    # alice is admin of workspace B too; her key of A still may not act there
    before = count_keys(su)
    body = refused(rpc(conn, "create_key", {"workspace_id": world.ws_b, "scopes": ["read"]},
                       headers=key(manager["key"])), "42501", 401)
    assert body["message"] == "permission denied: the caller is not a member of this workspace"
    assert count_keys(su) == before


def test_key_cannot_revoke_another_workspaces_key(conn, world, manager):
    body = refused(rpc(conn, "revoke_key", {"key_id": world.reader_b["id"]}, headers=key(manager["key"])),
                   "PT404", 404)
    assert body["message"] == "key not found"
    assert world.key_row(world.reader_b["id"])["revoked_at"] is None


def test_key_cannot_manage_members_elsewhere_or_create_workspaces(conn, world, manager):
    refused(rpc(conn, "add_member", {"workspace_id": world.ws_b, "principal": "dave"},
                headers=key(manager["key"])), "42501", 401)
    refused(rpc(conn, "create_workspace", {"name": "By Key"}, headers=key(manager["key"])), "42501", 401)


def test_key_reads_only_its_workspaces_keys(conn, world, manager):
    seen = ok(keys(conn, headers=key(manager["key"])))
    assert seen and {r["workspace_id"] for r in seen} == {world.ws_a}
    # the same person with a JWT sees both workspaces
    assert {r["workspace_id"] for r in ok(keys(conn, claims=ALICE, headers=NO_KEY))} == {world.ws_a, world.ws_b}
    # and the other workspace's key reads only that workspace's
    assert {r["workspace_id"] for r in ok(keys(conn, headers=key(world.reader_b["key"])))} == {world.ws_b}
