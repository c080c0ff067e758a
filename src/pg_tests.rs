//! In-backend tests (`cargo pgrx test`): SPI and trigger code, run as the
//! superuser. They prove what holds even for the superuser (triggers, the
//! token never stored); RLS and roles are proven by tests/pg_regress.
//!
//! Compiled only for tests (`cfg(any(test, feature = "pg_test"))`): every
//! `unwrap()`/`expect()` here is an assertion, never on a client's path.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn ws() -> pgrx::Uuid {
        Spi::get_one::<pgrx::Uuid>("SELECT apikeys.create_workspace('t')").unwrap().unwrap()
    }

    /// `add_member`, then the invitee accepts as themself (through JWT
    /// claims, as a PostgREST request would): membership needs consent.
    fn add_member(ws: pgrx::Uuid, who: &str, role: &str, scopes: &[&str]) {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        Spi::run_with_args(
            "SELECT apikeys.add_member($1, $2, $3, $4)",
            &[ws.into(), who.into(), role.into(), scopes.into()],
        )
        .unwrap();
        let claims = format!(r#"{{"sub":"{who}"}}"#);
        Spi::run_with_args("SELECT set_config('request.jwt.claims', $1, true)", &[claims.as_str().into()])
            .unwrap();
        Spi::run_with_args("SELECT apikeys.accept_invitation($1)", &[ws.into()]).unwrap();
        Spi::run("SELECT set_config('request.jwt.claims', '', true)").unwrap();
    }

    fn mint(ws: pgrx::Uuid, name: &str) -> (pgrx::Uuid, String) {
        Spi::connect(|c| {
            let t = c
                .select(
                    "SELECT id, key FROM apikeys.create_key($1, $2, '{read}')",
                    None,
                    &[ws.into(), name.into()],
                )
                .unwrap()
                .first();
            (t.get::<pgrx::Uuid>(1).unwrap().unwrap(), t.get::<String>(2).unwrap().unwrap())
        })
    }

    fn verifies(key: &str) -> bool {
        Spi::get_one_with_args::<i64>("SELECT count(*) FROM apikeys.verify_key($1)", &[key.into()]).unwrap()
            == Some(1)
    }

    #[pg_test]
    fn mint_verify_revoke_round_trip() {
        let ws = ws();
        let (id, key) = mint(ws, "round-trip");
        assert!(crate::token::parse(&key).is_ok());
        assert!(verifies(&key));
        Spi::run_with_args("SELECT apikeys.revoke_key($1)", &[id.into()]).unwrap();
        assert!(!verifies(&key));
    }

    #[pg_test]
    fn only_the_sha256_is_stored() {
        let ws = ws();
        let (id, key) = mint(ws, "stored");
        let stored = Spi::get_one_with_args::<Vec<u8>>(
            "SELECT hash FROM apikeys.key_hashes WHERE key_id = $1",
            &[id.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(stored, crate::token::digest(&key).to_vec());
        // the token appears in no column of any extension table
        let hits = Spi::get_one_with_args::<i64>(
            "SELECT (SELECT count(*) FROM apikeys.keys k WHERE k::text LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM apikeys.key_hashes h WHERE h::text LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM apikeys.members m WHERE m::text LIKE '%' || $1 || '%')",
            &[key.as_str().into()],
        )
        .unwrap();
        assert_eq!(hits, Some(0));
    }

    #[pg_test(error = "a revoked key stays revoked: revoked_at cannot be cleared or moved")]
    fn latch_holds_for_the_superuser() {
        let ws = ws();
        let (id, _) = mint(ws, "latched");
        Spi::run_with_args("SELECT apikeys.revoke_key($1)", &[id.into()]).unwrap();
        Spi::run_with_args("UPDATE apikeys.keys SET revoked_at = NULL WHERE id = $1", &[id.into()]).unwrap();
    }

    #[pg_test(error = "a revoked key stays revoked: revoked_at cannot be cleared or moved")]
    fn latch_holds_in_replica_mode() {
        let ws = ws();
        let (id, _) = mint(ws, "replica");
        Spi::run_with_args("SELECT apikeys.revoke_key($1)", &[id.into()]).unwrap();
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        Spi::run_with_args(
            "UPDATE apikeys.keys SET revoked_at = revoked_at + interval '1 day' WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
    }

    #[pg_test(error = "id, workspace_id, owner, prefix, source and created_at of a key are write-once")]
    fn owner_is_write_once() {
        let ws = ws();
        let (id, _) = mint(ws, "owned");
        Spi::run_with_args("UPDATE apikeys.keys SET owner = 'mallory' WHERE id = $1", &[id.into()]).unwrap();
    }

    #[pg_test(error = "key hashes are write-once")]
    fn hash_is_write_once() {
        let ws = ws();
        let (id, _) = mint(ws, "hashed");
        Spi::run_with_args(
            "UPDATE apikeys.key_hashes SET hash = sha256('x') WHERE key_id = $1",
            &[id.into()],
        )
        .unwrap();
    }

    #[pg_test(error = "DELETE on apikeys.keys is not allowed: rows are kept for audit")]
    fn no_delete_even_in_replica_mode() {
        let ws = ws();
        mint(ws, "kept");
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        Spi::run("DELETE FROM apikeys.keys").unwrap();
    }

    #[pg_test(error = "TRUNCATE on apikeys.key_hashes is not allowed: rows are kept for audit")]
    fn no_truncate() {
        Spi::run("TRUNCATE apikeys.key_hashes").unwrap();
    }

    #[pg_test(error = "a removed membership is history and cannot change")]
    fn removed_membership_is_a_latch() {
        let ws = ws();
        add_member(ws, "bob", "member", &[]);
        Spi::run_with_args("SELECT apikeys.remove_member($1, 'bob')", &[ws.into()]).unwrap();
        Spi::run("UPDATE apikeys.members SET removed_at = NULL WHERE principal = 'bob'").unwrap();
    }

    #[pg_test]
    fn removing_a_member_revokes_their_keys() {
        let ws = ws();
        add_member(ws, "carol", "admin", &[]);
        // mint a key owned by carol by acting as her through JWT claims
        Spi::run("SELECT set_config('request.jwt.claims', '{\"sub\":\"carol\"}', true)").unwrap();
        let (_, key) = mint(ws, "carols");
        Spi::run("SELECT set_config('request.jwt.claims', '', true)").unwrap();
        assert!(verifies(&key));
        Spi::run_with_args("SELECT apikeys.remove_member($1, 'carol')", &[ws.into()]).unwrap();
        assert!(!verifies(&key));
    }

    #[pg_test]
    fn narrowing_a_member_narrows_their_keys() {
        let ws = ws();
        add_member(ws, "dave", "member", &["read", "write"]);
        Spi::run("SELECT set_config('request.jwt.claims', '{\"sub\":\"dave\"}', true)").unwrap();
        let key = Spi::get_one_with_args::<String>(
            "SELECT key FROM apikeys.create_key($1, 'rw', '{write,read}')",
            &[ws.into()],
        )
        .unwrap()
        .unwrap();
        Spi::run("SELECT set_config('request.jwt.claims', '', true)").unwrap();
        Spi::run_with_args("SELECT apikeys.add_member($1, 'dave', 'member', '{read}')", &[ws.into()])
            .unwrap();
        let scopes = Spi::get_one_with_args::<Vec<String>>(
            "SELECT scopes FROM apikeys.verify_key($1)",
            &[key.as_str().into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(scopes, vec!["read".to_string()]);
    }

    #[pg_test]
    fn last_used_at_waits_for_the_commit() {
        // a verify holds no row lock while its transaction runs: the stamp
        // is written when it commits (a #[pg_test] never commits; the
        // regress suite's 03_verify and the isolation specs see it land)
        let ws = ws();
        let (id, key) = mint(ws, "touched");
        let read = || {
            Spi::get_one_with_args::<pgrx::datum::TimestampWithTimeZone>(
                "SELECT last_used_at FROM apikeys.keys WHERE id = $1",
                &[id.into()],
            )
            .unwrap()
        };
        assert!(read().is_none());
        assert!(verifies(&key));
        assert!(verifies(&key));
        assert!(read().is_none());
    }

    #[pg_test]
    fn current_principal_follows_claims_then_role() {
        let p = || Spi::get_one::<String>("SELECT apikeys.current_principal()").unwrap();
        assert_eq!(p().as_deref(), Some("postgres"));
        Spi::run("SELECT set_config('request.jwt.claims', '{\"sub\":\"u-1\"}', true)").unwrap();
        assert_eq!(p().as_deref(), Some("u-1"));
        Spi::run("SELECT set_config('request.jwt.claims', '{\"role\":\"anon\"}', true)").unwrap();
        assert_eq!(p(), None);
        Spi::run("SELECT set_config('request.jwt.claims', 'garbage', true)").unwrap();
        assert_eq!(p(), None);
    }

    fn audit_actions(key: pgrx::Uuid) -> Vec<String> {
        Spi::connect(|c| {
            c.select(
                "SELECT action FROM apikeys.audit_log WHERE key_id = $1 ORDER BY id",
                None,
                &[key.into()],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect()
        })
    }

    #[pg_test]
    fn rotation_writes_its_audit_rows_in_the_same_transaction() {
        let ws = ws();
        let (old, _) = mint(ws, "rot");
        let new =
            Spi::get_one_with_args::<pgrx::Uuid>("SELECT id FROM apikeys.rotate_key($1)", &[old.into()])
                .unwrap()
                .unwrap();
        assert_eq!(audit_actions(old), ["key.created", "key.rotated", "key.revoked"]);
        assert_eq!(audit_actions(new), ["key.created"]);
        let replaces = Spi::get_one_with_args::<String>(
            "SELECT detail->>'replaces' FROM apikeys.audit_log WHERE key_id = $1",
            &[new.into()],
        )
        .unwrap();
        assert_eq!(replaces, Some(old.to_string()));
        let actor = Spi::get_one::<String>("SELECT DISTINCT actor FROM apikeys.audit_log").unwrap();
        assert_eq!(actor.as_deref(), Some("postgres"));
    }

    #[pg_test]
    fn touching_last_used_at_writes_no_audit_row() {
        let ws = ws();
        let (id, _key) = mint(ws, "quiet");
        let before = Spi::get_one::<i64>("SELECT count(*) FROM apikeys.audit_log").unwrap();
        // the statement a verify's stamp runs at commit, as its owner would
        Spi::run_with_args("UPDATE apikeys.keys SET last_used_at = now() WHERE id = $1", &[id.into()])
            .unwrap();
        let touched = Spi::get_one_with_args::<bool>(
            "SELECT last_used_at IS NOT NULL FROM apikeys.keys WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(touched, Some(true));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM apikeys.audit_log").unwrap(), before);
    }

    #[pg_test(error = "the audit log is append-only: its rows cannot change")]
    fn audit_rows_never_change() {
        ws();
        Spi::run("UPDATE apikeys.audit_log SET actor = 'someone else'").unwrap();
    }

    #[pg_test(error = "expires_at may only move earlier")]
    fn expiry_never_extends_for_the_superuser() {
        let ws = ws();
        let id = Spi::get_one_with_args::<pgrx::Uuid>(
            "SELECT id FROM apikeys.create_key($1, 'exp', '{}', now() + interval '1 day')",
            &[ws.into()],
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args(
            "UPDATE apikeys.keys SET expires_at = now() + interval '2 days' WHERE id = $1",
            &[id.into()],
        )
        .unwrap();
    }

    #[pg_test(error = "a rotated key stays rotated: replaced_by cannot be cleared or moved")]
    fn rotation_is_a_latch() {
        let ws = ws();
        let (old, _) = mint(ws, "latched");
        Spi::run_with_args("SELECT apikeys.rotate_key($1, '1 hour')", &[old.into()]).unwrap();
        Spi::run_with_args("UPDATE apikeys.keys SET replaced_by = NULL WHERE id = $1", &[old.into()])
            .unwrap();
    }

    #[pg_test]
    fn imported_keys_verify_by_sha256_of_the_raw_token() {
        let ws = ws();
        let id = Spi::get_one_with_args::<pgrx::Uuid>(
            "SELECT apikeys.import_key($1, current_user, 'legacy', upper(encode(sha256('tok-123'), 'hex')))",
            &[ws.into()],
        )
        .unwrap()
        .unwrap();
        assert!(verifies("tok-123"));
        assert!(!verifies("tok-124"));
        let source =
            Spi::get_one_with_args::<String>("SELECT source FROM apikeys.keys WHERE id = $1", &[id.into()])
                .unwrap();
        assert_eq!(source.as_deref(), Some("imported"));
        assert_eq!(audit_actions(id), ["key.imported"]);
    }

    #[pg_test]
    fn stamp_created_by_overwrites_on_insert_and_keeps_on_update() {
        Spi::run(
            "CREATE TABLE stamped (id int, created_by text);
             CREATE TRIGGER s BEFORE INSERT OR UPDATE ON stamped
                 FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('created_by');
             INSERT INTO stamped VALUES (1, 'forged');",
        )
        .unwrap();
        let who = Spi::get_one::<String>("SELECT created_by FROM stamped").unwrap();
        assert_eq!(who.as_deref(), Some("postgres"));
        Spi::run("SELECT set_config('request.jwt.claims', '{\"sub\":\"other\"}', true)").unwrap();
        Spi::run("UPDATE stamped SET created_by = 'forged', id = 2").unwrap();
        let who = Spi::get_one::<String>("SELECT created_by FROM stamped").unwrap();
        assert_eq!(who.as_deref(), Some("postgres"));
        Spi::run("INSERT INTO stamped VALUES (3, NULL)").unwrap();
        let who = Spi::get_one::<String>("SELECT created_by FROM stamped WHERE id = 3").unwrap();
        assert_eq!(who.as_deref(), Some("other"));
    }

    #[pg_test(error = "no principal: this write needs a database role, JWT claims with a sub, or an API key")]
    fn stamp_created_by_refuses_anonymous_writes() {
        Spi::run(
            "CREATE TABLE stamped2 (id int, created_by text);
             CREATE TRIGGER s BEFORE INSERT ON stamped2
                 FOR EACH ROW EXECUTE FUNCTION apikeys.stamp_created_by('created_by');
             SELECT set_config('request.jwt.claims', '{\"role\":\"anon\"}', true);
             INSERT INTO stamped2 VALUES (1, 'x');",
        )
        .unwrap();
    }

    #[pg_test]
    fn authenticate_binds_the_key_until_the_transaction_ends() {
        let ws = ws();
        let (id, key) = mint(ws, "bound");
        let headers = serde_json::json!({ "x-api-key": key }).to_string();
        Spi::run_with_args("SELECT set_config('request.headers', $1, true)", &[headers.as_str().into()])
            .unwrap();
        Spi::run("SELECT apikeys.authenticate()").unwrap();
        assert_eq!(Spi::get_one::<pgrx::Uuid>("SELECT apikeys.current_key_id()").unwrap(), Some(id));
        assert_eq!(Spi::get_one::<pgrx::Uuid>("SELECT apikeys.current_workspace()").unwrap(), Some(ws));
        assert_eq!(Spi::get_one::<bool>("SELECT apikeys.has_scope('read')").unwrap(), Some(true));
        // the binding lives in backend memory: no setting carries it
        let settings = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM pg_settings WHERE setting LIKE '%' || $1 || '%'",
            &[id.to_string().as_str().into()],
        )
        .unwrap();
        assert_eq!(settings, Some(0));
    }
}
