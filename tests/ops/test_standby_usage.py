"""Every server counts: a hot standby's usage engine forwards what it
counted to the primary (apikeys.primary_conninfo, a login role granted
apikeys.grant_forwarder), so the primary's key_usage and last_used_at cover
every server, exactly: a batch whose answer was lost is sent again and
counted once, a clean restart keeps what was not sent, a kill -9 loses at
most one interval, and a promotion applies the batches left on disk once.
Limits stay per server: a key allowed L per window gets L on each of a
primary and two standbys (3L in all), measured.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import psycopg
import pytest

from cluster import HOST, Cluster, Secret, call, one, run, wait_until

DB = "fw"
ROLES = """
CREATE ROLE app NOLOGIN;
CREATE ROLE alice LOGIN;
GRANT app TO alice;
CREATE ROLE usage_forward LOGIN;
"""
PRELOAD = {"shared_preload_libraries": "pg_apikeys", "apikeys.usage_flush_interval": 1,
           "apikeys.usage_slots": 1024}


def verify(conn: psycopg.Connection, tok: Secret, n: int, scopes: list[str] | None = None) -> int:
    """Verify `tok` n times in one statement (a call per row: the argument
    depends on the row); how many verified."""
    return one(conn, None, """SELECT count(v.key_id) AS n FROM generate_series(1, %s) g,
                                     LATERAL apikeys.verify_key(%s || left(g::text, 0), %s::text[]) v""",
               (n, tok, scopes or []))["n"]


def usage(conn: psycopg.Connection, key_id: Any) -> dict[str, int]:
    r = one(conn, None, """SELECT coalesce(sum(verified), 0)::int AS verified, coalesce(sum(rejected), 0)::int AS rejected,
                                  coalesce(sum(insufficient_scope), 0)::int AS insufficient_scope
                             FROM apikeys.key_usage WHERE key_id = %s""", (key_id,))
    return dict(r)


def caught_up(primary: Cluster, standby: Cluster) -> None:
    with primary.connect(DB) as p:
        lsn = one(p, None, "SELECT pg_current_wal_lsn()::text AS l")["l"]
    with standby.connect(DB) as s:
        wait_until(lambda: one(s, None, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn AS ok", (lsn,))["ok"],
                   30, "standby replay")


class LosingProxy:
    """A TCP relay to the primary that, when armed, passes the forwarder's
    apply_forwarded_usage call to the primary and then drops the answer and
    the connection: the batch is committed there and the standby never
    hears it."""

    def __init__(self, target_port: int):
        self.target = (HOST, target_port)
        self.armed = threading.Event()
        self.lost = threading.Event()
        # a primary that takes connections and never answers (a stopped
        # postmaster, a dead network path): connections are held, unread
        self.blackhole = threading.Event()
        self.held: list[socket.socket] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.blackhole.is_set():
                self.held.append(client)
                continue
            server = socket.create_connection(self.target)
            mute = threading.Event()
            threading.Thread(target=self._up, args=(client, server, mute), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, mute), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, mute: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if self.armed.is_set() and b"apply_forwarded_usage" in data:
                    self.armed.clear()
                    mute.set()
                server.sendall(data)
        except OSError:
            pass

    def _down(self, server: socket.socket, client: socket.socket, mute: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if mute.is_set():
                    # the answer (the commit done) never reaches the standby
                    time.sleep(0.5)
                    self.lost.set()
                    break
                client.sendall(data)
        except OSError:
            pass
        for s in (client, server):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.sock.close()


def make_primary(clusters, name: str, settings: dict[str, Any] | None = None) -> Cluster:
    """A preloaded primary that streams to standbys, with database DB, the
    extension, the client role granted and the forwarding login."""
    primary = clusters(name).init(
        {**PRELOAD, "wal_level": "replica", "max_wal_senders": 6, "hot_standby": "on", **(settings or {})},
        hba=["host replication all 127.0.0.1/32 trust"])
    primary.start()
    with primary.connect() as admin:
        admin.execute(ROLES)
        admin.execute(f"CREATE DATABASE {DB}")
    with primary.connect(DB) as su:
        su.execute("CREATE EXTENSION pg_apikeys")
        su.execute("SELECT apikeys.grant_to('app'), apikeys.grant_forwarder('usage_forward')")
    return primary


@pytest.fixture(scope="module")
def world(clusters) -> dict[str, Any]:
    primary = make_primary(clusters, "fw_primary", {"max_worker_processes": 16})
    with primary.connect(DB) as su:
        ws = one(su, "alice", "SELECT apikeys.create_workspace('fw') AS id")["id"]
        keys = {}
        for name in ("both", "standby-only", "proxy", "restart", "crash", "promote"):
            r = one(su, "alice", "SELECT id, key FROM apikeys.create_key(%s, %s, '{read}')", (ws, name))
            keys[name] = (r["id"], Secret(r["key"]))
    proxy = LosingProxy(primary.port)
    conninfo = f"host={HOST} port={proxy.port} user=usage_forward"
    standby = clusters("fw_standby").basebackup_of(primary, {**PRELOAD, "apikeys.primary_conninfo": conninfo})
    standby.start()
    caught_up(primary, standby)
    yield {"primary": primary, "standby": standby, "proxy": proxy, "keys": keys, "ws": ws}
    proxy.close()


def wait_verified(primary: Cluster, key_id: Any, want: int, what: str, standby: Cluster | None = None) -> None:
    with primary.connect(DB) as p:
        try:
            wait_until(lambda: usage(p, key_id)["verified"] >= want, 30, what)
        except AssertionError as e:
            tail = "\n".join(standby.log_text().splitlines()[-25:]) if standby else ""
            raise AssertionError(f"{e}; {usage(p, key_id)['verified']} verified on the primary; standby log:\n{tail}") from None
        time.sleep(2.5)  # two more intervals: nothing more arrives
        got = usage(p, key_id)["verified"]
    assert got == want, f"{what}: {got} verified on the primary, {want} expected"


def test_standby_and_primary_usage_add_up_on_the_primary(world):
    """40 verifies on the standby and 30 on the primary: 70 on the primary;
    a key used only on the standby gets its last_used_at on the primary;
    a refusal on the standby arrives with its outcome."""
    primary, standby = world["primary"], world["standby"]
    both_id, both = world["keys"]["both"]
    only_id, only = world["keys"]["standby-only"]
    with standby.connect(DB) as s:
        assert verify(s, both, 40) == 40
        assert verify(s, only, 5) == 5
        assert verify(s, only, 2, ["write"]) == 0
    with primary.connect(DB) as p:
        assert verify(p, both, 30) == 30
        assert p.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
    wait_verified(primary, both_id, 70, "both servers' verifies", standby)
    with primary.connect(DB) as p:
        assert usage(p, only_id) == {"verified": 5, "rejected": 2, "insufficient_scope": 2}
        assert one(p, None, "SELECT last_used_at IS NOT NULL AS used FROM apikeys.keys WHERE id = %s",
                   (only_id,))["used"]
    with standby.connect(DB) as s:
        st = one(s, None, "SELECT * FROM apikeys.usage_stats()")
        assert st["forwarded"] >= 47 and st["pending"] == 0


def test_a_batch_whose_answer_was_lost_counts_once(world):
    """The primary commits a batch, the answer never reaches the standby: the
    standby keeps the batch on disk, sends it again as the same batch, and
    the primary counts it once."""
    primary, standby, proxy = world["primary"], world["standby"], world["proxy"]
    key_id, tok = world["keys"]["proxy"]
    with primary.connect(DB) as p:
        before = one(p, None, "SELECT coalesce(max(batch), 0) AS b FROM apikeys.usage_sources")["b"]
    proxy.armed.set()
    with standby.connect(DB) as s:
        assert verify(s, tok, 12) == 12
    wait_until(proxy.lost.is_set, 30, "a forwarded batch whose answer is lost")
    wait_verified(primary, key_id, 12, "the batch whose answer was lost, sent again")
    with primary.connect(DB) as p:
        assert one(p, None, "SELECT max(batch) AS b FROM apikeys.usage_sources")["b"] > before
    assert "usage stays on this standby's disk" in standby.log_text()


def test_a_clean_restart_of_the_standby_keeps_what_was_not_sent(world):
    primary, standby = world["primary"], world["standby"]
    key_id, tok = world["keys"]["restart"]
    with standby.connect(DB) as s:
        assert verify(s, tok, 9) == 9
    standby.stop("fast")
    standby.start()
    with standby.connect(DB) as s:
        assert verify(s, tok, 4) == 4
    wait_verified(primary, key_id, 13, "usage across a clean standby restart")


def test_kill_9_of_the_standby_loses_at_most_one_interval(world):
    primary, standby = world["primary"], world["standby"]
    key_id, tok = world["keys"]["crash"]
    with standby.connect(DB) as s:
        assert verify(s, tok, 20) == 20
    wait_verified(primary, key_id, 20, "usage sent before the crash")
    with standby.connect(DB) as s:
        assert verify(s, tok, 7) == 7  # pending: killed before the next interval, or sent
    standby.kill9()
    standby.start()
    with standby.connect(DB) as s:
        assert verify(s, tok, 3) == 3
    with primary.connect(DB) as p:
        wait_until(lambda: usage(p, key_id)["verified"] >= 23, 30, "usage after the crash")
        time.sleep(2.5)
        got = usage(p, key_id)["verified"]
    assert 23 <= got <= 30, got


def test_a_primary_that_never_answers_holds_up_nothing(world):
    """The primary takes the connection and never answers: the forward gives
    up within its limits, the standby still shuts down at once, what it
    counted meanwhile goes to disk every interval, and a kill -9 then loses
    nothing of it; once the primary answers, every verify arrives, once."""
    primary, standby, proxy = world["primary"], world["standby"], world["proxy"]
    key_id, tok = world["keys"]["both"]
    with primary.connect(DB) as p:
        before = usage(p, key_id)["verified"]
    proxy.blackhole.set()
    try:
        with standby.connect(DB) as s:
            assert verify(s, tok, 10) == 10
        wait_until(lambda: len(proxy.held) > 0, 30, "a forward to the silent primary")
        t0 = time.monotonic()
        standby.stop("fast")
        assert time.monotonic() - t0 < 15, "the standby's shutdown waited for the silent primary"
        standby.start()
        with standby.connect(DB) as s:
            assert verify(s, tok, 6) == 6
        # two more intervals: the 6 are on disk too (behind the earlier batch)
        time.sleep(3)
        assert len(list(standby.data.glob("pg_apikeys_forward.*"))) >= 2
        standby.kill9()
    finally:
        proxy.blackhole.clear()
        for c in proxy.held:
            c.close()
    standby.start()
    wait_verified(primary, key_id, before + 16, "usage held on disk while the primary was silent", standby)


def test_a_promotion_applies_the_batches_left_on_disk_once(world):
    """The primary goes away with batches unsent: the standby keeps them on
    disk; promoted, it applies them itself, once."""
    primary, standby = world["primary"], world["standby"]
    key_id, tok = world["keys"]["promote"]
    with standby.connect(DB) as s:
        assert verify(s, tok, 6) == 6
    wait_verified(primary, key_id, 6, "usage sent while the primary is up")
    caught_up(primary, standby)
    primary.stop("fast")
    with standby.connect(DB) as s:
        assert verify(s, tok, 15) == 15
    wait_until(lambda: "could not connect to the primary" in standby.log_text(), 30,
               "a forward that found no primary")
    run([standby.pgbin / "pg_ctl", "-D", standby.data, "-w", "promote"], as_owner=True)
    with standby.connect(DB) as s:
        wait_until(lambda: not one(s, None, "SELECT pg_is_in_recovery() AS r")["r"], 30, "promotion")
        assert s.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        wait_until(lambda: usage(s, key_id)["verified"] >= 21, 30, "the batches left on disk")
        assert s.execute("SELECT apikeys.flush_usage()").fetchone()["flush_usage"]
        assert usage(s, key_id)["verified"] == 21
    assert not list(standby.data.glob("pg_apikeys_forward.*"))


def test_limits_are_per_server_with_two_standbys(clusters):
    """Each server enforces a key's limit on its own: allowed 5 a day, the
    key gets 5 on the primary and 5 on each of two standbys, 15 in all (the
    bound is the limit times the servers that verify it)."""
    primary = make_primary(clusters, "lim_primary")
    with primary.connect(DB) as su:
        ws = one(su, "alice", "SELECT apikeys.create_workspace('lim') AS id")["id"]
        r = one(su, "alice", """SELECT id, key FROM apikeys.create_key(%s, 'limited', '{read}',
                                    rate_limit => 5, rate_window => '1 day')""", (ws,))
        tok = Secret(r["key"])
    standbys = [clusters(f"lim_standby{i}").basebackup_of(primary, PRELOAD) for i in (1, 2)]
    admitted = 0
    for s in standbys:
        s.start()
        caught_up(primary, s)
    for c in [primary, *standbys]:
        with c.connect(DB) as conn:
            codes = [one(conn, None, "SELECT code FROM apikeys.check_key(%s)", (tok,))["code"] for _ in range(7)]
        assert codes == ["valid"] * 5 + ["rate_limited"] * 2, codes
        admitted += codes.count("valid")
    assert admitted == 15


def test_a_dropped_databases_batches_are_discarded_and_counted(clusters):
    """A standby holds batches of a database the primary cannot take yet
    (the primary takes the connection and never answers); the database is
    then dropped on the primary. Once the drop is replayed, the standby's
    batches of it are removed and counted as discarded, and its other
    database's usage still reaches the primary."""
    primary = make_primary(clusters, "drop_primary", {"max_worker_processes": 16})
    with primary.connect() as admin:
        admin.execute("CREATE DATABASE fw_gone")
        oid = one(admin, None, "SELECT oid FROM pg_database WHERE datname = 'fw_gone'")["oid"]
    with primary.connect("fw_gone") as su:
        su.execute("CREATE EXTENSION pg_apikeys")
        su.execute("SELECT apikeys.grant_to('app')")
        ws = one(su, "alice", "SELECT apikeys.create_workspace('gone') AS id")["id"]
        gone_tok = Secret(one(su, "alice", "SELECT key FROM apikeys.create_key(%s, 'g', '{read}')", (ws,))["key"])
    with primary.connect(DB) as su:
        ws = one(su, "alice", "SELECT apikeys.create_workspace('kept') AS id")["id"]
        r = one(su, "alice", "SELECT id, key FROM apikeys.create_key(%s, 'k', '{read}')", (ws,))
        kept_id, kept_tok = r["id"], Secret(r["key"])
    proxy = LosingProxy(primary.port)
    standby = clusters("drop_standby").basebackup_of(
        primary, {**PRELOAD, "apikeys.primary_conninfo": f"host={HOST} port={proxy.port} user=usage_forward"})
    standby.start()
    caught_up(primary, standby)
    batches = lambda: list(standby.data.glob(f"pg_apikeys_forward.{oid}.*"))  # noqa: E731
    with standby.connect(DB) as s:
        discarded_before = one(s, None, "SELECT discarded FROM apikeys.usage_stats()")["discarded"]
    proxy.blackhole.set()
    try:
        with standby.connect("fw_gone") as s:
            assert verify(s, gone_tok, 7) == 7
        with standby.connect(DB) as s:
            assert verify(s, kept_tok, 4) == 4
        wait_until(lambda: len(batches()) > 0, 30, "a batch of fw_gone on the standby's disk")
        with primary.connect() as admin:
            admin.execute("DROP DATABASE fw_gone")
        caught_up(primary, standby)
        wait_until(lambda: not batches(), 30, "the dropped database's batches to be discarded")
        with standby.connect(DB) as s:
            discarded = one(s, None, "SELECT discarded FROM apikeys.usage_stats()")["discarded"]
        assert discarded - discarded_before == 7
    finally:
        proxy.blackhole.clear()
        for c in proxy.held:
            c.close()
    wait_verified(primary, kept_id, 4, "the other database's usage", standby)
    proxy.close()
