"""The PostgREST flow over HTTP, through postrust (see conftest.py).

Statuses and bodies asserted here are postrust's; where they differ from
PostgREST's (docs/postgrest.md, "Tested with"), the statement-replay suite in
tests/client asserts PostgREST's documented mapping of the same SQLSTATEs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import ALICE_JWT_CLAIMS as ALICE_JWT
from harness import ORIGIN, as_user, clear_of_a_minute_boundary, jwt, request


def names(resp) -> set[str]:
    assert resp.status == 200, resp.body
    return {r["name"] for r in resp.body}


# -- a good key ----------------------------------------------------------------------


def test_get_with_a_key_returns_only_its_workspace(server, world):
    assert names(request("GET", "/projects", key=world.keys["reader-a"]["key"])) == {"a-one", "a-two"}
    assert names(request("GET", "/projects", key=world.keys["reader-b"]["key"])) == {"b-one", "b-two", "b-three"}


def test_post_with_the_write_scope_inserts_and_stamps_the_keys_owner(server, world):
    r = request("POST", "/projects", key=world.keys["writer-a"]["key"],
                body={"workspace_id": world.ws_a, "name": "from-http", "created_by": "mallory"},
                headers={"Prefer": "return=representation"})
    assert r.status == 201, r.body
    assert r.body[0]["created_by"] == "alice" and r.body[0]["workspace_id"] == world.ws_a
    stored = world.su.execute("SELECT created_by FROM api.projects WHERE name = 'from-http'").fetchall()
    assert [x["created_by"] for x in stored] == ["alice"]


def test_rpc_sees_the_key_its_owner_and_its_scopes(server, world):
    r = request("POST", "/rpc/whoami", key=world.keys["bob-a"]["key"], body={})
    assert r.status == 200, r.body
    me = r.body[0] if isinstance(r.body, list) else r.body
    assert me["principal"] == "bob" and me["key_id"] == world.keys["bob-a"]["id"]
    assert me["workspace_id"] == world.ws_a and me["can_read"] is True


def test_get_runs_read_only_and_the_key_path_works_there(server, world):
    """PostgREST runs GET in a READ ONLY transaction: authenticate() and a
    volatile function still work there (a write attempt would be 405)."""
    r = request("GET", "/rpc/whoami", key=world.keys["reader-a"]["key"])
    assert r.status == 200, r.body
    me = r.body[0] if isinstance(r.body, list) else r.body
    assert me["principal"] == "alice"


# -- refused keys ----------------------------------------------------------------------


PT401_BODY = {"code": "PT401", "details": None, "hint": "send a valid, active API key, or none",
              "message": "invalid API key"}


def assert_refused_key(r) -> None:
    """One answer for every refused key: 401, PostgREST's error body with our
    PT401, and nothing of the token in it."""
    assert r.status == 401, (r.status, r.body)
    assert r.body == PT401_BODY
    assert r.headers.get("www-authenticate", "").startswith("Bearer")


def test_bad_keys_are_401(server, world):
    good = world.keys["reader-a"]["key"]
    for bad in ["sk_notavalidtoken", good[:-1] + ("A" if good[-1] != "A" else "B"), "x" * 2000, ""]:
        assert_refused_key(request("GET", "/projects", key=bad))


def test_a_key_revoked_between_two_requests_is_refused_at_once(server, world):
    k = world.mint("short-lived", world.ws_a, ["read"])
    assert names(request("GET", "/projects", key=k["key"])) == {"a-one", "a-two"} | _extra(world)
    world.revoke("short-lived")
    assert_refused_key(request("GET", "/projects", key=k["key"]))


def test_an_expired_key_is_refused(server, world):
    k = world.mint("expiring", world.ws_a, ["read"])
    # expiry only moves earlier: the superuser brings it to the past
    world.su.execute("UPDATE apikeys.keys SET expires_at = now() - interval '1 second' WHERE id = %s", (k["id"],))
    assert_refused_key(request("GET", "/projects", key=k["key"]))


RLS_REFUSED = 'new row violates row-level security policy for table "projects"'


def test_a_key_without_the_write_scope_cannot_insert(server, world):
    """RLS WITH CHECK on has_scope('projects:write'): 42501, which PostgREST
    (and postrust) answer with 401 for a request without a JWT."""
    r = request("POST", "/projects", key=world.keys["reader-a"]["key"],
                body={"workspace_id": world.ws_a, "name": "no-scope"})
    assert (r.status, r.body["code"], r.body["message"]) == (401, "42501", RLS_REFUSED)
    assert world.su.execute("SELECT count(*) AS n FROM api.projects WHERE name = 'no-scope'").fetchone()["n"] == 0


def test_a_key_cannot_write_into_another_workspace(server, world):
    r = request("POST", "/projects", key=world.keys["writer-a"]["key"],
                body={"workspace_id": world.ws_b, "name": "elsewhere"})
    assert (r.status, r.body["code"]) == (401, "42501")
    assert world.su.execute("SELECT count(*) AS n FROM api.projects WHERE name = 'elsewhere'").fetchone()["n"] == 0


def test_a_jwt_user_refused_by_rls_gets_401_from_postrust(server, world):
    """A difference from PostgREST (docs/postgrest.md, "Tested with"):
    PostgREST answers 42501 with 403 when the request's JWT names a role
    other than the anonymous one; postrust answers 401. The statement-replay
    suite asserts PostgREST's mapping (test_create_key.py)."""
    r = request("POST", "/projects", token=jwt(ALICE_JWT), body={"workspace_id": world.ws_a, "name": "by-jwt"})
    assert (r.status, r.body["code"]) == (401, "42501")


def test_an_anonymous_write_has_no_principal(server, world):
    r = request("POST", "/projects", body={"workspace_id": world.ws_a, "name": "anonymous"})
    assert (r.status, r.body["code"]) == (401, "42501")
    assert r.body["message"].startswith("no principal")


# -- no key, a JWT, both -------------------------------------------------------------------


def test_no_key_is_the_anonymous_flow(server, world):
    assert names(request("GET", "/projects")) == set()
    r = request("POST", "/rpc/whoami", body={})
    me = r.body[0] if isinstance(r.body, list) else r.body
    assert r.status == 200 and me["principal"] is None and me["db_role"] == "anon"


def test_a_jwt_request_is_its_sub(server, world):
    r = request("POST", "/rpc/whoami", token=jwt(ALICE_JWT), body={})
    me = r.body[0] if isinstance(r.body, list) else r.body
    assert r.status == 200, r.body
    assert me["principal"] == "alice" and me["key_id"] is None and me["db_role"] == "authenticated"


def test_with_a_jwt_and_a_key_the_key_wins(server, world):
    """docs/postgrest.md: the key binds its owner; the JWT still sets the role."""
    r = request("POST", "/rpc/whoami", token=jwt({"sub": "mallory", "role": "authenticated"}),
                key=world.keys["bob-a"]["key"], body={})
    me = r.body[0] if isinstance(r.body, list) else r.body
    assert r.status == 200, r.body
    assert me["principal"] == "bob" and me["key_id"] == world.keys["bob-a"]["id"]
    # and a refused key is refused even with a good JWT
    assert_refused_key(request("GET", "/projects", token=jwt(ALICE_JWT), key="sk_notavalidtoken"))


# -- the public-key widget -----------------------------------------------------------------


def test_widget_resolves_from_an_allowed_origin_only(server, world):
    pk = world.public_key
    ok = request("GET", f"/rpc/widget_workspace?public_key={pk}", headers={"Origin": ORIGIN})
    assert ok.status == 200 and [r["workspace_id"] for r in ok.body] == [world.ws_a]
    other = request("GET", f"/rpc/widget_workspace?public_key={pk}", headers={"Origin": "https://evil.example"})
    assert other.status == 200 and other.body == []
    missing = request("GET", f"/rpc/widget_workspace?public_key={pk}")
    assert missing.status == 200 and missing.body == []


def _extra(world) -> set[str]:
    """Rows other tests may have added to workspace A."""
    rows = world.su.execute("SELECT name FROM api.projects WHERE workspace_id = %s AND created_by <> 'seed'",
                            (world.ws_a,)).fetchall()
    return {r["name"] for r in rows}


def test_server_kept_working(server, world):
    # the last request after all the refusals above still works
    time.sleep(0.05)
    assert "a-one" in names(request("GET", "/projects", key=world.keys["reader-a"]["key"]))
    assert as_user(world.su, "alice", "SELECT count(*) AS n FROM apikeys.keys")[0]["n"] >= 5


# -- GitHub secret scanning ------------------------------------------------------------------


def test_a_signed_github_report_over_http_revokes_the_key(server, world):
    """POST /rpc/github_secret_scanning as GitHub sends it: the raw JSON body
    and the two headers; the body reaches the signature check byte for
    byte."""
    gh = ec.generate_private_key(ec.SECP256R1())
    pem = gh.public_key().public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    world.su.execute("INSERT INTO apikeys.scanning_keys VALUES ('gh-kid', %s, true) "
                     "ON CONFLICT (key_identifier) DO UPDATE SET public_key_pem = EXCLUDED.public_key_pem", (pem,))
    k = world.mint("to-leak", world.ws_a, ["read"])
    # GitHub's own spacing: what is signed is these exact bytes
    body = json.dumps([{"token": k["key"], "type": "pg_apikeys_secret", "url": "https://github.com/a/b",
                        "source": "content"}], separators=(", ", ": "))

    def post(text: str, sig: str):
        return request("POST", "/rpc/github_secret_scanning", raw=text,
                       headers={"Github-Public-Key-Identifier": "gh-kid", "Github-Public-Key-Signature": sig})

    sig = base64.b64encode(gh.sign(body.encode(), ec.ECDSA(hashes.SHA256()))).decode()
    # the same JSON, other whitespace: another body, refused, nothing revoked
    compact = json.dumps(json.loads(body), separators=(",", ":"))
    refused = post(compact, sig)
    assert (refused.status, refused.body["code"]) == (401, "PT401")
    assert request("GET", "/projects", key=k["key"]).status == 200
    r = post(body, sig)
    assert r.status == 200, r.body
    assert r.body == [{"label": "true_positive", "token_hash": hashlib.sha256(k["key"].encode()).hexdigest(),
                       "token_type": "pg_apikeys_secret"}]
    assert_refused_key(request("GET", "/projects", key=k["key"]))


# -- rate limits (the usage engine: the test cluster preloads the library) -------


def test_a_rate_limited_key_gets_429_with_retry_after(server, world):
    """authenticate() refuses the third request of a key allowed 2 a minute
    with PostgREST's error takeover (SQLSTATE PGRST): postrust answers with
    the status, headers and body the takeover names. Accepted requests
    carry X-RateLimit-* (response.headers)."""
    k = world.mint("limited", world.ws_a, ["read"])
    as_user(world.su, "alice", "SELECT apikeys.update_key(%s, rate_limit => 2, rate_window => '1 minute')",
            (k["id"],))
    clear_of_a_minute_boundary()
    first = request("GET", "/projects", key=k["key"])
    assert first.status == 200, first.body
    assert first.headers.get("x-ratelimit-limit") == "2"
    assert first.headers.get("x-ratelimit-remaining") == "1"
    assert request("GET", "/projects", key=k["key"]).status == 200
    refused = request("GET", "/projects", key=k["key"])
    assert refused.status == 429, (refused.status, refused.body)
    assert refused.body == {"code": "PT429", "message": "rate limit exceeded", "details": None, "hint": None}
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit"] == "2"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert int(refused.headers["x-ratelimit-reset"]) > time.time()
