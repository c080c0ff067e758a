"""The API-key flows through the PostgREST client libraries people use:
@supabase/postgrest-js in Node.js and the Python `postgrest` client, against
postrust (see conftest.py).

Each flow is a small program in tests/http/clients/ (postgrest-js pinned by
its package-lock.json, `npm ci` by scripts/http.sh; postgrest-py pinned in
tests/client/requirements.txt) that reads the server's address and the key
from its environment and prints what the library handed back, as JSON.
docs/postgrest.md ("Client libraries") shows these files verbatim, and
`test_the_docs_show_the_files_the_tests_run` checks that it does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import API_URL, as_user, clear_of_a_minute_boundary

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CLIENTS = HERE / "clients"
NODE = shutil.which("node") or "node"

PT401_BODY = {"code": "PT401", "details": None, "hint": "send a valid, active API key, or none",
              "message": "invalid API key"}
PT429_BODY = {"code": "PT429", "message": "rate limit exceeded", "details": None, "hint": None}
RLS_REFUSED = 'new row violates row-level security policy for table "projects"'

# the same flow in each library: (program, runtime)
SELECT = {"js": "select-projects.mjs", "py": "select_projects.py"}
INSERT = {"js": "insert-project.mjs", "py": "insert_project.py"}
LIMITED = {"js": "rate-limited.mjs", "py": "rate_limited.py"}
LIBS = ["js", "py"]


def run(program: str, **env: str) -> dict:
    """Run one client program against the server; its last line is JSON."""
    if program.endswith(".mjs"):
        if not (CLIENTS / "node_modules" / "@supabase" / "postgrest-js").is_dir():
            pytest.fail("tests/http/clients/node_modules is missing: scripts/http.sh runs npm ci there")
        cmd = [NODE, str(CLIENTS / program)]
    else:
        cmd = [sys.executable, str(CLIENTS / program)]
    p = subprocess.run(cmd, cwd=CLIENTS, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PGRST_URL": API_URL, **env})
    assert p.returncode == 0, f"{program} exited {p.returncode}:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def names(rows) -> set[str]:
    return {r["name"] for r in rows}


def rows_of_a(world) -> set[str]:
    rows = world.su.execute("SELECT name FROM api.projects WHERE workspace_id = %s", (world.ws_a,)).fetchall()
    return {r["name"] for r in rows}


# -- a good key: client-wide headers -----------------------------------------------------


@pytest.mark.parametrize("lib", LIBS)
def test_a_key_in_the_clients_headers_reads_only_its_workspace(server, world, lib):
    a = run(SELECT[lib], API_KEY=world.keys["reader-a"]["key"])
    b = run(SELECT[lib], API_KEY=world.keys["reader-b"]["key"])
    assert a.get("error") is None and b.get("error") is None, (a, b)
    assert names(a["data"]) == rows_of_a(world) and {"a-one", "a-two"} <= names(a["data"])
    assert names(b["data"]) == {"b-one", "b-two", "b-three"}
    if lib == "js":
        assert a["status"] == b["status"] == 200


def test_postgrest_js_sends_a_per_request_key_for_that_request_only(server, world):
    """setHeader() on the builder: the request carries the key, the client
    (and so the next request) does not."""
    r = run("per-request-key.mjs", API_KEY=world.keys["reader-b"]["key"])
    assert names(r["withKey"]) == {"b-one", "b-two", "b-three"}
    assert r["withoutKey"] == []  # anonymous: this policy gives no rows


# -- refused keys: PT401 ---------------------------------------------------------------------


@pytest.mark.parametrize("lib", LIBS)
def test_a_revoked_key_is_PT401_in_the_librarys_error_object(server, world, lib):
    k = world.mint(f"revoked-{lib}", world.ws_a, ["read"])
    assert run(SELECT[lib], API_KEY=k["key"]).get("error") is None
    world.revoke(f"revoked-{lib}")
    r = run(SELECT[lib], API_KEY=k["key"])
    assert r["error"] == PT401_BODY and r.get("data") is None
    if lib == "js":
        assert r["status"] == 401


@pytest.mark.parametrize("lib", LIBS)
def test_a_mistyped_key_is_the_same_PT401(server, world, lib):
    good = world.keys["reader-a"]["key"]
    r = run(SELECT[lib], API_KEY=good[:-1] + ("A" if good[-1] != "A" else "B"))
    assert r["error"] == PT401_BODY


# -- writes: stamped by the trigger, checked by RLS -------------------------------------------


@pytest.mark.parametrize("lib", LIBS)
def test_a_keys_insert_is_stamped_with_its_owner(server, world, lib):
    name = f"from-{lib}-client"
    r = run(INSERT[lib], API_KEY=world.keys["writer-a"]["key"], WORKSPACE_ID=world.ws_a, NAME=name)
    assert r.get("error") is None, r
    assert [(x["name"], x["created_by"], x["workspace_id"]) for x in r["data"]] == [(name, "alice", world.ws_a)]
    if lib == "js":
        assert r["status"] == 201
    stored = world.su.execute("SELECT created_by FROM api.projects WHERE name = %s", (name,)).fetchall()
    assert [x["created_by"] for x in stored] == ["alice"]  # not the "mallory" the client sent
    world.su.execute("DELETE FROM api.projects WHERE name = %s", (name,))  # leave the seeded rows only


@pytest.mark.parametrize("lib", LIBS)
def test_a_key_without_the_write_scope_gets_42501(server, world, lib):
    name = f"no-scope-{lib}"
    r = run(INSERT[lib], API_KEY=world.keys["reader-a"]["key"], WORKSPACE_ID=world.ws_a, NAME=name)
    assert r["error"] == {"code": "42501", "details": None, "hint": None, "message": RLS_REFUSED}
    if lib == "js":
        assert r["status"] == 401  # 42501 without a JWT (docs/postgrest.md, "HTTP statuses")
    assert world.su.execute("SELECT count(*) AS n FROM api.projects WHERE name = %s", (name,)).fetchone()["n"] == 0


@pytest.mark.parametrize("lib", LIBS)
def test_a_key_cannot_insert_into_another_workspace(server, world, lib):
    name = f"elsewhere-{lib}"
    r = run(INSERT[lib], API_KEY=world.keys["writer-a"]["key"], WORKSPACE_ID=world.ws_b, NAME=name)
    assert r["error"]["code"] == "42501" and r["error"]["message"] == RLS_REFUSED
    assert world.su.execute("SELECT count(*) AS n FROM api.projects WHERE name = %s", (name,)).fetchone()["n"] == 0


# -- 429 and Retry-After -------------------------------------------------------------------------


@pytest.mark.parametrize("lib", LIBS)
def test_a_rate_limited_key_gets_PT429_and_retry_after_only_through_the_transport(server, world, lib):
    """A key allowed 2 requests a minute: the third is a 429 whose body is
    the library's error. Neither library retries it (three requests reach the
    server, no more) nor puts Retry-After in what it returns: the program's
    own fetch (js) or httpx hook (py) reads it."""
    k = world.mint(f"limited-{lib}", world.ws_a, ["read"])
    as_user(world.su, "alice", "SELECT apikeys.update_key(%s, rate_limit => 2, rate_window => '1 minute')",
            (k["id"],))
    clear_of_a_minute_boundary()
    r = run(LIMITED[lib], API_KEY=k["key"])
    results, responses = r["results"], r["responses"]
    assert [x.get("error") is None for x in results] == [True, True, False]
    assert results[2]["error"] == PT429_BODY
    assert [x["status"] for x in responses] == [200, 200, 429]  # no retry of the 429
    assert responses[0]["retryAfter"] is None
    assert 1 <= int(responses[2]["retryAfter"]) <= 60
    if lib == "js":
        assert results[2]["status"] == 429
        # what postgrest-js returns: no headers, so no Retry-After
        assert set(results[2]) == {"success", "error", "data", "count", "status", "statusText"}
    # a refused request consumed nothing and bound nothing: still refused a moment later
    time.sleep(0.05)
    again = run(SELECT[lib], API_KEY=k["key"])
    assert again["error"] == PT429_BODY


# -- how postgrest-py sends headers ----------------------------------------------------------------


def run_python(code: str, **env: str) -> dict:
    """Python code against the server, in a process of its own (this one's
    import path has tests/client, whose postgrest.py is not the library)."""
    p = subprocess.run([sys.executable, "-c", code], cwd=CLIENTS, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PGRST_URL": API_URL, **env})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_postgrest_py_sends_its_schema_as_the_profile(server, world):
    """postgrest-py sends Accept-Profile (and Content-Profile) with its
    `schema`, "public" unless told: against a server exposing only `api`,
    every request is refused (PGRST106) before the key is even looked at."""
    r = run_python("""
import json, os
from postgrest import APIError, SyncPostgrestClient
api = SyncPostgrestClient(os.environ["PGRST_URL"], headers={"x-api-key": os.environ["API_KEY"]})
try:
    print(json.dumps({"data": api.from_("projects").select("name").execute().data}))
except APIError as e:
    print(json.dumps({"error": e.json()}))
""", API_KEY=world.keys["reader-a"]["key"])
    assert r["error"]["code"] == "PGRST106" and "api" in r["error"]["hint"]


def test_postgrest_py_keeps_sending_a_key_removed_from_client_headers(server, world):
    """postgrest-py hands `headers` to its HTTP session when the client is
    made: deleting the key from client.headers later does not stop the
    session sending it (docs/postgrest.md: one client per key)."""
    r = run_python("""
import json, os
from postgrest import SyncPostgrestClient
api = SyncPostgrestClient(os.environ["PGRST_URL"], schema="api", headers={"x-api-key": os.environ["API_KEY"]})
del api.headers["x-api-key"]
after_del = api.from_("projects").select("name").execute().data
fresh = SyncPostgrestClient(os.environ["PGRST_URL"], schema="api")
print(json.dumps({"after_del": after_del, "fresh": fresh.from_("projects").select("name").execute().data}))
""", API_KEY=world.keys["reader-b"]["key"])
    assert names(r["after_del"]) == {"b-one", "b-two", "b-three"}
    assert r["fresh"] == []


# -- the docs show these files -----------------------------------------------------------------------

DOC = ROOT / "docs" / "postgrest.md"
SHOWN = re.compile(r"^<!-- file: (\S+) -->\n```\w*\n(.*?)^```$", re.M | re.S)


def shown_files() -> list[Path]:
    """Every file docs/postgrest.md must show: the client programs, the
    browser layer's widget page and script, and the SQL it adds."""
    out = sorted(CLIENTS.glob("*.mjs")) + sorted(CLIENTS.glob("*.py"))
    out += sorted((ROOT / "tests" / "browser" / "site").glob("widget.*"))
    out += sorted((ROOT / "tests" / "browser").glob("*.sql"))
    return out


def test_the_docs_show_the_files_the_tests_run():
    blocks = {path: body for path, body in SHOWN.findall(DOC.read_text())}
    expected = {str(p.relative_to(ROOT)) for p in shown_files()}
    assert len(expected) >= 10
    assert set(blocks) == expected, "docs/postgrest.md shows other files than the tests run"
    for path, body in blocks.items():
        assert body == (ROOT / path).read_text(), f"docs/postgrest.md's copy of {path} differs from the file"
