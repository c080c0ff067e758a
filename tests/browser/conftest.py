"""Fixtures for tests/browser (README.md): the http layer's world and
postrust, the widget's two static pages on two origins, and headless
Chromium; a failing test leaves a screenshot of the page under target/."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "http"))

from harness import (PGPORT, HarnessError, as_user, drop_world, make_world,  # noqa: E402
                     start_server, stop_server)
from webdriver import Browser, WebDriverError  # noqa: E402

OFFSET = PGPORT - 28815  # 0 on PostgreSQL 15, 3 on 18 (like the http layer's port)
PAGE_PORT_A = 28860 + OFFSET  # the origin the public key allows
PAGE_PORT_B = 28870 + OFFSET  # another origin
DRIVER_PORT = 28880 + OFFSET
ORIGIN_A = f"http://127.0.0.1:{PAGE_PORT_A}"
ORIGIN_B = f"http://localhost:{PAGE_PORT_B}"
TARGET = ROOT / "target"
NODE_DIR = ROOT / "tests" / "http" / "clients"

# test-only: what the database sees as the request's Origin
REQUEST_ORIGIN = """
CREATE FUNCTION api.request_origin() RETURNS text
    LANGUAGE sql STABLE
    AS $$ SELECT current_setting('request.headers', true)::json ->> 'origin' $$;
GRANT EXECUTE ON FUNCTION api.request_origin() TO anon;
"""


@pytest.fixture(scope="session")
def world():
    w, admin = make_world()
    w.su.execute((HERE / "refuse_browser_keys.sql").read_text())
    w.su.execute(REQUEST_ORIGIN)
    w.page_key = new_public_key(w, [ORIGIN_A])["public_key"]
    yield w
    drop_world(w, admin)


def new_public_key(w, origins: list[str]) -> dict:
    return as_user(w.su, "alice", "SELECT id::text, public_key FROM apikeys.create_public_key(%s, %s)",
                   (w.ws_a, origins))[0]


@pytest.fixture(scope="session")
def server(world, tmp_path_factory):
    """postrust as the http layer starts it, with the pre-request function
    that refuses secret keys from browsers (refuse_browser_keys.sql)."""
    try:
        proc = start_server(tmp_path_factory.mktemp("postrust") / "postrust.log",
                            {"PGRST_DB_PRE_REQUEST": "app_private.pre_request"})
    except HarnessError as e:
        pytest.fail(str(e))
    yield proc
    stop_server(proc)


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The widget's files: widget.html and widget.js as committed, and
    postgrest.js built from the npm package with esbuild (as
    docs/postgrest.md shows)."""
    d = tmp_path_factory.mktemp("site")
    for f in (HERE / "site").iterdir():
        shutil.copy(f, d / f.name)
    esbuild = NODE_DIR / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists():
        pytest.fail("tests/http/clients/node_modules is missing: scripts/browser.sh runs npm ci there")
    p = subprocess.run([str(esbuild), "node_modules/@supabase/postgrest-js/dist/index.mjs", "--bundle",
                        "--format=iife", "--global-name=postgrest", f"--outfile={d / 'postgrest.js'}"],
                       cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return d


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def pages(site):
    """The same files served from two origins: 127.0.0.1:PAGE_PORT_A and
    localhost:PAGE_PORT_B."""
    servers = []
    for port in (PAGE_PORT_A, PAGE_PORT_B):
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                                functools.partial(_Quiet, directory=str(site)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    yield
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    d = tmp_path_factory.mktemp("chromium")
    try:
        b = Browser(DRIVER_PORT, d / "chromedriver.log", d / "profile")
    except WebDriverError as e:
        pytest.fail(str(e))
    yield b
    b.quit()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, a screenshot of the page the browser shows."""
    outcome = yield
    report = outcome.get_result()
    b = item.funcargs.get("browser") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and b is not None and b.sid:
        TARGET.mkdir(exist_ok=True)
        shot = TARGET / f"browser-pg{os.environ.get('PG_MAJOR', '')}-{item.name}.png"
        try:
            b.screenshot(shot)
            report.sections.append(("screenshot", str(shot)))
            print(f"\nscreenshot of the page: {shot}")
        except (WebDriverError, OSError) as e:
            print(f"\nno screenshot: {e}")
