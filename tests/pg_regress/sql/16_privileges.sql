-- Privilege snapshot: every object the extension
-- owns, found through pg_depend (deptype 'e'), with its owner, SECURITY
-- DEFINER or not, its pinned search_path, and what PUBLIC, a client role
-- granted through grant_to (app_user) and an ungranted role (nobody) may do
-- with it, plus its raw ACL. Adding, dropping or re-granting any object
-- changes this output, so the change must update this file on purpose.
\set SHOW_CONTEXT never
CREATE FUNCTION regress.privs(role text, cls regclass, obj oid) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE cls
        WHEN 'pg_proc'::regclass THEN
            CASE WHEN has_function_privilege(role, obj, 'EXECUTE') THEN 'EXECUTE' ELSE '-' END
        WHEN 'pg_class'::regclass THEN coalesce(nullif(concat_ws(',',
            CASE WHEN (SELECT relkind FROM pg_class WHERE oid = obj) = 'S' THEN
                CASE WHEN has_sequence_privilege(role, obj, 'USAGE') THEN 'USAGE' END END,
            CASE WHEN has_table_privilege(role, obj, 'SELECT') THEN 'SELECT' END,
            CASE WHEN has_table_privilege(role, obj, 'INSERT') THEN 'INSERT' END,
            CASE WHEN has_table_privilege(role, obj, 'UPDATE') THEN 'UPDATE' END,
            CASE WHEN has_table_privilege(role, obj, 'DELETE') THEN 'DELETE' END,
            CASE WHEN has_table_privilege(role, obj, 'TRUNCATE') THEN 'TRUNCATE' END,
            CASE WHEN has_table_privilege(role, obj, 'REFERENCES') THEN 'REFERENCES' END,
            CASE WHEN has_table_privilege(role, obj, 'TRIGGER') THEN 'TRIGGER' END), ''), '-')
        ELSE 'UNCHECKED: add this object class to 16_privileges'
    END
$$;
-- PostgreSQL 17 and later also record each table's row type and its array
-- type as extension members; they follow their table and are left out, so
-- that one expected output serves PostgreSQL 15 and 18.
CREATE VIEW regress.extension_objects AS
SELECT d.classid::regclass AS cls, d.objid,
       pg_describe_object(d.classid, d.objid, d.objsubid) AS object
  FROM pg_depend d
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_apikeys'
 WHERE d.deptype = 'e' AND d.refclassid = 'pg_extension'::regclass
   AND NOT (d.classid = 'pg_type'::regclass AND EXISTS (
            SELECT FROM pg_type t LEFT JOIN pg_type el ON el.oid = t.typelem
             WHERE t.oid = d.objid AND (t.typrelid <> 0 OR el.typrelid <> 0)));

-- how many objects of each kind (a new kind of object shows up here)
SELECT cls, count(*) FROM regress.extension_objects GROUP BY cls ORDER BY cls::text;

-- the snapshot
\pset format unaligned
\pset fieldsep ' | '
SELECT o.object,
       pg_get_userbyid(coalesce(p.proowner, c.relowner)) AS owner,
       CASE WHEN p.oid IS NULL THEN '' WHEN p.prosecdef THEN 'definer' ELSE 'invoker' END AS security,
       coalesce((SELECT substr(s, 13) FROM unnest(p.proconfig) s WHERE s LIKE 'search\_path=%'), '') AS search_path,
       regress.privs('public', o.cls, o.objid) AS public,
       regress.privs('app_user', o.cls, o.objid) AS app_user,
       regress.privs('nobody', o.cls, o.objid) AS nobody,
       -- MAINTAIN (m, PostgreSQL 17+) folded away: one output for 15 and 18
       replace(coalesce(p.proacl, c.relacl)::text, '=arwdDxtm/', '=arwdDxt/') AS acl
  FROM regress.extension_objects o
  LEFT JOIN pg_proc p ON o.cls = 'pg_proc'::regclass AND p.oid = o.objid
  LEFT JOIN pg_class c ON o.cls = 'pg_class'::regclass AND c.oid = o.objid
 ORDER BY o.object;
\pset format aligned

-- the rules the snapshot must keep, stated once more so a wrong snapshot
-- cannot be blessed by accident:
-- (1) every SECURITY DEFINER function pins search_path to pg_catalog, pg_temp (or '')
SELECT o.object AS definer_without_pinned_search_path
  FROM regress.extension_objects o JOIN pg_proc p ON o.cls = 'pg_proc'::regclass AND p.oid = o.objid
 WHERE p.prosecdef
   AND NOT coalesce(p.proconfig && ARRAY['search_path=pg_catalog, pg_temp', 'search_path=""'], false);
-- (2) PUBLIC may use nothing, and the ungranted role nothing either
SELECT o.object AS usable_by_public_or_ungranted
  FROM regress.extension_objects o
 WHERE regress.privs('public', o.cls, o.objid) <> '-' OR regress.privs('nobody', o.cls, o.objid) <> '-';
-- (3) a client role never writes a table, never reads key_hashes
SELECT o.object AS client_writes_or_reads_hashes
  FROM regress.extension_objects o
 WHERE o.cls = 'pg_class'::regclass
   AND (regress.privs('app_user', o.cls, o.objid) NOT IN ('-', 'SELECT')
        OR (o.objid = 'apikeys.key_hashes'::regclass AND regress.privs('app_user', o.cls, o.objid) <> '-'));
-- (4) every object belongs to the bootstrap superuser that ran CREATE EXTENSION
SELECT o.object AS owned_by_someone_else
  FROM regress.extension_objects o
  LEFT JOIN pg_proc p ON o.cls = 'pg_proc'::regclass AND p.oid = o.objid
  LEFT JOIN pg_class c ON o.cls = 'pg_class'::regclass AND c.oid = o.objid
 WHERE coalesce(p.proowner, c.relowner) IS DISTINCT FROM
       (SELECT extowner FROM pg_extension WHERE extname = 'pg_apikeys');

-- the schema: the extension's namespace (not a pg_depend member)
SELECT n.nspname, pg_get_userbyid(n.nspowner) AS owner, n.nspacl::text AS acl,
       has_schema_privilege('public', n.oid, 'USAGE') AS public_usage,
       has_schema_privilege('public', n.oid, 'CREATE') AS public_create,
       has_schema_privilege('app_user', n.oid, 'USAGE') AS app_user_usage,
       has_schema_privilege('app_user', n.oid, 'CREATE') AS app_user_create,
       has_schema_privilege('nobody', n.oid, 'USAGE') AS nobody_usage
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_apikeys';

-- tables: RLS enabled and forced on every one; their policies and triggers
SELECT c.oid::regclass AS tbl, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced
  FROM regress.extension_objects o JOIN pg_class c ON o.cls = 'pg_class'::regclass AND c.oid = o.objid
 WHERE c.relkind = 'r' ORDER BY c.oid::regclass::text;
SELECT tablename, policyname, cmd, roles::text, permissive
  FROM pg_policies WHERE schemaname = 'apikeys' ORDER BY 1, 2;
-- every trigger fires ALWAYS (tgenabled 'A'), even in replica mode
SELECT t.tgrelid::regclass AS tbl, t.tgname, t.tgenabled, t.tgfoid::regprocedure AS fn
  FROM pg_trigger t
 WHERE NOT t.tgisinternal
   AND t.tgrelid IN (SELECT objid FROM regress.extension_objects WHERE cls = 'pg_class'::regclass)
 ORDER BY t.tgrelid::regclass::text, 2;
-- what the extension registered for pg_dump
SELECT unnest(extconfig)::regclass AS dumped FROM pg_extension WHERE extname = 'pg_apikeys' ORDER BY 1::text;
-- nothing in the schema escapes the snapshot: every function, table, view
-- and sequence in apikeys is an extension member
SELECT p.oid::regprocedure::text AS not_a_member FROM pg_proc p
 WHERE p.pronamespace = 'apikeys'::regnamespace
   AND p.oid NOT IN (SELECT objid FROM regress.extension_objects WHERE cls = 'pg_proc'::regclass)
UNION ALL
SELECT c.oid::regclass::text FROM pg_class c
 WHERE c.relnamespace = 'apikeys'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
   AND c.oid NOT IN (SELECT objid FROM regress.extension_objects WHERE cls = 'pg_class'::regclass);
