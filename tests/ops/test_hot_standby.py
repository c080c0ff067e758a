"""Hot standby: verify_key works in read-only transactions and on hot
standbys; resolve_public_key only reads.

A primary (wal_level = replica) and a streaming standby made with
pg_basebackup -R -X stream. On the standby every transaction is read-only,
so any write the extension attempted (last_used_at, an audit row) would make
the call fail (25006, or XX000 when a transaction id is asked for first); the
calls are made with apikeys.last_used_interval = 0, so a verify would want to
write each time. Then the primary revokes a key, the
standby replays up to the primary's WAL position after that commit, and the
key must stop working there.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

# PostgREST's request replay: tests/client/postgrest.py, loaded by its path
# (the PyPI client library of the same name, which the http layer tests, is
# installed in the same venv)
_spec = importlib.util.spec_from_file_location(
    "postgrest_replay", Path(__file__).resolve().parent.parent / "client" / "postgrest.py")
postgrest = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = postgrest  # (its dataclasses look themselves up there)
_spec.loader.exec_module(postgrest)

from cluster import Cluster, Secret, call, one, sqlstate_of, wait_until

DB = "hs"
ORIGIN = "https://app.example"

SETUP_ROLES = """
CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
CREATE ROLE app NOLOGIN; GRANT app TO alice, bob;
CREATE ROLE anon NOLOGIN;
CREATE ROLE authenticator LOGIN NOINHERIT; GRANT anon TO authenticator;
"""

WHOAMI = ("SELECT apikeys.current_principal() AS principal, apikeys.current_key_id() AS key_id, "
          "apikeys.current_workspace() AS workspace_id, apikeys.has_scope('read') AS can_read")


class Pair:
    def __init__(self, primary: Cluster, standby: Cluster):
        self.primary, self.standby = primary, standby
        self.tokens: dict[str, Secret] = {}
        self.ids: dict[str, Any] = {}
        self.pks: dict[str, str] = {}
        self.ws: Any = None

    def p(self, user: str = "postgres") -> psycopg.Connection:
        return self.primary.connect(DB, user)

    def s(self, user: str = "postgres") -> psycopg.Connection:
        return self.standby.connect(DB, user)

    def replay_caught_up(self) -> None:
        """Wait until the standby has replayed everything the primary has
        written so far (call after the primary's COMMIT returned)."""
        with self.primary.connect() as pc:
            lsn = pc.execute("SELECT pg_current_wal_lsn()::text AS l").fetchone()["l"]
        with self.standby.connect() as sc:
            wait_until(lambda: sc.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn AS ok",
                                          (lsn,)).fetchone()["ok"], 30, f"standby replay up to {lsn}")


@pytest.fixture(scope="module")
def pair(clusters) -> Pair:
    primary = clusters("primary").init(
        {"wal_level": "replica", "max_wal_senders": 4, "hot_standby": "on"},
        hba=["host replication all 127.0.0.1/32 trust"])
    primary.start()
    with primary.connect() as admin:
        admin.execute(SETUP_ROLES)
        admin.execute(f"CREATE DATABASE {DB}")
        admin.execute("CREATE DATABASE other")
    pr = Pair(primary, None)  # type: ignore[arg-type]
    with pr.p() as su:
        su.execute("CREATE EXTENSION pg_apikeys")
        su.execute("SELECT apikeys.grant_to('app'), apikeys.grant_to('anon')")
        pr.ws = one(su, "alice", "SELECT apikeys.create_workspace('hs') AS id")["id"]
        call(su, "alice", "SELECT apikeys.add_member(%s, 'bob', 'member', '{read}')", (pr.ws,))
        call(su, "bob", "SELECT apikeys.accept_invitation(%s)", (pr.ws,))

        def mint(label: str, role: str, scopes: list[str]) -> None:
            r = one(su, role, "SELECT id, key FROM apikeys.create_key(%s::uuid, %s::text, %s::text[])",
                    (pr.ws, label.replace("_", "-"), scopes))
            pr.tokens[label], pr.ids[label] = Secret(r["key"]), r["id"]

        mint("good", "alice", ["read", "write"])
        mint("bob_key", "bob", ["read"])
        mint("revoked_early", "alice", ["read"])
        mint("revoked_later", "alice", ["read"])
        call(su, "alice", "SELECT apikeys.revoke_key(%s)", (pr.ids["revoked_early"],))
        for label, origins in (("pk", [ORIGIN]), ("pk_revoked", [ORIGIN])):
            r = one(su, "alice", "SELECT id, public_key FROM apikeys.create_public_key(%s::uuid, %s::text[])",
                    (pr.ws, origins))
            pr.pks[label], pr.ids[label] = r["public_key"], r["id"]
        call(su, "alice", "SELECT apikeys.revoke_public_key(%s)", (pr.ids["pk_revoked"],))
    with primary.connect("other") as o:  # a well-formed token unknown to DB
        o.execute("CREATE EXTENSION pg_apikeys")
        o.execute("SELECT apikeys.grant_to('app')")
        ws = one(o, "alice", "SELECT apikeys.create_workspace('x') AS id")["id"]
        pr.tokens["unknown"] = Secret(one(o, "alice", "SELECT key FROM apikeys.create_key(%s)", (ws,))["key"])
    pr.tokens["malformed"] = Secret("sk_notatoken")

    standby = clusters("standby").basebackup_of(primary)
    standby.start()
    pr.standby = standby
    with standby.connect() as sc:
        assert sc.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"] is True
    pr.replay_caught_up()
    return pr


def eager(conn: psycopg.Connection) -> psycopg.Connection:
    """Load the library, then make every verify want to write last_used_at."""
    conn.execute("SELECT apikeys.current_principal()")
    conn.execute("SET apikeys.last_used_interval = 0")
    return conn


def verify(conn: psycopg.Connection, token: Secret, scopes: list[str] | None = None,
           read_only: bool = False) -> list[dict[str, Any]]:
    with conn.transaction():
        if read_only:
            conn.execute("SET TRANSACTION READ ONLY")
        return conn.execute("SELECT * FROM apikeys.verify_key(%s::text, %s::text[])",
                            (token, scopes or [])).fetchall()


def resolve(conn: psycopg.Connection, pk: str, origin: str | None) -> list:
    return [r["workspace_id"] for r in
            conn.execute("SELECT * FROM apikeys.resolve_public_key(%s, %s)", (pk, origin)).fetchall()]


def get_whoami(conn: psycopg.Connection, token: Secret | None):
    """A PostgREST GET (BEGIN ... READ ONLY, role anon, pre-request authenticate())."""
    headers = {"accept": "application/json"}
    if token is not None:
        headers["x-api-key"] = token
    return postgrest.request(conn, "GET", "/rpc/whoami", WHOAMI, headers=headers, schema="apikeys")


LABELS = ["good", "bob_key", "revoked_early", "revoked_later", "unknown", "malformed"]


def test_standby_verifies_like_the_primary(pair: Pair):
    with eager(pair.p()) as p, eager(pair.s()) as s:
        for label in LABELS:
            for scopes in ([], ["write"]):
                on_primary = verify(p, pair.tokens[label], scopes, read_only=True)
                on_standby = verify(s, pair.tokens[label], scopes)
                assert on_standby == on_primary, (label, scopes)
                on_standby_ro = verify(s, pair.tokens[label], scopes, read_only=True)
                assert on_standby_ro == on_primary, (label, scopes)
        assert [r["key_id"] for r in verify(s, pair.tokens["good"])] == [pair.ids["good"]]
        assert verify(s, pair.tokens["bob_key"], ["write"]) == []
        for label in ("revoked_early", "unknown", "malformed"):
            assert verify(s, pair.tokens[label]) == [], label
        # a member's session on the standby, through the granted role
        with eager(pair.s()) as s_su:
            with s_su.transaction():
                s_su.execute("SET LOCAL ROLE bob")
                rows = s_su.execute("SELECT key_id FROM apikeys.verify_key(%s)", (pair.tokens["bob_key"],)).fetchall()
            assert [r["key_id"] for r in rows] == [pair.ids["bob_key"]]


def test_read_only_verify_writes_nothing(pair: Pair):
    """On the primary, in BEGIN READ ONLY with interval 0: no write, no error;
    the same verify read-write does record last_used_at (so the setting took)."""
    key = pair.ids["good"]
    with eager(pair.p()) as p:
        before = p.execute("SELECT last_used_at FROM apikeys.keys WHERE id = %s", (key,)).fetchone()
        assert verify(p, pair.tokens["good"], read_only=True)
        after = p.execute("SELECT last_used_at FROM apikeys.keys WHERE id = %s", (key,)).fetchone()
        assert after == before
        assert verify(p, pair.tokens["good"])
        written = p.execute("SELECT last_used_at FROM apikeys.keys WHERE id = %s", (key,)).fetchone()
        assert written["last_used_at"] is not None and written != before
    pair.replay_caught_up()


def test_standby_resolves_public_keys(pair: Pair):
    with pair.p() as p, pair.s() as s, pair.s("authenticator") as s_auth:
        s_auth.execute("SET ROLE anon")
        for label in ("pk", "pk_revoked"):
            for origin in (ORIGIN, "https://evil.example", None):
                expect = resolve(p, pair.pks[label], origin)
                assert resolve(s, pair.pks[label], origin) == expect
                assert resolve(s_auth, pair.pks[label], origin) == expect
        assert resolve(s_auth, pair.pks["pk"], ORIGIN) == [pair.ws]
        assert resolve(s_auth, pair.pks["pk_revoked"], ORIGIN) == []
        assert resolve(s_auth, "pk_nope", ORIGIN) == []


def test_authenticate_on_the_standby(pair: Pair):
    """PostgREST's GET, replayed on the standby (authenticate() as
    db-pre-request, READ ONLY, role anon): the key's owner is the principal."""
    with pair.s("authenticator") as s:
        r = get_whoami(s, pair.tokens["good"])
        assert r.status == 200 and r.sqlstate is None, r
        assert r.rows == [{"principal": "alice", "key_id": pair.ids["good"], "workspace_id": pair.ws,
                           "can_read": True}]
        r = get_whoami(s, None)
        assert r.status == 200 and r.rows == [{"principal": None, "key_id": None, "workspace_id": None,
                                               "can_read": False}], r
        for label in ("revoked_early", "unknown", "malformed"):
            r = get_whoami(s, pair.tokens[label])
            assert (r.status, r.sqlstate) == (401, "PT401"), (label, r)


def test_revoke_on_primary_reaches_the_standby(pair: Pair):
    tok, key = pair.tokens["revoked_later"], pair.ids["revoked_later"]
    with eager(pair.s()) as s, pair.s("authenticator") as s_auth:
        assert [r["key_id"] for r in verify(s, tok)] == [key]
        assert get_whoami(s_auth, tok).status == 200
        with pair.p() as p:
            call(p, "alice", "SELECT apikeys.revoke_key(%s)", (key,))
            # and a key minted after the base backup arrives too
            new = one(p, "alice", "SELECT id, key FROM apikeys.create_key(%s, 'late')", (pair.ws,))
        pair.replay_caught_up()
        assert verify(s, tok) == []
        r = get_whoami(s_auth, tok)
        assert (r.status, r.sqlstate) == (401, "PT401"), r
        assert [r["key_id"] for r in verify(s, Secret(new["key"]))] == [new["id"]]
        audit = s.execute("SELECT count(*) AS n FROM apikeys.audit_log WHERE key_id = %s AND action = 'key.revoked'",
                          (key,)).fetchone()["n"]
        assert audit == 1


def test_standby_logged_no_error(pair: Pair):
    """Nothing above made the standby log an error or a warning, except
    authenticate()'s PT401 for the bad keys."""
    unexpected = [line for line in pair.standby.log_text().splitlines()
                  if re.search(r"\b(ERROR|WARNING|PANIC)\b", line) and "invalid API key" not in line]
    assert not unexpected, "\n".join(unexpected[:10])


def test_writes_on_the_standby_are_refused_as_read_only(pair: Pair):
    """The standby refuses every write function as a read-only transaction
    (25006, which PostgREST answers with 405), the same error a READ ONLY
    transaction on the primary gets, never as an internal error (XX000,
    PostgREST 500). Runs last: it makes the standby log errors."""
    ws, key, pk = pair.ws, pair.ids["good"], pair.ids["pk"]
    calls = {
        "create_workspace": ("SELECT apikeys.create_workspace('nope')", None),
        "add_member": ("SELECT apikeys.add_member(%s, 'carol')", (ws,)),
        "accept_invitation": ("SELECT apikeys.accept_invitation(%s)", (ws,)),
        "remove_member": ("SELECT apikeys.remove_member(%s, 'bob')", (ws,)),
        "create_key": ("SELECT * FROM apikeys.create_key(%s, 'nope')", (ws,)),
        "revoke_key": ("SELECT apikeys.revoke_key(%s)", (key,)),
        "rotate_key": ("SELECT * FROM apikeys.rotate_key(%s)", (key,)),
        "create_public_key": ("SELECT * FROM apikeys.create_public_key(%s)", (ws,)),
        "revoke_public_key": ("SELECT apikeys.revoke_public_key(%s)", (pk,)),
    }
    with pair.p() as p, pair.s() as s:
        on_primary_ro, on_standby = {}, {}
        for name, (sql, args) in calls.items():
            on_standby[name] = sqlstate_of(s, "alice", sql, args)
            try:
                with p.transaction(force_rollback=True):
                    p.execute("SET TRANSACTION READ ONLY")
                    p.execute("SET LOCAL ROLE alice")
                    p.execute(sql, args)
                on_primary_ro[name] = None
            except psycopg.Error as e:
                on_primary_ro[name] = e.sqlstate
    wrong = {name: code for name, code in on_primary_ro.items() if code != "25006"}
    assert not wrong, f"in a READ ONLY transaction on the primary: {wrong}"
    wrong = {name: code for name, code in on_standby.items() if code != "25006"}
    assert not wrong, f"on the standby (expected 25006 for every one): {wrong}"
