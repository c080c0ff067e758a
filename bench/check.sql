-- (e) check_key on a key with a rate limit and credits (bench_client, as
-- verify.sql), over the keys the limits phase gave limits to (1..:n).
\set i random(1, :n)
SELECT * FROM bench.tokens t, apikeys.check_key(t.token) WHERE t.i = :i;
