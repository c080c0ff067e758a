-- One database per key count (run as the superuser, before loading).
CREATE EXTENSION pg_apikeys;
SELECT apikeys.grant_to('bench_client'), apikeys.grant_to('bench_anon'), apikeys.grant_to('bench_admin');

-- the N keys live in workspace "bench" (minted by the superuser, its first
-- admin); (d) mints into "bench-mint" so the N keys stay N
SELECT apikeys.create_workspace('bench');
SELECT apikeys.create_workspace('bench-mint') AS mint_ws \gset
SELECT apikeys.add_member(:'mint_ws', 'bench_admin', 'admin');
-- membership needs consent: bench_admin accepts as itself
SET ROLE bench_admin;
SELECT apikeys.accept_invitation(:'mint_ws');
RESET ROLE;

CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO bench_client, bench_authenticator, bench_admin;

-- the tokens, so (a), (b) and (c) pay the same fetch
CREATE TABLE bench.tokens (i int PRIMARY KEY, token text NOT NULL);
GRANT SELECT ON bench.tokens TO bench_client, bench_authenticator;

-- (d)'s floor: plain tables shaped like keys and key_hashes: same columns,
-- defaults, checks, indexes and foreign keys; no triggers, no RLS
CREATE TABLE bench.bare_keys (LIKE apikeys.keys INCLUDING ALL);
ALTER TABLE bench.bare_keys ADD FOREIGN KEY (workspace_id) REFERENCES apikeys.workspaces (id);
CREATE TABLE bench.bare_hashes (LIKE apikeys.key_hashes INCLUDING ALL);
ALTER TABLE bench.bare_hashes ADD FOREIGN KEY (key_id) REFERENCES bench.bare_keys (id);
GRANT SELECT, INSERT ON bench.bare_keys, bench.bare_hashes TO bench_admin;
