"""Replay one PostgREST request over a real connection, statement for statement.

PostgREST (v12) runs every request in one transaction on a connection opened
as its `authenticator` role:

    BEGIN ISOLATION LEVEL READ COMMITTED [READ ONLY]        -- READ ONLY for GET/HEAD
    SELECT set_config('search_path', $1, true),             -- the request's schema + extra search path
           set_config('role', $2, true),                    -- the JWT role, else db-anon-role
           set_config('request.jwt.claims', $3, true),      -- the claims, with "role" inserted
           set_config('request.method', $4, true),
           set_config('request.path', $5, true),
           set_config('request.headers', $6, true),         -- JSON object, lower-case names
           set_config('request.cookies', $7, true)
    SELECT "apikeys"."authenticate"()                       -- db-pre-request
    <the request's own query>
    COMMIT                                                  -- ROLLBACK on any error

`request()` below does exactly that and maps an error's SQLSTATE to the HTTP
status PostgREST would answer with (`http_status()`, the only copy of that
table in this suite).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

ANON_ROLE = "anon"          # PostgREST's db-anon-role
PRE_REQUEST = '"apikeys"."authenticate"'  # db-pre-request = "apikeys.authenticate"
EXTRA_SEARCH_PATH = ["public"]  # db-extra-search-path (PostgREST's default)

# Sentinel for `headers=`: do not set request.headers at all (PostgREST never
# does this; a broken proxy or a hand-rolled client might).
OMIT = object()


def http_status(sqlstate: str, authed: bool) -> int:
    """The HTTP status PostgREST answers for a PostgreSQL error.

    Transcribed from PostgREST's table, the one place in this suite:
    https://postgrest.org/en/stable/references/errors.html
    (source: src/PostgREST/Error.hs, pgErrorStatus). `authed` is PostgREST's
    own notion: the request's JWT role differs from db-anon-role. A request
    authenticated only by an API key carries no JWT, so PostgREST considers it
    anonymous and answers 42501 with 401.
    """
    s = sqlstate
    exact = {
        "23503": 409,  # foreign key violation
        "23505": 409,  # unique violation
        "25006": 405,  # read only sql transaction
        "P0001": 400,  # default code of RAISE
        "42883": 404,  # undefined function
        "42P01": 404,  # undefined table
        "42P17": 500,  # infinite recursion
    }
    if s in exact:
        return exact[s]
    if s == "42501":  # insufficient privilege
        return 403 if authed else 401
    if s.startswith("PT") and s[2:].isdigit():  # custom PTxyz -> HTTP xyz
        return int(s[2:])
    by_class = {
        "08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403,
        "2D": 500, "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503,
        "54": 413, "55": 500, "57": 500, "58": 500, "F0": 500, "HV": 500,
        "P0": 500, "XX": 500,
    }
    return by_class.get(s[:2], 400)


@dataclass
class Response:
    status: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    sqlstate: str | None = None
    body: dict[str, Any] | None = None  # PostgREST's error JSON, on error
    # response headers: from response.headers on success, from the DETAIL
    # of a PGRST error (PostgREST's error takeover) on error
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # short, and never a whole 1 MB header
        what = self.body if self.sqlstate else self.rows
        return f"Response({self.status}, {str(what)[:300]})"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def request(
    conn: psycopg.Connection,
    method: str,
    path: str,
    query: str,
    params: Any = None,
    *,
    claims: dict[str, Any] | None = None,
    headers: dict[str, Any] | str | object | None = None,
    schema: str = "api",
    read_only: bool | None = None,
) -> Response:
    """One PostgREST request on `conn` (a connection as `authenticator`).

    claims:  the verified JWT's claims, or None for a request without a JWT.
             The role is claims["role"], else db-anon-role; like PostgREST,
             "role" is written into the claims that reach the database.
    headers: a dict (sent as a JSON object with lower-case names, as
             PostgREST does), a str (sent as is: for malformed input), or
             OMIT (request.headers not set at all).
    schema:  the exposed schema the request targets (Accept-Profile /
             Content-Profile); PostgREST puts it first in search_path.
    read_only: None follows the method (GET and HEAD are READ ONLY). PostgREST
             also runs a POST to a STABLE or IMMUTABLE function READ ONLY:
             pass True for that.

    Returns the status PostgREST would answer: 200 with the rows, 201 for a
    POST to a table, or the mapped status with PostgREST's error body.
    """
    method = method.upper()
    if read_only is None:
        read_only = method in ("GET", "HEAD")
    role = (claims or {}).get("role", ANON_ROLE)
    jwt_claims = dict(claims or {}, role=role)
    authed = role != ANON_ROLE

    settings: list[tuple[str, str]] = [
        ("search_path", ", ".join(quote_ident(s) for s in [schema, *EXTRA_SEARCH_PATH])),
        ("role", role),
        ("request.jwt.claims", json.dumps(jwt_claims)),
        ("request.method", method),
        ("request.path", path),
    ]
    if headers is None:
        headers = {}
    if isinstance(headers, dict):
        settings.append(("request.headers", json.dumps({k.lower(): v for k, v in headers.items()})))
    elif isinstance(headers, str):
        settings.append(("request.headers", headers))
    elif headers is not OMIT:
        raise TypeError("headers: dict, str or OMIT")
    settings.append(("request.cookies", "{}"))

    set_sql = "SELECT " + ", ".join(f"set_config('{name}', %s, true)" for name, _ in settings)

    assert conn.autocommit, "the helper issues BEGIN/COMMIT itself"
    with conn.cursor(row_factory=dict_row) as cur:
        try:
            cur.execute(
                "BEGIN ISOLATION LEVEL READ COMMITTED" + (" READ ONLY" if read_only else "")
            )
            cur.execute(set_sql, [value for _, value in settings])
            cur.execute(f"SELECT {PRE_REQUEST}()")
            cur.execute(query, params)
            rows = cur.fetchall() if cur.description else []
            # PostgREST reads response.headers (a JSON array of one-key
            # objects) after the query, before the commit
            cur.execute("SELECT current_setting('response.headers', true) AS h")
            raw = cur.fetchone()["h"]
            cur.execute("COMMIT")
        except psycopg.Error as e:
            conn.execute("ROLLBACK")
            if e.sqlstate is None:  # not a server error: a bug in the test
                raise
            diag = e.diag
            if e.sqlstate == "PGRST":
                # PostgREST's error takeover: MESSAGE is the body, DETAIL
                # the status and headers (PostgREST v11+)
                detail = json.loads(diag.message_detail or "{}")
                return Response(
                    status=int(detail["status"]),
                    sqlstate=e.sqlstate,
                    body=json.loads(diag.message_primary or "{}"),
                    headers={k: str(v) for k, v in (detail.get("headers") or {}).items()},
                )
            return Response(
                status=http_status(e.sqlstate, authed),
                sqlstate=e.sqlstate,
                body={
                    "code": e.sqlstate,
                    "message": diag.message_primary,
                    "details": diag.message_detail,
                    "hint": diag.message_hint,
                },
            )
    created = method == "POST" and not path.startswith("/rpc/")
    headers_out: dict[str, str] = {}
    if raw:
        for item in json.loads(raw):
            headers_out.update({k: str(v) for k, v in item.items()})
    return Response(status=201 if created else 200, rows=rows, headers=headers_out)
