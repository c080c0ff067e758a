-- (a) the floor: a bare prepared SELECT, run as the superuser (bypasses RLS).
-- The same token fetch as verify.sql, SHA-256 of the token's UTF-8 bytes (as
-- verify_key hashes it), joined by index to the key row, with verify_key's own
-- predicates (src/keys.rs VERIFY_SQL): not revoked, not expired. A replaced
-- key keeps working until its expires_at, so replaced_by is not a predicate.
\set i random(1, :n)
SELECT k.id, k.workspace_id, k.owner, k.scopes, k.metadata, k.expires_at
  FROM bench.tokens t
  JOIN apikeys.key_hashes h ON h.hash = sha256(convert_to(t.token, 'UTF8'))
  JOIN apikeys.keys k ON k.id = h.key_id
 WHERE t.i = :i
   AND k.revoked_at IS NULL
   AND (k.expires_at IS NULL OR k.expires_at > now());
