"""authenticate() as PostgREST's db-pre-request: who a request is, and which
keys it refuses."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from helpers import (ALICE, BOB, CAROL, INVALID_API_KEY, NO_KEY, WHOAMI, key, keys, ok, projects,
                     refused, rpc, whoami)
from postgrest import request


def test_valid_key_binds_its_owner_and_workspace(conn, world):
    [me] = ok(whoami(conn, headers=key(world.reader_a["key"])))
    assert me == {
        "principal": "alice",
        "key_id": world.reader_a["id"],
        "workspace_id": world.ws_a,
        "db_role": "anon",          # no apikeys.key_role: the role stays db-anon-role
        "can_read": True,           # has_scope('read')
    }


def test_no_header_is_the_anonymous_flow(conn, world):
    [me] = ok(whoami(conn, headers=NO_KEY))
    assert me == {"principal": None, "key_id": None, "workspace_id": None,
                  "db_role": "anon", "can_read": False}
    # RLS: an anonymous request sees no application rows (there are five)
    assert ok(projects(conn, headers=NO_KEY)) == []
    assert world.su.execute("SELECT count(*) FROM api.projects").fetchone()[0] >= 5


def test_jwt_without_header_is_the_sub(conn, world):
    [me] = ok(whoami(conn, claims=BOB, headers=NO_KEY))
    assert me == {"principal": "bob", "key_id": None, "workspace_id": None,
                  "db_role": "authenticated", "can_read": False}
    # the application's policy admits API keys only
    assert ok(projects(conn, claims=BOB, headers=NO_KEY)) == []
    # the extension's own tables follow the JWT user: alice sees both workspaces' keys
    assert {r["workspace_id"] for r in ok(keys(conn, claims=ALICE))} == {world.ws_a, world.ws_b}


def typo(token: str) -> str:
    """The token with its last character changed: the checksum catches it."""
    return token[:-1] + ("Y" if token[-1] == "Z" else "Z")


@pytest.fixture(scope="module")
def bad_tokens(conn, su, world):
    """Tokens authenticate() must refuse, each for a different reason."""
    t: dict[str, str] = {}
    # expires by itself a moment from now
    soon = world.mint(ALICE, world.ws_a, "expires-soon",
                      expires_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2))
    t["expired (waited)"] = soon["key"]
    assert ok(whoami(conn, headers=key(soon["key"])))[0]["key_id"] == soon["id"]  # good until then

    revoked = world.mint(ALICE, world.ws_a, "revoked")
    ok(rpc(conn, "revoke_key", {"key_id": revoked["id"]}, claims=ALICE))
    t["revoked"] = revoked["key"]

    # expires_at may only move earlier: the superuser expires a key now
    old = world.mint(ALICE, world.ws_a, "expired", expires_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
    su.execute("UPDATE apikeys.keys SET expires_at = now() - interval '1 second' WHERE id = %s", (old["id"],))
    t["expired (moved earlier)"] = old["key"]

    # carol's key, then carol is removed from the workspace
    carols = world.mint(CAROL, world.ws_a, "carol-key", ["read"])
    assert ok(whoami(conn, headers=key(carols["key"])))[0]["principal"] == "carol"
    ok(rpc(conn, "remove_member", {"workspace_id": world.ws_a, "principal": "carol"}, claims=ALICE))
    t["owner removed"] = carols["key"]

    # well formed, right checksum, never stored: minted in a transaction that rolls back
    with su.transaction(force_rollback=True):
        su.execute("SELECT set_config('request.jwt.claims', '{\"sub\":\"alice\"}', true)")
        t["unknown"] = su.execute("SELECT key FROM apikeys.create_key(%s, 'ghost')", (world.ws_a,)).fetchone()[0]
    assert su.execute("SELECT count(*) FROM apikeys.keys WHERE name = 'ghost'").fetchone()[0] == 0

    t["bad checksum"] = typo(world.reader_a["key"])
    t["malformed"] = "sk_live_not-a-key"
    t["not a token"] = "hello"
    t["public key"] = ok(rpc(conn, "create_public_key", {"workspace_id": world.ws_a}, claims=ALICE))[0]["public_key"]
    t["truncated"] = world.reader_a["key"][:-1]
    t["padded with spaces"] = " " + world.reader_a["key"] + " "

    wait = (soon_expiry := world.key_row(soon["id"])["expires_at"]) - dt.datetime.now(dt.timezone.utc)
    time.sleep(max(0.0, wait.total_seconds()) + 0.1)
    assert soon_expiry < dt.datetime.now(dt.timezone.utc)
    return t


BAD = ["revoked", "expired (waited)", "expired (moved earlier)", "owner removed", "unknown",
       "bad checksum", "malformed", "not a token", "public key", "truncated", "padded with spaces"]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("why", BAD)
def test_bad_key_is_PT401(conn, world, bad_tokens, why, method):
    before = world.writes()
    body = refused(whoami(conn, method, headers=key(bad_tokens[why])), "PT401", 401)
    # one error for every cause, nothing that tells them apart
    assert body == INVALID_API_KEY
    assert world.writes() == before
    # and the connection goes on anonymous
    assert ok(whoami(conn))[0]["key_id"] is None


def test_key_and_jwt_the_key_wins(conn, world):
    # bob's JWT and alice's key: the key names the principal and the
    # workspace; the database role stays the JWT's
    [me] = ok(whoami(conn, claims=BOB, headers=key(world.reader_a["key"])))
    assert (me["principal"], me["key_id"], me["workspace_id"], me["db_role"]) \
        == ("alice", world.reader_a["id"], world.ws_a, "authenticated")


def test_bad_key_with_a_jwt_is_still_PT401(conn, bad_tokens):
    # PT401 maps to 401 whoever the JWT names: the key is checked first
    body = refused(whoami(conn, "POST", claims=ALICE, headers=key(bad_tokens["revoked"])), "PT401", 401)
    assert body == INVALID_API_KEY


def test_header_name_is_case_insensitive(conn, world):
    # PostgREST lower-cases header names; a hand-made request.headers may not
    r = request(conn, "GET", "/rpc/whoami", WHOAMI,
                headers=json.dumps({"X-Api-Key": world.reader_a["key"]}))
    assert ok(r)[0]["key_id"] == world.reader_a["id"]
