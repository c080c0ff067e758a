"""The docs run as written: every ```sql block of README.md,
docs/managing-keys.md and docs/postgrest.md, in order, in a fresh cluster
and database per file (tests/docs/README.md).

- One psql session per file, as a superuser, with ON_ERROR_STOP: the blocks
  run in the order they appear and share psql variables (\\gset), exactly
  as a reader pasting them into `make psql` would.
- A block preceded by `<!-- doc-test: skip (why) -->` is illustrative and
  is not run; a block preceded by `<!-- doc-test: errors -->` may raise
  errors (it shows them on purpose) and the session goes on.
- A ```text block right after an sql block is that block's output, checked
  line by line (trailing spaces ignored; `…` stands for any text within a
  line).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ops"))
from cluster import Cluster, PortPool, redact  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/managing-keys.md", "docs/postgrest.md"]
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(skip|errors)\b.*-->\s*$")


@dataclass
class Block:
    line: int              # 1-based line of the opening fence
    sql: str
    mode: str              # "run", "skip" or "errors"
    expected: str | None   # the ```text block that follows, if any


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    pending_mode = "run"
    while i < len(lines):
        m = MARKER.match(lines[i])
        if m:
            pending_mode = m.group(1)
            i += 1
            continue
        f = FENCE.match(lines[i])
        if not f:
            if lines[i].strip():
                pending_mode = "run"
            i += 1
            continue
        indent, lang = f.group(1), f.group(2)
        j = i + 1
        body = []
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if lang == "sql":
            out.append(Block(i + 1, "\n".join(body), pending_mode, None))
        elif lang == "text" and out and out[-1].expected is None and _only_blank_between(lines, out[-1], i):
            out[-1].expected = "\n".join(body)
        pending_mode = "run"
        i = j + 1
    return out


def _only_blank_between(lines: list[str], prev: Block, start: int) -> bool:
    # the sql block's closing fence, then nothing but blank lines until `start`
    k = prev.line
    while k < len(lines) and not re.match(r"^\s*```\s*$", lines[k]):
        k += 1
    return all(not lines[x].strip() for x in range(k + 1, start))


def matches(expected: str, actual: str) -> bool:
    exp = [e.rstrip() for e in expected.strip("\n").splitlines()]
    act = [a.rstrip() for a in actual.strip("\n").splitlines()]
    if len(exp) != len(act):
        return False
    for e, a in zip(exp, act):
        pattern = "^" + ".*".join(re.escape(part) for part in e.split("…")) + "$"
        if not re.match(pattern, a):
            return False
    return True


def script_of(blocks: list[Block]) -> str:
    parts = ["\\set ON_ERROR_STOP 1", "\\pset pager off"]
    for n, b in enumerate(blocks):
        if b.mode == "skip":
            continue
        parts.append(f"\\echo '<<<doc-test block {n}>>>'")
        if b.mode == "errors":
            parts.append("\\set ON_ERROR_STOP 0")
        parts.append(b.sql)
        if b.mode == "errors":
            parts.append("\\set ON_ERROR_STOP 1")
    parts.append("\\echo '<<<doc-test end>>>'")
    return "\n".join(parts) + "\n"


@pytest.fixture(scope="module")
def ports():
    return PortPool()


@pytest.mark.parametrize("doc", DOCS)
def test_doc_runs_as_written(doc: str, ports: PortPool):
    path = ROOT / doc
    blocks = blocks_of(path)
    assert any(b.mode != "skip" for b in blocks), f"{doc}: no sql block to run"
    skipped = [b.line for b in blocks if b.mode == "skip"]
    assert len(skipped) <= 3, f"{doc}: too many illustrative blocks ({skipped}); make them run"
    c = Cluster("docs-" + path.stem, ports)
    try:
        c.init()
        c.start()
        c.client("psql", "-X", "-q", "-d", "postgres", "-c", "CREATE DATABASE app")
        script = c.dir / "doc.sql"
        script.write_text(script_of(blocks))
        p = c.client("psql", "-X", "-q", "-d", "app", "-f", script, check=False, timeout=300)
        out = p.stdout
        reached = re.findall(r"<<<doc-test block (\d+)>>>", out)
        if p.returncode != 0 or "<<<doc-test end>>>" not in out:
            last = blocks[int(reached[-1])] if reached else blocks[0]
            pytest.fail(f"{doc}: the block at line {last.line} failed (psql exit {p.returncode}):\n"
                        f"{redact(p.stderr)[-2000:]}")
        pieces = re.split(r"<<<doc-test (?:block (\d+)|end)>>>\n?", out)
        shown = {int(pieces[k]): pieces[k + 1] for k in range(1, len(pieces) - 1, 2) if pieces[k] is not None}
        wrong = []
        for n, b in enumerate(blocks):
            if b.mode == "run" and b.expected is not None and not matches(b.expected, shown.get(n, "")):
                wrong.append(f"line {b.line}: the doc shows\n{b.expected}\nbut psql printed\n"
                             f"{redact(shown.get(n, ''))}")
        assert not wrong, f"{doc}: shown output differs:\n" + "\n\n".join(wrong)
    finally:
        c.destroy()
