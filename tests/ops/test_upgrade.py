"""Upgrading in place: `ALTER EXTENSION pg_apikeys UPDATE` from every released
version, with live data, as docs/reference.md ("Upgrading") promises.

For each released version V (RELEASED): a throw-away cluster with today's
library installed, `CREATE EXTENSION pg_apikeys VERSION 'V'` in database
`up`, then, as real roles, every kind of workspace, member, key (active,
revoked, expired, rotated in grace and at once, imported, a removed member's),
public key and the audit rows they write (keydata.populate), plus an
application table stamped by `stamp_created_by`. Everything that database
answers is recorded. Creating version V with today's library already proves
that the library still exports every C symbol V's functions name (PostgreSQL
looks each one up at CREATE FUNCTION), and populating it calls them.

Then `ALTER EXTENSION pg_apikeys UPDATE`, and:
- every row is as it was, every token verifies as before, every public key
  resolves as before, every role sees what it saw;
- the latches and the no-DELETE/TRUNCATE rules still hold, the audit log is
  intact and keeps appending, the stamped table keeps stamping;
- the schema equals a fresh install of the new version in database `fresh`:
  `pg_dump --schema-only --binary-upgrade` (the mode that dumps extension
  members one by one), normalised only for OIDs and statement order, and the
  privilege snapshot of tests/pg_regress/sql/16_privileges.sql, run in both.
So a change to sql/*.sql that the upgrade script does not repeat fails here.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cluster import Cluster, call, one, redact, sqlstate_of
from keydata import LIVE, Source, populate, resolve_all, table_rows, verify_all, visibility

ROOT = Path(__file__).resolve().parents[2]
# every version that shipped; each gets the whole test
RELEASED = ["0.1.0"]
PRIVILEGES_SQL = ROOT / "tests" / "pg_regress" / "sql" / "16_privileges.sql"

# an application table stamped with the caller, made while V is installed
STAMPED = """
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO app;
CREATE TABLE app.notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                        body text NOT NULL, created_by text);
CREATE TRIGGER notes_created_by BEFORE INSERT OR UPDATE ON app.notes
    FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('created_by');
GRANT SELECT, INSERT, UPDATE ON app.notes TO app;
"""

# the roles 16_privileges.sql names (as tests/pg_regress/sql/00_setup.sql makes them)
PRIVILEGE_ROLES = "CREATE ROLE app_user NOLOGIN; CREATE ROLE nobody NOLOGIN;"


@dataclass
class Upgrade:
    version: str
    cluster: Cluster
    source: Source
    conn: psycopg.Connection
    fresh: psycopg.Connection
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    update_error: str | None = None
    notices: list[str] = field(default_factory=list)
    # what each role read right after the update, before grant_to again
    visibility_before_grant: dict[tuple, Any] = field(default_factory=dict)


def extversion(conn: psycopg.Connection) -> str:
    return one(conn, None, "SELECT extversion FROM pg_extension WHERE extname = 'pg_apikeys'")["extversion"]


def default_version(conn: psycopg.Connection) -> str:
    return one(conn, None, "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_apikeys'")[
        "default_version"]


@pytest.fixture(scope="module", params=RELEASED)
def upgraded(request, clusters) -> Upgrade:
    version = request.param
    c = clusters(f"upgrade-{version}")
    c.init()
    c.start()
    with c.connect() as admin:
        admin.execute(PRIVILEGE_ROLES)
    s = populate(c, "up", version=version)
    conn = c.connect("up")
    conn.execute(STAMPED)
    call(conn, "alice", "INSERT INTO app.notes (body, created_by) VALUES ('from alice', 'mallory')")
    call(conn, None, "SELECT apikeys.grant_to('app_user')")
    u = Upgrade(version, c, s, conn, fresh=None)  # type: ignore[arg-type]
    u.before = {"version": extversion(conn), "rows": table_rows(conn),
                "notes": call(conn, None, "SELECT id, body, created_by FROM app.notes ORDER BY id")}

    with c.connect() as admin:
        admin.execute("CREATE DATABASE fresh")
    u.fresh = c.connect("fresh")
    u.fresh.execute("CREATE EXTENSION pg_apikeys")
    u.fresh.execute("SELECT apikeys.grant_to('app'), apikeys.grant_to('app_user')")

    notices: list[str] = []  # extension scripts show warnings only
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    try:
        conn.execute("ALTER EXTENSION pg_apikeys UPDATE")
        u.visibility_before_grant = visibility(conn)
        # what docs/reference.md ("Upgrading") tells the operator to run next
        conn.execute("SELECT apikeys.grant_to('app'), apikeys.grant_to('app_user')")
    except psycopg.Error as e:
        u.update_error = f"{e.sqlstate}: {redact(str(e))}"
    u.notices = notices
    u.after = {"version": extversion(conn), "rows": table_rows(conn),
               "notes": call(conn, None, "SELECT id, body, created_by FROM app.notes ORDER BY id")}
    # what the upgraded database answers (verify_key stamps last_used_at, so
    # the rows above are read first)
    u.after["verify"] = verify_all(conn, s.tokens)
    u.after["resolve"] = resolve_all(conn, s.pks)
    u.after["visibility"] = visibility(conn)
    yield u
    conn.close()
    u.fresh.close()


# -- the update itself ------------------------------------------------------------


def test_update_runs_from_the_released_version_to_the_default(upgraded: Upgrade):
    assert upgraded.before["version"] == upgraded.version
    assert upgraded.update_error is None
    assert upgraded.after["version"] == default_version(upgraded.conn)
    assert upgraded.after["version"] != upgraded.version


def test_released_install_script_is_kept_byte_for_byte():
    """The install script of a released version never changes (it is what
    that version's users ran)."""
    for v in RELEASED:
        path = ROOT / "sql" / f"pg_apikeys--{v}.sql"
        assert path.exists(), f"{path.name} is missing: released install scripts stay in sql/"
        assert "CREATE TABLE apikeys.keys" in path.read_text()


# -- data and behaviour survive ---------------------------------------------------


def test_update_tells_the_operator_to_grant_again(upgraded: Upgrade):
    assert any("grant" in n.lower() or "accept_invitation" in n for n in upgraded.notices), upgraded.notices


def test_rows_untouched(upgraded: Upgrade):
    before, after = upgraded.before["rows"], upgraded.after["rows"]
    assert set(before) <= set(after), "a table went away in the update"
    for t in before:
        if before[t] and before[t][0].startswith("{"):
            # columns the update added (at the end of a table) are NULL in
            # every old row; every old column keeps its value
            old_cols = set(json.loads(before[t][0]))
            b = [json.loads(r) for r in before[t]]
            a = [json.loads(r) for r in after[t]]
            added = [{k: v for k, v in r.items() if k not in old_cols} for r in a]
            assert all(v is None for r in added for v in r.values()), f"new columns of apikeys.{t} are not NULL"
            a = [{k: v for k, v in r.items() if k in old_cols} for r in a]
            assert a == b, f"rows of apikeys.{t} changed in the update"
        else:
            assert after[t] == before[t], f"rows of apikeys.{t} changed in the update"
    # tables and sequences the update adds start empty
    for t in set(after) - set(before):
        assert after[t] in ([], ["1/false"]), f"apikeys.{t} is not empty after the update"


def test_audit_log_intact(upgraded: Upgrade):
    rows = upgraded.after["rows"]["audit_log"]
    assert rows == upgraded.before["rows"]["audit_log"]
    actions = {a for a in re.findall(r'"action":"([a-z._]+)"', "\n".join(rows))}
    # the history of everything populate() did
    assert {"workspace.created", "member.added", "member.removed", "key.created", "key.revoked",
            "key.rotated", "key.imported", "public_key.created", "public_key.revoked"} <= actions, actions


def test_tokens_verify_as_before(upgraded: Upgrade):
    before, after = upgraded.source.snap["verify"], upgraded.after["verify"]
    assert before.keys() == after.keys()
    changed = sorted(k for k in before if before[k] != after[k])
    assert not changed, f"verify_key answers differently after the update for {changed}"
    # and the live ones really are live (the comparison is not of two empties)
    live = {k for k, v in after.items() if isinstance(v, list) and v}
    assert {label for label, _, _ in live} == LIVE


def test_public_keys_resolve_as_before(upgraded: Upgrade):
    assert upgraded.after["resolve"] == upgraded.source.snap["resolve"]


def test_roles_see_what_they_saw(upgraded: Upgrade):
    assert upgraded.after["visibility"] == upgraded.source.snap["visibility"]


def test_roles_read_as_before_even_before_grant_to_runs_again(upgraded: Upgrade):
    # the new policies call nothing a role granted by the released version
    # cannot execute (the operator's policies apply to apikeys_operator only)
    assert upgraded.visibility_before_grant == upgraded.source.snap["visibility"]


def test_latches_and_no_delete_hold(upgraded: Upgrade):
    conn, ids = upgraded.conn, upgraded.source.ids
    revoked, live = ids["bob_revoked"], ids["alice_live"]
    # the superuser is refused too: the triggers fire for every role
    assert sqlstate_of(conn, None, "UPDATE apikeys.keys SET revoked_at = NULL WHERE id = %s", (revoked,)) == "23514"
    assert sqlstate_of(conn, None, "UPDATE apikeys.keys SET revoked_at = now() - interval '1 day' WHERE id = %s",
                       (revoked,)) == "23514"
    assert sqlstate_of(conn, None, "UPDATE apikeys.keys SET expires_at = now() + interval '10 years' WHERE id = %s",
                       (ids["alice_future"],)) == "23514"
    assert sqlstate_of(conn, None, "UPDATE apikeys.keys SET owner = 'mallory' WHERE id = %s", (live,)) == "23514"
    assert sqlstate_of(conn, None, "DELETE FROM apikeys.keys WHERE id = %s", (revoked,)) == "42501"
    assert sqlstate_of(conn, None, "DELETE FROM apikeys.audit_log") == "42501"
    assert sqlstate_of(conn, None, "TRUNCATE apikeys.audit_log") in ("42501", "0A000")
    assert sqlstate_of(conn, None, "TRUNCATE apikeys.keys CASCADE") in ("42501", "0A000")
    # clients still cannot write the tables at all
    assert sqlstate_of(conn, "alice", "UPDATE apikeys.keys SET revoked_at = NULL WHERE id = %s", (revoked,)) == "42501"


def test_keys_keep_working_after_update(upgraded: Upgrade):
    """Mint, verify, rotate and revoke through the upgraded functions; each
    change appends to the audit log."""
    conn, s = upgraded.conn, upgraded.source
    n0 = one(conn, None, "SELECT count(*) AS n FROM apikeys.audit_log")["n"]
    new = one(conn, "alice", "SELECT id, key FROM apikeys.create_key(%s, 'after-update', '{read}')", (s.ws["acme"],))
    assert len(call(conn, "bob", "SELECT 1 FROM apikeys.verify_key(%s, '{read}')", (new["key"],))) == 1
    rot = one(conn, "alice", "SELECT id, key FROM apikeys.rotate_key(%s, '0')", (new["id"],))
    assert call(conn, "bob", "SELECT 1 FROM apikeys.verify_key(%s)", (new["key"],)) == []
    assert len(call(conn, "bob", "SELECT 1 FROM apikeys.verify_key(%s)", (rot["key"],))) == 1
    call(conn, "alice", "SELECT apikeys.revoke_key(%s)", (rot["id"],))
    assert call(conn, "bob", "SELECT 1 FROM apikeys.verify_key(%s)", (rot["key"],)) == []
    # a key made before the update is revoked by the new code, once
    first = one(conn, "bob", "SELECT apikeys.revoke_key(%s) AS at", (s.ids["bob_read"],))["at"]
    assert one(conn, "bob", "SELECT apikeys.revoke_key(%s) AS at", (s.ids["bob_read"],))["at"] == first
    # membership now needs consent: add_member invites, nobody joins yet
    call(conn, "alice", "SELECT apikeys.add_member(%s, 'erin', 'member', '{read}')", (s.ws["acme"],))
    assert call(conn, None, "SELECT 1 FROM apikeys.members WHERE principal = 'erin'") == []
    assert len(call(conn, None, "SELECT 1 FROM apikeys.invitations WHERE principal = 'erin'")) == 1
    actions = [r["action"] for r in call(conn, None, "SELECT action FROM apikeys.audit_log WHERE id > 0 ORDER BY id")]
    n1 = one(conn, None, "SELECT count(*) AS n FROM apikeys.audit_log")["n"]
    assert n1 > n0 and actions[-2:] == ["key.revoked", "member.invited"]


def test_stamped_table_keeps_stamping(upgraded: Upgrade):
    conn = upgraded.conn
    assert upgraded.after["notes"] == upgraded.before["notes"]
    assert [r["created_by"] for r in upgraded.before["notes"]] == ["alice"]
    call(conn, "bob", "INSERT INTO app.notes (body, created_by) VALUES ('from bob', 'alice')")
    rows = call(conn, None, "SELECT body, created_by FROM app.notes ORDER BY id")
    assert [(r["body"], r["created_by"]) for r in rows] == [("from alice", "alice"), ("from bob", "bob")]
    call(conn, "bob", "UPDATE app.notes SET body = 'edited', created_by = 'bob' WHERE body = 'from alice'")
    assert one(conn, None, "SELECT created_by FROM app.notes WHERE body = 'edited'")["created_by"] == "alice"


# -- the schema equals a fresh install --------------------------------------------

_OID_CALL = re.compile(r"^SELECT pg_catalog\.binary_upgrade_set_next_\w+\('\d+'::pg_catalog\.oid\);$")
_EXT_CONFIG = re.compile(r"(binary_upgrade_create_empty_extension\('pg_apikeys', .*?)'\{[\d,]*\}'")
# what differs between two databases of the same schema: LSNs of attribute
# versions, frozen transaction ids, the TOAST table's OID, sequence positions
_VOLATILE = [(re.compile(r"(binary_upgrade_set_next_attribute_versions\(')[^']*'"), r"\1<lsns>'"),
             (re.compile(r"SET relfrozenxid = '\d+', relminmxid = '\d+'"), "SET relfrozenxid = <xid>, relminmxid = <mxid>"),
             (re.compile(r"^WHERE oid = '\d+';$"), "WHERE oid = <toast oid>;"),
             # a sequence's position is data, not schema
             (re.compile(r"^(SELECT pg_catalog\.setval\('[^']+', )\d+, (true|false)\);$"), r"\1<value>);")]
_HEADER = re.compile(r"^-- (?:Data for )?Name: (?P<name>.*?); Type: (?P<type>.*?); Schema: (?P<schema>.*?); Owner:")
_OURS = {"apikeys", "pg_apikeys", "EXTENSION pg_apikeys", "SCHEMA apikeys"}


def schema_dump(c: Cluster, db: str) -> list[str]:
    """`pg_dump --schema-only --binary-upgrade` (the mode that dumps an
    extension's members one by one, each with ALTER EXTENSION ... ADD), as a
    sorted list of the statements about the extension, its schema and its
    members. Lines that only set the next OID are dropped, and the list of
    configuration-table OIDs is compared by name in test_catalog_identical."""
    out = c.client("pg_dump", "--schema-only", "--binary-upgrade", "--no-sync", "-d", db).stdout
    blocks: list[str] = []
    cur: list[str] = []
    keep = False

    def close() -> None:
        while cur and cur[-1] in ("", "--"):
            cur.pop()
        if cur and keep:
            blocks.append("\n".join(cur).strip())

    for line in out.splitlines():
        # OID settings, the dump's version banner and its random \\restrict key
        if _OID_CALL.match(line) or line.startswith(("-- Dumped ", "\\restrict ", "\\unrestrict ")) \
                or line == "-- PostgreSQL database dump complete":
            continue
        line = _EXT_CONFIG.sub(r"\1'{<config oids>}'", line)
        for pattern, mask in _VOLATILE:
            line = pattern.sub(mask, line)
        m = _HEADER.match(line)
        if m:
            close()
            cur = []
            keep = m["schema"] == "apikeys" or m["name"] in _OURS
        cur.append(line)
    close()
    return sorted(b for b in blocks if b)


def test_schema_identical_to_fresh_install(upgraded: Upgrade):
    c = upgraded.cluster
    up, fresh = schema_dump(c, "up"), schema_dump(c, "fresh")
    assert any("CREATE TABLE apikeys.keys" in b for b in fresh), "the dump lists no extension member"
    if up != fresh:
        diff = "\n".join(difflib.unified_diff(fresh, up, "fresh install", f"updated from {upgraded.version}",
                                              lineterm="", n=1))
        pytest.fail("the updated schema differs from a fresh install; put the change of sql/*.sql into the "
                    f"upgrade script too:\n{diff[:6000]}")


def test_catalog_identical(upgraded: Upgrade):
    from keydata import catalog
    assert catalog(upgraded.conn) == catalog(upgraded.fresh)


def privilege_snapshot(c: Cluster, db: str) -> str:
    with c.connect(db) as conn:
        conn.execute("DROP SCHEMA IF EXISTS regress CASCADE; CREATE SCHEMA regress")
    p = c.client("psql", "-X", "-a", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", PRIVILEGES_SQL)
    return p.stdout


def test_privilege_snapshot_identical(upgraded: Upgrade):
    c = upgraded.cluster
    up, fresh = privilege_snapshot(c, "up"), privilege_snapshot(c, "fresh")
    assert "apikeys.verify_key" in fresh
    if up != fresh:
        diff = "\n".join(difflib.unified_diff(fresh.splitlines(), up.splitlines(), "fresh install",
                                              f"updated from {upgraded.version}", lineterm="", n=1))
        pytest.fail(f"the privilege snapshot (16_privileges) differs after the update:\n{diff[:6000]}")


# -- bad input ----------------------------------------------------------------------


def test_update_to_a_version_without_a_path_is_refused(upgraded: Upgrade):
    conn = upgraded.conn
    version = extversion(conn)
    try:
        conn.execute("ALTER EXTENSION pg_apikeys UPDATE TO '9.9.9'")
        pytest.fail("an update to a version with no path succeeded")
    except psycopg.Error as e:
        assert e.sqlstate == "22023"
        assert "no update path" in str(e)
    assert extversion(conn) == version


# statements an upgrade script must not run on user data, unless a comment
# line right above says why ("-- rewrite: ...")
_FORBIDDEN = re.compile(r"^\s*(DROP\s+TABLE|DROP\s+SCHEMA|TRUNCATE|DELETE\s+FROM|VACUUM\s+FULL|CLUSTER)\b"
                        r"|\bDROP\s+TABLE\b|\bALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b", re.I)


def test_upgrade_scripts_never_drop_or_rewrite_data():
    scripts = sorted((ROOT / "sql").glob("pg_apikeys--*--*.sql"))
    assert scripts, "no upgrade script in sql/"
    for v in RELEASED:
        assert any(p.name.startswith(f"pg_apikeys--{v}--") for p in scripts), f"no upgrade path from {v}"
    bad = []
    for path in scripts:
        prev = ""
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("--", 1)[0]
            if _FORBIDDEN.search(code) and not prev.lstrip().startswith("-- rewrite:"):
                bad.append(f"{path.name}:{n}: {line.strip()}")
            if line.strip():
                prev = line
    assert not bad, "upgrade scripts drop or rewrite data without saying why:\n" + "\n".join(bad)


def test_usage_by_outcome_after_update(upgraded: Upgrade):
    """The updated key_usage counts each outcome: a standby's batch (as its
    forwarding role) lands with rate_limited, usage_exceeded,
    insufficient_scope and refused; usage_stats() has the new columns."""
    conn, s = upgraded.conn, upgraded.source
    key_id = next(iter(s.ids.values()))
    call(conn, None, """DO $$ BEGIN
                          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'upgrade_forwarder') THEN
                              CREATE ROLE upgrade_forwarder LOGIN;
                          END IF;
                        END $$""")
    call(conn, None, "SELECT apikeys.grant_forwarder('upgrade_forwarder')")
    batch = one(conn, None, """SELECT json_build_array(json_build_object(
                                   'k', %s::uuid, 'h', extract(epoch FROM date_trunc('hour', now()))::bigint,
                                   'v', 5, 'r', 10, 'rl', 1, 'ue', 2, 'sc', 3, 'rf', 4, 'u', 0))::text AS b""",
                (key_id,))["b"]
    assert one(conn, "upgrade_forwarder", "SELECT apikeys.apply_forwarded_usage(1, 1, %s) AS ok", (batch,))["ok"]
    row = one(conn, None, """SELECT verified, rejected, rate_limited, usage_exceeded, insufficient_scope, refused
                               FROM apikeys.key_usage WHERE key_id = %s""", (key_id,))
    assert dict(row) == {"verified": 5, "rejected": 10, "rate_limited": 1, "usage_exceeded": 2,
                         "insufficient_scope": 3, "refused": 4}
    cols = {r["attname"] for r in call(conn, None, """SELECT a.attname FROM pg_attribute a
                                                        WHERE a.attrelid = 'apikeys.key_usage'::regclass AND a.attnum > 0""")}
    assert {"rate_limited", "usage_exceeded", "insufficient_scope", "refused"} <= cols
    stats = one(conn, None, "SELECT * FROM apikeys.usage_stats()")
    assert {"rate_limited", "usage_exceeded", "insufficient_scope", "refused", "forwarded"} <= set(stats)
