-- The floor (floor.sql's statement) over a walk of the same shape as
-- cold.sql: the same number of transactions per client, the same short run,
-- so a cold run's ratio to it leaves out what a short pgbench run costs
-- anyway (connecting, the first executions of the prepared statement).
\set i :base + 1 + :spread * :client_id + :stride * :k
\set k :k + 1
SELECT k.id, k.workspace_id, k.owner, k.scopes, k.metadata, k.expires_at
  FROM bench.tokens t
  JOIN apikeys.key_hashes h ON h.hash = sha256(convert_to(t.token, 'UTF8'))
  JOIN apikeys.keys k ON k.id = h.key_id
 WHERE t.i = :i
   AND k.revoked_at IS NULL
   AND (k.expires_at IS NULL OR k.expires_at > now());
