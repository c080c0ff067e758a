-- Cold verifies: each transaction verifies the next never-used key of a set.
-- pgbench keeps a client's variables across its transactions, so :k counts
-- this client's transactions (-D k=0). Spread (-D stride=clients): client c
-- takes keys base+1+c, base+1+c+stride, ... (each key once in all). Contended
-- (-D stride=1 -D spread=0): every client walks the same keys in the same
-- order, so two verifies of one key race for its last_used_at write.
\set i :base + 1 + :spread * :client_id + :stride * :k
\set k :k + 1
SELECT * FROM bench.tokens t, apikeys.verify_key(t.token) WHERE t.i = :i;
