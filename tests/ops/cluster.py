"""Throw-away PostgreSQL clusters for the ops tests.

Each cluster lives in /tmp/pg_apikeys_ops/<name> (a short path: the Unix
socket goes there too), listens on 127.0.0.1 on a port from 28830-28839, and
is owned by `postgres` when we run as root (initdb and postgres refuse root).
Nothing here ever touches the shared development cluster (port 28815).

Tokens never reach a message: `Secret` masks its repr, and `redact()` is
applied to every piece of tool output that goes into an assertion message.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import psycopg
from psycopg.rows import dict_row

PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
# PostgreSQL 15, for the side of a test that must be 15 whatever version the
# layer runs on (the publisher of the 15 -> 18 logical replication test)
PG15_BIN = Path(os.environ.get("PG15_BIN", "/usr/lib/postgresql/15/bin"))
BASE = Path(os.environ.get("OPS_BASE", "/tmp/pg_apikeys_ops"))
PORTS = range(28830, 28840)
HOST = "127.0.0.1"
IS_ROOT = os.geteuid() == 0
SHARED_PORT = 28815  # the development cluster other people use: never ours


class Secret(str):
    """A token. Behaves as the string (psycopg sends it as text), but its repr,
    which pytest uses in assertion messages, never shows it. Never compare two
    Secrets with `assert a == b`: pytest diffs strings character by character."""

    def __repr__(self) -> str:
        return "<token>"


_TOKENISH = re.compile(r"\b[a-z][a-z0-9]{1,15}(?:_[a-z0-9]{1,16})?_[A-Za-z0-9]{40,}\b")
_HEXISH = re.compile(r"\\?\\x[0-9a-fA-F]{16,}|\b[0-9a-fA-F]{64}\b")


def redact(text: str) -> str:
    """Mask anything that looks like a token or a hash in tool output."""
    return _HEXISH.sub("<hex>", _TOKENISH.sub("<token>", text or ""))


def owner_cmd(args: Sequence[Any]) -> list[str]:
    """A command run as the clusters' owner: `postgres` when we are root."""
    args = [str(a) for a in args]
    return ["runuser", "-u", "postgres", "--", *args] if IS_ROOT else args


def run(args: Sequence[Any], *, as_owner: bool = False, check: bool = True,
        timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = owner_cmd(args) if as_owner else [str(a) for a in args]
    p = subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=timeout,
                       env=None if env is None else {**os.environ, **env})
    if check and p.returncode != 0:
        raise RuntimeError(f"{Path(str(args[0])).name} exited {p.returncode}: {redact(p.stderr)[-3000:]}")
    return p


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


class PortPool:
    def __init__(self) -> None:
        self.taken: set[int] = set()

    def take(self) -> int:
        for p in PORTS:
            if p != SHARED_PORT and p not in self.taken and _port_free(p):
                self.taken.add(p)
                return p
        raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} on {HOST}")

    def give_back(self, port: int | None) -> None:
        self.taken.discard(port)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (read from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def _exists(pid: int) -> bool:
    """Still in the process table (a zombie counts: PostgreSQL's lock-file
    check, kill(pid, 0), sees it until it is reaped)."""
    return Path(f"/proc/{pid}").exists()


class Cluster:
    """One throw-away cluster. Create with `init()` or `basebackup_of()`."""

    def __init__(self, name: str, ports: PortPool, pgbin: Path | None = None):
        self.name = name
        self.pgbin = pgbin or PGBIN
        self.dir = BASE / name
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.ports = ports
        self.port: int | None = None

    # -- set-up ------------------------------------------------------------

    def _fresh_dir(self) -> None:
        BASE.mkdir(exist_ok=True)
        try:  # shared by every user that runs the layer, like /tmp
            os.chmod(BASE, 0o1777)
        except PermissionError:
            pass
        if self.dir.exists():
            self._stop_stale()
            shutil.rmtree(self.dir)
        self.dir.mkdir(mode=0o700)
        if IS_ROOT:
            shutil.chown(self.dir, "postgres", "postgres")

    def _stop_stale(self) -> None:
        """A cluster left by an aborted run: stop it before removing it."""
        if (self.data / "postmaster.pid").exists():
            run([self.pgbin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"],
                as_owner=True, check=False, timeout=60)

    def _conf(self, settings: dict[str, Any]) -> None:
        lines = ["", "# pg_apikeys ops tests"]
        for k, v in settings.items():
            lines.append(f"{k} = '{v}'" if isinstance(v, str) else f"{k} = {v}")
        self._append(self.data / "postgresql.conf", "\n".join(lines) + "\n")

    def _append(self, path: Path, text: str) -> None:
        # root may write the owner's files directly; the owner stays postgres
        with open(path, "a") as f:
            f.write(text)

    def _base_settings(self) -> dict[str, Any]:
        return {
            "listen_addresses": HOST,
            "port": self.port,
            "unix_socket_directories": str(self.dir),
            "fsync": "on",
            "max_connections": 40,
            "shared_buffers": "32MB",
            "log_line_prefix": "%m [%p] %q%u@%d ",
        }

    def init(self, settings: dict[str, Any] | None = None, hba: Iterable[str] = ()) -> "Cluster":
        self._fresh_dir()
        self.port = self.ports.take()
        run([self.pgbin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--locale=C.UTF-8", "--no-sync"], as_owner=True)
        self._conf({**self._base_settings(), **(settings or {})})
        hba = list(hba)
        if hba:
            self._append(self.data / "pg_hba.conf", "\n".join(hba) + "\n")
        return self

    def basebackup_of(self, primary: "Cluster", settings: dict[str, Any] | None = None) -> "Cluster":
        """A streaming standby of `primary` (pg_basebackup -R -X stream)."""
        self._fresh_dir()
        self.port = self.ports.take()
        run([self.pgbin / "pg_basebackup", "-R", "-D", self.data, "-h", HOST, "-p", primary.port,
             "-U", "postgres", "-X", "stream", "-c", "fast", "--no-sync"], as_owner=True)
        # the copy carries the primary's postgresql.conf: override port and socket
        self._conf({**self._base_settings(), "hot_standby": "on", **(settings or {})})
        return self

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        p = run([self.pgbin / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start"],
                as_owner=True, timeout=90, check=False)
        if p.returncode != 0:
            tail = "\n".join(self.log_text().splitlines()[-15:])
            raise RuntimeError(f"pg_ctl start ({self.name}) exited {p.returncode}: {redact(p.stderr)}\n"
                               f"server log:\n{redact(tail)}")

    def stop(self, mode: str = "immediate") -> None:
        if (self.data / "postmaster.pid").exists():
            run([self.pgbin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"], as_owner=True,
                check=False, timeout=60)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            self.ports.give_back(self.port)
            if os.environ.get("OPS_KEEP") != "1":
                shutil.rmtree(self.dir, ignore_errors=True)

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def kill9(self) -> int:
        """kill -9 the postmaster, then every process it had started (the
        backends would otherwise keep the shared memory and block a restart).
        The postmaster is stopped first so that it cannot fork while we look.
        Returns how many processes were killed."""
        pm = self.postmaster_pid()
        os.kill(pm, signal.SIGSTOP)
        kids = _children(pm)
        os.kill(pm, signal.SIGKILL)
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # the postmaster's parent (init, after pg_ctl exited) reaps it
        deadline = time.monotonic() + 30
        for p in [pm, *kids]:
            while _exists(p):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"process {p} was not gone 30 s after SIGKILL")
                time.sleep(0.02)
        return 1 + len(kids)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    # -- clients -----------------------------------------------------------

    def connect(self, dbname: str = "postgres", user: str = "postgres", **kw: Any) -> psycopg.Connection:
        kw.setdefault("autocommit", True)
        kw.setdefault("row_factory", dict_row)
        return psycopg.connect(host=HOST, port=self.port, dbname=dbname, user=user,
                               connect_timeout=10, application_name="pg_apikeys_ops_tests", **kw)

    def client(self, tool: str, *args: Any, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """A client tool (psql, pg_dump, pg_restore) as ourselves, over TCP."""
        return run([self.pgbin / tool, "-h", HOST, "-p", self.port, "-U", "postgres", *args],
                   check=check, timeout=timeout)


def call(conn: psycopg.Connection, role: str | None, sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Run one statement in its own transaction, as `role` (SET LOCAL ROLE;
    current_principal() is then that role) or as the connection's user."""
    with conn.transaction():
        if role is not None:
            conn.execute(f'SET LOCAL ROLE "{role}"')
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def one(conn: psycopg.Connection, role: str | None, sql: str, params: Any = None) -> dict[str, Any]:
    rows = call(conn, role, sql, params)
    assert len(rows) == 1, f"expected one row, got {len(rows)}"
    return rows[0]


def sqlstate_of(conn: psycopg.Connection, role: str | None, sql: str, params: Any = None) -> str | None:
    """The SQLSTATE a statement fails with, or None when it succeeds."""
    try:
        call(conn, role, sql, params)
    except psycopg.Error as e:
        if e.sqlstate is None:
            raise
        return e.sqlstate
    return None


def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
