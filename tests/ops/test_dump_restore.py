"""Dump and restore keeps keys verifiable and keeps triggers, policies and
grants (docs/security.md).

One cluster. Database `src` (keydata.populate) gets workspaces, members and keys of every kind
(active, revoked, expired, rotated with and without grace, imported, a removed
member's), public keys (one revoked) and the audit rows all that writes. We
record what every token verifies to, what every public key resolves to, what
every role can see and do, and the catalog (RLS flags, policies, triggers,
privileges). Then `pg_dump -Fc` | `pg_restore` and `pg_dump` (plain SQL) |
`psql` each restore into a fresh database, and the restored database must
answer exactly as the source did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from cluster import Cluster, Secret, call, redact, sqlstate_of
from keydata import (BOB_OWNS, DEAD, ID_COLUMN, LIVE, ORIGIN, Source, catalog, guarded, populate,
                     resolve_all, table_rows, verify_all, visibility)


def build(c: Cluster) -> Source:
    s = populate(c, "src")
    s.dumps["custom"] = c.dir / "src.dump"
    s.dumps["plain"] = c.dir / "src.sql"
    c.client("pg_dump", "-Fc", "-f", s.dumps["custom"], "src")
    c.client("pg_dump", "-Fp", "-f", s.dumps["plain"], "src")
    return s


@pytest.fixture(scope="module")
def source(clusters) -> Source:
    c = clusters("dump")
    c.init()
    c.start()
    return build(c)


@dataclass
class Restored:
    fmt: str
    db: str
    conn: psycopg.Connection
    returncode: int
    stderr: str
    rows: Any
    catalog: Any


# custom: pg_dump -Fc | pg_restore; plain: pg_dump | psql -- what an operator
# runs, with no flags. Restored rows carry their created_at from the past, so
# the audit triggers leave them alone (the dump brings their audit rows).
@pytest.fixture(scope="module", params=["custom", "plain"])
def restored(request, source: Source):
    """A fresh database restored from the dump. pg_restore and psql go on past
    an error (their defaults), so that the tests below show what survived; the
    first test asserts there was none."""
    fmt, c = request.param, source.cluster
    db = f"dst_{fmt}"
    with c.connect() as admin:
        admin.execute(f"CREATE DATABASE {db}")
    if fmt == "custom":
        p = c.client("pg_restore", "-d", db, source.dumps["custom"], check=False)
        rc, err = p.returncode, p.stderr
    else:
        p = c.client("psql", "-X", "-q", "-d", db, "-f", source.dumps["plain"], check=False)
        rc, err = p.returncode, p.stderr
    conn = c.connect(db)
    r = Restored(fmt, db, conn, rc, redact(err),
                 rows=guarded(table_rows, conn), catalog=guarded(catalog, conn))
    yield r
    conn.close()


# -- the source is what we think it is (so the comparisons below mean something)


def test_source_answers_as_designed(source: Source):
    v = source.snap["verify"]
    live = {label for label in source.tokens if v[(label, "postgres", "")]}
    assert live == LIVE
    assert DEAD == set(source.tokens) - LIVE
    assert [r["key_id"] for r in v[("alice_live", "bob", "write")]] == [source.ids["alice_live"]]
    assert v[("bob_read", "postgres", "write")] == []  # missing scope
    res = source.snap["resolve"]
    assert res[("pk_origin", ORIGIN, "app")] == [source.ws["acme"]]
    assert res[("pk_origin", "https://evil.example", "app")] == []
    assert res[("pk_any", "-", "app")] == [source.ws["beta"]]
    assert res[("pk_revoked", ORIGIN, "app")] == []
    vis = source.snap["visibility"]
    assert set(vis[("bob", "keys")]) == {str(source.ids[k]) for k in BOB_OWNS}
    assert vis[("bob", "key_hashes")] == "42501"
    assert all(vis[("mallory", t)] == "42501" for t in ID_COLUMN)
    cat = source.snap["catalog"]
    assert len(cat["rls"]) == 14 and all(r[1] and r[2] for r in cat["rls"]), cat["rls"]
    assert not any(ok for name, *_, ok in cat["function_privileges"] if name in ("public", "mallory"))
    assert any(ok for name, *_, ok in cat["function_privileges"] if name == "app")
    assert ("app", True, False) in cat["schema_privileges"]
    assert ("public", False, False) in cat["schema_privileges"]
    assert ("app", "keys", "SELECT", True) in cat["table_privileges"]
    assert ("app", "key_hashes", "SELECT", False) in cat["table_privileges"]
    actions = {json.loads(row)["action"] for row in source.snap["rows"]["audit_log"]}
    assert {"workspace.created", "member.added", "member.removed", "key.created", "key.imported",
            "key.revoked", "key.rotated", "key.expiry_shortened", "public_key.created",
            "public_key.revoked"} <= actions


# -- the restored database ------------------------------------------------------


def test_restore_reports_no_error(restored: Restored):
    errors = [line for line in restored.stderr.splitlines() if "ERROR" in line or "error" in line]
    assert restored.returncode == 0 and not errors, \
        f"{restored.fmt} restore: exit {restored.returncode}\n" + "\n".join(restored.stderr.splitlines()[:24])


def test_rows_identical(restored: Restored, source: Source):
    """Every row of every apikeys table (audit_log included) and both sequences."""
    assert isinstance(restored.rows, dict), restored.rows
    src = source.snap["rows"]
    assert sorted(restored.rows) == sorted(src)
    for t in src:
        assert restored.rows[t] == src[t], f"apikeys.{t} differs after the {restored.fmt} restore"


def test_tokens_verify_as_before(restored: Restored, source: Source):
    after = verify_all(restored.conn, source.tokens)
    wrong = sorted(k for k in source.snap["verify"] if after[k] != source.snap["verify"][k])
    assert not wrong, f"{len(wrong)} of {len(after)} verify_key answers differ, e.g. {wrong[:8]}"


def test_public_keys_resolve_as_before(restored: Restored, source: Source):
    after = resolve_all(restored.conn, source.pks)
    assert after == source.snap["resolve"]


def test_rls_enabled_and_forced(restored: Restored, source: Source):
    assert isinstance(restored.catalog, dict), restored.catalog
    rls = restored.catalog["rls"]
    assert [r[0] for r in rls] == ["audit_log", "invitations", "key_hashes", "key_usage", "keys", "members",
                                   "owner_limits", "plans", "public_keys", "scanning_keys", "suspensions", "usage_rounds",
                                   "usage_sources", "workspaces"]
    assert all(r[1] and r[2] for r in rls), rls
    assert restored.catalog["policies"] == source.snap["catalog"]["policies"]


def test_grants_intact(restored: Restored, source: Source):
    assert isinstance(restored.catalog, dict), restored.catalog
    for part in ("extension", "functions", "relacl", "nspacl", "function_privileges",
                 "table_privileges", "sequence_privileges", "schema_privileges"):
        assert restored.catalog[part] == source.snap["catalog"][part], part


def test_triggers_intact(restored: Restored, source: Source):
    assert isinstance(restored.catalog, dict), restored.catalog
    trig = restored.catalog["triggers"]
    assert trig == source.snap["catalog"]["triggers"]
    assert trig and all(t[2] == "A" for t in trig), "every trigger must stay ENABLE ALWAYS"


def test_roles_see_what_they_saw(restored: Restored, source: Source):
    """RLS after the restore: a member sees their own keys only, an admin
    their workspaces', the ungranted role nothing; the same as before."""
    vis = visibility(restored.conn)
    assert set(vis[("bob", "keys")]) == {str(source.ids[k]) for k in BOB_OWNS}
    assert vis[("bob", "audit_log")] == [] and vis[("bob", "public_keys")] == []
    assert vis[("bob", "key_hashes")] == "42501"
    assert str(source.ids["carol_gamma"]) not in vis[("alice", "keys")]
    assert vis == source.snap["visibility"]


def replica_sqlstate(conn: psycopg.Connection, sql: str, arg: Any) -> str | None:
    try:
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(sql, (arg,))
    except psycopg.Error as e:
        return e.sqlstate
    return None


def test_latches_and_no_delete_hold(restored: Restored, source: Source):
    """Even the superuser, even with session_replication_role = replica."""
    conn = restored.conn
    revoked = call(conn, None, "SELECT revoked_at FROM apikeys.keys WHERE id = %s", (source.ids["bob_revoked"],))
    assert len(revoked) == 1 and revoked[0]["revoked_at"] is not None, "the revoked key's row is missing"
    k, e = source.ids["bob_revoked"], source.ids["alice_expired"]
    attempts = {
        "clear revoked_at": ("UPDATE apikeys.keys SET revoked_at = NULL WHERE id = %s", k),
        "move revoked_at": ("UPDATE apikeys.keys SET revoked_at = revoked_at + interval '1 day' WHERE id = %s", k),
        "extend expires_at": ("UPDATE apikeys.keys SET expires_at = NULL WHERE id = %s", e),
        "clear public key revoked_at": ("UPDATE apikeys.public_keys SET revoked_at = NULL WHERE id = %s",
                                        source.pk_ids["pk_revoked"]),
    }
    for what, (sql, arg) in attempts.items():
        assert sqlstate_of(conn, None, sql, (arg,)) == "23514", what
        assert replica_sqlstate(conn, sql, arg) == "23514", what + " (replica)"
    for t, col in ID_COLUMN.items():
        assert sqlstate_of(conn, None, f"DELETE FROM apikeys.{t} WHERE {col} IS NOT NULL") == "42501", t
    assert sqlstate_of(conn, None, "TRUNCATE apikeys.audit_log") in ("42501", "0A000")
    assert sqlstate_of(conn, None, "TRUNCATE apikeys.keys CASCADE") == "42501"
    assert call(conn, None, "SELECT * FROM apikeys.verify_key(%s)", (source.tokens["bob_revoked"],)) == []


def test_restored_database_keeps_working(restored: Restored, source: Source):
    """Minting after the restore (in a transaction rolled back): the audit
    sequence continues after the restored rows, and the new key verifies."""
    conn = restored.conn
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL ROLE alice")
        new = conn.execute("SELECT id, key FROM apikeys.create_key(%s, 'after-restore')",
                           (source.ws["acme"],)).fetchone()
        conn.execute("RESET ROLE")
        rows = conn.execute("SELECT key_id FROM apikeys.verify_key(%s)", (Secret(new["key"]),)).fetchall()
        assert [r["key_id"] for r in rows] == [new["id"]]
        audit = conn.execute("SELECT id FROM apikeys.audit_log WHERE key_id = %s AND action = 'key.created'",
                             (new["id"],)).fetchall()
        assert len(audit) == 1
        assert audit[0]["id"] > max(json.loads(r)["id"] for r in source.snap["rows"]["audit_log"])
