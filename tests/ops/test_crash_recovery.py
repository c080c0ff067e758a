"""Crash recovery: kill -9 under load, restart, and check that what committed
survived whole and what did not commit left nothing behind.

One cluster with fsync = on. Each round, worker threads (one connection each,
as alice, an admin) mint keys and revoke some of their own, while a verifier
thread checks that revoked keys stop verifying and records last_used_at
(apikeys.last_used_interval = 0). A change counts as committed only when its
COMMIT returned; a COMMIT that got no answer is "in doubt" and may have gone
either way. After a couple of seconds the postmaster and all its children are
killed with SIGKILL and the cluster is started again (crash recovery). Two
rounds. Then, as the superuser:

- every key has exactly one key_hashes row and every hash exactly one key;
- every committed mint exists and verifies unless it was revoked; every
  committed revoke holds and its key does not verify;
- in-doubt changes are all-or-nothing (key, hash and audit row together);
- no key exists that no client saw minted (no half-finished mint survived);
- every key has exactly one key.created audit row, every revoked key exactly
  one key.revoked row, and no other key any.
"""

from __future__ import annotations

import random
from contextlib import closing
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from cluster import Cluster, Secret, call, one

DB = "crash"
WORKERS = 4
ROUND_SECONDS = 2.0
ROUNDS = 2
MIN_MINTS_PER_ROUND = 20
MIN_REVOKES_PER_ROUND = 5


@dataclass
class Ledger:
    """What the clients know. Tokens are Secrets (never printed)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    minted: dict[Any, Secret] = field(default_factory=dict)           # COMMIT returned
    minted_in_doubt: dict[Any, Secret] = field(default_factory=dict)  # COMMIT sent, no answer
    revoked: set = field(default_factory=set)
    revoked_in_doubt: set = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)                # errors before the kill
    live_failures: list[str] = field(default_factory=list)             # a revoked key verified

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return len(self.minted), len(self.revoked)


class Round:
    def __init__(self, c: Cluster, ws: Any, ledger: Ledger, seed: int):
        self.c, self.ws, self.ledger = c, ws, ledger
        self.killing = threading.Event()
        self.seed = seed
        self.threads = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(WORKERS)]
        self.threads.append(threading.Thread(target=self.verifier, daemon=True))

    def failed(self, where: str, e: BaseException) -> None:
        """An error is expected once the kill started; before, it is a failure."""
        if not self.killing.is_set():
            state = getattr(e, "sqlstate", None)
            with self.ledger.lock:
                self.ledger.unexpected.append(f"{where}: {type(e).__name__} {state}")

    def worker(self, n: int) -> None:
        rng = random.Random(self.seed * 100 + n)
        mine: list[Any] = []  # committed, not yet revoked
        try:
            conn = self.c.connect(DB)
            conn.execute("SET ROLE alice")
        except psycopg.Error as e:
            return self.failed(f"worker {n} connect", e)
        with closing(conn):
            while True:
                if mine and rng.random() < 0.3:
                    key_id = mine.pop(rng.randrange(len(mine)))
                    try:
                        conn.execute("BEGIN")
                        conn.execute("SELECT apikeys.revoke_key(%s)", (key_id,))
                    except psycopg.Error as e:
                        return self.failed(f"worker {n} revoke", e)  # never committed
                    try:
                        conn.execute("COMMIT")
                    except psycopg.Error as e:
                        with self.ledger.lock:
                            self.ledger.revoked_in_doubt.add(key_id)
                        return self.failed(f"worker {n} revoke commit", e)
                    with self.ledger.lock:
                        self.ledger.revoked.add(key_id)
                else:
                    try:
                        conn.execute("BEGIN")
                        row = conn.execute("SELECT id, key FROM apikeys.create_key(%s, NULL, '{read}')",
                                           (self.ws,)).fetchone()
                    except psycopg.Error as e:
                        return self.failed(f"worker {n} mint", e)  # never committed
                    try:
                        conn.execute("COMMIT")
                    except psycopg.Error as e:
                        with self.ledger.lock:
                            self.ledger.minted_in_doubt[row["id"]] = Secret(row["key"])
                        return self.failed(f"worker {n} mint commit", e)
                    with self.ledger.lock:
                        self.ledger.minted[row["id"]] = Secret(row["key"])
                    mine.append(row["id"])

    def verifier(self) -> None:
        """A verify that starts after a revoke committed must fail; verifies
        of live keys write last_used_at (interval 0)."""
        rng = random.Random(self.seed)
        try:
            conn = self.c.connect(DB)
        except psycopg.Error as e:
            return self.failed("verifier connect", e)
        with closing(conn):
            while True:
                with self.ledger.lock:
                    if not self.ledger.minted:
                        pick = None
                    else:
                        key_id = rng.choice(list(self.ledger.minted))
                        pick = (key_id, self.ledger.minted[key_id], key_id in self.ledger.revoked)
                if pick is None:
                    if self.killing.is_set():
                        return
                    time.sleep(0.01)
                    continue
                key_id, token, revoked_before = pick
                try:
                    rows = conn.execute("SELECT key_id FROM apikeys.verify_key(%s)", (token,)).fetchall()
                except psycopg.Error as e:
                    return self.failed("verifier", e)
                if revoked_before and rows:
                    with self.ledger.lock:
                        self.ledger.live_failures.append(f"revoked key {key_id} verified")

    def run(self) -> int:
        """Load for ROUND_SECONDS, then kill -9; returns processes killed."""
        m0, r0 = self.ledger.counts()
        for t in self.threads:
            t.start()
        time.sleep(ROUND_SECONDS)
        self.killing.set()
        killed = self.c.kill9()
        for t in self.threads:
            t.join(timeout=30)
            assert not t.is_alive(), "a client thread hung after the kill"
        m1, r1 = self.ledger.counts()
        assert m1 - m0 >= MIN_MINTS_PER_ROUND, f"only {m1 - m0} mints committed in the round"
        assert r1 - r0 >= MIN_REVOKES_PER_ROUND, f"only {r1 - r0} revokes committed in the round"
        return killed


@pytest.fixture(scope="module")
def crashed(clusters):
    """The cluster after ROUNDS kill -9 rounds and restarts, and the ledger."""
    c = clusters("crash")
    c.init({"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"})
    c.start()
    with c.connect() as admin:
        admin.execute("CREATE ROLE alice LOGIN")
        admin.execute(f"CREATE DATABASE {DB}")
        admin.execute(f"ALTER DATABASE {DB} SET apikeys.last_used_interval = 0")
    with c.connect(DB) as su:
        su.execute("CREATE EXTENSION pg_apikeys")
        su.execute("CREATE EXTENSION amcheck")
        su.execute("SELECT apikeys.grant_to('alice')")
        ws = one(su, "alice", "SELECT apikeys.create_workspace('crash') AS id")["id"]
    ledger = Ledger()
    for n in range(ROUNDS):
        Round(c, ws, ledger, seed=n + 1).run()
        c.start()  # crash recovery
    return c, ws, ledger


def test_crash_was_real_and_recovered(crashed):
    c, _, ledger = crashed
    log = c.log_text()
    assert log.count("database system was not properly shut down; automatic recovery in progress") == ROUNDS
    assert log.count("database system is ready to accept connections") == ROUNDS + 1
    assert not ledger.unexpected, ledger.unexpected[:10]
    print(f"{ROUNDS} rounds: {len(ledger.minted)} mints and {len(ledger.revoked)} revokes committed, "
          f"{len(ledger.minted_in_doubt)} mints and {len(ledger.revoked_in_doubt)} revokes in doubt")


def test_revoked_keys_never_verified_under_load(crashed):
    _, _, ledger = crashed
    assert not ledger.live_failures, ledger.live_failures[:10]


def test_keys_and_hashes_pair_up(crashed):
    c, _, _ = crashed
    with c.connect(DB) as su:
        r = one(su, None, """SELECT
                (SELECT count(*) FROM apikeys.keys) AS keys,
                (SELECT count(*) FROM apikeys.key_hashes) AS hashes,
                (SELECT count(*) FROM apikeys.keys k
                  WHERE (SELECT count(*) FROM apikeys.key_hashes h WHERE h.key_id = k.id) <> 1) AS keys_without_one,
                (SELECT count(*) FROM apikeys.key_hashes h
                  WHERE NOT EXISTS (SELECT FROM apikeys.keys k WHERE k.id = h.key_id)) AS orphan_hashes""")
        assert r["keys"] > 0 and r["keys"] == r["hashes"], r
        assert r["keys_without_one"] == 0 and r["orphan_hashes"] == 0, r
        # and the indexes agree with the heap after recovery
        for idx in call(su, None, """SELECT c.oid::regclass::text AS idx FROM pg_index i
                                       JOIN pg_class c ON c.oid = i.indexrelid
                                       JOIN pg_am a ON a.oid = c.relam AND a.amname = 'btree'
                                      WHERE c.relnamespace = 'apikeys'::regnamespace"""):
            call(su, None, "SELECT bt_index_check(%s::regclass, true)", (idx["idx"],))


def verified(conn: psycopg.Connection, tokens: dict[Any, Secret]) -> dict[Any, list]:
    """verify_key for many tokens in one statement: key id -> ids returned."""
    ids, toks = list(tokens), [str(t) for t in tokens.values()]
    rows = call(conn, None, """SELECT t.n, v.key_id
                                 FROM unnest(%s::text[]) WITH ORDINALITY AS t(tok, n)
                                 LEFT JOIN LATERAL apikeys.verify_key(t.tok) v ON true
                                ORDER BY t.n""", (toks,))
    return {ids[r["n"] - 1]: [] if r["key_id"] is None else [r["key_id"]] for r in rows}


def test_committed_changes_survived(crashed):
    c, _, ledger = crashed
    with c.connect(DB) as su:
        state = {r["id"]: r["revoked_at"] for r in call(su, None, "SELECT id, revoked_at FROM apikeys.keys")}
        v = verified(su, ledger.minted)
    lost = [k for k in ledger.minted if k not in state]
    assert not lost, f"{len(lost)} committed mints lost, e.g. {lost[:5]}"
    unrevoked = [k for k in ledger.revoked if state[k] is None]
    assert not unrevoked, f"{len(unrevoked)} committed revokes lost, e.g. {unrevoked[:5]}"
    for key_id in ledger.minted:
        expect = [] if state[key_id] is not None else [key_id]
        assert v[key_id] == expect, f"key {key_id}: revoked_at={state[key_id]}, verify gave {v[key_id]}"
    live = sum(1 for k in ledger.minted if state[k] is None)
    assert live > 0 and len(ledger.revoked) > 0


def test_in_doubt_changes_are_all_or_nothing(crashed):
    c, _, ledger = crashed
    with c.connect(DB) as su:
        state = {r["id"]: r for r in call(su, None, """
            SELECT k.id, k.revoked_at, h.key_id IS NOT NULL AS hashed,
                   (SELECT count(*) FROM apikeys.audit_log a
                     WHERE a.key_id = k.id AND a.action = 'key.created') AS created
              FROM apikeys.keys k LEFT JOIN apikeys.key_hashes h ON h.key_id = k.id""")}
        v = verified(su, ledger.minted_in_doubt)
    for key_id in ledger.minted_in_doubt:
        row = state.get(key_id)
        if row is None:
            assert v[key_id] == [], f"in-doubt mint {key_id} is absent but verifies"
        else:
            assert row["hashed"] and row["created"] == 1, row
            assert v[key_id] == ([] if row["revoked_at"] else [key_id]), row
    # a key nobody saw minted must not exist: only finished mints survive
    known = set(ledger.minted) | set(ledger.minted_in_doubt)
    phantoms = [k for k in state if k not in known]
    assert not phantoms, f"{len(phantoms)} keys exist that no client saw minted"


def test_every_change_has_its_audit_row(crashed):
    c, ws, ledger = crashed
    with c.connect(DB) as su:
        rows = call(su, None, """
            SELECT k.id, k.revoked_at,
                   count(*) FILTER (WHERE a.action = 'key.created') AS created,
                   count(*) FILTER (WHERE a.action = 'key.revoked') AS revoked
              FROM apikeys.keys k LEFT JOIN apikeys.audit_log a ON a.key_id = k.id
             WHERE k.workspace_id = %s GROUP BY k.id, k.revoked_at""", (ws,))
        orphans = one(su, None, """SELECT count(*) AS n FROM apikeys.audit_log a
                                    WHERE a.action IN ('key.created', 'key.revoked')
                                      AND NOT EXISTS (SELECT FROM apikeys.keys k WHERE k.id = a.key_id)""")["n"]
    by_id = {r["id"]: r for r in rows}
    for key_id in ledger.minted:
        assert by_id[key_id]["created"] == 1, by_id[key_id]
    for key_id in ledger.revoked:
        assert by_id[key_id]["revoked"] == 1, by_id[key_id]
    for r in rows:  # in-doubt ones too: the audit row came with the change, or neither did
        assert r["created"] == 1, r
        assert r["revoked"] == (1 if r["revoked_at"] is not None else 0), r
    assert orphans == 0, "audit rows for keys that do not exist"
