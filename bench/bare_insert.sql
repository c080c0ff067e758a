-- (d) the floor for minting: the same two rows, in one statement, into plain
-- tables shaped like apikeys.keys / key_hashes (same columns, defaults,
-- checks, indexes and foreign keys; no triggers, no RLS), as bench_admin.
-- ON CONFLICT DO NOTHING as create_key's own INSERT; no pgcrypto.
WITH k AS (
    INSERT INTO bench.bare_keys (workspace_id, owner, name, prefix)
    VALUES (:ws, 'bench_admin',
            'key-' || substr(md5(random()::text), 1, 8),
            'sk_' || substr(md5(random()::text), 1, 8))
    ON CONFLICT DO NOTHING
    RETURNING id)
INSERT INTO bench.bare_hashes (key_id, hash)
SELECT id, sha256(random()::text::bytea) FROM k;
