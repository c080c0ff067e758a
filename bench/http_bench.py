"""make bench-http: requests per second through postrust-server for the same
GET (`/api/rpc/whoami`, who the database thinks is calling: one row either
way), authenticated by an API key and by a JWT only, side by side in one
run, and the ratio of their costs.
Goal: an API-key request costs at most 1.1 x a JWT request.

Uses tests/http/harness.py (the same world and server as the HTTP tests) on
the local test cluster, and wrk (Debian's package) as the load generator.
Settings: BENCH_HTTP_SECONDS (10), BENCH_HTTP_ROUNDS (3), BENCH_HTTP_CONNECTIONS (4).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "http"))
from harness import ALICE_JWT_CLAIMS, HOST, HTTP_PORT, drop_world, jwt, make_world, start_server, stop_server  # noqa: E402

SECS = int(os.environ.get("BENCH_HTTP_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_HTTP_ROUNDS", "3"))
CONNS = int(os.environ.get("BENCH_HTTP_CONNECTIONS", "4"))


def wrk(header: str) -> float:
    out = subprocess.run(["wrk", "-t1", f"-c{CONNS}", f"-d{SECS}s", "-H", header,
                          f"http://{HOST}:{HTTP_PORT}/api/rpc/whoami"],
                         capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{non2xx.group(1)} requests failed: the benchmark measures refusals, not requests")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    w, admin = make_world()
    log = Path(tempfile.mkdtemp(prefix="pg_apikeys_bench_http")) / "postrust.log"
    proc = start_server(log)
    try:
        key = f"x-api-key: {w.keys['reader-a']['key']}"
        bearer = f"Authorization: Bearer {jwt(ALICE_JWT_CLAIMS)}"
        wrk(key), wrk(bearer)  # warm-up
        rows = []
        for r in range(ROUNDS):
            k, j = wrk(key), wrk(bearer)
            rows.append((k, j))
            print(f"round {r + 1}: API key {k:8.0f} req/s   JWT {j:8.0f} req/s   key cost / JWT cost {j / k:.3f}")
        k = sum(x for x, _ in rows) / len(rows)
        j = sum(y for _, y in rows) / len(rows)
        ratio = j / k
        print(f"mean:    API key {k:8.0f} req/s   JWT {j:8.0f} req/s   key cost / JWT cost {ratio:.3f} "
              f"(goal <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")
    finally:
        stop_server(proc)
        drop_world(w, admin)


if __name__ == "__main__":
    main()
