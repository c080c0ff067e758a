-- (b) verify_key as a granted client role (bench_client), same fetch as floor.sql.
\set i random(1, :n)
SELECT * FROM bench.tokens t, apikeys.verify_key(t.token) WHERE t.i = :i;
