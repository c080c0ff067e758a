-- Memory: :verifies verify_key calls in this one backend (as bench_client),
-- with a COMMIT every 1000 (a procedure may commit), on random keys of the
-- :n loaded. /proc/<backend>/status is saved before (after a warm-up of
-- 10000 verifies: plans prepared, caches filled) and after, into :out.
SELECT pg_backend_pid() AS pid \gset
\setenv BENCH_PID :pid
\setenv BENCH_OUT :out
SELECT set_config('bench.n', :'n', false) AS _n, set_config('bench.verifies', '10000', false) AS _v \gset

-- the loop, defined once (a temporary procedure keeps it out of the schema)
CREATE PROCEDURE pg_temp.verify_loop() LANGUAGE plpgsql AS $$
DECLARE
    n int := current_setting('bench.n')::int;
    total int := current_setting('bench.verifies')::int;
    tok text;
    k int;
    good int := 0;
BEGIN
    FOR j IN 1..total LOOP
        k := 1 + floor(random() * n)::int;  -- not in the WHERE clause: random() there is per row
        SELECT t.token INTO STRICT tok FROM bench.tokens t WHERE t.i = k;
        PERFORM 1 FROM apikeys.verify_key(tok);
        IF FOUND THEN good := good + 1; END IF;
        IF j % 1000 = 0 THEN COMMIT; END IF;
    END LOOP;
    IF good <> total THEN
        RAISE EXCEPTION 'memory loop: % of % keys verified', good, total;
    END IF;
END
$$;

CALL pg_temp.verify_loop();
\! cat /proc/$BENCH_PID/status > "$BENCH_OUT/mem-before.txt"

SELECT set_config('bench.verifies', :'verifies', false) AS _v \gset
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
CALL pg_temp.verify_loop();
SELECT round((extract(epoch FROM clock_timestamp()) - :t0)::numeric, 2) AS secs \gset
\! cat /proc/$BENCH_PID/status > "$BENCH_OUT/mem-after.txt"
\setenv BENCH_SECS :secs
\! echo "$BENCH_SECS" > "$BENCH_OUT/mem-loop-seconds.txt"
