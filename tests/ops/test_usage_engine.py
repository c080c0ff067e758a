"""The usage engine in throw-away clusters that preload the library
(shared_preload_libraries = 'pg_apikeys'): exact counts under concurrency,
a full table, a hot standby, promotion, kill -9, a clean shutdown, and a
database or extension dropped under pending usage.

Every test reads `apikeys.usage_stats()` deltas, `apikeys.key_usage` and
`keys.last_used_at` as the superuser. `flush_usage()` asks the worker for a
flush and waits for it, so no test sleeps for a flush interval unless the
interval itself is what it measures.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import psycopg
import pytest

from cluster import Cluster, Secret, call, one, redact, run, wait_until

DB = "usage"
ROLES = """
CREATE ROLE app NOLOGIN;
CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
GRANT app TO alice, bob;
"""
PRELOAD = {"shared_preload_libraries": "pg_apikeys", "apikeys.usage_flush_interval": 1}


def stats(conn: psycopg.Connection) -> dict[str, Any]:
    return one(conn, None, "SELECT * FROM apikeys.usage_stats()")


def delta(after: dict[str, Any], before: dict[str, Any], *names: str) -> dict[str, int]:
    return {n: after[n] - before[n] for n in names}


def setup_db(c: Cluster, db: str = DB, keys: int = 0) -> dict[str, Any]:
    """A database with the extension, a workspace of alice's and `keys` keys
    (tokens as Secrets, by position)."""
    with c.connect() as admin:
        if not one(admin, None, "SELECT count(*) AS n FROM pg_roles WHERE rolname = 'alice'")["n"]:
            admin.execute(ROLES)
        admin.execute(f"CREATE DATABASE {db}")
    with c.connect(db) as su:
        su.execute("CREATE EXTENSION pg_apikeys")
        su.execute("SELECT apikeys.grant_to('app')")
        ws = one(su, "alice", "SELECT apikeys.create_workspace('usage') AS id")["id"]
        rows = call(su, "alice", """SELECT k.id, k.key FROM generate_series(1, %s) g,
                                           LATERAL apikeys.create_key(%s, 'key-' || g, '{read}') k
                                    ORDER BY g""", (keys, ws)) if keys else []
    return {"ws": ws, "ids": [r["id"] for r in rows], "tokens": [Secret(r["key"]) for r in rows]}


def verify_many(conn: psycopg.Connection, tokens: list[Secret], scopes: list[str] | None = None) -> int:
    """Verify every token once, in one statement; how many verified."""
    return one(conn, None, """SELECT count(v.key_id) AS n FROM unnest(%s::text[]) t(tok),
                                     LATERAL apikeys.verify_key(t.tok, %s::text[]) v""",
               (list(tokens), scopes or []))["n"]


@pytest.fixture(scope="module")
def primary(clusters) -> Cluster:
    c = clusters("usage_primary").init(
        {**PRELOAD, "wal_level": "replica", "max_wal_senders": 4, "hot_standby": "on",
         "apikeys.usage_slots": 1024, "max_worker_processes": 16},
        hba=["host replication all 127.0.0.1/32 trust"])
    c.start()
    return c


def test_mode_and_worker(primary):
    with primary.connect() as su:
        assert one(su, None, "SHOW shared_preload_libraries")["shared_preload_libraries"] == "pg_apikeys"
        n = one(su, None, """SELECT count(*) AS n FROM pg_stat_activity
                              WHERE backend_type = 'pg_apikeys usage launcher'""")["n"]
        assert n == 1
    data = setup_db(primary, "modes", keys=1)
    with primary.connect("modes") as su:
        assert one(su, None, "SELECT apikeys.usage_mode() AS m")["m"] == "shared_memory"
        s = stats(su)
        assert s["mode"] == "shared_memory" and s["slots"] == 1024
        assert verify_many(su, data["tokens"]) == 1


def test_counts_are_exact_under_concurrency(primary):
    """4 sessions, each 200 rounds over 5 keys: verified with its scope,
    refused for a missing scope, and an unknown token; then one flush."""
    data = setup_db(primary, "exact", keys=5)
    tokens = data["tokens"]
    with primary.connect("exact") as su:
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        before = stats(su)
    errors: list[str] = []

    def client() -> None:
        try:
            with primary.connect("exact") as c:
                for _ in range(200):
                    for t in tokens:
                        c.execute("SELECT * FROM apikeys.verify_key(%s, '{read}')", (t,))
                    c.execute("SELECT * FROM apikeys.verify_key(%s, '{write}')", (tokens[0],))
                    c.execute("SELECT * FROM apikeys.verify_key('sk_neverminted_0000000000000000000000000000')")
        except Exception as e:  # reported below
            errors.append(redact(str(e)))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with primary.connect("exact") as su:
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        after = stats(su)
        rows = call(su, None, "SELECT key_id, sum(verified) AS v, sum(rejected) AS r FROM apikeys.key_usage "
                              "GROUP BY key_id")
    got = {r["key_id"]: (r["v"], r["r"]) for r in rows}
    assert got == {data["ids"][0]: (800, 800), **{i: (800, 0) for i in data["ids"][1:]}}
    d = delta(after, before, "verified", "rejected", "unknown", "fallbacks", "discarded")
    assert d == {"verified": 4000, "rejected": 800, "unknown": 800, "fallbacks": 0, "discarded": 0}
    assert after["pending"] == 0


def test_a_full_table_falls_back_and_loses_nothing(primary):
    """1024 entries, 3000 distinct keys verified in one statement: what finds
    no entry falls back to the in-transaction write and is counted; every
    verify ends up either in key_usage or in fallbacks, and every key has
    its last_used_at."""
    data = setup_db(primary, "fulltable", keys=3000)
    with primary.connect("fulltable") as su:
        su.execute("SELECT apikeys.flush_usage()")
        before = stats(su)
        assert verify_many(su, data["tokens"]) == 3000
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        after = stats(su)
        counted = one(su, None, "SELECT coalesce(sum(verified), 0) AS n FROM apikeys.key_usage")["n"]
        stamped = one(su, None, "SELECT count(*) AS n FROM apikeys.keys WHERE last_used_at IS NOT NULL")["n"]
    d = delta(after, before, "verified", "fallbacks", "discarded")
    assert d["verified"] == 3000 and d["discarded"] == 0
    assert d["fallbacks"] > 0, "3000 distinct keys in 1024 entries: some must fall back"
    assert counted + d["fallbacks"] == 3000
    assert stamped == 3000


def test_dropped_extension_and_database_with_pending_usage(primary):
    """Pending usage of an extension that was dropped and created again: its
    key ids exist nowhere now, so it is counted as discarded and written
    nowhere (no misattribution). Pending usage of a dropped database: written
    before the drop or discarded, never lost silently; the worker goes on."""
    data = setup_db(primary, "dropext", keys=3)
    gone = setup_db(primary, "dropdb", keys=2)
    with primary.connect("dropext") as su:
        su.execute("SELECT apikeys.flush_usage()")
        # a long flush interval: nothing is written between verify and drop
        su.execute("ALTER SYSTEM SET apikeys.usage_flush_interval = 3600")
        su.execute("SELECT pg_reload_conf()")
        time.sleep(1.5)  # the launcher ends its current 1 s wait and reloads
        before = stats(su)
        assert verify_many(su, data["tokens"]) == 3
        su.execute("DROP EXTENSION pg_apikeys CASCADE")
        su.execute("CREATE EXTENSION pg_apikeys")
        su.execute("SELECT apikeys.grant_to('app')")
        fresh = setup_key(su)
        assert verify_many(su, [fresh]) == 1
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        after = stats(su)
        rows = call(su, None, "SELECT sum(verified) AS v FROM apikeys.key_usage")
    assert rows == [{"v": 1}]  # only the new key's verify
    assert delta(after, before, "verified", "discarded", "flushed") == {"verified": 4, "discarded": 3,
                                                                        "flushed": 1}
    # a database dropped with usage pending (DROP DATABASE wakes every
    # process, the launcher too: it may flush just before the drop)
    with primary.connect("dropdb") as su:
        before = stats(su)
        assert verify_many(su, gone["tokens"]) == 2
    with primary.connect() as admin:
        admin.execute("DROP DATABASE dropdb")
    with primary.connect("dropext") as su:
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        after = stats(su)
        su.execute("ALTER SYSTEM RESET apikeys.usage_flush_interval")
        su.execute("SELECT pg_reload_conf()")
        # the worker goes on
        assert verify_many(su, [fresh]) == 1
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        assert call(su, None, "SELECT sum(verified) AS v FROM apikeys.key_usage") == [{"v": 2}]
    d = delta(after, before, "verified", "discarded", "flushed")
    assert d["verified"] == 2 and d["discarded"] + d["flushed"] == 2
    assert after["pending"] == 0
    log = primary.log_text()
    assert "PANIC" not in log and "terminated by signal" not in log


def test_a_key_minted_in_a_rolled_back_transaction_counts_nowhere(primary):
    """The flush reads no key row for an entry (the entry carries the key's
    workspace), except for keys a verify found written by its own open
    transaction: those are written only if they exist at the flush. Verifies
    happened even when their transaction rolls back, so the verify of a
    committed key in that transaction still counts."""
    data = setup_db(primary, "rollback", keys=1)
    with primary.connect("rollback") as su:
        su.execute("SELECT apikeys.flush_usage()")
        before = stats(su)
        with su.transaction(force_rollback=True):
            gone = one(su, "alice", "SELECT id, key FROM apikeys.create_key(%s, 'gone')", (data["ws"],))
            assert verify_many(su, [Secret(gone["key"]), Secret(gone["key"]), data["tokens"][0]]) == 3
            su.execute("RESET ROLE")
        with su.transaction():
            kept = one(su, "alice", "SELECT id, key FROM apikeys.create_key(%s, 'kept')", (data["ws"],))
            assert verify_many(su, [Secret(kept["key"])]) == 1
            su.execute("RESET ROLE")
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        after = stats(su)
        rows = call(su, None, "SELECT key_id, workspace_id, verified FROM apikeys.key_usage ORDER BY verified")
    assert delta(after, before, "verified", "discarded", "flushed") == {"verified": 4, "discarded": 2,
                                                                        "flushed": 2}
    assert {r["key_id"] for r in rows} == {data["ids"][0], kept["id"]}
    assert gone["id"] not in {r["key_id"] for r in rows}
    assert all(r["workspace_id"] == data["ws"] and r["verified"] == 1 for r in rows)


def setup_key(su: psycopg.Connection) -> Secret:
    ws = one(su, "alice", "SELECT apikeys.create_workspace('again') AS id")["id"]
    return Secret(one(su, "alice", "SELECT key FROM apikeys.create_key(%s, 'again')", (ws,))["key"])


def test_standby_keeps_its_usage_and_writes_it_after_promotion(primary, clusters):
    """A hot standby records verifies (READ ONLY, no write possible) and keeps
    them pending, shown by usage_stats(); the primary's key_usage does not
    get them. When its table is full, what does not fit is counted as
    unrecorded. Promoted, it writes what it kept."""
    data = setup_db(primary, "hs", keys=1100)
    standby = clusters("usage_standby").basebackup_of(primary, {**PRELOAD, "apikeys.usage_slots": 1024})
    standby.start()
    with primary.connect("hs") as p:
        lsn = one(p, None, "SELECT pg_current_wal_lsn()::text AS l")["l"]
    with standby.connect("hs") as s:
        wait_until(lambda: one(s, None, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn AS ok", (lsn,))["ok"],
                   30, "standby replay")
        before = stats(s)
        assert verify_many(s, data["tokens"][:10]) == 10
        assert verify_many(s, data["tokens"][:10]) == 10
        assert s.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        mid = stats(s)
        assert delta(mid, before, "verified", "flushed", "unrecorded") == {"verified": 20, "flushed": 0,
                                                                          "unrecorded": 0}
        assert mid["pending"] == 20 and mid["slots_in_use"] == 10
        # 1100 more distinct keys than fit: the rest is counted, not lost silently
        assert verify_many(s, data["tokens"]) == 1100
        full = stats(s)
        assert full["pending"] + (full["unrecorded"] - before["unrecorded"]) == 20 + 1100
        assert full["unrecorded"] - before["unrecorded"] > 0
    with primary.connect("hs") as p:
        p.execute("SELECT apikeys.flush_usage()")
        assert one(p, None, "SELECT count(*) AS n FROM apikeys.key_usage")["n"] == 0
    # promotion: the kept usage is written on the new primary
    run([standby.pgbin / "pg_ctl", "-D", standby.data, "-w", "promote"], as_owner=True)
    with standby.connect("hs") as s:
        wait_until(lambda: not one(s, None, "SELECT pg_is_in_recovery() AS r")["r"], 30, "promotion")
        assert s.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        kept = one(s, None, "SELECT coalesce(sum(verified), 0) AS n FROM apikeys.key_usage")["n"]
        after = stats(s)
    assert kept == full["pending"]
    assert after["pending"] == 0


def test_kill_9_loses_at_most_one_flush_interval(clusters):
    """Flushed usage survives a kill -9 of the postmaster; what was pending
    (at most one interval) is lost; keys, revocations and audit rows are
    never lost."""
    c = clusters("usage_crash").init({**PRELOAD, "apikeys.usage_flush_interval": 2})
    c.start()
    data = setup_db(c, "crash", keys=4)
    with c.connect("crash") as su:
        for _ in range(5):
            verify_many(su, data["tokens"])
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        flushed = one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"]
        call(su, "alice", "SELECT apikeys.revoke_key(%s)", (data["ids"][3],))
        audit = one(su, None, "SELECT count(*) AS n FROM apikeys.audit_log")["n"]
        # pending only: verified after the flush, killed before the next
        verify_many(su, data["tokens"][:3])
    c.kill9()
    c.start()
    with c.connect("crash") as su:
        su.execute("SELECT apikeys.flush_usage()")
        after = one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"]
        assert flushed == 20
        assert flushed <= after <= flushed + 3
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.audit_log")["n"] == audit
        assert one(su, None, "SELECT revoked_at IS NOT NULL AS r FROM apikeys.keys WHERE id = %s",
                   (data["ids"][3],))["r"]
        assert verify_many(su, data["tokens"]) == 3


def test_the_current_hour_is_written_once_after_it(clusters):
    """The counts of the current hour stay in shared memory (no write at
    each interval): readers see them through pending_usage() and
    key_usage_live; a first use's last_used_at is written at the next
    interval; flush_usage() writes the rest at once, with one round row."""
    c = clusters("usage_hour").init(PRELOAD)
    c.start()
    data = setup_db(c, "hour", keys=3)
    with c.connect("hour") as su:
        for _ in range(4):
            assert verify_many(su, data["tokens"]) == 3
        # several flush intervals (1 s): first uses stamped, counts kept
        wait_until(lambda: one(su, None, "SELECT count(*) AS n FROM apikeys.keys "
                                          "WHERE last_used_at IS NOT NULL")["n"] == 3, 10, "first-use stamps")
        time.sleep(2.5)
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.key_usage")["n"] == 0
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.usage_rounds")["n"] == 0
        live = call(su, "alice", "SELECT key_id, verified FROM apikeys.key_usage_live ORDER BY key_id")
        assert sorted(r["verified"] for r in live) == [4, 4, 4]
        pending = call(su, "alice", "SELECT sum(verified) AS n FROM apikeys.pending_usage()")
        assert pending[0]["n"] == 12
        # bob sees none of alice's keys (row security of keys applies)
        assert call(su, "bob", "SELECT count(*) AS n FROM apikeys.pending_usage()")[0]["n"] == 0
        assert call(su, "bob", "SELECT count(*) AS n FROM apikeys.key_usage_live")[0]["n"] == 0
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 12
        assert call(su, "alice", "SELECT sum(verified) AS n FROM apikeys.key_usage_live")[0]["n"] == 12
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.usage_rounds WHERE kind = 'written'")["n"] == 1


def test_kill_9_recovers_the_saved_copy_exactly(clusters):
    """The launcher saves a copy of the table at every interval (no WAL): a
    kill -9 after it loses nothing of what the copy holds, and a kill -9
    right after a write round (the copy on disk still holds what the round
    wrote) writes nothing twice: the round's row in usage_rounds says which
    hours of that copy were written."""
    c = clusters("usage_copy").init(PRELOAD)
    c.start()
    data = setup_db(c, "copy", keys=2)
    with c.connect("copy") as su:
        for _ in range(7):
            assert verify_many(su, data["tokens"]) == 2
        time.sleep(2.5)  # a copy saved after the verifies
    c.kill9()
    c.start()
    with c.connect("copy") as su:
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 14
        for _ in range(4):
            assert verify_many(su, data["tokens"]) == 2
        time.sleep(2.5)  # the copy holds the 8 ...
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]  # ... and they are written
    c.kill9()
    c.start()
    with c.connect("copy") as su:
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 22
        assert stats(su)["discarded"] == 0
    assert not list(c.data.glob("pg_apikeys_usage.recovered.*"))


def launcher_pid(c: Cluster) -> int | None:
    try:
        with c.connect() as su:
            row = su.execute("SELECT pid FROM pg_stat_activity "
                             "WHERE backend_type = 'pg_apikeys usage launcher'").fetchone()
            return row["pid"] if row else None
    except psycopg.OperationalError:
        return None  # the server is restarting


def test_a_crashed_launcher_comes_back(clusters):
    """kill -9 of the launcher: PostgreSQL treats a worker with shared memory
    that dies by a signal as a crash and restarts every process; the launcher
    is registered again, so use recorded after the restart is flushed as
    before. Flushed usage, keys and audit rows survive."""
    c = clusters("usage_launcher").init(PRELOAD)
    c.start()
    data = setup_db(c, "relaunch", keys=2)
    with c.connect("relaunch") as su:
        assert verify_many(su, data["tokens"]) == 2
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
    first = launcher_pid(c)
    assert first
    os.kill(first, signal.SIGKILL)
    again = wait_until(lambda: (p := launcher_pid(c)) and p != first and p, 60, "a new launcher")
    assert again != first
    with c.connect("relaunch") as su:
        assert one(su, None, "SELECT apikeys.usage_mode() AS m")["m"] == "shared_memory"
        assert verify_many(su, data["tokens"]) == 2
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 4
    log = c.log_text()
    assert "pg_apikeys usage launcher" in log and "terminated by signal 9" in log
    assert "PANIC" not in log


def test_clean_shutdown_keeps_pending_usage(clusters):
    """Stopped cleanly with usage pending (flush interval one hour), the next
    start writes it: the launcher saves it to pg_apikeys_usage.pending."""
    c = clusters("usage_stop").init({**PRELOAD, "apikeys.usage_flush_interval": 3600})
    c.start()
    data = setup_db(c, "stop", keys=3)
    with c.connect("stop") as su:
        assert verify_many(su, data["tokens"]) == 3
        assert stats(su)["pending"] == 3
    c.stop("fast")
    assert (c.data / "pg_apikeys_usage.pending").exists()
    c.start()
    with c.connect("stop") as su:
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 3
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.keys WHERE last_used_at IS NOT NULL")["n"] == 3
    # the saved copy was written and is gone; a fresh copy is saved
    assert not list(c.data.glob("pg_apikeys_usage.recovered.*"))


# -- rate limits and credits ---------------------------------------------------


def hammer(c: Cluster, db: str, token: Secret, clients: int, each: int, cost: int = 1) -> dict[str, int]:
    """`clients` sessions each run `each` check_key calls at once; the codes counted."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        try:
            with c.connect(db) as conn:
                for _ in range(each):
                    code = conn.execute("SELECT code FROM apikeys.check_key(%s, NULL, %s)",
                                        (token, cost)).fetchone()["code"]
                    with lock:
                        counts[code] = counts.get(code, 0) + 1
        except Exception as e:  # reported below
            errors.append(redact(str(e)))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return counts


def test_limits_are_exact_under_concurrency(primary):
    """4 sessions × 100 checks of a key allowed 50 a day: exactly 50 valid.
    A key with 120 credits checked 4 × 100 times at cost 1: exactly 120
    valid, never below zero, and the written balance and key_usage agree."""
    data = setup_db(primary, "exactlimits", keys=2)
    with primary.connect("exactlimits") as su:
        call(su, None, "UPDATE apikeys.keys SET rate_limit = 50, rate_window = '1 day' WHERE id = %s",
             (data["ids"][0],))
        call(su, None, "UPDATE apikeys.keys SET credits = 120, credits_refilled_at = now() WHERE id = %s",
             (data["ids"][1],))
        su.execute("SELECT apikeys.flush_usage()")
    got = hammer(primary, "exactlimits", data["tokens"][0], 4, 100)
    assert got == {"valid": 50, "rate_limited": 350}
    got = hammer(primary, "exactlimits", data["tokens"][1], 4, 100)
    assert got == {"valid": 120, "usage_exceeded": 280}
    with primary.connect("exactlimits") as su:
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        row = one(su, None, "SELECT credits FROM apikeys.keys WHERE id = %s", (data["ids"][1],))
        assert row["credits"] == 0
        usage = one(su, None, "SELECT sum(verified) AS v, sum(rejected) AS r FROM apikeys.key_usage WHERE key_id = %s",
                    (data["ids"][1],))
        assert (usage["v"], usage["r"]) == (120, 280)
        # and the check after all that: still refused, balance 0, not below
        r = one(su, None, "SELECT code, credits_remaining FROM apikeys.check_key(%s)", (data["tokens"][1],))
        assert r == {"code": "usage_exceeded", "credits_remaining": 0}


def test_a_standby_enforces_its_own_limit(primary, clusters):
    """Each server counts its own window: a key allowed 3 a day gets 3 on the
    primary and 3 more on a standby."""
    data = setup_db(primary, "hslimits", keys=1)
    with primary.connect("hslimits") as su:
        call(su, None, "UPDATE apikeys.keys SET rate_limit = 3, rate_window = '1 day' WHERE id = %s",
             (data["ids"][0],))
        lsn = one(su, None, "SELECT pg_current_wal_lsn()::text AS l")["l"]
    standby = clusters("usage_standby2").basebackup_of(primary, {**PRELOAD, "apikeys.usage_slots": 1024})
    standby.start()
    with standby.connect("hslimits") as s:
        wait_until(lambda: one(s, None, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn AS ok", (lsn,))["ok"],
                   30, "standby replay")
        codes = [one(s, None, "SELECT code FROM apikeys.check_key(%s)", (data["tokens"][0],))["code"]
                 for _ in range(4)]
        assert codes == ["valid", "valid", "valid", "rate_limited"]
    with primary.connect("hslimits") as p:
        codes = [one(p, None, "SELECT code FROM apikeys.check_key(%s)", (data["tokens"][0],))["code"]
                 for _ in range(4)]
        assert codes == ["valid", "valid", "valid", "rate_limited"]


def test_kill_9_over_serves_credits_by_at_most_one_interval(clusters):
    """Credits 100: 30 used and written by a flush, 20 more used, then kill -9
    before the next flush. After the restart the balance is the written 70:
    the 20 debits of the lost interval are served again, never more."""
    c = clusters("usage_credits_crash").init({**PRELOAD, "apikeys.usage_flush_interval": 3600})
    c.start()
    data = setup_db(c, "credits", keys=1)
    tok = data["tokens"][0]
    with c.connect("credits") as su:
        call(su, None, "UPDATE apikeys.keys SET credits = 100, credits_refilled_at = now() WHERE id = %s",
             (data["ids"][0],))
        assert hammer(c, "credits", tok, 1, 30) == {"valid": 30}
        assert su.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        assert one(su, None, "SELECT credits FROM apikeys.keys")["credits"] == 70
        assert hammer(c, "credits", tok, 1, 20) == {"valid": 20}
    c.kill9()
    c.start()
    with c.connect("credits") as su:
        assert one(su, None, "SELECT credits FROM apikeys.keys")["credits"] == 70
    after = hammer(c, "credits", tok, 2, 50)
    # served in all: 30 + 20 + 70 = 120 of 100 credits: over by the 20 the
    # lost interval admitted, and no more
    assert after == {"valid": 70, "usage_exceeded": 30}
