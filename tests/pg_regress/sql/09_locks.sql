-- how use is recorded changes what this file sees: its expected output
-- has a variant per mode (expected/09_locks.out without the preload,
-- expected/09_locks_1.out with it)
SELECT apikeys.usage_mode() AS usage_mode;
-- A verify never waits: while another session holds the key's
-- row lock, verify_key still answers at once and skips the last_used_at write.
-- The other session is a real second connection, through dblink.
\set SHOW_CONTEXT never
SET ROLE alice;
SELECT regress.put('lws', apikeys.create_workspace('Locks Inc')::text);
SELECT regress.put('lk', key), regress.put('lk_id', id::text)
  FROM apikeys.create_key(regress.id('lws'), 'locked');
RESET ROLE;

SELECT dblink_connect('other', format('dbname=%s port=%s host=%s user=postgres', current_database(),
       current_setting('port'), split_part(current_setting('unix_socket_directories'), ',', 1)));
SELECT dblink_exec('other', 'BEGIN');
SELECT t.id = regress.id('lk_id') AS locked FROM dblink('other', format(
    'SELECT id FROM apikeys.keys WHERE id = %L FOR UPDATE', regress.id('lk_id'))) AS t(id uuid);

-- every verify wants to write last_used_at, and must not wait for the lock
SET apikeys.last_used_interval = 0;
SET lock_timeout = '200ms';
SET ROLE alice;
SELECT count(*) AS rows FROM apikeys.verify_key(regress.tok('lk'));
SELECT count(*) AS rows FROM apikeys.verify_key(regress.tok('lk'));
RESET ROLE;
SELECT last_used_at IS NULL AS write_skipped FROM apikeys.keys WHERE id = regress.id('lk_id');

-- a revoke, by contrast, waits for the lock (here: gives up after lock_timeout)
SET ROLE alice;
SELECT regress.try($$SELECT apikeys.revoke_key(regress.id('lk_id'))$$);
RESET ROLE;
SELECT dblink_exec('other', 'COMMIT');

-- with the lock released the write happens, and a revoke committed in
-- another session is seen by the very next verify
SELECT count(*) AS rows FROM apikeys.verify_key(regress.tok('lk'));
SELECT last_used_at IS NOT NULL AS written FROM apikeys.keys WHERE id = regress.id('lk_id');
SELECT * FROM dblink('other', format(
    'SET apikeys.last_used_interval = 60; SET ROLE alice; SELECT apikeys.revoke_key(%L) IS NOT NULL',
    regress.id('lk_id'))) AS t(revoked boolean);
SELECT count(*) AS rows_after_revoke FROM apikeys.verify_key(regress.tok('lk'));
SELECT dblink_disconnect('other');
RESET lock_timeout;
RESET apikeys.last_used_interval;
