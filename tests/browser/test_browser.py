"""The public-key widget in a real browser (README.md): headless Chromium
loads site/widget.html from two origins; its script, using postgrest-js as
a browser bundle, asks postrust for /rpc/widget_workspace."""

from __future__ import annotations

import urllib.parse
import urllib.request

from conftest import ORIGIN_A, ORIGIN_B, new_public_key
from harness import API_URL, as_user, request

WIDGET_STATE = "return document.getElementById('workspace').dataset.state !== 'loading'" \
               " && document.getElementById('workspace').dataset.state"


def load_widget(browser, origin: str, public_key: str) -> tuple[str, str]:
    """Open the widget page from `origin`; its state and what it shows."""
    q = urllib.parse.urlencode({"api": API_URL, "public_key": public_key})
    browser.get(f"{origin}/widget.html?{q}")
    state = browser.wait_for(WIDGET_STATE)
    return state, browser.execute("return document.getElementById('workspace').textContent")


# run in the page, with the page's postgrest-js; the last argument is the callback
IN_PAGE = """
const [api, headers, call, done] = arguments;
const client = new postgrest.PostgrestClient(api, { headers });
const q = call === 'projects' ? client.from('projects').select('name')
                              : client.rpc(call, {}, { get: true });
q.then(({ status, data, error }) => done({ status, data, error }),
       (e) => done({ thrown: String(e) }));
"""


def test_the_allowed_origins_page_shows_its_workspace(server, world, pages, browser):
    assert load_widget(browser, ORIGIN_A, world.page_key) == ("shown", world.ws_a)


def test_another_origins_page_gets_zero_rows(server, world, pages, browser):
    """The server answers the cross-origin request (CORS lets the page read
    it), and the database gives that origin nothing."""
    assert load_widget(browser, ORIGIN_B, world.page_key) == ("none", "not available on this site")
    # the same key, from the allowed origin again, in the same browser
    assert load_widget(browser, ORIGIN_A, world.page_key)[0] == "shown"


def test_a_revoked_public_key_gives_zero_rows_on_the_next_page_load(server, world, pages, browser):
    pk = new_public_key(world, [ORIGIN_A])
    assert load_widget(browser, ORIGIN_A, pk["public_key"]) == ("shown", world.ws_a)
    as_user(world.su, "alice", "SELECT apikeys.revoke_public_key(%s)", (pk["id"],))
    assert load_widget(browser, ORIGIN_A, pk["public_key"]) == ("none", "not available on this site")


def test_a_page_cannot_set_origin_the_database_sees_the_browsers(server, world, pages, browser):
    """A script on the other origin's page sends Origin: <the allowed
    origin> through postgrest-js's headers and through fetch itself: the
    browser drops it and sends its own, which is what the database sees."""
    load_widget(browser, ORIGIN_B, world.page_key)
    spoof = {"Origin": ORIGIN_A}
    seen = browser.execute_async(IN_PAGE, API_URL, spoof, "request_origin")
    assert (seen["status"], seen["data"], seen["error"]) == (200, ORIGIN_B, None)
    q = urllib.parse.urlencode({"public_key": world.page_key})
    raw = browser.execute_async("""
        const [url, origin, done] = arguments;
        fetch(url, { headers: { Origin: origin } }).then((r) => r.json()).then(done, (e) => done(String(e)));
    """, f"{API_URL}/rpc/widget_workspace?{q}", ORIGIN_A)
    assert raw == []
    # and outside a browser the header is whatever the client says: the
    # allow-list is not authentication (docs/postgrest.md)
    assert request("GET", "/rpc/request_origin", headers={"Origin": ORIGIN_A}).body == ORIGIN_A


def test_a_secret_key_sent_from_a_page_is_refused(server, world, pages, browser):
    """x-api-key from a page: the server's CORS lets it through (any header,
    any origin), so the pre-request function refuses it: Origin is there."""
    key = world.keys["reader-a"]["key"]
    load_widget(browser, ORIGIN_A, world.page_key)
    r = browser.execute_async(IN_PAGE, API_URL, {"x-api-key": key}, "projects")
    assert r["status"] == 401 and r["data"] is None, r
    assert r["error"] == {"code": "PT401", "details": None,
                          "hint": "a web page uses a public key (pk_…); keep secret keys on servers",
                          "message": "secret API keys are not accepted from browsers"}
    # the key itself is good: a server (no Origin) reads its workspace
    ok = request("GET", "/projects", key=key)
    assert ok.status == 200 and {"a-one", "a-two"} <= {x["name"] for x in ok.body}
    # and the refusal is the pre-request's, whatever Origin a non-browser sends
    assert request("GET", "/projects", key=key, headers={"Origin": ORIGIN_A}).status == 401


def test_the_servers_cors_answers(server, world):
    """What postrust 3.1.0 answers (docs/postgrest.md, "CORS"): any origin,
    any request header, every response header exposed."""
    q = urllib.parse.urlencode({"public_key": world.page_key})
    simple = request("GET", f"/rpc/widget_workspace?{q}", headers={"Origin": ORIGIN_B})
    assert simple.headers["access-control-allow-origin"] == "*"
    assert simple.headers["access-control-expose-headers"] == "*"
    pre = urllib.request.Request(f"{API_URL}/projects", method="OPTIONS", headers={
        "Origin": ORIGIN_B, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-api-key"})
    with urllib.request.urlopen(pre, timeout=30) as r:
        assert r.status == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.headers["access-control-allow-headers"] == "*"
        assert "GET" in r.headers["access-control-allow-methods"].split(",")
