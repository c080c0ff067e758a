"""Every client-facing function, cancelled while it waits for a lock: while
a superuser holds ACCESS EXCLUSIVE on every table of the extension (as
ALTER EXTENSION UPDATE, REINDEX or VACUUM FULL do), each call made with
statement_timeout = 300ms ends as that statement's 57014 (or answers, if it
needs no table), and nothing crashes: the caller's session, the lock
holder's and the postmaster (its start time) all live on. A backend that
let the error unwind across a Rust frame would abort, and the postmaster
would reinitialise every connection."""

from __future__ import annotations

import psycopg
import pytest

from conftest import connect

TABLES = ("keys", "key_hashes", "workspaces", "members", "invitations", "public_keys", "audit_log",
          "key_usage", "owner_limits", "scanning_keys")


def calls(token: str, key_id, ws) -> list[tuple[str, tuple]]:
    return [
        ("SELECT * FROM apikeys.verify_key(%s)", (token,)),
        ("SELECT * FROM apikeys.verify_key(%s, '{read}')", (token,)),
        ("SELECT * FROM apikeys.check_key(%s)", (token,)),
        ("SELECT * FROM apikeys.check_key(%s, '{read}', 2)", (token,)),
        ("SELECT set_config('request.headers', json_build_object('x-api-key', %s::text)::text, false),"
         " apikeys.authenticate()", (token,)),
        ("SELECT * FROM apikeys.create_key(%s, 'cancelled')", (ws,)),
        ("SELECT * FROM apikeys.create_key(%s, 'cancelled', rate_limit => 1, rate_window => '1 hour')", (ws,)),
        ("SELECT apikeys.revoke_key(%s)", (key_id,)),
        ("SELECT * FROM apikeys.rotate_key(%s)", (key_id,)),
        ("SELECT apikeys.update_key(%s, name => 'renamed')", (key_id,)),
        ("SELECT apikeys.suspend_key(%s)", (key_id,)),
        ("SELECT apikeys.resume_key(%s)", (key_id,)),
        ("SELECT apikeys.set_owner_limit(%s, 'alice', NULL, NULL)", (ws,)),
        ("SELECT apikeys.import_key(%s, 'postgres', 'imported', repeat('a', 64))", (ws,)),
        ("SELECT apikeys.create_workspace('cancelled')", ()),
        ("SELECT apikeys.add_member(%s, 'dora')", (ws,)),
        ("SELECT apikeys.remove_member(%s, 'dora')", (ws,)),
        ("SELECT apikeys.accept_invitation(%s)", (ws,)),
        ("SELECT * FROM apikeys.create_public_key(%s)", (ws,)),
        ("SELECT apikeys.revoke_public_key(%s)", (key_id,)),
        ("SELECT * FROM apikeys.resolve_public_key('pk_0000000000000000000000000000000000000000000000')", ()),
        ("SELECT * FROM apikeys.expiring_keys()", ()),
        ("SELECT * FROM apikeys.report_leaked(ARRAY[%s])", (token,)),
        ("SELECT apikeys.github_secret_scanning('[]', 'kid', 'sig')", ()),
        ("SELECT apikeys.current_principal(), apikeys.current_key_id(), apikeys.current_workspace(),"
         " apikeys.has_scope('read'), apikeys.member_role(%s)", (ws,)),
        ("SELECT * FROM apikeys.usage_stats()", ()),
        ("SELECT apikeys.flush_usage(100)", ()),
        ("SELECT apikeys.usage_mode()", ()),
    ]


def test_every_function_cancelled_mid_wait_is_an_error_not_a_crash(world, su):
    k = world.mint({"role": "authenticated", "sub": "alice"}, world.ws_a, "cancel-me", ["read"])
    started = su.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
    holder = connect(su.info.dbname, "postgres")
    caller = connect(su.info.dbname, "postgres")
    try:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE " + ", ".join(f"apikeys.{t}" for t in TABLES) + " IN ACCESS EXCLUSIVE MODE")
        caller.execute("SET statement_timeout = '300ms'")
        outcomes = {}
        for sql, args in calls(k["key"], k["id"], world.ws_a):
            try:
                caller.execute(sql, args)
                outcomes[sql] = "answered"
            except psycopg.Error as e:
                outcomes[sql] = e.sqlstate
            # the caller's session is alive and usable after each
            assert caller.execute("SELECT 1").fetchone()[0] == 1, sql
        # what must wait for a table: every function that reads one
        # (a malformed public key, the engine's own state and the caller's
        # identity need none; limits without the engine are refused first)
        needs_none = ("usage_mode", "current_principal", "flush_usage", "usage_stats", "resolve_public_key")
        for sql, got in outcomes.items():
            if any(n in sql for n in needs_none):
                assert got in ("answered", "57014"), f"{sql}: {got}"
            elif "rate_limit =>" in sql and world.usage_mode() == "in_transaction":
                assert got == "0A000", f"{sql}: {got}"
            else:
                assert got == "57014", f"{sql}: {got}"
        assert holder.execute("SELECT 1").fetchone()[0] == 1
        holder.execute("ROLLBACK")
    finally:
        holder.close()
        caller.close()
    # no backend aborted: the postmaster never reinitialised
    assert su.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started
    assert su.execute("SELECT count(*) FROM apikeys.verify_key(%s)", (k["key"],)).fetchone()[0] == 1
