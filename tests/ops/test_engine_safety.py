"""The usage engine against a hostile tenant, in throw-away clusters that
preload the library: one tenant holding its own key's row (an open
update_key, a prepared transaction) stalls neither the flush nor another
tenant's revoke; credits whose debits cannot be written fail closed, so a
kill -9 over-serves at most about one interval; a clean restart keeps every
debit and every rate window; the flusher keeps its own session whatever
ALTER DATABASE says, stops on pg_terminate_backend, and the launcher comes
back after one; a database that takes no connections is discarded, not
retried forever; a READ ONLY verify without an entry counts once; a balance
set while a flush runs is not overwritten.
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
from test_usage_engine import PRELOAD, delta, hammer, launcher_pid, setup_db, stats, verify_many


@pytest.fixture
def clusters(ports):
    """As conftest's, but each test's clusters are removed when it ends
    (this module makes more clusters than the port range holds)."""
    made: list[Cluster] = []

    def make(name: str) -> Cluster:
        c = Cluster(name, ports)
        made.append(c)
        return c

    yield make
    for c in reversed(made):
        c.destroy()


def flush(conn: psycopg.Connection, timeout_ms: int = 30000) -> bool:
    return conn.execute("SELECT apikeys.flush_usage(%s)", (timeout_ms,)).fetchone()["flush_usage"]


def bob_keys(c: Cluster, db: str, n: int) -> dict[str, Any]:
    """bob's own workspace in `db` and `n` keys of his."""
    with c.connect(db) as su:
        ws = one(su, "bob", "SELECT apikeys.create_workspace('bob') AS id")["id"]
        rows = call(su, "bob", """SELECT k.id, k.key FROM generate_series(1, %s) g,
                                         LATERAL apikeys.create_key(%s, 'bob-' || g) k ORDER BY g""", (n, ws))
    return {"ws": ws, "ids": [r["id"] for r in rows], "tokens": [Secret(r["key"]) for r in rows]}


def hold_row(c: Cluster, db: str, key_id) -> psycopg.Connection:
    """alice's open update_key of her own key: its row stays locked until
    the returned connection commits or closes."""
    h = c.connect(db, autocommit=False)
    h.execute("SET ROLE alice")
    h.execute("SELECT apikeys.update_key(%s, name => 'held')", (key_id,))
    return h


def test_a_tenant_holding_its_row_stalls_neither_the_flush_nor_another_tenants_revoke(clusters):
    """alice holds her key's row while a client verifies her keys and bob's
    over and over (the engine busy, every stamp due). Meanwhile the flush
    answers at once and writes everything else (her held stamp deferred,
    counted), another database's usage is written, and each of bob's 20
    revokes runs without waiting for the engine (statement_timeout 1.5 s
    would cut a wait short)."""
    c = clusters("safety_stall").init({**PRELOAD, "max_worker_processes": 16})
    c.start()
    alice = setup_db(c, "stall", keys=50)
    bob = bob_keys(c, "stall", 20)
    other = setup_db(c, "otherdb", keys=3)
    held = hold_row(c, "stall", alice["ids"][0])
    stop = threading.Event()
    errors: list[str] = []

    def busy() -> None:
        try:
            with c.connect("stall") as v:
                v.execute("SET apikeys.last_used_interval = 0")
                while not stop.is_set():
                    verify_many(v, alice["tokens"] + bob["tokens"])
        except Exception as e:  # reported below
            errors.append(redact(str(e)))

    t = threading.Thread(target=busy)
    t.start()
    try:
        time.sleep(1.5)
        with c.connect("stall") as su:
            before = stats(su)
            started = time.monotonic()
            assert flush(su, 5000), "the flush waited for alice's row"
            assert time.monotonic() - started < 2
        with c.connect("otherdb") as o:
            assert verify_many(o, other["tokens"]) == 3
            assert flush(o, 5000)
            assert one(o, None, "SELECT coalesce(sum(verified), 0) AS n FROM apikeys.key_usage")["n"] >= 3
        latencies = []
        with c.connect("stall") as b:
            b.execute("SET ROLE bob")
            b.execute("SET statement_timeout = '1500ms'")
            for kid in bob["ids"]:
                t0 = time.monotonic()
                b.execute("SELECT apikeys.revoke_key(%s)", (kid,))
                latencies.append(time.monotonic() - t0)
        # no revoke waited for the engine (a wait lasts until alice commits)
        assert max(latencies) < 0.5, f"slowest revoke {max(latencies):.3f} s"
        print(f"revoke_key latency while a tenant holds its row: max {max(latencies) * 1000:.1f} ms, "
              f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms")
        with c.connect("stall") as su:
            assert flush(su, 5000)
            after = stats(su)
            assert after["deferred"] > before["deferred"], "alice's stamp was not deferred"
            assert one(su, None, "SELECT last_used_at IS NULL AS n FROM apikeys.keys WHERE id = %s",
                       (alice["ids"][0],))["n"]
            assert one(su, None, "SELECT count(*) AS n FROM apikeys.keys WHERE last_used_at IS NOT NULL")["n"] >= 69
    finally:
        stop.set()
        t.join()
        held.commit()
        held.close()
    assert errors == []
    with c.connect("stall") as su:
        assert flush(su)
        # the deferred stamp is written once alice lets go
        assert not one(su, None, "SELECT last_used_at IS NULL AS n FROM apikeys.keys WHERE id = %s",
                       (alice["ids"][0],))["n"]


def test_a_prepared_transaction_holding_a_row_does_not_stall_the_engine(clusters):
    """A prepared transaction holds a key's row with no session behind it
    (it outlives every client): the flush skips that row and answers."""
    c = clusters("safety_2pc").init({**PRELOAD, "max_prepared_transactions": 2})
    c.start()
    data = setup_db(c, "twophase", keys=3)
    with c.connect("twophase", autocommit=False) as p:
        p.execute("SELECT FROM apikeys.keys WHERE id = %s FOR UPDATE", (data["ids"][0],))
        p.execute("PREPARE TRANSACTION 'hold_key'")
    with c.connect("twophase") as su:
        try:
            su.execute("SET apikeys.last_used_interval = 0")
            assert verify_many(su, data["tokens"]) == 3
            assert flush(su, 5000), "the flush waited for a prepared transaction"
            stamped = one(su, None, "SELECT count(*) AS n FROM apikeys.keys WHERE last_used_at IS NOT NULL")["n"]
            assert stamped == 2
            assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 3
        finally:
            su.execute("ROLLBACK PREPARED 'hold_key'")
        assert flush(su)
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.keys WHERE last_used_at IS NOT NULL")["n"] == 3


def test_credits_whose_debits_cannot_be_written_fail_closed_and_kill_9_stays_bounded(clusters):
    """Credits 1000, checked 20 times a second while alice holds the key's
    row, so no flush can write its debits: after the first flush that finds
    the row held, the key answers rate_limited (held, counted in
    credits_held) instead of spending on. A kill -9 then over-serves what
    was admitted before the hold, about one flush interval, not the whole
    stall."""
    c = clusters("safety_credits").init(PRELOAD)
    c.start()
    data = setup_db(c, "held", keys=1)
    tok, kid = data["tokens"][0], data["ids"][0]
    with c.connect("held") as su:
        call(su, None, "UPDATE apikeys.keys SET credits = 1000, credits_refilled_at = now() WHERE id = %s", (kid,))
        before = stats(su)
    held = hold_row(c, "held", kid)
    codes: dict[str, int] = {}
    with c.connect("held") as ck:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            code = ck.execute("SELECT code FROM apikeys.check_key(%s)", (tok,)).fetchone()["code"]
            codes[code] = codes.get(code, 0) + 1
            time.sleep(0.05)
        assert stats(ck)["credits_held"] > before["credits_held"]
    served = codes.get("valid", 0)
    assert codes.get("rate_limited", 0) > 0, codes
    # one interval (1 s) at 20 a second, the retry and a margin; the stall
    # lasted 6 s (about 110 checks)
    assert served <= 60, codes
    c.kill9()
    held.close()
    c.start()
    with c.connect("held") as su:
        assert one(su, None, "SELECT credits FROM apikeys.keys WHERE id = %s", (kid,))["credits"] == 1000
    print(f"credits over-served by a kill -9 after a 6 s stall: {served} (checks: {codes})")


def test_a_clean_restart_keeps_every_debit_and_every_window(clusters):
    """Credits 100: 30 used and written, 20 used and pending; a limit of 3 a
    day used up. `pg_ctl restart -m fast`: exactly 50 credits are left and
    the limit stays used up (the limits table is saved with the pending
    usage and loaded by the next start)."""
    c = clusters("safety_restart").init({**PRELOAD, "apikeys.usage_flush_interval": 3600})
    c.start()
    data = setup_db(c, "restart", keys=2)
    credited, limited = data["tokens"]
    with c.connect("restart") as su:
        call(su, None, "UPDATE apikeys.keys SET credits = 100, credits_refilled_at = now() WHERE id = %s",
             (data["ids"][0],))
        call(su, None, "UPDATE apikeys.keys SET rate_limit = 3, rate_window = '1 day' WHERE id = %s",
             (data["ids"][1],))
    assert hammer(c, "restart", credited, 1, 30) == {"valid": 30}
    with c.connect("restart") as su:
        assert flush(su)
    assert hammer(c, "restart", credited, 1, 20) == {"valid": 20}
    assert hammer(c, "restart", limited, 1, 3) == {"valid": 3}
    c.stop("fast")
    assert (c.data / "pg_apikeys_limits.saved").exists()
    c.start()
    assert hammer(c, "restart", limited, 1, 2) == {"rate_limited": 2}
    assert hammer(c, "restart", credited, 2, 40) == {"valid": 50, "usage_exceeded": 30}
    with c.connect("restart") as su:
        assert flush(su)
        assert one(su, None, "SELECT credits FROM apikeys.keys WHERE id = %s", (data["ids"][0],))["credits"] == 0
    assert not (c.data / "pg_apikeys_limits.saved").exists()


def test_checks_wait_for_the_saved_limits_table_and_go_on_without_a_launcher(clusters):
    """The saved limits table is loaded by the launcher, a moment after the
    server accepts connections; a check in that moment waits for the load.
    With no launcher at all (max_worker_processes = 0 leaves it
    unregistered) a check waits its bound, says so once, and goes on without
    the saved windows; the file stays, and the next start with a launcher
    adds it to what was counted meanwhile."""
    c = clusters("safety_noload").init({**PRELOAD, "apikeys.usage_flush_interval": 3600})
    c.start()
    data = setup_db(c, "noload", keys=1)
    (limited,) = data["tokens"]
    with c.connect("noload") as su:
        call(su, None, "UPDATE apikeys.keys SET rate_limit = 3, rate_window = '1 day' WHERE id = %s",
             (data["ids"][0],))
    assert hammer(c, "noload", limited, 1, 2) == {"valid": 2}
    c.stop("fast")
    saved = c.data / "pg_apikeys_limits.saved"
    assert saved.exists()
    c._conf({"max_worker_processes": 0})
    c.start()
    warnings: list[str] = []
    with c.connect("noload") as su:
        su.add_notice_handler(lambda d: warnings.append(d.message_primary or ""))
        assert launcher_pid(c) is None
        t0 = time.monotonic()
        assert one(su, None, "SELECT code FROM apikeys.check_key(%s)", (limited,))["code"] == "valid"
        waited = time.monotonic() - t0
        # once per session: the next check does not wait again
        t0 = time.monotonic()
        assert one(su, None, "SELECT code FROM apikeys.check_key(%s)", (limited,))["code"] == "valid"
        again = time.monotonic() - t0
    assert waited >= 9 and again < 5, (waited, again)
    assert [w for w in warnings if "not loaded yet" in w] == [
        "pg_apikeys: the saved rate windows and credit debits are not loaded yet; checks go on without them"]
    assert saved.exists()
    c.stop("fast")
    c._conf({"max_worker_processes": 8})
    c.start()
    # the 2 counted before the first stop are loaded now (what was counted
    # without a launcher was never saved): one check is left of 3
    assert hammer(c, "noload", limited, 1, 2) == {"valid": 1, "rate_limited": 1}
    assert not saved.exists()


def test_the_flusher_keeps_its_own_session(clusters):
    """ALTER DATABASE and ALTER ROLE settings that would break a flush (read
    only, repeatable read, 1 ms statement, lock and idle timeouts) change
    nothing: the flush writes counts and stamps."""
    c = clusters("safety_session").init(PRELOAD)
    c.start()
    data = setup_db(c, "hostile", keys=3)
    with c.connect() as su:
        for s in ("default_transaction_read_only = on", "default_transaction_isolation = 'repeatable read'",
                  "statement_timeout = '1ms'", "lock_timeout = '1ms'",
                  "idle_in_transaction_session_timeout = '1ms'"):
            su.execute(f"ALTER DATABASE hostile SET {s}")
        su.execute("ALTER ROLE postgres IN DATABASE hostile SET session_replication_role = replica")
    with c.connect("hostile") as su:
        for s in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"):
            su.execute(f"SET {s} = 0")
        su.execute("SET default_transaction_read_only = off")
        assert verify_many(su, data["tokens"]) == 3
        assert flush(su)
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 3
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.keys WHERE last_used_at IS NOT NULL")["n"] == 3


def flusher_pid(c: Cluster) -> int | None:
    with c.connect() as su:
        row = su.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_apikeys usage flush' "
                         "AND wait_event_type = 'Lock'").fetchone()
        return row["pid"] if row else None


def test_terminated_flusher_and_launcher(clusters):
    """pg_terminate_backend ends a flusher waiting for a table lock at once
    (it had only set a flag before), and what it had not committed is
    written by a later flush exactly once. A terminated launcher is started
    again by the postmaster (it used to exit with code 0 and stay away),
    and the usage pending then is written once."""
    c = clusters("safety_term").init({**PRELOAD, "apikeys.usage_flush_interval": 3600})
    c.start()
    data = setup_db(c, "term", keys=3)
    with c.connect("term") as su:
        assert verify_many(su, data["tokens"]) == 3
    holder = c.connect("term", autocommit=False)
    holder.execute("LOCK TABLE apikeys.key_usage IN ACCESS EXCLUSIVE MODE")
    with c.connect("term") as su:
        assert not flush(su, 100)
    pid = wait_until(lambda: flusher_pid(c), 10, "a flusher waiting for the lock")
    with c.connect() as su:
        su.execute("SELECT pg_terminate_backend(%s)", (pid,))
    t0 = time.monotonic()
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 5, "the flusher to exit")
    gone = time.monotonic() - t0
    holder.rollback()
    holder.close()
    assert gone < 0.5, f"the flusher took {gone:.2f} s to stop"
    with c.connect("term") as su:
        assert flush(su)
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 3
        assert verify_many(su, data["tokens"]) == 3
    first = launcher_pid(c)
    with c.connect() as su:
        su.execute("SELECT pg_terminate_backend(%s)", (first,))
    again = wait_until(lambda: (p := launcher_pid(c)) and p != first and p, 30, "a new launcher")
    assert again != first
    with c.connect("term") as su:
        assert flush(su)
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 6
        assert stats(su)["pending"] == 0


def test_a_database_that_takes_no_connections_is_discarded_not_retried(clusters):
    """Usage pending in a database that then stops taking connections
    (ALLOW_CONNECTIONS false): a flush gives it up, counted as discarded,
    and answers true instead of leaving it pending for ever."""
    c = clusters("safety_closed").init({**PRELOAD, "apikeys.usage_flush_interval": 3600})
    c.start()
    data = setup_db(c, "closed", keys=4)
    setup_db(c, "watch")
    with c.connect("closed") as su:
        assert verify_many(su, data["tokens"]) == 4
    with c.connect("watch") as su:
        before = stats(su)
        su.execute("ALTER DATABASE closed ALLOW_CONNECTIONS false")
        assert flush(su, 10000)
        after = stats(su)
    assert after["pending"] == 0
    assert delta(after, before, "discarded")["discarded"] == 4


def test_a_read_only_verify_without_an_entry_counts_once(clusters):
    """1024 entries, 3000 keys verified in one READ ONLY statement: a verify
    that finds no entry cannot write either, so it is unrecorded, never
    also a fallback; every verify is in key_usage or in unrecorded."""
    c = clusters("safety_ro").init({**PRELOAD, "apikeys.usage_slots": 1024, "apikeys.usage_flush_interval": 3600})
    c.start()
    data = setup_db(c, "ro", keys=3000)
    with c.connect("ro") as su:
        assert flush(su)
        before = stats(su)
        with su.transaction():
            su.execute("SET TRANSACTION READ ONLY")
            assert verify_many(su, data["tokens"]) == 3000
        assert flush(su)
        after = stats(su)
        counted = one(su, None, "SELECT coalesce(sum(verified), 0) AS n FROM apikeys.key_usage")["n"]
    d = delta(after, before, "verified", "fallbacks", "unrecorded", "discarded")
    assert d["verified"] == 3000 and d["fallbacks"] == 0 and d["discarded"] == 0
    assert d["unrecorded"] > 0
    assert counted + d["unrecorded"] == 3000


def test_a_balance_set_while_a_flush_runs_is_not_overwritten(clusters):
    """Credits 50, 10 spent and not written yet; alice's update_key sets 100
    and holds the row while the flusher comes: the flush skips it, and once
    she commits the 10 old debits (made against the old balance) are
    dropped, not taken from the new one."""
    c = clusters("safety_set").init({**PRELOAD, "apikeys.usage_flush_interval": 3600})
    c.start()
    data = setup_db(c, "setbal", keys=1)
    tok, kid = data["tokens"][0], data["ids"][0]
    with c.connect("setbal") as su:
        call(su, None, "UPDATE apikeys.keys SET credits = 50, credits_refilled_at = now() WHERE id = %s", (kid,))
    assert hammer(c, "setbal", tok, 1, 10) == {"valid": 10}
    h = c.connect("setbal", autocommit=False)
    h.execute("SET ROLE alice")
    h.execute("SELECT apikeys.update_key(%s, credits => 100)", (kid,))
    with c.connect("setbal") as su:
        assert flush(su, 3000), "the flush waited for alice's update_key"
    h.commit()
    h.close()
    with c.connect("setbal") as su:
        assert flush(su)
        assert one(su, None, "SELECT credits FROM apikeys.keys WHERE id = %s", (kid,))["credits"] == 100
        r = one(su, None, "SELECT code, credits_remaining FROM apikeys.check_key(%s)", (tok,))
        assert r == {"code": "valid", "credits_remaining": 99}


def test_a_damaged_saved_file_is_not_loaded(clusters):
    """A pending-usage file cut short or from elsewhere is refused whole
    (logged), removed, and the engine goes on."""
    c = clusters("safety_file").init({**PRELOAD, "apikeys.usage_flush_interval": 3600})
    c.start()
    data = setup_db(c, "damaged", keys=2)
    with c.connect("damaged") as su:
        assert verify_many(su, data["tokens"]) == 2
    c.stop("fast")
    f = c.data / "pg_apikeys_usage.pending"
    raw = f.read_bytes()
    f.write_bytes(raw[:-7])
    c.start()
    with c.connect("damaged") as su:
        assert flush(su)
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.key_usage")["n"] == 0
        assert verify_many(su, data["tokens"]) == 2
        assert flush(su)
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 2
    # refused whole: nothing of it is kept to be written later
    assert not list(c.data.glob("pg_apikeys_usage.recovered.*"))
    assert "saved usage not loaded (Damaged)" in c.log_text()


def test_one_tenant_cannot_fill_the_tables_for_the_others(clusters):
    """alice mints and checks 3000 rate-limited keys in transactions that
    roll back (nothing of them is left). bob's never-used limited keys are
    then all valid, and his READ ONLY verifies are all recorded: entries of
    keys that never committed are free for the taking, and no workspace
    holds more than its share (apikeys.workspace_share) of either table.
    alice's own refusals for lack of an entry are counted (limits_full)."""
    c = clusters("safety_share").init({**PRELOAD, "apikeys.usage_slots": 1024, "apikeys.limit_slots": 1024,
                                       "apikeys.usage_flush_interval": 3600})
    c.start()
    alice = setup_db(c, "share")
    bob = bob_keys(c, "share", 8)
    with c.connect("share") as su:
        for kid in bob["ids"]:
            call(su, None, "UPDATE apikeys.keys SET rate_limit = 5, rate_window = '1 hour' WHERE id = %s", (kid,))
        before = stats(su)
    with c.connect("share", autocommit=False) as a:
        a.execute("SET ROLE alice")
        for chunk in range(2):
            codes = a.execute("""SELECT (apikeys.check_key((apikeys.create_key(%s, 'f' || %s || '-' || g,
                                        rate_limit => 1, rate_window => '1 hour')).key)).code AS code
                                   FROM generate_series(1, 1500) g""", (alice["ws"], chunk)).fetchall()
            assert len(codes) == 1500
            a.rollback()
            a.execute("SET ROLE alice")
    with c.connect("share") as su:
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.keys WHERE workspace_id = %s", (alice["ws"],))["n"] == 0
        mid = stats(su)
        assert mid["limits_full"] > before["limits_full"], "alice's refusals for lack of an entry are counted"
        codes = [one(su, None, "SELECT code FROM apikeys.check_key(%s)", (t,))["code"] for t in bob["tokens"]]
        assert codes == ["valid"] * 8
        with su.transaction():
            su.execute("SET TRANSACTION READ ONLY")
            assert verify_many(su, bob["tokens"]) == 8
        after = stats(su)
        # and in alice's own workspace, where her rolled-back entries count
        # against its share: new committed keys take their places over
        keys = call(su, "alice", """SELECT k.key FROM generate_series(1, 6) g,
                                      LATERAL apikeys.create_key(%s, 'after-' || g, rate_limit => 5,
                                                                 rate_window => '1 hour') k""", (alice["ws"],))
        codes = [one(su, None, "SELECT code FROM apikeys.check_key(%s)", (Secret(r["key"]),))["code"] for r in keys]
        assert codes == ["valid"] * 6
    assert delta(after, mid, "unrecorded", "fallbacks") == {"unrecorded": 0, "fallbacks": 0}


def test_a_cold_copy_made_into_a_standby_does_not_write_the_primarys_usage_again(clusters):
    """A primary stopped cleanly with usage pending leaves it in
    pg_apikeys_usage.pending; its data directory, copied cold and started as
    a standby, finds that file too. The primary writes that usage itself, so
    the standby drops the file (saved by a primary, found in recovery) and,
    once promoted, writes nothing of it a second time."""
    primary = clusters("safety_cold").init(
        {**PRELOAD, "apikeys.usage_flush_interval": 3600, "wal_level": "replica", "max_wal_senders": 4,
         "hot_standby": "on"},
        hba=["host replication all 127.0.0.1/32 trust"])
    primary.start()
    data = setup_db(primary, "cold", keys=3)
    with primary.connect("cold") as su:
        assert verify_many(su, data["tokens"]) == 3
    primary.stop("fast")
    assert (primary.data / "pg_apikeys_usage.pending").exists()
    copy = clusters("safety_cold_copy")
    copy._fresh_dir()
    copy.port = copy.ports.take()
    run(["cp", "-a", primary.data, copy.data], as_owner=True)
    run(["touch", copy.data / "standby.signal"], as_owner=True)
    copy._conf({**copy._base_settings(), "hot_standby": "on",
                "primary_conninfo": f"host=127.0.0.1 port={primary.port} user=postgres"})
    primary.start()
    with primary.connect("cold") as su:
        assert flush(su)
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 3
        lsn = one(su, None, "SELECT pg_current_wal_lsn()::text AS l")["l"]
    copy.start()
    with copy.connect("cold") as s:
        wait_until(lambda: one(s, None, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn AS ok", (lsn,))["ok"],
                   30, "standby replay")
    assert "saved usage not loaded (FromPrimary)" in copy.log_text()
    run([copy.pgbin / "pg_ctl", "-D", copy.data, "-w", "promote"], as_owner=True)
    with copy.connect("cold") as s:
        wait_until(lambda: not one(s, None, "SELECT pg_is_in_recovery() AS r")["r"], 30, "promotion")
        assert flush(s)
        assert one(s, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 3


def test_no_free_worker_slot_stops_no_flush(clusters):
    """Parallel queries take every free background worker slot (any session
    may raise its own max_parallel_workers), so no flusher can start. The
    reserve flusher, which holds its slot from the server's start, writes
    instead: flush_usage() succeeds, a credit-limited key checked all along
    never fails closed, nothing is written twice, and no warning is logged."""
    c = clusters("safety_slots").init({**PRELOAD, "apikeys.usage_flush_interval": 1,
                                       "max_worker_processes": 5, "max_parallel_workers": 4})
    c.start()
    data = setup_db(c, "slots", keys=3)
    with c.connect("slots") as su:
        call(su, None, "UPDATE apikeys.keys SET credits = 1000 WHERE id = %s", (data["ids"][0],))
    # the launcher, the reserve and the logical replication launcher hold
    # three slots; the parallel workers take the other two
    with c.connect() as su:
        # renamed in PostgreSQL 16
        force = "force_parallel_mode" if su.info.server_version < 160000 else "debug_parallel_query"
    hogs = []
    threads = []

    def hog() -> None:
        h = c.connect("slots")
        hogs.append(h)
        h.execute("SET max_parallel_workers = 8")
        h.execute(f"SET {force} = on")
        h.execute("SET parallel_setup_cost = 0")
        try:
            h.execute("SELECT pg_sleep(8)")
        except psycopg.Error:
            pass

    for _ in range(2):
        t = threading.Thread(target=hog)
        t.start()
        threads.append(t)
    codes: dict[str, int] = {}
    try:
        with c.connect("slots") as su:
            wait_until(lambda: one(su, None, "SELECT count(*) AS n FROM pg_stat_activity "
                                             "WHERE backend_type = 'parallel worker'")["n"] >= 2,
                       10, "parallel workers holding the free slots")
            assert verify_many(su, data["tokens"]) == 3
            # four intervals of credit debits, written each time
            for _ in range(20):
                code = one(su, None, "SELECT code FROM apikeys.check_key(%s)", (data["tokens"][0],))["code"]
                codes[code] = codes.get(code, 0) + 1
                time.sleep(0.2)
            assert flush(su, 5000), "no flush without a free worker slot"
            assert one(su, None, "SELECT count(*) AS n FROM pg_stat_activity "
                                 "WHERE backend_type = 'parallel worker'")["n"] >= 2
            assert one(su, None, "SELECT credits AS n FROM apikeys.keys WHERE id = %s",
                       (data["ids"][0],))["n"] == 1000 - 1 - 20  # the verify and the checks
    finally:
        for t in threads:
            t.join()
        for h in hogs:
            h.close()
    assert codes == {"valid": 20}
    with c.connect("slots") as su:
        assert flush(su)
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 23
        assert stats(su)["credits_held"] == 0
    log = c.log_text()
    assert "no background worker slot for a usage flush" not in log
    assert 'background worker "pg_apikeys usage reserve"' in log


def test_a_workspace_that_fills_its_share_is_written_alone_and_exactly(clusters):
    """alice's keys fill her share of a small usage table: the next round
    writes her entries early, current hour included, and only hers (bob's
    hour stays in memory: a tenant that fills its share costs the others no
    write). A kill -9 after that round, with the saved copy still holding
    what it wrote, counts nothing twice: the round recorded her workspace as
    written whole."""
    c = clusters("safety_pressed").init({**PRELOAD, "apikeys.usage_slots": 1024})
    c.start()
    alice = setup_db(c, "pressed", keys=400)
    bob = bob_keys(c, "pressed", 3)
    with c.connect("pressed") as su:
        # the extension's own flush after setup: nothing of the hour written yet
        assert verify_many(su, bob["tokens"]) == 3
        before = stats(su)
        assert verify_many(su, alice["tokens"]) == 400
        fell_back = stats(su)["fallbacks"] - before["fallbacks"]
        assert stats(su)["discarded"] == 0
        assert fell_back > 0, "alice never reached her share"
        # the round after it wrote alice's entries, and bob's none
        wait_until(lambda: one(su, None, "SELECT count(*) AS n FROM apikeys.key_usage WHERE workspace_id = %s",
                               (alice["ws"],))["n"] > 0, 10, "alice's entries written early")
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.key_usage WHERE workspace_id = %s",
                   (bob["ws"],))["n"] == 0
        assert one(su, None, "SELECT count(*) AS n FROM apikeys.usage_rounds WHERE workspace_id = %s",
                   (alice["ws"],))["n"] >= 1
        time.sleep(1.5)  # a copy saved after the last verify
    c.kill9()
    c.start()
    with c.connect("pressed") as su:
        assert flush(su)
        n = one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage WHERE workspace_id = %s",
                (alice["ws"],))["n"]
        assert n == 400 - fell_back
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage WHERE workspace_id = %s",
                   (bob["ws"],))["n"] == 3


def test_a_damaged_recovered_copy_is_refused_out_loud(clusters):
    """A recovered copy of the usage table damaged before it was written
    back is refused whole with a WARNING (as a damaged pending file is),
    and removed; the engine goes on."""
    c = clusters("safety_recovered").init(PRELOAD)
    c.start()
    data = setup_db(c, "recovered", keys=2)
    with c.connect("recovered") as su:
        assert verify_many(su, data["tokens"]) == 2
        time.sleep(2.5)  # a copy saved after the verifies
    c.kill9()
    copy = c.data / "pg_apikeys_usage.pending"
    raw = copy.read_bytes()
    damaged = c.data / "pg_apikeys_usage.recovered.42"
    run(["cp", copy, damaged], as_owner=True)
    run(["truncate", "-s", str(len(raw) // 3), damaged], as_owner=True)
    c.start()
    with c.connect("recovered") as su:
        assert flush(su)
        # the genuine copy was written back; the damaged one was not
        assert one(su, None, "SELECT sum(verified) AS n FROM apikeys.key_usage")["n"] == 2
    assert not damaged.exists()
    assert "saved usage not loaded (Damaged)" in c.log_text()
