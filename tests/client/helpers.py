"""Names and small request wrappers shared by the tests (the request
sequence itself is postgrest.py)."""

from __future__ import annotations

from typing import Any

import psycopg

from postgrest import Response, request

# JWT claims of the people in the fixtures, as PostgREST sets them after
# checking a JWT. alice is admin of both workspaces; bob and carol are
# members of workspace A with scope read.
ALICE = {"role": "authenticated", "sub": "alice"}
BOB = {"role": "authenticated", "sub": "bob"}
CAROL = {"role": "authenticated", "sub": "carol"}
# a JWT that names a role but nobody (no sub): anonymous to the extension,
# but "authenticated" to PostgREST's status mapping
NOBODY = {"role": "authenticated"}

# authenticate()'s one error, whatever the cause (PostgREST's error body)
INVALID_API_KEY = {
    "code": "PT401",
    "message": "invalid API key",
    "details": None,
    "hint": "send a valid, active API key, or none",
}

WHOAMI = 'SELECT * FROM "api"."whoami"()'
PROJECTS = 'SELECT "name", "workspace_id" FROM "api"."projects" ORDER BY "name"'


def key(token: str, **more: Any) -> dict[str, Any]:
    """Request headers carrying an API key (plus what curl sends anyway)."""
    return {"accept": "application/json", "user-agent": "curl/8.5.0", "x-api-key": token, **more}


NO_KEY = {"accept": "application/json", "user-agent": "curl/8.5.0"}


def rpc(conn: psycopg.Connection, fn: str, args: dict[str, Any], *, method: str = "POST",
        claims: dict | None = None, headers: Any = None, schema: str = "apikeys",
        read_only: bool | None = None) -> Response:
    """POST (or GET) /rpc/<fn>: PostgREST calls the function with named
    arguments, in the schema chosen by Content-Profile / Accept-Profile."""
    call = ", ".join(f'"{k}" := %({k})s' for k in args)
    return request(
        conn, method, f"/rpc/{fn}",
        f'SELECT * FROM "{schema}"."{fn}"({call})', args,
        claims=claims, headers=headers if headers is not None else NO_KEY,
        schema=schema, read_only=read_only,
    )


def whoami(conn: psycopg.Connection, method: str = "GET", **kw: Any) -> Response:
    kw.setdefault("headers", NO_KEY)
    return request(conn, method, "/rpc/whoami", WHOAMI, **kw)


def projects(conn: psycopg.Connection, **kw: Any) -> Response:
    kw.setdefault("headers", NO_KEY)
    return request(conn, "GET", "/projects", PROJECTS, **kw)


def ok(resp: Response) -> list[dict[str, Any]]:
    assert resp.status == 200 and resp.sqlstate is None, resp
    return resp.rows


def refused(resp: Response, sqlstate: str, status: int) -> dict[str, Any]:
    """Assert an error response; returns its body."""
    assert (resp.sqlstate, resp.status) == (sqlstate, status), resp
    assert resp.rows == []
    return resp.body


KEYS = 'SELECT "id", "workspace_id", "owner", "name" FROM "apikeys"."keys"'


def keys(conn: psycopg.Connection, **kw: Any) -> Response:
    """GET /keys with Accept-Profile: apikeys (what RLS lets the caller see)."""
    kw.setdefault("headers", NO_KEY)
    return request(conn, "GET", "/keys", KEYS, schema="apikeys", **kw)
