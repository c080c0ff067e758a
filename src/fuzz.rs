//! Property-based fuzzing of everything that reads
//! untrusted text before any table is touched: the token parser and its
//! CRC32 checksum, the shape classifier `verify_key` runs first, base62, the
//! input rules (names, scopes, prefixes, principals, origins, digests) and the
//! PostgREST header and claims readers.
//!
//! Each property runs `PROPTEST_CASES` random cases (default 2000: a few
//! seconds inside `make test`). A longer run, documented in
//! docs/security.md:
//!
//! ```sh
//! PROPTEST_CASES=1000000 cargo test --lib fuzz -- --test-threads 2
//! ```
//!
//! A failure prints the smallest input found and saves its seed under
//! `proptest-regressions/`, so it is replayed on every later run; commit that
//! file with the fix.

use proptest::prelude::*;

use crate::principal::{header_token, principal_from_claims};
use crate::rules;
use crate::token::{self, Shape, BODY_BYTES, BODY_LEN, CHECK_LEN, MAX_FOREIGN_TOKEN_LEN};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// A valid token prefix: `[a-z][a-z0-9]{1,15}(_[a-z0-9]{1,16})?`.
fn prefix() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{1,15}(_[a-z0-9]{1,16})?"
}

/// Strings that look like tokens: near-misses matter more than noise.
fn tokenish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z]{1,20}_[0-9A-Za-z]{0,60}",
        "[a-zA-Z0-9_]{0,120}",
        "\\PC{0,100}",
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// A minted token from a random prefix and random body bytes.
fn minted() -> impl Strategy<Value = (String, String)> {
    (prefix(), any::<[u8; BODY_BYTES]>()).prop_map(|(p, bytes)| {
        let m = token::build(&p, &bytes);
        (p, m.token)
    })
}

proptest! {
    #![proptest_config(config())]

    /// Any string: parse and shape answer (never panic), and the shape
    /// agrees with the length rules verify_key relies on.
    #[test]
    fn parse_and_shape_never_panic(s in tokenish()) {
        let parsed = token::parse(&s);
        let shape = token::shape(&s);
        match shape {
            Shape::Own => prop_assert!(parsed.is_ok()),
            Shape::Mistyped => {
                prop_assert!(parsed.is_err());
                prop_assert!(s.len() >= BODY_LEN + CHECK_LEN);
            }
            Shape::Foreign => prop_assert!(!s.is_empty() && s.len() <= MAX_FOREIGN_TOKEN_LEN),
            Shape::Rejected => prop_assert!(s.is_empty() || s.len() > MAX_FOREIGN_TOKEN_LEN),
        }
        let _ = token::digest(&s);
    }

    /// Every minted token parses back to its prefix and is of shape Own.
    #[test]
    fn minted_tokens_round_trip((p, t) in minted()) {
        let parsed = token::parse(&t).expect("a minted token parses");
        prop_assert_eq!(parsed.prefix, p.as_str());
        prop_assert_eq!(token::shape(&t), Shape::Own);
        prop_assert_eq!(t.len(), p.len() + 1 + BODY_LEN + CHECK_LEN);
    }

    /// The checksum catches every single-character substitution.
    #[test]
    fn checksum_catches_any_substitution((_, t) in minted(), at in any::<prop::sample::Index>(),
                                         c in any::<char>()) {
        let i = at.index(t.len());
        let old = t.as_bytes()[i] as char;
        prop_assume!(c != old);
        let mut bad = String::with_capacity(t.len() + 4);
        bad.push_str(&t[..i]);
        bad.push(c);
        bad.push_str(&t[i + 1..]);
        prop_assert!(token::parse(&bad).is_err(), "accepted a substitution at {}", i);
        prop_assert_ne!(token::shape(&bad), Shape::Own);
    }

    /// ... and every swap of two adjacent different characters, every
    /// truncation and every extension.
    #[test]
    fn checksum_catches_swaps_and_lengths((_, t) in minted(), at in any::<prop::sample::Index>(),
                                          extra in "[0-9A-Za-z_]{1,8}") {
        let b = t.as_bytes();
        let i = at.index(t.len() - 1);
        if b[i] != b[i + 1] {
            let mut swapped = b.to_vec();
            swapped.swap(i, i + 1);
            let swapped = String::from_utf8(swapped).expect("tokens are ASCII");
            prop_assert!(token::parse(&swapped).is_err(), "accepted a swap at {}", i);
        }
        prop_assert!(token::parse(&t[..i + 1]).is_err());
        let longer = t.clone() + &extra;
        let prefixed = extra.clone() + &t;
        prop_assert!(token::parse(&longer).is_err());
        prop_assert!(token::parse(&prefixed).is_err());
    }

    /// base62: decoding never panics; encoding 32 bytes always gives 43
    /// characters that decode back to the same bytes.
    #[test]
    fn base62_round_trip(bytes in any::<[u8; BODY_BYTES]>(), noise in "\\PC{0,60}") {
        let body = token::encode_body(&bytes);
        prop_assert_eq!(body.len(), BODY_LEN);
        prop_assert_eq!(token::base62_decode(&body, BODY_BYTES), Some(bytes.to_vec()));
        let _ = token::base62_decode(&noise, BODY_BYTES);
        let _ = token::base62_decode(&noise, 4);
    }

    /// The parser's canonical-body test (a string comparison with
    /// `MAX_BODY`) agrees with decoding: a 43-character base62 body is
    /// accepted exactly when it decodes to 32 bytes.
    #[test]
    fn body_bound_matches_decoding(body in "[0-9A-Za-z]{43}", high in "[x-z][0-9A-Za-z]{42}") {
        for b in [&body, &high] {
            let fits = token::base62_decode(b, BODY_BYTES).is_some();
            prop_assert_eq!(b.as_str() <= token::MAX_BODY, fits);
        }
    }

    /// The input rules answer every string, and what they accept satisfies
    /// the documented shape and is stable under a second pass.
    #[test]
    fn rules_never_panic_and_accept_only_their_shape(s in tokenish()) {
        if let Ok(n) = rules::key_name(&s) {
            prop_assert!(!n.is_empty() && n.len() <= rules::MAX_NAME_LEN);
            prop_assert!(n.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'));
            prop_assert_eq!(rules::key_name(&n), Ok(n.clone()));
        }
        if rules::scope(&s).is_ok() {
            prop_assert!(s.is_ascii() && !s.is_empty() && s.len() <= rules::MAX_SCOPE_LEN);
            prop_assert!(!s.contains('*') && !s.contains(' '));
        }
        if rules::key_prefix(&s).is_ok() {
            prop_assert!(token::valid_prefix(&s));
            prop_assert!(s != "pk" && !s.starts_with("pk_"));
        }
        if rules::principal(&s).is_ok() {
            prop_assert!(!s.chars().any(char::is_control) && s.trim() == s && !s.is_empty());
        }
        if rules::workspace_name(&s).is_ok() {
            prop_assert!(!s.chars().any(char::is_control) && !s.trim().is_empty());
        }
        if let Ok(o) = rules::origin(&s) {
            prop_assert!(o.is_ascii());
            prop_assert!(!o.split_once("://").map(|(_, rest)| rest.contains('/')).unwrap_or(true));
            prop_assert_eq!(rules::origin(&o), Ok(o.clone()));
        }
        if let Ok(d) = rules::sha256_hex(&s) {
            prop_assert_eq!(hex::encode(d), s.to_ascii_lowercase());
        }
        let _ = rules::Role::parse(&s);
    }

    /// Scope and origin lists: never panic, never more than the limit,
    /// duplicates dropped.
    #[test]
    fn lists_never_panic(list in proptest::collection::vec(proptest::option::weighted(0.95, "[a-z][a-z:._-]{0,8}"), 0..200)) {
        if let Ok(out) = rules::scopes(&list) {
            prop_assert!(out.len() <= rules::MAX_SCOPES);
            let mut dedup = out.clone();
            dedup.sort();
            dedup.dedup();
            prop_assert_eq!(dedup.len(), out.len());
        }
        if let Ok(out) = rules::origins(&list) {
            prop_assert!(out.len() <= rules::MAX_ORIGINS);
        }
    }

    /// PostgREST's request.headers and request.jwt.claims: any text, any
    /// JSON; an answer or a fail-closed error, never a panic.
    #[test]
    fn request_context_readers_never_panic(s in tokenish(), key in "[A-Za-z-]{0,12}", val in tokenish()) {
        let _ = header_token(Some(&s), "x-api-key");
        let _ = header_token(None, "x-api-key");
        let _ = principal_from_claims(&s);
        let json = serde_json::json!({ key.clone(): val.clone() }).to_string();
        let got = header_token(Some(&json), "X-API-KEY");
        if key.eq_ignore_ascii_case("x-api-key") {
            prop_assert_eq!(got, Ok(Some(val.clone())));
        } else {
            prop_assert_eq!(got, Ok(None));
        }
        let claims = serde_json::json!({ "sub": val.clone() }).to_string();
        // a sub is the principal when it is a valid one, an error otherwise
        let want = if val.is_empty() {
            Ok(Some(None))
        } else {
            crate::rules::subject(&val).map(|_| Some(Some(val.clone())))
        };
        prop_assert_eq!(principal_from_claims(&claims), want);
    }
}
