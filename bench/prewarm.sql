-- Load the verify path's relations (heap and indexes) into shared_buffers,
-- when contrib's pg_prewarm is there (it ships with PostgreSQL).
SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_prewarm') AS have_prewarm \gset
\if :have_prewarm
CREATE EXTENSION IF NOT EXISTS pg_prewarm;
SELECT c.oid::regclass, pg_prewarm(c.oid)
  FROM pg_class c
 WHERE c.relkind IN ('r', 'i')
   AND c.oid IN (SELECT 'apikeys.keys'::regclass UNION ALL SELECT 'apikeys.key_hashes'::regclass
                 UNION ALL SELECT 'bench.tokens'::regclass
                 UNION ALL SELECT indexrelid FROM pg_index
                            WHERE indrelid IN ('apikeys.keys'::regclass, 'apikeys.key_hashes'::regclass,
                                               'bench.tokens'::regclass));
\endif
