"""GitHub secret scanning: github_secret_scanning(body, key_identifier,
signature) with reports signed by an independent implementation (Python's
`cryptography`, ECDSA P-256 / SHA-256, DER, base64, as GitHub signs), and the
token format's regular expression that is registered with GitHub
(docs/postgrest.md, "GitHub secret scanning")."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from helpers import ALICE, ok, rpc

# what docs/postgrest.md tells users to register with GitHub, read from there
# so that the regular expression the docs show is the one tested
_DOC = Path(__file__).resolve().parents[2] / "docs" / "postgrest.md"
TOKEN_RE = re.compile(next(line.strip() for line in _DOC.read_text().splitlines()
                           if line.startswith("\\b[a-z]")))


def sha256_hex(t: str) -> str:
    return hashlib.sha256(t.encode()).hexdigest()


@pytest.fixture(scope="module")
def signing(su):
    """GitHub's signing key (made here), its public half loaded as current
    key 'kid-1'; a second, retired key 'kid-old'; and an intake role."""
    current = ec.generate_private_key(ec.SECP256R1())
    retired = ec.generate_private_key(ec.SECP256R1())

    def pem(k):
        return k.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    su.execute("DELETE FROM apikeys.scanning_keys")
    su.execute("INSERT INTO apikeys.scanning_keys VALUES ('kid-1', %s, true), ('kid-old', %s, false)",
               (pem(current), pem(retired)))
    su.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gh_intake') "
               "THEN CREATE ROLE gh_intake NOLOGIN; END IF; END $$")
    su.execute("SELECT apikeys.grant_leak_reporter('gh_intake')")
    return {"kid-1": current, "kid-old": retired}


def sign(key, body: str) -> str:
    return base64.b64encode(key.sign(body.encode(), ec.ECDSA(hashes.SHA256()))).decode()


def intake(su, body: str, kid: str | None, sig: str | None):
    """Call the intake as the granted role; the feedback, or the SQLSTATE."""
    try:
        with su.transaction():
            su.execute("SET LOCAL ROLE gh_intake")
            return su.execute("SELECT apikeys.github_secret_scanning(%s, %s, %s)", (body, kid, sig)).fetchone()[0]
    except psycopg.Error as e:
        return e.sqlstate


def verifies(su, token: str) -> bool:
    return su.execute("SELECT count(*) FROM apikeys.verify_key(%s)", (token,)).fetchone()[0] == 1


def report(*tokens: str) -> str:
    return json.dumps([{"token": t, "type": "pg_apikeys_secret_key",
                        "url": "https://github.com/acme/app/blob/main/.env", "source": "content"} for t in tokens])


def test_a_signed_report_revokes_our_keys_and_gives_feedback(conn, world, su, signing):
    k = world.mint(ALICE, world.ws_a, "scanned", ["read"])
    foreign = "sk_" + "A" * 49
    body = report(k["key"], foreign)
    feedback = intake(su, body, "kid-1", sign(signing["kid-1"], body))
    assert feedback == [
        {"token_hash": sha256_hex(k["key"]), "token_type": "pg_apikeys_secret_key", "label": "true_positive"},
        {"token_hash": sha256_hex(foreign), "token_type": "pg_apikeys_secret_key", "label": "false_positive"},
    ]
    assert not verifies(su, k["key"])
    leaked = su.execute("SELECT detail FROM apikeys.audit_log WHERE key_id = %s AND action = 'key.leaked'",
                        (k["id"],)).fetchall()
    assert [r[0] for r in leaked] == [{"name": "scanned", "source": "content",
                                      "url": "https://github.com/acme/app/blob/main/.env"}]
    # the same report again: same feedback, nothing more written
    assert intake(su, body, "kid-1", sign(signing["kid-1"], body)) == feedback
    assert su.execute("SELECT count(*) FROM apikeys.audit_log WHERE key_id = %s AND action = 'key.leaked'",
                      (k["id"],)).fetchone()[0] == 1


@pytest.mark.parametrize("case", ["wrong key id", "retired key", "tampered body", "whitespace changed",
                                  "signed by another key", "malformed signature", "no signature"])
def test_unverified_reports_are_PT401_and_revoke_nothing(conn, world, su, signing, case):
    k = world.mint(ALICE, world.ws_a, f"kept-{case.replace(' ', '-')}", ["read"])
    body = report(k["key"])
    sig = sign(signing["kid-1"], body)
    kid = "kid-1"
    if case == "wrong key id":
        kid = "kid-unknown"
    elif case == "retired key":
        kid, sig = "kid-old", sign(signing["kid-old"], body)
    elif case == "tampered body":
        body = body.replace("content", "commit")
    elif case == "whitespace changed":
        body = json.dumps(json.loads(body), indent=1)
        assert json.loads(body) == json.loads(report(k["key"]))
    elif case == "signed by another key":
        sig = sign(ec.generate_private_key(ec.SECP256R1()), body)
    elif case == "malformed signature":
        sig = "not-base64-!!"
    elif case == "no signature":
        sig = None
    assert intake(su, body, kid, sig) == "PT401"
    assert verifies(su, k["key"])


def test_malformed_or_oversize_bodies_are_22023(conn, world, su, signing):
    for body in ['{"token": "x"}', '[{"type": "x"}]', "not json", "[" * 200 + "]" * 200]:
        assert intake(su, body, "kid-1", sign(signing["kid-1"], body)) == "22023", body
    huge = report("x" * (1024 * 1024))
    assert intake(su, huge, "kid-1", sign(signing["kid-1"], huge)) == "22023"


def test_only_granted_roles_may_call_it(conn, world, su, signing):
    body = report("sk_x")
    r = rpc(conn, "github_secret_scanning", {"body": body, "key_identifier": "kid-1",
                                              "signature": sign(signing["kid-1"], body)}, claims=ALICE)
    assert r.sqlstate == "42501"


def test_the_registered_regex_matches_every_minted_key_and_nothing_else(conn, world, su):
    minted = [world.mint(ALICE, world.ws_a, None, [], prefix=p)["key"]
              for p in ("sk", "sk_live", "acme", "acme_test2", "z9", "a123456789012345_b123456789012345")]
    public = [ok(rpc(conn, "create_public_key", {"workspace_id": world.ws_a}, claims=ALICE))[0]["public_key"]
              for _ in range(3)]
    for t in minted + public:
        assert TOKEN_RE.fullmatch(t), t
        assert TOKEN_RE.findall(f"KEY={t}\n") == [t]
    t = minted[0]
    others = [t[:-1], t + "x", "ghp_" + "a" * 36, "legacy-token-0001", t.split("_")[0] + "_" + t.split("_")[1][:8],
              "SK_" + t[3:], "s_" + t[3:], "sk__" + t[3:], "sk_" + t[3:-1] + "-"]
    for o in others:
        assert not TOKEN_RE.fullmatch(o), o


def test_each_token_of_a_signed_report_stands_alone(conn, world, su, signing):
    """A NUL in one token, a url over 2048 characters or a source over 256
    in another: the report is still answered token by token, every key of
    ours in it is revoked (its audit row leaves out what could not be
    recorded), and the NUL token is labelled false_positive, not 22021."""
    long_url = world.mint(ALICE, world.ws_a, "leaked-long-url", ["read"])
    long_source = world.mint(ALICE, world.ws_a, "leaked-long-source", ["read"])
    plain = world.mint(ALICE, world.ws_a, "leaked-plain", ["read"])
    body = json.dumps([
        {"token": long_url["key"], "type": "t", "url": "https://github.com/" + "a" * 3000, "source": "content"},
        {"token": "a\u0000b", "type": "t", "url": "https://github.com/x", "source": "content"},
        {"token": long_source["key"], "type": "t", "url": "https://github.com/y", "source": "s" * 300},
        {"token": plain["key"], "type": "t", "url": "https://github.com/z\u0000", "source": "content"},
    ])
    feedback = intake(su, body, "kid-1", sign(signing["kid-1"], body))
    assert isinstance(feedback, list), f"refused as a whole: {feedback}"
    assert [f["label"] for f in feedback] == ["true_positive", "false_positive", "true_positive", "true_positive"]
    assert feedback[1]["token_hash"] == sha256_hex("a\u0000b")
    for k in (long_url, long_source, plain):
        assert not verifies(su, k["key"])
    details = dict(su.execute(
        "SELECT key_id, detail FROM apikeys.audit_log WHERE action = 'key.leaked' AND key_id = ANY(%s)",
        ([long_url["id"], long_source["id"], plain["id"]],)).fetchall())
    assert details[long_url["id"]] == {"name": "leaked-long-url", "source": "content"}
    assert details[long_source["id"]] == {"name": "leaked-long-source", "url": "https://github.com/y"}
    assert details[plain["id"]] == {"name": "leaked-plain", "source": "content"}
