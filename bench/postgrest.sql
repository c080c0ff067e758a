-- (c) one PostgREST request (tests/client/postgrest.py), a GET with an API key
-- and no JWT, on a connection as bench_authenticator (LOGIN NOINHERIT, granted
-- bench_anon, PostgREST's db-anon-role). The token is fetched by the settings
-- statement itself, so (c) pays the same fetch as (a) and (b).
\set i random(1, :n)
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SELECT set_config('search_path', '"api", "public"', true),
       set_config('role', 'bench_anon', true),
       set_config('request.jwt.claims', '{"role":"bench_anon"}', true),
       set_config('request.method', 'GET', true),
       set_config('request.path', '/rpc/current_workspace', true),
       set_config('request.headers', json_build_object('x-api-key', t.token)::text, true),
       set_config('request.cookies', '{}', true)
  FROM bench.tokens t WHERE t.i = :i;
SELECT "apikeys"."authenticate"();
SELECT apikeys.current_workspace();
COMMIT;
