"""request.headers that PostgREST itself would never set: authenticate()
fails closed (PT401, 401) and the request writes nothing."""

from __future__ import annotations

import json

import pytest

from helpers import ALICE, INVALID_API_KEY, key, ok, refused, whoami
from postgrest import OMIT

MB = 1024 * 1024


@pytest.fixture(scope="module")
def probe(world):
    """A good key with no last_used_at yet: any successful use by a
    read-write request would stamp it."""
    k = world.mint(ALICE, world.ws_a, "probe", ["read"])
    assert world.key_row(k["id"])["last_used_at"] is None
    return k


CASES = {
    # request.headers itself
    "missing": lambda t: OMIT,
    "empty": lambda t: "",
    "not JSON": lambda t: f"x-api-key: {t}",
    "JSON array": lambda t: json.dumps([{"x-api-key": t}]),
    "JSON string": lambda t: json.dumps(f"x-api-key={t}"),
    "JSON null": lambda t: "null",
    # the header's value
    "empty value": lambda t: {"x-api-key": ""},
    "1 MB value": lambda t: {"x-api-key": "k" * MB},
    "1 MB value after a good key": lambda t: {"x-api-key": t + "k" * MB},
    "number value": lambda t: json.dumps({"x-api-key": 42}),
    "null value": lambda t: json.dumps({"x-api-key": None}),
    "array value": lambda t: json.dumps({"x-api-key": [t]}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_headers_fail_closed(conn, world, probe, case):
    before = world.writes()
    body = refused(whoami(conn, "POST", headers=CASES[case](probe["key"])), "PT401", 401)
    assert body == INVALID_API_KEY
    assert world.writes() == before
    world.flush()
    assert world.key_row(probe["id"])["last_used_at"] is None


def test_missing_headers_on_a_fresh_connection(new_conn, world):
    # a new backend has never heard of request.headers (an unknown setting,
    # not an empty one): still PT401, even with a JWT
    c = new_conn()
    refused(whoami(c, "POST", claims=ALICE, headers=OMIT), "PT401", 401)
    refused(whoami(c, "GET", headers=OMIT), "PT401", 401)


def test_the_probe_key_was_usable_all_along(conn, world, probe):
    # so the unchanged last_used_at above proves something: a good request
    # with the same key is accepted and stamps it
    [me] = ok(whoami(conn, "POST", headers=key(probe["key"])))
    assert me["key_id"] == probe["id"]
    world.flush()
    assert world.key_row(probe["id"])["last_used_at"] is not None
