"""Rate limits and credits through PostgREST's request sequence (with the
usage engine; skipped without it): an accepted request carries
X-RateLimit-* through response.headers, a refused one is PostgREST's error
takeover, SQLSTATE PGRST with the JSON body as MESSAGE and the status and
headers as DETAIL, answered 429. Neither says anything about the key."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from helpers import ALICE, key, ok, whoami

RATE_LIMITED = {"code": "PT429", "message": "rate limit exceeded", "details": None, "hint": None}
USAGE_EXCEEDED = {"code": "PT429", "message": "usage exceeded: no credits left", "details": None, "hint": None}


@pytest.fixture(autouse=True)
def engine(world):
    if world.usage_mode() != "shared_memory":
        pytest.skip("rate limits and credits need shared_preload_libraries = 'pg_apikeys'")


def next_midnight_utc() -> int:
    now = datetime.now(timezone.utc)
    return int((now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)).timestamp())


def test_rate_limit_headers_then_429(conn, world):
    k = world.mint(ALICE, world.ws_a, "limited-http", ["read"], rate_limit=2, rate_window="1 day")
    first = whoami(conn, headers=key(k["key"]))
    assert first.status == 200
    assert first.headers == {"X-RateLimit-Limit": "2", "X-RateLimit-Remaining": "1",
                             "X-RateLimit-Reset": str(next_midnight_utc())}
    second = whoami(conn, "POST", headers=key(k["key"]))
    assert second.status == 200 and second.headers["X-RateLimit-Remaining"] == "0"
    third = whoami(conn, headers=key(k["key"]))
    assert third.status == 429 and third.sqlstate == "PGRST"
    assert third.body == RATE_LIMITED
    assert set(third.headers) == {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    assert third.headers["X-RateLimit-Limit"] == "2" and third.headers["X-RateLimit-Remaining"] == "0"
    assert third.headers["X-RateLimit-Reset"] == str(next_midnight_utc())
    retry = int(third.headers["Retry-After"])
    assert 1 <= retry <= 86_400
    assert abs(retry - (next_midnight_utc() - time.time())) < 5
    # nothing about the key in what the client sees
    for part in (str(third.body), str(third.headers)):
        assert k["key"] not in part and str(k["id"]) not in part and k["prefix"] not in part


def test_credits_exhausted_is_429_with_its_own_message(conn, world):
    k = world.mint(ALICE, world.ws_a, "one-credit", ["read"], credits=1)
    first = whoami(conn, headers=key(k["key"]))
    assert first.status == 200 and first.headers == {}  # no rate limit: no X-RateLimit-*
    refused = whoami(conn, headers=key(k["key"]))
    assert refused.status == 429 and refused.body == USAGE_EXCEEDED
    assert refused.headers == {"Retry-After": "86400"}  # no refill: retrying sooner cannot help


def test_refused_request_consumes_nothing_and_binds_nothing(conn, world):
    k = world.mint(ALICE, world.ws_a, "one-a-day", ["read"], rate_limit=1, rate_window="1 day")
    ok(whoami(conn, headers=key(k["key"])))
    assert whoami(conn, headers=key(k["key"])).status == 429
    # the same connection serves the next request: no binding, no role left behind
    [me] = ok(whoami(conn, claims=ALICE))
    assert me["principal"] == "alice" and me["key_id"] is None


def test_plain_sql_callers_get_pgrst(world):
    """authenticate() raises SQLSTATE PGRST for a refused key; plain SQL
    callers use check_key instead."""
    k = world.mint(ALICE, world.ws_a, "sql-caller", ["read"], rate_limit=1, rate_window="1 day")
    su = world.su
    row = su.execute("SELECT code FROM apikeys.check_key(%s)", (k["key"],)).fetchone()
    assert row[0] == "valid"
    assert su.execute("SELECT code FROM apikeys.check_key(%s)", (k["key"],)).fetchone()[0] == "rate_limited"
    with pytest.raises(psycopg.Error) as e:
        with su.transaction():
            su.execute("SELECT set_config('request.headers', %s, true)", ('{"x-api-key": "%s"}' % k["key"],))
            su.execute("SELECT apikeys.authenticate()")
    assert e.value.sqlstate == "PGRST"
