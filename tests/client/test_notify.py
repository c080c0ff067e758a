"""NOTIFY apikeys_revoked: an application that caches verifications LISTENs
and drops a key when its id arrives. Sent whenever a key stops verifying
early (revoke, leak report, rotation with no grace, member removal), at
commit only, never for a rolled-back change (docs/managing-keys.md). The
test cluster names the channel (apikeys.notify_channel = apikeys_revoked);
without it nothing is sent, and no client role can name one."""

from __future__ import annotations

import psycopg
import pytest

from helpers import ALICE, BOB, ok, rpc


def listener(database: str) -> psycopg.Connection:
    from conftest import connect
    c = connect(database, "postgres")
    c.execute("LISTEN apikeys_revoked")
    return c


def received(listen: psycopg.Connection, wait: float = 1.0) -> list[str]:
    return [n.payload for n in listen.notifies(timeout=wait)]


def test_revoke_notifies_at_commit_with_the_key_id(conn, world, database):
    listen = listener(database)
    try:
        k = world.mint(ALICE, world.ws_a, "notified", ["read"])
        assert received(listen, 0.3) == []
        ok(rpc(conn, "revoke_key", {"key_id": k["id"]}, claims=ALICE))
        assert received(listen) == [str(k["id"])]
        # revoking again changes nothing and says nothing
        ok(rpc(conn, "revoke_key", {"key_id": k["id"]}, claims=ALICE))
        assert received(listen, 0.3) == []
    finally:
        listen.close()


def test_rolled_back_revoke_notifies_nothing(conn, world, database, su):
    listen = listener(database)
    try:
        k = world.mint(ALICE, world.ws_a, "rolled-back", ["read"])
        with su.transaction(force_rollback=True):
            su.execute("UPDATE apikeys.keys SET revoked_at = now() WHERE id = %s", (k["id"],))
        assert received(listen, 0.5) == []
    finally:
        listen.close()


def test_rotation_without_grace_and_member_removal_notify(conn, world, database, su):
    listen = listener(database)
    try:
        old = world.mint(ALICE, world.ws_a, "rotated-now", ["read"])
        ok(rpc(conn, "rotate_key", {"key_id": old["id"]}, claims=ALICE))
        assert received(listen) == [str(old["id"])]
        # a member's keys die with the membership: one notice per key
        ok(rpc(conn, "add_member", {"workspace_id": world.ws_b, "principal": "bob", "role": "member",
                                    "scopes": ["read"]}, claims=ALICE))
        ok(rpc(conn, "accept_invitation", {"workspace_id": world.ws_b}, claims=BOB))
        b1 = world.mint(BOB, world.ws_b, "bob-one", ["read"])
        b2 = world.mint(BOB, world.ws_b, "bob-two", ["read"])
        ok(rpc(conn, "remove_member", {"workspace_id": world.ws_b, "principal": "bob"}, claims=ALICE))
        assert sorted(received(listen)) == sorted([str(b1["id"]), str(b2["id"])])
    finally:
        listen.close()


def test_leak_report_notifies(conn, world, database, su):
    listen = listener(database)
    try:
        k = world.mint(ALICE, world.ws_a, "leaked-notify", ["read"])
        with su.transaction():
            rows = su.execute("SELECT label FROM apikeys.report_leaked(%s, 'test')", ([k["key"]],)).fetchall()
        assert [r[0] for r in rows] == ["true_positive"]
        assert received(listen) == [str(k["id"])]
    finally:
        listen.close()


def test_suspension_notifies_and_resumption_does_not(conn, world, database):
    """A suspended key stops verifying like a revoked one, so caches drop it
    on the same channel; resuming sends nothing (a cache misses, then
    verifies again)."""
    listen = listener(database)
    try:
        k = world.mint(ALICE, world.ws_a, "paused", ["read"])
        ok(rpc(conn, "suspend_key", {"key_id": k["id"]}, claims=ALICE))
        assert received(listen) == [str(k["id"])]
        ok(rpc(conn, "resume_key", {"key_id": k["id"]}, claims=ALICE))
        assert received(listen, 0.3) == []
    finally:
        listen.close()


def test_no_channel_no_notice_and_clients_cannot_name_one(conn, world, database, su):
    """PostgreSQL has no privilege on LISTEN: any role that can connect
    hears any channel. So key ids are sent only on the channel a superuser
    names in apikeys.notify_channel; with it empty nothing is sent, and a
    client role cannot set it (superuser-only)."""
    listen = listener(database)
    try:
        k = world.mint(ALICE, world.ws_a, "unannounced", ["read"])
        su.execute("SET apikeys.notify_channel = ''")
        try:
            su.execute("UPDATE apikeys.keys SET revoked_at = now() WHERE id = %s", (k["id"],))
        finally:
            su.execute("RESET apikeys.notify_channel")
        assert received(listen, 0.5) == []
    finally:
        listen.close()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with conn.transaction():
            conn.execute("SELECT apikeys.usage_mode()")  # the library is loaded
            conn.execute("SET LOCAL apikeys.notify_channel = 'mine'")
