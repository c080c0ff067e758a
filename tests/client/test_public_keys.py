"""Public keys for browser widgets: resolved as anon, with
the Origin header PostgREST passes in request.headers."""

from __future__ import annotations

import pytest

from helpers import ALICE, BOB, NO_KEY, ok, refused, rpc
from postgrest import request

APP = "https://app.example.com"


@pytest.fixture(scope="module")
def pks(conn, world):
    def create(ws, origins):
        [row] = ok(rpc(conn, "create_public_key", {"workspace_id": ws, "allowed_origins": origins}, claims=ALICE))
        assert row["public_key"].startswith("pk_")
        return row

    p = {
        # stored normalised: lower case
        "web": create(world.ws_a, ["HTTPS://App.Example.com", "http://localhost:5173"]),
        "any": create(world.ws_b, []),
        "gone": create(world.ws_a, []),
    }
    ok(rpc(conn, "revoke_public_key", {"id": p["gone"]["id"]}, claims=ALICE))
    # well formed, never stored: created in a transaction that rolls back
    su = world.su
    with su.transaction(force_rollback=True):
        su.execute("SELECT set_config('request.jwt.claims', '{\"sub\":\"alice\"}', true)")
        p["unknown"] = {"public_key": su.execute("SELECT public_key FROM apikeys.create_public_key(%s)",
                                                 (world.ws_a,)).fetchone()[0]}
    return p


def widget(conn, public_key, origin=None, **kw):
    """GET /rpc/widget_workspace?public_key=... from a browser (anon): the
    wrapper reads the Origin header from request.headers."""
    headers = dict(NO_KEY)
    if origin is not None:
        headers["origin"] = origin
    return request(conn, "GET", "/rpc/widget_workspace",
                   'SELECT * FROM "api"."widget_workspace"("public_key" := %s)', (public_key,),
                   headers=headers, **kw)


def test_origins_are_stored_normalised(world, pks):
    stored = world.su.execute("SELECT allowed_origins FROM apikeys.public_keys WHERE id = %s",
                              (pks["web"]["id"],)).fetchone()[0]
    assert stored == [APP, "http://localhost:5173"]


def test_allowed_origin_resolves(conn, world, pks):
    assert ok(widget(conn, pks["web"]["public_key"], APP)) == [{"workspace_id": world.ws_a}]
    assert ok(widget(conn, pks["web"]["public_key"], "http://localhost:5173")) == [{"workspace_id": world.ws_a}]


@pytest.mark.parametrize("origin", ["https://evil.example.com", "http://app.example.com",
                                    "https://app.example.com.evil.com", "https://app.example.com:8443",
                                    "null", ""])
def test_other_origin_gets_zero_rows(conn, pks, origin):
    r = widget(conn, pks["web"]["public_key"], origin)
    assert (r.status, r.rows) == (200, [])


def test_missing_origin_with_an_allow_list_gets_zero_rows(conn, pks):
    r = widget(conn, pks["web"]["public_key"])
    assert (r.status, r.rows) == (200, [])


def test_empty_allow_list_allows_any_origin(conn, world, pks):
    for origin in (APP, "https://elsewhere.example", None):
        assert ok(widget(conn, pks["any"]["public_key"], origin)) == [{"workspace_id": world.ws_b}], origin


@pytest.mark.parametrize("which", ["gone", "unknown", "malformed", "secret key"])
def test_revoked_unknown_malformed_get_zero_rows(conn, world, pks, which):
    token = {
        "gone": lambda: pks["gone"]["public_key"],
        "unknown": lambda: pks["unknown"]["public_key"],
        "malformed": lambda: "pk_live",
        "secret key": lambda: world.reader_a["key"],
    }[which]()
    r = widget(conn, token, APP)
    assert (r.status, r.rows) == (200, [])


def test_resolve_public_key_directly(conn, world, pks):
    # GET /rpc/resolve_public_key?public_key=...&origin=... (Accept-Profile:
    # apikeys): the origin is a parameter here, chosen by the caller
    pk = pks["web"]["public_key"]
    assert ok(rpc(conn, "resolve_public_key", {"public_key": pk, "origin": APP}, method="GET")) \
        == [{"workspace_id": world.ws_a}]
    assert ok(rpc(conn, "resolve_public_key", {"public_key": pk, "origin": "https://evil.example.com"},
                  method="GET")) == []
    assert ok(rpc(conn, "resolve_public_key", {"public_key": pk}, method="GET")) == []


def test_only_admins_create_public_keys(conn, world):
    refused(rpc(conn, "create_public_key", {"workspace_id": world.ws_a}), "42501", 401)
    body = refused(rpc(conn, "create_public_key", {"workspace_id": world.ws_a}, claims=BOB), "42501", 403)
    assert body["message"] == "permission denied: this needs the workspace admin role"
    refused(rpc(conn, "create_public_key", {"workspace_id": world.ws_a, "allowed_origins": ["https://x.com/path"]},
                claims=ALICE), "22023", 400)
