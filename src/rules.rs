//! Validation rules for names, scopes, roles and principals.
//!
//! Plain Rust, no PostgreSQL: each rule returns the [`RuleError`] reason, which
//! `errors.rs` turns into SQLSTATE 22023 with a fixed message. Messages never
//! echo the rejected value, so nothing a caller sent (or mistyped into the
//! wrong argument, such as a token) is reflected back or logged.

/// Longest key name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest scope.
pub const MAX_SCOPE_LEN: usize = 64;
/// Most scopes on one key or member.
pub const MAX_SCOPES: usize = 64;
/// Longest principal (a role name or a JWT `sub`).
pub const MAX_PRINCIPAL_LEN: usize = 256;
/// Longest workspace name.
pub const MAX_WORKSPACE_NAME_LEN: usize = 128;
/// Largest key metadata, as jsonb text.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Deepest nesting of arrays and objects in key metadata.
pub const MAX_METADATA_DEPTH: usize = 64;
/// The scope a key needs to mint or rotate keys on its owner's behalf.
pub const MANAGE_SCOPE: &str = "apikeys:manage";

/// Which rule an argument broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleError {
    Name,
    Scope,
    TooManyScopes,
    NullScope,
    Prefix,
    ReservedPrefix,
    Role,
    Principal,
    WorkspaceName,
    Metadata,
    Origin,
    TooManyOrigins,
    Digest,
    Grace,
    /// A JWT `sub` that is no valid principal.
    Subject,
    /// A secret-scanning report that is not a JSON array of `{token, …}`
    /// objects, or is too large.
    Report,
    /// A check's cost outside 0 to 1 000 000 000.
    Cost,
    /// A rate limit below 1, a window outside 1 second to 1 day, or one
    /// without the other.
    RateLimit,
    /// Credits below zero (other than -1, which removes them in update_key).
    Credits,
    /// A refill that is not a positive amount every '1 day' or '1 month' on
    /// a key with credits.
    Refill,
    /// An `expiring_keys(within)` interval with a negative part or beyond
    /// 100 years.
    Within,
}

/// What an interval argument is for; each kind has its own bounds
/// ([`interval`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntervalKind {
    /// `rate_window` of a key or an owner limit: 1 second to 1 day, no month part
    RateWindow,
    /// `refill_interval`: exactly `1 day` or `1 month`
    Refill,
    /// `rotate_key`'s `grace`: zero to 100 years
    Grace,
    /// `expiring_keys`' `within`: zero to 100 years
    Within,
}

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// PostgreSQL's own interval ordering counts a month as 30 days.
const DAYS_PER_MONTH: i64 = 30;
/// 100 years as PostgreSQL orders intervals (1200 months of 30 days).
const HUNDRED_YEARS_USECS: i64 = 1200 * DAYS_PER_MONTH * USECS_PER_DAY;

/// Check an interval argument as a whole, from its three stored parts
/// (months, days, microseconds): a negative part, a month part where none
/// is allowed, or a length out of the kind's range is refused. PostgreSQL's
/// own interval comparison would let `'1 mon -29 days'` pass for a day and
/// `'1000000 years'` overflow later: every part is looked at here, once,
/// for every interval argument.
pub fn interval(kind: IntervalKind, months: i32, days: i32, micros: i64) -> Result<(), RuleError> {
    let err = match kind {
        IntervalKind::RateWindow => RuleError::RateLimit,
        IntervalKind::Refill => RuleError::Refill,
        IntervalKind::Grace => RuleError::Grace,
        IntervalKind::Within => RuleError::Within,
    };
    if months < 0 || days < 0 || micros < 0 {
        return Err(err);
    }
    // no overflow: each part is bounded by its type
    let total = i128::from(months) * i128::from(DAYS_PER_MONTH * USECS_PER_DAY)
        + i128::from(days) * i128::from(USECS_PER_DAY)
        + i128::from(micros);
    let ok = match kind {
        IntervalKind::RateWindow => {
            months == 0 && total >= i128::from(USECS_PER_SEC) && total <= i128::from(USECS_PER_DAY)
        }
        IntervalKind::Refill => (months, days, micros) == (1, 0, 0) || (months, days, micros) == (0, 1, 0),
        IntervalKind::Grace | IntervalKind::Within => total <= i128::from(HUNDRED_YEARS_USECS),
    };
    if ok {
        Ok(())
    } else {
        Err(err)
    }
}

/// The length in microseconds of a rate window that passed [`interval`]
/// (a stored row that did not, written around the functions, counts as the
/// longest window: one day, the strictest reading).
pub fn window_usecs(months: i32, days: i32, micros: i64) -> i64 {
    match interval(IntervalKind::RateWindow, months, days, micros) {
        Ok(()) => i64::from(days) * USECS_PER_DAY + micros,
        Err(_) => USECS_PER_DAY,
    }
}

/// Normalise and check a key name: ASCII lower-cased, then
/// `^[a-z0-9]+(-[a-z0-9]+)*$`, at most 64 characters.
pub fn key_name(raw: &str) -> Result<String, RuleError> {
    let name = raw.to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(name)
    } else {
        Err(RuleError::Name)
    }
}

/// Check one scope: 1–64 characters of `[a-z0-9_.:-]`, starting with a
/// letter, with no empty `:`-separated segment (`read`, `billing:write`,
/// `apikeys:manage`). Scopes are compared exactly; there are no wildcards.
pub fn scope(s: &str) -> Result<(), RuleError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SCOPE_LEN
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b':' | b'-'))
        && s.split(':').all(|seg| !seg.is_empty());
    if ok {
        Ok(())
    } else {
        Err(RuleError::Scope)
    }
}

/// Check a scope list (SQL NULL elements arrive as `None`) and return it
/// de-duplicated, first occurrence kept, order otherwise preserved.
///
/// Stops at the 65th distinct scope, so the de-duplication compares each
/// element with at most 64 others: a hostile array of 100 000 scopes costs
/// one pass, not 10^10 comparisons (tests/pg_regress 17_hostile).
pub fn scopes(list: &[Option<String>]) -> Result<Vec<String>, RuleError> {
    let mut out: Vec<String> = Vec::with_capacity(list.len().min(MAX_SCOPES));
    for item in list {
        let s = item.as_deref().ok_or(RuleError::NullScope)?;
        scope(s)?;
        if !out.iter().any(|o| o == s) {
            if out.len() == MAX_SCOPES {
                return Err(RuleError::TooManyScopes);
            }
            out.push(s.to_owned());
        }
    }
    Ok(out)
}

/// Scopes of `wanted` that `held` does not hold (empty when `wanted ⊆ held`).
pub fn missing<'a>(wanted: &'a [String], held: &[String]) -> Vec<&'a str> {
    wanted.iter().filter(|w| !held.contains(w)).map(String::as_str).collect()
}

/// Check a secret-key prefix; `pk` is reserved for public keys.
pub fn key_prefix(p: &str) -> Result<(), RuleError> {
    if !crate::token::valid_prefix(p) {
        return Err(RuleError::Prefix);
    }
    if p == "pk" || p.starts_with("pk_") {
        return Err(RuleError::ReservedPrefix);
    }
    Ok(())
}

/// A member role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, RuleError> {
        match s {
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            _ => Err(RuleError::Role),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

/// Check a principal named by an admin (`add_member`, `remove_member`):
/// 1–256 characters, no control characters, no leading or trailing space.
pub fn principal(p: &str) -> Result<(), RuleError> {
    let ok = !p.is_empty()
        && p.chars().count() <= MAX_PRINCIPAL_LEN
        && !p.chars().any(|c| c.is_control() || invisible(c))
        && p.trim() == p;
    if ok {
        Ok(())
    } else {
        Err(RuleError::Principal)
    }
}

/// Characters that print as nothing, look like a space, or reorder what
/// follows them: every non-ASCII space, the soft hyphen, the combining
/// grapheme joiner, the Arabic letter mark, the Hangul and halfwidth
/// fillers, Khmer and Mongolian invisible vowels and selectors, zero-width
/// spaces and joiners, direction marks, embeddings, overrides and isolates,
/// word joiner and invisible operators, the Braille blank, variation
/// selectors, the byte-order mark, interlinear annotation marks, shorthand
/// format controls, Egyptian, Kaithi and musical format controls, and tag
/// characters. A principal holding one could look like another in a
/// listing or the audit log. `apikeys.valid_principal()` refuses the same
/// set in SQL.
pub fn invisible(c: char) -> bool {
    (c.is_whitespace() && c != ' ')
        || matches!(c,
            '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
            | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
            | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}')
}

/// Check a workspace name: 1–128 characters, no control characters, not blank.
pub fn workspace_name(n: &str) -> Result<(), RuleError> {
    let ok = !n.trim().is_empty()
        && n.chars().count() <= MAX_WORKSPACE_NAME_LEN
        && !n.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(RuleError::WorkspaceName)
    }
}

/// Check key metadata from its jsonb text form (as PostgreSQL prints it):
/// at most 16 KiB and nested at most 64 levels. The text is only measured,
/// never re-encoded: metadata is stored exactly as the jsonb given. That it
/// is an object is checked by the caller (`jsonb_typeof`).
pub fn metadata_text(text: &str) -> Result<(), RuleError> {
    if text.len() > MAX_METADATA_BYTES || json_depth(text) > MAX_METADATA_DEPTH {
        return Err(RuleError::Metadata);
    }
    Ok(())
}

/// How deeply arrays and objects nest in a JSON text (brackets inside
/// strings do not count).
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Check a JWT `sub` as a principal: the rules of [`principal`], reported
/// as [`RuleError::Subject`].
pub fn subject(sub: &str) -> Result<(), RuleError> {
    principal(sub).map_err(|_| RuleError::Subject)
}

/// Most origins a public key may list.
pub const MAX_ORIGINS: usize = 64;
/// Longest origin accepted (scheme, host and port).
pub const MAX_ORIGIN_LEN: usize = 255;

/// Normalise and check a browser origin: `scheme://host[:port]`, ASCII
/// lower-cased, as browsers send it in the `Origin` header (no path, no
/// trailing slash, no user info). IPv6 hosts are written in brackets.
pub fn origin(raw: &str) -> Result<String, RuleError> {
    let o = raw.to_ascii_lowercase();
    if o.is_empty() || o.len() > MAX_ORIGIN_LEN || !o.is_ascii() {
        return Err(RuleError::Origin);
    }
    let (scheme, rest) = o.split_once("://").ok_or(RuleError::Origin)?;
    let scheme_ok = scheme.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && scheme.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(&c));
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (inner, after) = v6.split_once(']').ok_or(RuleError::Origin)?;
        if inner.is_empty() || !inner.bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.') {
            return Err(RuleError::Origin);
        }
        let port = match after {
            "" => None,
            a => Some(a.strip_prefix(':').ok_or(RuleError::Origin)?),
        };
        (inner, port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && (rest.starts_with('[')
            || host.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'));
    let port_ok = match port {
        None => true,
        Some(p) => !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()),
    };
    if !(scheme_ok && host_ok && port_ok) {
        return Err(RuleError::Origin);
    }
    // browsers omit a scheme's default port from Origin
    let default_port = match scheme {
        "https" => Some("443"),
        "http" => Some("80"),
        _ => None,
    };
    match (port, default_port) {
        (Some(p), Some(d)) if p == d => Ok(o[..o.len() - p.len() - 1].to_owned()),
        _ => Ok(o),
    }
}

/// Check and normalise a list of allowed origins (duplicates removed, order kept).
pub fn origins(list: &[Option<String>]) -> Result<Vec<String>, RuleError> {
    if list.len() > MAX_ORIGINS {
        return Err(RuleError::TooManyOrigins);
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for o in list {
        let o = origin(o.as_deref().ok_or(RuleError::Origin)?)?;
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

/// Parse a SHA-256 digest written as 64 hexadecimal characters (either case).
pub fn sha256_hex(raw: &str) -> Result<[u8; 32], RuleError> {
    if raw.len() != 64 {
        return Err(RuleError::Digest);
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(raw, &mut out).map_err(|_| RuleError::Digest)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_principal_holds_no_invisible_character() {
        assert!(super::principal("cust_42").is_ok());
        assert!(super::principal("Alice Smith").is_ok());
        assert!(super::principal("渡辺 さん").is_ok());
        for bad in
            ["cust\u{200B}_42", "\u{202E}24_tsuc", "cust_42\u{FEFF}", "a\u{00AD}b", " cust", "cust\u{1}"]
        {
            assert!(super::principal(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn intervals_are_checked_part_by_part() {
        use super::IntervalKind::*;
        const S: i64 = 1_000_000;
        const D: i64 = 86_400 * S;
        let ok = |k, m, d, us| super::interval(k, m, d, us).is_ok();
        assert!(ok(RateWindow, 0, 0, S));
        assert!(ok(RateWindow, 0, 1, 0));
        assert!(ok(RateWindow, 0, 0, D));
        assert!(!ok(RateWindow, 0, 0, S - 1));
        assert!(!ok(RateWindow, 0, 1, 1));
        // '1 mon -29 days' orders equal to '1 day' in PostgreSQL: refused here
        assert!(!ok(RateWindow, 1, -29, 0));
        assert!(!ok(RateWindow, 0, 2, -D));
        assert!(!ok(RateWindow, 1, 0, 0));
        assert!(ok(Refill, 1, 0, 0));
        assert!(ok(Refill, 0, 1, 0));
        assert!(!ok(Refill, 0, 0, D));
        assert!(!ok(Refill, 2, -30, 0));
        assert!(!ok(Refill, 1, 1, 0));
        assert!(ok(Grace, 0, 0, 0));
        assert!(ok(Grace, 1200, 0, 0));
        assert!(!ok(Grace, 1200, 0, 1));
        assert!(!ok(Grace, 0, 0, -1));
        assert!(!ok(Grace, 12_000_000, 0, 0));
        assert!(!ok(Within, i32::MAX, i32::MAX, i64::MAX));
        assert!(!ok(Within, 1, -1, 0));
        assert_eq!(super::window_usecs(0, 0, 2 * S), 2 * S);
        assert_eq!(super::window_usecs(1, -29, 0), D);
        assert_eq!(super::window_usecs(0, 0, -S), D);
    }

    // unwrap() here is a test assertion: this module is compiled only for
    // `cargo test`, so no client can reach it.
    use super::*;

    fn strs(v: &[&str]) -> Vec<Option<String>> {
        v.iter().map(|s| Some((*s).to_owned())).collect()
    }

    #[test]
    fn names_are_lowered_and_checked() {
        assert_eq!(key_name("Prod-API").unwrap(), "prod-api");
        assert_eq!(key_name("a").unwrap(), "a");
        assert_eq!(key_name("a1-b2-c3").unwrap(), "a1-b2-c3");
        assert_eq!(key_name(&"x".repeat(64)).unwrap().len(), 64);
        for bad in ["", "-a", "a-", "a--b", "a_b", "a b", "a.b", "é", "ａ", "a\n", "\0", " a"] {
            assert_eq!(key_name(bad), Err(RuleError::Name), "{bad:?}");
        }
        assert_eq!(key_name(&"x".repeat(65)), Err(RuleError::Name));
    }

    #[test]
    fn scopes_are_checked_and_deduplicated() {
        assert_eq!(
            scopes(&strs(&["read", "billing:write", "read", "apikeys:manage"])).unwrap(),
            vec!["read", "billing:write", "apikeys:manage"]
        );
        assert!(scopes(&[]).unwrap().is_empty());
        for bad in ["", "Read", "1read", "read write", "a::b", "a:", ":a", "rëad", "*", "a*"] {
            assert!(scopes(&strs(&[bad])).is_err(), "{bad:?}");
        }
        assert_eq!(scopes(&[None]), Err(RuleError::NullScope));
        assert!(scope(&"a".repeat(64)).is_ok());
        assert!(scope(&"a".repeat(65)).is_err());
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(scopes(&strs(&many)), Err(RuleError::TooManyScopes));
        assert!(scopes(&strs(&many[..64])).is_ok());
        // duplicates do not count towards the limit, however many
        let dups: Vec<&str> = std::iter::repeat_n("read", 100_000).collect();
        assert_eq!(scopes(&strs(&dups)).unwrap(), vec!["read"]);
    }

    #[test]
    fn missing_scopes() {
        let held = vec!["read".to_owned(), "write".to_owned()];
        assert!(missing(&["read".to_owned()], &held).is_empty());
        assert!(missing(&[], &held).is_empty());
        assert_eq!(missing(&["admin".to_owned(), "read".to_owned()], &held), vec!["admin"]);
        assert_eq!(missing(&["read".to_owned()], &[]), vec!["read"]);
    }

    #[test]
    fn prefixes_and_reserved_pk() {
        assert!(key_prefix("sk").is_ok());
        assert!(key_prefix("sk_live").is_ok());
        assert_eq!(key_prefix("pk"), Err(RuleError::ReservedPrefix));
        assert_eq!(key_prefix("pk_live"), Err(RuleError::ReservedPrefix));
        assert!(key_prefix("pkx").is_ok());
        assert_eq!(key_prefix("SK"), Err(RuleError::Prefix));
    }

    #[test]
    fn roles_principals_workspace_names_metadata() {
        assert_eq!(Role::parse("admin"), Ok(Role::Admin));
        assert_eq!(Role::parse("member"), Ok(Role::Member));
        assert_eq!(Role::parse("Admin"), Err(RuleError::Role));
        assert_eq!(Role::Member.as_str(), "member");

        assert!(principal("alice").is_ok());
        assert!(principal("user|1234@example.com").is_ok());
        for bad in ["", " alice", "alice ", "al\nice", "\u{7f}"] {
            assert!(principal(bad).is_err(), "{bad:?}");
        }
        assert!(principal(&"p".repeat(256)).is_ok());
        assert!(principal(&"p".repeat(257)).is_err());

        assert!(workspace_name("Acme, Inc.").is_ok());
        assert!(workspace_name("   ").is_err());
        assert!(workspace_name("a\tb").is_err());
        assert!(workspace_name(&"w".repeat(129)).is_err());

        assert!(metadata_text(r#"{"n": 1, "team": "ops"}"#).is_ok());
        let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_METADATA_BYTES));
        assert_eq!(metadata_text(&big), Err(RuleError::Metadata));
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(metadata_text(&format!(r#"{{"a": {}}}"#, deep(MAX_METADATA_DEPTH - 1))).is_ok());
        assert_eq!(
            metadata_text(&format!(r#"{{"a": {}}}"#, deep(MAX_METADATA_DEPTH))),
            Err(RuleError::Metadata)
        );
        // brackets in strings, escaped quotes: not nesting
        assert_eq!(json_depth(r#"{"a": "[[[{{\"[[", "b": [1]}"#), 2);

        assert!(subject("user-1").is_ok());
        assert_eq!(subject(&"s".repeat(257)), Err(RuleError::Subject));
        assert_eq!(subject("a\u{0}b"), Err(RuleError::Subject));
    }

    #[test]
    fn origins_are_normalised_and_checked() {
        assert_eq!(origin("https://App.Example.com").as_deref(), Ok("https://app.example.com"));
        assert_eq!(origin("http://localhost:3000").as_deref(), Ok("http://localhost:3000"));
        assert_eq!(origin("https://[::1]:8443").as_deref(), Ok("https://[::1]:8443"));
        assert_eq!(origin("https://app.example.com:443").as_deref(), Ok("https://app.example.com"));
        assert_eq!(origin("http://app.example.com:80").as_deref(), Ok("http://app.example.com"));
        assert_eq!(origin("http://app.example.com:443").as_deref(), Ok("http://app.example.com:443"));
        assert_eq!(origin("https://[::1]:443").as_deref(), Ok("https://[::1]"));
        for bad in [
            "",
            "example.com",
            "https://",
            "https://example.com/",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:",
            "https://example.com:123456",
            "https://exa mple.com",
            "1http://example.com",
            "https://[::1]x",
            "https://\u{e9}.com",
        ] {
            assert_eq!(origin(bad), Err(RuleError::Origin), "{bad:?}");
        }
        assert_eq!(origin(&format!("https://{}.com", "a".repeat(300))), Err(RuleError::Origin));
        let list = vec![Some("https://a.com".to_owned()), Some("HTTPS://A.COM".to_owned())];
        assert_eq!(origins(&list), Ok(vec!["https://a.com".to_owned()]));
        assert_eq!(origins(&[None]), Err(RuleError::Origin));
        assert_eq!(origins(&vec![Some("https://a.com".to_owned()); 65]), Err(RuleError::TooManyOrigins));
    }

    #[test]
    fn digests_are_64_hex_characters() {
        let lower = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let upper = lower.to_ascii_uppercase();
        assert_eq!(sha256_hex(lower), sha256_hex(&upper));
        assert_eq!(sha256_hex(lower).map(|d| d[0]), Ok(0x9f));
        assert_eq!(sha256_hex(&lower[1..]), Err(RuleError::Digest));
        assert_eq!(sha256_hex(&format!("{lower}00")), Err(RuleError::Digest));
        assert_eq!(sha256_hex(&lower.replace('9', "g")), Err(RuleError::Digest));
        assert_eq!(sha256_hex(""), Err(RuleError::Digest));
        assert_eq!(sha256_hex(&"\u{e9}".repeat(32)), Err(RuleError::Digest));
    }
}
