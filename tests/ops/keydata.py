"""The key data the ops tests share: a database with every kind of key,
member, public key and audit row, made as real roles, and the snapshots the
tests compare (rows, catalog, what every token verifies to, what every role
sees). Used by test_dump_restore.py and test_upgrade.py.

Tokens never reach a message: they are `Secret`s (see cluster.py).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from cluster import Cluster, Secret, call, one, redact

ORIGIN = "https://app.example"
ORIGINS = [None, ORIGIN, "https://evil.example"]
SCOPE_SETS = [[], ["read"], ["write"]]
VERIFIERS = [None, "bob"]  # the superuser, and a member acting through role app
# PUBLIC, a role granted through grant_to, one that inherits it, and one never granted
PRIV_ROLES = ["public", "app", "alice", "bob", "mallory"]
SEEING_ROLES = ["alice", "bob", "carol", "dave", "app", "mallory"]
ID_COLUMN = {"workspaces": "id", "members": "id", "keys": "id", "key_hashes": "key_id",
             "public_keys": "id", "audit_log": "id"}

# Labels of the tokens, by what verify_key(token) must answer in the source.
LIVE = {"alice_live", "alice_future", "bob_read", "rot_grace_old", "rot_grace_new",
        "rot_zero_new", "carol_gamma", "dave_beta", "imported"}
DEAD = {"bob_revoked", "alice_expired", "rot_zero_old", "carol_removed", "unknown",
        "malformed", "bad_checksum"}
BOB_OWNS = {"bob_read", "bob_revoked", "imported"}

ROLES = """
CREATE ROLE app NOLOGIN;
CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN; CREATE ROLE dave LOGIN;
CREATE ROLE mallory LOGIN;  -- never granted anything
GRANT app TO alice, bob, carol, dave;
"""


@dataclass
class Source:
    cluster: Cluster
    tokens: dict[str, Secret] = field(default_factory=dict)
    ids: dict[str, Any] = field(default_factory=dict)       # label -> key id
    pks: dict[str, str] = field(default_factory=dict)       # label -> public key (not secret)
    pk_ids: dict[str, Any] = field(default_factory=dict)
    ws: dict[str, Any] = field(default_factory=dict)
    snap: dict[str, Any] = field(default_factory=dict)
    dumps: dict[str, Path] = field(default_factory=dict)


# -- what we compare ---------------------------------------------------------


def table_rows(conn: psycopg.Connection) -> dict[str, Any]:
    """Every row of every apikeys table and sequence, as the superuser (who is
    not subject to RLS). key_hashes is compared through md5 of the stored hash,
    so a failure never prints a hash."""
    out: dict[str, Any] = {}
    for r in call(conn, None, """SELECT relname, relkind FROM pg_class
                                  WHERE relnamespace = 'apikeys'::regnamespace AND relkind IN ('r', 'S')
                                  ORDER BY 1"""):
        t = r["relname"]
        if r["relkind"] == "S":
            sql = f"SELECT last_value::text || '/' || is_called::text AS r FROM apikeys.{t}"
        elif t == "key_hashes":
            sql = "SELECT key_id::text || ' ' || md5(hash) AS r FROM apikeys.key_hashes ORDER BY 1"
        else:
            sql = f"SELECT row_to_json(t)::text AS r FROM apikeys.{t} t ORDER BY 1"
        out[t] = [x["r"] for x in call(conn, None, sql)]
    return out


def catalog(conn: psycopg.Connection) -> dict[str, Any]:
    """RLS flags, policies, triggers, functions, ACLs and effective privileges
    of every object in schema apikeys."""
    def q(sql: str, params: Any = None) -> list[tuple]:
        with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
            return cur.execute(sql, params).fetchall()

    ns = "'apikeys'::regnamespace"
    return {
        "extension": q("""SELECT extversion, extconfig::regclass[]::text[], extcondition
                            FROM pg_extension WHERE extname = 'pg_apikeys'"""),
        "rls": q(f"""SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class
                      WHERE relnamespace = {ns} AND relkind = 'r' ORDER BY 1"""),
        "policies": q("""SELECT tablename, policyname, permissive, roles::text[], cmd, qual, with_check
                           FROM pg_policies WHERE schemaname = 'apikeys' ORDER BY 1, 2"""),
        "triggers": q(f"""SELECT t.tgrelid::regclass::text, t.tgname, t.tgenabled::text,
                                 pg_get_triggerdef(t.oid)
                            FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                           WHERE c.relnamespace = {ns} AND NOT t.tgisinternal ORDER BY 1, 2"""),
        "functions": q(f"""SELECT p.oid::regprocedure::text, p.prosecdef, p.provolatile::text,
                                  p.proconfig, p.proacl::text
                             FROM pg_proc p WHERE p.pronamespace = {ns} ORDER BY 1"""),
        "relacl": q(f"""SELECT relname, relkind::text, relacl::text FROM pg_class
                         WHERE relnamespace = {ns} AND relkind IN ('r', 'S') ORDER BY 1"""),
        "nspacl": q("SELECT nspacl::text FROM pg_namespace WHERE nspname = 'apikeys'"),
        "function_privileges": q(f"""
            SELECT r.name, p.oid::regprocedure::text, has_function_privilege(r.name, p.oid, 'EXECUTE')
              FROM unnest(%s::text[]) r(name), pg_proc p
             WHERE p.pronamespace = {ns} ORDER BY 1, 2""", (PRIV_ROLES,)),
        "table_privileges": q(f"""
            SELECT r.name, c.relname, v.priv, has_table_privilege(r.name, c.oid, v.priv)
              FROM unnest(%s::text[]) r(name), pg_class c,
                   unnest('{{SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER}}'::text[]) v(priv)
             WHERE c.relnamespace = {ns} AND c.relkind = 'r' ORDER BY 1, 2, 3""", (PRIV_ROLES,)),
        "sequence_privileges": q(f"""
            SELECT r.name, c.relname, v.priv, has_sequence_privilege(r.name, c.oid, v.priv)
              FROM unnest(%s::text[]) r(name), pg_class c, unnest('{{USAGE,SELECT,UPDATE}}'::text[]) v(priv)
             WHERE c.relnamespace = {ns} AND c.relkind = 'S' ORDER BY 1, 2, 3""", (PRIV_ROLES,)),
        "schema_privileges": q("""
            SELECT r.name, has_schema_privilege(r.name, 'apikeys', 'USAGE'),
                   has_schema_privilege(r.name, 'apikeys', 'CREATE')
              FROM unnest(%s::text[]) r(name) ORDER BY 1""", (PRIV_ROLES,)),
    }


def verify_all(conn: psycopg.Connection, tokens: dict[str, Secret]) -> dict[tuple, Any]:
    out: dict[tuple, Any] = {}
    for label, tok in tokens.items():
        for role in VERIFIERS:
            for scopes in SCOPE_SETS:
                key = (label, role or "postgres", ",".join(scopes))
                try:
                    out[key] = call(conn, role, "SELECT * FROM apikeys.verify_key(%s::text, %s::text[])",
                                    (tok, scopes))
                except psycopg.Error as e:
                    out[key] = f"error {e.sqlstate}"
    return out


def resolve_all(conn: psycopg.Connection, pks: dict[str, str]) -> dict[tuple, Any]:
    out: dict[tuple, Any] = {}
    for label, pk in pks.items():
        for origin in ORIGINS:
            for role in (None, "app"):
                key = (label, origin or "-", role or "postgres")
                try:
                    out[key] = [r["workspace_id"] for r in call(
                        conn, role, "SELECT * FROM apikeys.resolve_public_key(%s::text, %s::text)", (pk, origin))]
                except psycopg.Error as e:
                    out[key] = f"error {e.sqlstate}"
    return out


def visibility(conn: psycopg.Connection) -> dict[tuple, Any]:
    """What each role sees of each table through RLS (ids), or the SQLSTATE it gets."""
    out: dict[tuple, Any] = {}
    for role in SEEING_ROLES:
        for t, col in ID_COLUMN.items():
            try:
                rows = call(conn, role, f"SELECT {col}::text AS v FROM apikeys.{t} ORDER BY 1")
                out[(role, t)] = [r["v"] for r in rows]
            except psycopg.Error as e:
                out[(role, t)] = e.sqlstate
    return out


def guarded(fn, conn):
    """A snapshot, or the error that stopped it (a broken restore must fail
    the tests that look, not the fixture)."""
    try:
        return fn(conn)
    except psycopg.Error as e:
        return f"error {e.sqlstate}: {redact(str(e))[:300]}"


# -- the source database -------------------------------------------------------


def populate(c: Cluster, db: str = "src", version: str | None = None) -> Source:
    """Database `db` with roles, workspaces, members, keys of every kind,
    public keys and the audit rows all that writes, made as real roles;
    then what it answers (s.snap). `version` picks the extension version
    CREATE EXTENSION installs (default: the default version)."""
    s = Source(cluster=c)
    admin = c.connect()
    admin.execute(ROLES)
    admin.execute(f"CREATE DATABASE {db}")
    admin.execute("CREATE DATABASE other")
    admin.close()

    # a token and a public key of the right shape, minted in another database:
    # unknown to src
    with c.connect("other") as o:
        o.execute("CREATE EXTENSION pg_apikeys")
        o.execute("SELECT apikeys.grant_to('app')")
        ws = one(o, "alice", "SELECT apikeys.create_workspace('elsewhere') AS id")["id"]
        s.tokens["unknown"] = Secret(one(o, "alice", "SELECT key FROM apikeys.create_key(%s)", (ws,))["key"])
        s.pks["unknown"] = one(o, "alice", "SELECT public_key FROM apikeys.create_public_key(%s)", (ws,))["public_key"]

    su = c.connect(db)
    if version is None:
        su.execute("CREATE EXTENSION pg_apikeys")
    else:
        su.execute(psycopg.sql.SQL("CREATE EXTENSION pg_apikeys VERSION {}").format(psycopg.sql.Literal(version)))
    su.execute("SELECT apikeys.grant_to('app')")

    def workspace(label: str, role: str, name: str) -> None:
        s.ws[label] = one(su, role, "SELECT apikeys.create_workspace(%s) AS id", (name,))["id"]

    def mint(label: str, role: str, ws: str, name: str, scopes: list[str], expires: datetime | None = None,
             metadata: dict | None = None, prefix: str = "sk") -> None:
        r = one(su, role, """SELECT id, key FROM apikeys.create_key(%s::uuid, %s::text, %s::text[],
                                 %s::timestamptz, %s::jsonb, %s::text)""",
                (s.ws[ws], name, scopes, expires, Jsonb(metadata or {}), prefix))
        s.tokens[label], s.ids[label] = Secret(r["key"]), r["id"]

    def rotate(old: str, new: str, role: str, grace: str) -> None:
        r = one(su, role, "SELECT id, key FROM apikeys.rotate_key(%s::uuid, %s::interval)", (s.ids[old], grace))
        s.tokens[new], s.ids[new] = Secret(r["key"]), r["id"]

    def public_key(label: str, ws: str, origins: list[str]) -> None:
        r = one(su, "alice", "SELECT id, public_key FROM apikeys.create_public_key(%s::uuid, %s::text[])",
                (s.ws[ws], origins))
        s.pks[label], s.pk_ids[label] = r["public_key"], r["id"]

    workspace("acme", "alice", "Acme")
    workspace("beta", "alice", "Beta")
    workspace("gamma", "carol", "Gamma")  # alice is no member of gamma
    # from 0.2.0 on, add_member invites and the invitee accepts as themself;
    # 0.1.0 (the upgrade test) added members at once
    consent = one(su, None, "SELECT to_regprocedure('apikeys.accept_invitation(uuid)') IS NOT NULL AS c")["c"]

    def add_member(ws: str, who: str, role: str, scopes: str) -> None:
        call(su, "alice", "SELECT apikeys.add_member(%s, %s, %s, %s)", (s.ws[ws], who, role, scopes))
        if consent:
            call(su, who, "SELECT apikeys.accept_invitation(%s)", (s.ws[ws],))

    add_member("acme", "bob", "member", "{read}")
    add_member("acme", "carol", "member", "{read,write}")
    add_member("beta", "dave", "admin", "{}")

    mint("alice_live", "alice", "acme", "live", ["read", "write"], metadata={"env": "prod"}, prefix="sk_live")
    mint("alice_future", "alice", "acme", "future", ["read"],
         expires=datetime.now(timezone.utc) + timedelta(days=30))
    mint("bob_read", "bob", "acme", "bob-read", ["read"], metadata={"team": "b"})
    mint("bob_revoked", "bob", "acme", "bob-old", ["read"])
    call(su, "bob", "SELECT apikeys.revoke_key(%s)", (s.ids["bob_revoked"],))
    mint("alice_expired", "alice", "acme", "soon", ["read"])
    # expiry may only move earlier: the superuser moves it into the past
    call(su, None, "UPDATE apikeys.keys SET expires_at = now() - interval '1 hour' WHERE id = %s",
         (s.ids["alice_expired"],))
    mint("rot_grace_old", "alice", "acme", "rotating", ["read"])
    rotate("rot_grace_old", "rot_grace_new", "alice", "1 hour")
    mint("rot_zero_old", "alice", "acme", "rot-zero", ["write"])
    rotate("rot_zero_old", "rot_zero_new", "alice", "0")
    mint("carol_removed", "carol", "acme", "carol-key", ["write"])
    call(su, "alice", "SELECT apikeys.remove_member(%s, 'carol')", (s.ws["acme"],))
    mint("carol_gamma", "carol", "gamma", "gamma-key", [])
    mint("dave_beta", "dave", "beta", "beta-key", ["billing:read"])
    # imported from another keystore: verifies by SHA-256 of the raw token
    legacy = Secret("legacy-" + secrets.token_hex(24))
    # a migration for bob: from 0.2.0 on, importing for another owner needs
    # the apikeys_importer role
    if consent:
        call(su, None, "SELECT apikeys.grant_importer('alice')")
    s.ids["imported"] = one(su, "alice", "SELECT apikeys.import_key(%s, 'bob', 'legacy', %s, '{read}') AS id",
                            (s.ws["acme"], hashlib.sha256(legacy.encode()).hexdigest()))["id"]
    if consent:
        call(su, None, "REVOKE apikeys_importer FROM alice")
    s.tokens["imported"] = legacy
    s.tokens["malformed"] = Secret("sk_notatoken")
    good = str(s.tokens["alice_live"])
    s.tokens["bad_checksum"] = Secret(good[:-1] + ("B" if good[-1] == "A" else "A"))

    public_key("pk_origin", "acme", [ORIGIN])
    public_key("pk_any", "beta", [])
    public_key("pk_revoked", "acme", [ORIGIN])
    call(su, "alice", "SELECT apikeys.revoke_public_key(%s)", (s.pk_ids["pk_revoked"],))
    s.pks["malformed"] = "pk_nope"

    # what the source answers (verifying writes last_used_at, so the rows are
    # read after it, right before the dump)
    s.snap["verify"] = verify_all(su, s.tokens)
    s.snap["resolve"] = resolve_all(su, s.pks)
    s.snap["visibility"] = visibility(su)
    s.snap["catalog"] = catalog(su)
    s.snap["rows"] = table_rows(su)
    su.close()
    return s
