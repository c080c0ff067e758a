"""Tiers of authority, where a whole cluster is needed: the roles the
extension makes are cluster-wide, so a role of the same name made before it
by someone else must not be adopted."""

from __future__ import annotations

import psycopg
import pytest

from cluster import one


def test_a_foreign_importer_role_is_not_adopted(clusters):
    """A role named apikeys_importer that can log in (made by anyone with
    CREATEROLE before the extension) would make its holder an importer for
    every owner: CREATE EXTENSION refuses it (42501) and creates nothing;
    once it is a plain NOLOGIN role, the extension adopts it."""
    c = clusters("tiers_importer").init({})
    c.start()
    with c.connect() as su:
        su.execute("CREATE ROLE apikeys_importer LOGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            su.execute("CREATE EXTENSION pg_apikeys")
        assert "apikeys_importer" in str(e.value)
        assert one(su, None, "SELECT count(*) AS n FROM pg_extension WHERE extname = 'pg_apikeys'")["n"] == 0
        su.execute("ALTER ROLE apikeys_importer NOLOGIN")
        su.execute("CREATE EXTENSION pg_apikeys")
        assert one(su, None, "SELECT extversion AS v FROM pg_extension WHERE extname = 'pg_apikeys'")["v"]
