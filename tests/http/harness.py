"""The HTTP harness, shared by tests/http (pytest fixtures in conftest.py)
and make bench (bench/http_bench.py): postrust-server, a PostgREST-compatible
server (crates.io, MIT), started against the local test cluster with
PostgREST's settings (authenticator login, anon role, db-pre-request =
apikeys.authenticate), driven with plain HTTP requests (urllib, no extra
package).

The database `pg_apikeys_http` gets the same application schema as the
statement-replay suite (tests/client/app_schema.py) and a small world of
workspaces, keys, rows and a public key, made through SQL as JWT users.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "client"))
from app_schema import SETUP_DATABASE, SETUP_ROLES  # noqa: E402

HOST = "127.0.0.1"
PGPORT = int(os.environ.get("PGPORT", "28815"))
DB = "pg_apikeys_http"
# a port of its own: the ops and docs layers use 28830-28839, make bench 28840
HTTP_PORT = int(os.environ.get("APIKEYS_HTTP_PORT", "28850")) + (PGPORT - 28815)
POSTRUST = os.environ.get("POSTRUST", shutil.which("postrust") or "postrust")
# where the REST API is (postrust serves it under /api; PostgREST at /)
API_URL = f"http://{HOST}:{HTTP_PORT}/api"
JWT_SECRET = "pg_apikeys-http-tests-secret-0123456789abcdef"  # a test secret, HS256
ORIGIN = "https://app.example"
ALICE_JWT_CLAIMS = {"sub": "alice", "role": "authenticated"}

# GitHub's secret-scanning endpoint, as docs/postgrest.md sets it up: a
# SECURITY DEFINER wrapper owned by an intake role that holds
# grant_leak_reporter; anon may call the wrapper, whose signature check is
# the gate, never report_leaked itself
GITHUB_INTAKE = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'github_intake') THEN CREATE ROLE github_intake NOLOGIN; END IF;
END $$;
SELECT apikeys.grant_leak_reporter('github_intake');
GRANT USAGE, CREATE ON SCHEMA api TO github_intake;
SET ROLE github_intake;
CREATE FUNCTION api.github_secret_scanning(json) RETURNS json
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $f$ SELECT apikeys.github_secret_scanning(
              $1::text,
              current_setting('request.headers', true)::json ->> 'github-public-key-identifier',
              current_setting('request.headers', true)::json ->> 'github-public-key-signature') $f$;
REVOKE ALL ON FUNCTION api.github_secret_scanning(json) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api.github_secret_scanning(json) TO anon;
RESET ROLE;
REVOKE USAGE, CREATE ON SCHEMA api FROM github_intake;
"""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims: dict[str, Any]) -> str:
    """An HS256 JWT signed with the server's secret (PGRST_JWT_SECRET)."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps({"exp": int(time.time()) + 3600, **claims}).encode())
    sig = hmac.new(JWT_SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or the text when it is not JSON

    def __repr__(self) -> str:  # never a token in an assertion message
        return f"<HTTP {self.status}>"


def request(method: str, path: str, *, key: str | None = None, token: str | None = None,
            body: Any = None, headers: dict[str, str] | None = None, raw: str | None = None) -> Response:
    """One HTTP request to the server under /api."""
    h = {"Accept": "application/json", **(headers or {})}
    if key is not None:
        h["x-api-key"] = key
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    data = None
    if raw is not None:  # a body sent byte for byte as given
        data = raw.encode()
        h["Content-Type"] = "application/json"
    elif body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(f"{API_URL}{path}", data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, hdrs, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, dict(e.headers), e.read()
    text = raw.decode(errors="replace")
    try:
        parsed = json.loads(text) if text else None
    except json.JSONDecodeError:
        parsed = text
    return Response(status, {k.lower(): v for k, v in hdrs.items()}, parsed)


def clear_of_a_minute_boundary(room: float = 15.0) -> None:
    """Rate windows are fixed and start on the minute: a test that needs
    its requests in one minute's window waits, when fewer than `room`
    seconds of the current minute are left, for the next minute."""
    left = 60.0 - time.time() % 60.0
    if left < room:
        time.sleep(left + 0.2)


def connect(dbname: str = DB) -> psycopg.Connection:
    return psycopg.connect(host=HOST, port=PGPORT, dbname=dbname, user="postgres", autocommit=True,
                           row_factory=dict_row, connect_timeout=10, application_name="pg_apikeys_http_tests")


def as_user(conn: psycopg.Connection, sub: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Run one statement as the JWT user `sub` (claims as PostgREST sets them;
    this superuser session is trusted to set them)."""
    with conn.transaction():
        conn.execute("SELECT set_config('role', 'authenticated', true), "
                     "set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": sub}),))
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


@dataclass
class World:
    su: psycopg.Connection
    ws_a: str = ""
    ws_b: str = ""
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    public_key: str = ""

    def mint(self, label: str, ws: str, scopes: list[str], owner: str = "alice") -> dict[str, Any]:
        row = as_user(self.su, owner, "SELECT id::text, key FROM apikeys.create_key(%s, %s, %s)",
                      (ws, label, scopes))[0]
        self.keys[label] = row
        return row

    def revoke(self, label: str) -> None:
        as_user(self.su, "alice", "SELECT apikeys.revoke_key(%s)", (self.keys[label]["id"],))


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


class HarnessError(RuntimeError):
    pass


def make_world() -> tuple[World, psycopg.Connection]:
    """A fresh database with the application schema and the world; returns
    it and an admin connection (to drop the database with drop_world)."""
    admin = connect("postgres")
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DB}")
    admin.execute(SETUP_ROLES)
    su = connect()
    su.execute(SETUP_DATABASE)
    su.execute(GITHUB_INTAKE)
    w = World(su)
    w.ws_a = as_user(su, "alice", "SELECT apikeys.create_workspace('Acme')::text AS id")[0]["id"]
    w.ws_b = as_user(su, "alice", "SELECT apikeys.create_workspace('Beta')::text AS id")[0]["id"]
    as_user(su, "alice", "SELECT apikeys.add_member(%s, 'bob', 'member', '{read}')", (w.ws_a,))
    as_user(su, "bob", "SELECT apikeys.accept_invitation(%s)", (w.ws_a,))
    for ws, names in ((w.ws_a, ["a-one", "a-two"]), (w.ws_b, ["b-one", "b-two", "b-three"])):
        for n in names:
            su.execute("INSERT INTO api.projects (workspace_id, name, created_by) VALUES (%s, %s, 'seed')", (ws, n))
    w.mint("reader-a", w.ws_a, ["read"])
    w.mint("writer-a", w.ws_a, ["read", "projects:write"])
    w.mint("reader-b", w.ws_b, ["read"])
    w.mint("bob-a", w.ws_a, ["read"], owner="bob")
    w.public_key = as_user(su, "alice", "SELECT public_key FROM apikeys.create_public_key(%s, %s)",
                           (w.ws_a, [ORIGIN]))[0]["public_key"]
    return w, admin


def drop_world(w: World, admin: psycopg.Connection) -> None:
    w.su.close()
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin.close()


def start_server(log: Path, settings: dict[str, str] | None = None) -> subprocess.Popen:
    """postrust with PostgREST's settings, answering on HTTP_PORT; `settings`
    adds or replaces PGRST_* variables (the browser layer's pre-request)."""
    if _port_open(HTTP_PORT):
        raise HarnessError(f"port {HTTP_PORT} is taken: stop whatever listens there (an earlier run?)")
    env = {**os.environ,
           "PGRST_DB_URI": f"postgres://authenticator@{HOST}:{PGPORT}/{DB}",
           "PGRST_DB_SCHEMAS": "api",
           "PGRST_DB_ANON_ROLE": "anon",
           "PGRST_DB_PRE_REQUEST": "apikeys.authenticate",
           "PGRST_JWT_SECRET": JWT_SECRET,
           "PGRST_SERVER_HOST": HOST,
           "PGRST_SERVER_PORT": str(HTTP_PORT),
           "PGRST_LOG_LEVEL": "warn",
           # PostgREST's error bodies: the database's SQLSTATE, message and hint
           "PGRST_COMPAT_MODE": os.environ.get("PGRST_COMPAT_MODE", "true"),
           **(settings or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen([POSTRUST], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise HarnessError(f"postrust exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        if _port_open(HTTP_PORT) and request("GET", "/projects").status < 500:
            return proc
        if time.monotonic() > deadline:
            stop_server(proc)
            raise HarnessError(f"postrust did not answer within 60 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
