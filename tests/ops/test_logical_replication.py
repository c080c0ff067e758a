"""Logical replication of the apikeys tables, and a switch-over to the
subscriber: the way teams copy keys across regions and upgrade major versions
(blue/green).

The publisher is always PostgreSQL 15; the subscriber is the layer's version
(PGBIN), so `ops@pg15` runs 15 -> 15 and `ops@pg18` runs the major-version
upgrade 15 -> 18. Both have the extension installed with CREATE EXTENSION,
as an operator does; the publication is `FOR TABLES IN SCHEMA apikeys` plus
an application table stamped by apikeys.stamp_created_by (its trigger ENABLE
ALWAYS, so that it fires on the subscriber too).

The publisher is filled before the subscription exists (the initial copy),
then more changes stream: a mint, a revoke, a rotation with grace, an
import, public keys, a member removal that revokes the member's keys, a
stamped insert and update, an invitation accepted. Asserted on the
subscriber: no apply or sync error (pg_stat_subscription_stats, server
log); every table identical to the publisher's, the audit log row for row
(last_used_at aside: the subscriber records its own verifies); every token
and public key answers as on the publisher; a revoke on the publisher is
NOTIFYed to listeners on the subscriber; the latches hold for local writes,
also under session_replication_role = replica. Then the switch-over: the
subscription is dropped and the subscriber takes writes; new members,
invitations and audit rows get ids after the replicated ones, and the new
keys verify.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

import psycopg
import pytest

from cluster import PG15_BIN, PGBIN, Cluster, Secret, call, one, redact, run, wait_until
from keydata import ROLES, populate, resolve_all, verify_all

DB = "src"
# the tables the publication carries, and a column each may differ in
TABLES = ["workspaces", "members", "invitations", "keys", "key_hashes", "public_keys", "audit_log",
          "scanning_keys", "key_usage", "owner_limits", "usage_rounds", "suspensions", "plans",
          "usage_sources"]
APP_TABLE = """
CREATE TABLE public.notes (id bigint PRIMARY KEY, body text NOT NULL, created_by text);
CREATE TRIGGER notes_stamp BEFORE INSERT OR UPDATE ON public.notes
    FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('created_by');
ALTER TABLE public.notes ENABLE ALWAYS TRIGGER notes_stamp;
GRANT SELECT, INSERT, UPDATE ON public.notes TO app;
"""


# the audit rows the subscriber writes itself after the switch-over
EXPECTED_AFTER_SWITCH = ["key.created", "workspace.created", "member.added", "member.invited",
                         "member.added", "public_key.created", "key.revoked"]


def rows(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Every row of every published table, as the superuser; key_hashes
    through md5 (never a hash in a message); keys without last_used_at,
    which each side writes for its own verifies."""
    out: dict[str, list[str]] = {}
    for t in TABLES:
        if t == "key_hashes":
            sql = "SELECT key_id::text || ' ' || md5(hash) AS r FROM apikeys.key_hashes ORDER BY 1"
        else:
            sql = f"SELECT (to_jsonb(t) - 'last_used_at')::text AS r FROM apikeys.{t} t ORDER BY 1"
        out[t] = [r["r"] for r in call(conn, None, sql)]
    out["notes"] = [r["r"] for r in call(conn, None, "SELECT to_jsonb(n)::text AS r FROM public.notes n ORDER BY 1")]
    return out


# an error of a process with no client session (log_line_prefix "%m [%p] %q%u@%d "
# stops at %q for those): the apply and sync workers, the launcher
_WORKER_ERROR = re.compile(r"^\S+ \S+ \S+ \[\d+\] (ERROR|FATAL|PANIC): ")


def worker_errors(c: Cluster) -> list[str]:
    """Errors the subscription's workers logged (the tests' own refused
    statements are logged with their user@database and do not count)."""
    return [redact(line) for line in c.log_text().splitlines() if _WORKER_ERROR.match(line)]


def refused(conn: psycopg.Connection, sql: str, params: Any = None, replica: bool = False) -> str | None:
    """The SQLSTATE a statement of the superuser fails with (None: it worked),
    optionally under session_replication_role = replica."""
    try:
        with conn.transaction():
            if replica:
                conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(sql, params)
    except psycopg.Error as e:
        return e.sqlstate
    return None


@pytest.fixture(scope="module")
def setup(clusters):
    if not (PG15_BIN / "initdb").exists():
        pytest.fail(f"the publisher needs PostgreSQL 15 at {PG15_BIN} (PG15_BIN)")
    pub = clusters("lr_pub", PG15_BIN).init(
        {"wal_level": "logical", "max_wal_senders": 8, "max_replication_slots": 8})
    sub = clusters("lr_sub").init({"max_logical_replication_workers": 6, "max_replication_slots": 8,
                                   "apikeys.notify_channel": "apikeys_revoked"})
    pub.start()
    sub.start()
    src = populate(pub, DB)  # roles, every kind of key, public key, member and audit row
    with pub.connect(DB) as su:
        su.execute(APP_TABLE)
        call(su, "bob", "INSERT INTO public.notes (id, body, created_by) VALUES (1, 'before', 'mallory')")
        su.execute("CREATE PUBLICATION p FOR TABLES IN SCHEMA apikeys, TABLE public.notes")

    # the subscriber: same roles (global objects do not replicate), the
    # extension and the application table, as an operator sets them up
    with sub.connect() as admin:
        admin.execute(ROLES)
        admin.execute(f"CREATE DATABASE {DB}")
    with sub.connect(DB) as su:
        su.execute("CREATE EXTENSION pg_apikeys")
        su.execute("SELECT apikeys.grant_to('app')")
        su.execute(APP_TABLE)
        su.execute(f"CREATE SUBSCRIPTION s CONNECTION 'host=127.0.0.1 port={pub.port} dbname={DB} user=postgres' "
                   "PUBLICATION p")
        wait_until(lambda: one(su, None, """SELECT count(*) FILTER (WHERE srsubstate <> 'r') = 0
                                                   AND count(*) = %s AS ready
                                              FROM pg_subscription_rel""", (len(TABLES) + 1,))["ready"],
                   60, "the initial copy of every table")
    return {"pub": pub, "sub": sub, "src": src}


def caught_up(pub: Cluster, sub: Cluster, timeout: float = 60) -> None:
    """Wait until the subscriber's tables equal the publisher's."""
    with pub.connect(DB) as p, sub.connect(DB) as s:
        want = rows(p)
        wait_until(lambda: rows(s) == want, timeout, "the subscriber to apply the publisher's changes")


def test_initial_copy_is_identical_and_verifies(setup):
    pub, sub, src = setup["pub"], setup["sub"], setup["src"]
    caught_up(pub, sub)
    with pub.connect(DB) as p, sub.connect(DB) as s:
        assert verify_all(s, src.tokens) == verify_all(p, src.tokens)
        assert resolve_all(s, src.pks) == resolve_all(p, src.pks)
        # the copy wrote no audit row of its own
        n = one(s, None, "SELECT count(*) AS n FROM apikeys.audit_log")["n"]
        assert n == one(p, None, "SELECT count(*) AS n FROM apikeys.audit_log")["n"] and n > 20
        # the stamped column kept the publisher's value (bob), not the apply worker's role
        assert one(s, None, "SELECT created_by FROM public.notes WHERE id = 1")["created_by"] == "bob"


def test_streamed_changes_apply_without_error(setup):
    pub, sub, src = setup["pub"], setup["sub"], setup["src"]
    with sub.connect(DB) as s:
        s.execute("LISTEN apikeys_revoked")
        with pub.connect(DB) as p:
            ws = src.ws["acme"]
            # a mint, a revoke, a rotation with grace, an import
            r = one(p, "alice", "SELECT id, key FROM apikeys.create_key(%s, 'streamed', '{read}')", (ws,))
            src.tokens["streamed"], src.ids["streamed"] = Secret(r["key"]), r["id"]
            r = one(p, "alice", "SELECT id, key FROM apikeys.create_key(%s, 'streamed-dead', '{read}')", (ws,))
            src.tokens["streamed_dead"], src.ids["streamed_dead"] = Secret(r["key"]), r["id"]
            call(p, "alice", "SELECT apikeys.revoke_key(%s)", (src.ids["streamed_dead"],))
            r = one(p, "alice", "SELECT id, key FROM apikeys.rotate_key(%s, '2 hours')", (src.ids["alice_live"],))
            src.tokens["streamed_rotated"], src.ids["streamed_rotated"] = Secret(r["key"]), r["id"]
            legacy = Secret("legacy-" + secrets.token_hex(24))
            src.ids["streamed_imported"] = one(
                p, "alice", "SELECT apikeys.import_key(%s, 'alice', 'legacy-two', %s, '{read}') AS id",
                (ws, hashlib.sha256(legacy.encode()).hexdigest()))["id"]
            src.tokens["streamed_imported"] = legacy
            # public keys
            r = one(p, "alice", "SELECT id, public_key FROM apikeys.create_public_key(%s, '{}')", (ws,))
            src.pks["streamed_pk"] = r["public_key"]
            r = one(p, "alice", "SELECT id, public_key FROM apikeys.create_public_key(%s, '{}')", (ws,))
            src.pks["streamed_pk_revoked"] = r["public_key"]
            call(p, "alice", "SELECT apikeys.revoke_public_key(%s)", (r["id"],))
            # an invitation accepted, then the member's removal revokes their keys
            call(p, "alice", "SELECT apikeys.add_member(%s, 'mallory', 'member', '{read}')", (ws,))
            call(p, None, "GRANT app TO mallory")
            call(p, "mallory", "SELECT apikeys.accept_invitation(%s)", (ws,))
            r = one(p, "mallory", "SELECT id, key FROM apikeys.create_key(%s, 'mallory-key', '{read}')", (ws,))
            src.tokens["removed_member"], src.ids["removed_member"] = Secret(r["key"]), r["id"]
            call(p, "alice", "SELECT apikeys.remove_member(%s, 'mallory')", (ws,))
            # the stamped table: inserted as carol, updated as alice
            call(p, "carol", "INSERT INTO public.notes (id, body, created_by) VALUES (2, 'streamed', 'alice')")
            call(p, "alice", "UPDATE public.notes SET body = 'edited', created_by = 'alice' WHERE id = 2")

        caught_up(pub, sub)
        # the two revokes above (one by hand, one by the member's removal)
        # were announced to listeners on the subscriber too
        heard = set()
        for n in s.notifies(timeout=10, stop_after=2):
            heard.add(n.payload)
        assert {str(src.ids["streamed_dead"]), str(src.ids["removed_member"])} <= heard

    with pub.connect(DB) as p, sub.connect(DB) as s:
        stats = one(s, None, "SELECT apply_error_count, sync_error_count FROM pg_stat_subscription_stats "
                             "WHERE subname = 's'")
        assert stats == {"apply_error_count": 0, "sync_error_count": 0}
        assert worker_errors(sub) == []
        assert verify_all(s, src.tokens) == verify_all(p, src.tokens)
        assert resolve_all(s, src.pks) == resolve_all(p, src.pks)
        # the removal's cascade revoked mallory's key once, at the publisher's time
        assert call(s, None, "SELECT * FROM apikeys.verify_key(%s)", (src.tokens["removed_member"],)) == []
        assert one(s, None, "SELECT created_by FROM public.notes WHERE id = 2")["created_by"] == "carol"
        live = one(s, None, "SELECT count(*) AS n FROM apikeys.verify_key(%s)", (src.tokens["streamed"],))
        assert live["n"] == 1


def test_versions(setup):
    """Which versions this run replicated between (15 -> the layer's)."""
    pub, sub = setup["pub"], setup["sub"]
    with pub.connect() as p, sub.connect() as s:
        pv = one(p, None, "SHOW server_version_num")["server_version_num"]
        sv = one(s, None, "SHOW server_version_num")["server_version_num"]
    assert pv.startswith("15")
    assert sv[:2] == run([PGBIN / "pg_config", "--version"]).stdout.split()[1].split(".")[0]


def test_latches_hold_for_local_writes_on_the_subscriber(setup):
    sub, src = setup["sub"], setup["src"]
    with sub.connect(DB) as s:
        revoked = src.ids["bob_revoked"]
        for replica in (False, True):
            assert refused(s, "UPDATE apikeys.keys SET revoked_at = NULL WHERE id = %s", (revoked,),
                           replica) == "23514"
            assert refused(s, "UPDATE apikeys.keys SET expires_at = NULL WHERE id = %s",
                           (src.ids["alice_future"],), replica) == "23514"
            assert refused(s, "UPDATE apikeys.key_hashes SET hash = hash", None, replica) == "23514"
            assert refused(s, "UPDATE apikeys.audit_log SET actor = 'x'", None, replica) == "23514"
            assert refused(s, "DELETE FROM apikeys.keys", None, replica) == "42501"
            assert refused(s, "TRUNCATE apikeys.audit_log CASCADE", None, replica) == "42501"
            # and a local change under replica mode is still audited
            before = one(s, None, "SELECT count(*) AS n FROM apikeys.audit_log")["n"]
            with s.transaction():
                if replica:
                    s.execute("SET LOCAL session_replication_role = replica")
                s.execute("UPDATE apikeys.keys SET name = 'renamed' WHERE id = %s", (src.ids["dave_beta"],))
                after = s.execute("SELECT count(*) AS n FROM apikeys.audit_log").fetchone()["n"]
                assert after == before + 1
                raise psycopg.Rollback()


def test_switch_over_to_the_subscriber(setup):
    pub, sub, src = setup["pub"], setup["sub"], setup["src"]
    caught_up(pub, sub)
    with sub.connect(DB) as s:
        maxima = one(s, None, """SELECT (SELECT max(id) FROM apikeys.audit_log) AS audit,
                                        (SELECT max(id) FROM apikeys.members) AS members,
                                        (SELECT max(id) FROM apikeys.invitations) AS invitations""")
        before = verify_all(s, src.tokens)
        assert worker_errors(sub) == []
        # writes move here: the subscription goes (and with it the slot)
        s.execute("DROP SUBSCRIPTION s")
    pub.stop("fast")

    with sub.connect(DB) as s:
        ws = src.ws["acme"]
        r = one(s, "alice", "SELECT id, key FROM apikeys.create_key(%s, 'after-switch', '{read}')", (ws,))
        new_key, new_id = Secret(r["key"]), r["id"]
        new_ws = one(s, "carol", "SELECT apikeys.create_workspace('Switched') AS id")["id"]
        call(s, "carol", "SELECT apikeys.add_member(%s, 'dave', 'member', '{read}')", (new_ws,))
        call(s, "dave", "SELECT apikeys.accept_invitation(%s)", (new_ws,))
        pk = one(s, "alice", "SELECT public_key FROM apikeys.create_public_key(%s, '{}')", (ws,))["public_key"]
        call(s, "alice", "SELECT apikeys.revoke_key(%s)", (src.ids["streamed"],))

        got = one(s, None, "SELECT key_id FROM apikeys.verify_key(%s)", (new_key,))
        assert got["key_id"] == new_id
        assert call(s, None, "SELECT * FROM apikeys.verify_key(%s)", (src.tokens["streamed"],)) == []
        assert one(s, None, "SELECT workspace_id FROM apikeys.resolve_public_key(%s)", (pk,))["workspace_id"] == ws
        # every other token answers as before the switch-over
        after = verify_all(s, {k: v for k, v in src.tokens.items() if k != "streamed"})
        assert after == {k: v for k, v in before.items() if k[0] != "streamed"}
        # the new rows took ids after the replicated ones
        new_audit = call(s, None, "SELECT id, action FROM apikeys.audit_log WHERE id > %s ORDER BY id",
                         (maxima["audit"],))
        assert [r["action"] for r in new_audit] == EXPECTED_AFTER_SWITCH
        assert one(s, None, "SELECT min(id) AS m FROM apikeys.members WHERE workspace_id = %s",
                   (new_ws,))["m"] > maxima["members"]
        assert one(s, None, "SELECT min(id) AS m FROM apikeys.invitations WHERE workspace_id = %s",
                   (new_ws,))["m"] > maxima["invitations"]
        # the only worker message after the drop: the apply worker told to stop
        assert [e for e in worker_errors(sub)
                if "terminating logical replication worker due to administrator command" not in e] == []
