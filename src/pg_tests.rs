//! In-backend tests (`cargo pgrx test`): SPI and trigger code, run as the
//! superuser. They prove what holds even for the superuser (triggers, the
//! token never stored); RLS and roles are proven by tests/pg_regress.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn ws() -> pgrx::Uuid {
        Spi::get_one::<pgrx::Uuid>("SELECT apikeys.create_workspace('t')").unwrap().unwrap()
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

    #[pg_test(error = "id, workspace_id, owner, prefix and created_at of a key are write-once")]
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
        Spi::run_with_args("SELECT apikeys.add_member($1, 'bob')", &[ws.into()]).unwrap();
        Spi::run_with_args("SELECT apikeys.remove_member($1, 'bob')", &[ws.into()]).unwrap();
        Spi::run("UPDATE apikeys.members SET removed_at = NULL WHERE principal = 'bob'").unwrap();
    }

    #[pg_test]
    fn removing_a_member_revokes_their_keys() {
        let ws = ws();
        Spi::run_with_args("SELECT apikeys.add_member($1, 'carol', 'admin')", &[ws.into()]).unwrap();
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
        Spi::run_with_args("SELECT apikeys.add_member($1, 'dave', 'member', '{read,write}')", &[ws.into()])
            .unwrap();
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
    fn last_used_at_is_written_once_per_interval() {
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
        let first = read();
        assert!(first.is_some());
        assert!(verifies(&key));
        assert_eq!(read(), first);
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
}
