-- Cluster-wide roles of the bench (a fresh cluster: nothing to check).
CREATE ROLE bench_client LOGIN;                 -- (b): a granted client role calling verify_key
CREATE ROLE bench_anon NOLOGIN;                 -- (c): PostgREST's db-anon-role
CREATE ROLE bench_authenticator LOGIN NOINHERIT; -- (c): PostgREST's authenticator
GRANT bench_anon TO bench_authenticator;
CREATE ROLE bench_admin LOGIN;                  -- (d): an admin of the minting workspace
