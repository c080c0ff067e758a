"""Headless Chromium driven through chromedriver's W3C WebDriver protocol,
with the standard library (urllib): Debian's chromium and chromium-driver
packages, nothing downloaded."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class WebDriverError(RuntimeError):
    pass


class Browser:
    """One chromedriver process and one headless Chromium session."""

    def __init__(self, port: int, log: Path, profile: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.out = open(log, "w")
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={port}", "--allowed-ips=127.0.0.1"],
                                     stdout=self.out, stderr=subprocess.STDOUT)
        self.sid = ""
        deadline = time.monotonic() + 30
        while not _port_open(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.quit()
                raise WebDriverError(f"chromedriver did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--window-size=800,400", f"--user-data-dir={profile}"]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"}}}}
        self.sid = self._call("POST", "/session", caps)["sessionId"]
        self._call("POST", f"/session/{self.sid}/timeouts", {"script": 20000, "pageLoad": 20000})

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                payload = json.loads(r.read())
        except urllib.error.HTTPError as e:
            payload = json.loads(e.read() or b"{}")
            raise WebDriverError(f"{method} {path}: {payload.get('value', payload)}") from None
        return payload["value"]

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.sid}/url", {"url": url})

    def execute(self, script: str, *args: Any) -> Any:
        """Run `script` in the page (a function body; `return` its value)."""
        return self._call("POST", f"/session/{self.sid}/execute/sync", {"script": script, "args": list(args)})

    def execute_async(self, script: str, *args: Any) -> Any:
        """Run `script` in the page; it ends by calling arguments[arguments.length - 1]."""
        return self._call("POST", f"/session/{self.sid}/execute/async", {"script": script, "args": list(args)})

    def wait_for(self, script: str, timeout: float = 15) -> Any:
        """Poll `script` until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.execute(script)
            if value:
                return value
            if time.monotonic() > deadline:
                raise WebDriverError(f"timed out waiting for: {script}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", f"/session/{self.sid}/screenshot")))

    def console(self) -> list[str]:
        """The page's console messages since the last call."""
        try:
            return [e["message"] for e in self._call("POST", f"/session/{self.sid}/se/log", {"type": "browser"})]
        except WebDriverError:
            return []

    def quit(self) -> None:
        if self.sid:
            try:
                self._call("DELETE", f"/session/{self.sid}")
            except (WebDriverError, OSError):
                pass
            self.sid = ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.out.close()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
