-- pg_apikeys 0.1.0 -> 0.2.0, run by ALTER EXTENSION pg_apikeys UPDATE.
--
-- Every change 0.2.0 makes to a table, function, trigger, policy, grant or
-- comment is written here as well as in sql/schema.sql, functions.sql,
-- triggers.sql, policies.sql or grants.sql (the fresh install). The upgrade
-- test (tests/ops/test_upgrade.py) installs 0.1.0 with data, runs this script
-- and compares the schema with a fresh 0.2.0 install, so a change made in one
-- place only fails `make test`.
--
-- Rules for this file (docs/reference.md, "Upgrading"):
-- * hand-written against the SQL files, never a copy of the install script;
-- * nothing here drops or rewrites user data: no DROP TABLE, no TRUNCATE, no
--   DELETE, no column type change that rewrites keys, key_hashes or
--   audit_log, unless a comment line starting "-- rewrite:" right above the
--   statement says why (the upgrade test enforces this);
-- * new columns go at the end of their table, in the fresh install too;
-- * a new function is granted to the client roles that already hold USAGE
--   on schema apikeys (what grant_to gave them), as grant_to would.

\echo Use "ALTER EXTENSION pg_apikeys UPDATE TO '0.2.0'" to load this file. \quit

-- 0.2.0 changes nothing in the schema yet: the C symbols of 0.1.0's
-- functions are all still exported by the 0.2.0 library.
