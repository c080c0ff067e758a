//! Token format: `<prefix>_<body><check>`.
//!
//! * `prefix` — `^[a-z][a-z0-9]{1,15}(_[a-z0-9]{1,16})?$`, e.g. `sk` or `sk_live`;
//! * `body`   — 32 bytes from the OS CSPRNG, base62, always [`BODY_LEN`] characters;
//! * `check`  — CRC32 of `<prefix>_<body>`, base62, always [`CHECK_LEN`] characters.
//!
//! A mistyped or invented token fails [`parse`] without any table access. Only
//! SHA-256 of the whole token ([`digest`]) is ever stored. Everything here is
//! plain Rust with no PostgreSQL dependency, tested by `#[test]`s below.

use sha2::{Digest, Sha256};

/// Base62 alphabet, in ASCII order so encoded strings sort like their values.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random bytes in a body.
pub const BODY_BYTES: usize = 32;
/// Base62 characters of a 32-byte body (62^43 > 2^256 > 62^42).
pub const BODY_LEN: usize = 43;
/// Base62 characters of a CRC32 (62^6 > 2^32).
pub const CHECK_LEN: usize = 6;
/// Body characters kept in the stored, display-safe prefix (`sk_live_AbCd1234`).
pub const DISPLAY_BODY_CHARS: usize = 8;
/// The longest token this format can produce: a 33-character prefix, `_`, body, check.
pub const MAX_TOKEN_LEN: usize = 33 + 1 + BODY_LEN + CHECK_LEN;

/// Encode a big-endian unsigned number into exactly `width` base62 digits.
/// Callers pass widths the value always fits in (62^43 > 2^256 for bodies,
/// 62^6 > 2^32 for checks); the unit tests encode the largest values.
fn base62_fixed(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = ALPHABET[rem as usize];
    }
    debug_assert!(num.iter().all(|&b| b == 0), "value does not fit in {width} base62 digits");
    out.into_iter().map(char::from).collect()
}

/// Decode base62 digits into a big-endian number of `len` bytes, or `None`
/// on a character outside the alphabet or an overflow.
pub fn base62_decode(s: &str, len: usize) -> Option<Vec<u8>> {
    let mut num = vec![0u8; len];
    for c in s.bytes() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'Z' => c - b'A' + 10,
            b'a'..=b'z' => c - b'a' + 36,
            _ => return None,
        };
        let mut carry = u32::from(d);
        for b in num.iter_mut().rev() {
            let acc = u32::from(*b) * 62 + carry;
            *b = (acc & 0xff) as u8;
            carry = acc >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(num)
}

/// The largest body, 2^256 - 1. Digits are in ASCII order and bodies have a
/// fixed width, so a body is the canonical encoding of 32 bytes exactly when
/// it sorts at or below this string (checked against [`base62_decode`] by the
/// unit tests and the fuzz properties).
pub const MAX_BODY: &str = "yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1";

/// Encode 32 bytes as a fixed-width base62 body.
pub fn encode_body(bytes: &[u8; BODY_BYTES]) -> String {
    base62_fixed(bytes, BODY_LEN)
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and GitHub's token checksum use).
pub fn crc32(data: &[u8]) -> u32 {
    crc32_more(0, data)
}

/// The CRC-32 of `a` followed by `data`, given `crc32(a)`: a file's
/// checksum computed as it is written, piece by piece.
pub fn crc32_more(crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !crc;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The six check characters for `<prefix>_<body>`.
pub fn check_chars(prefix_and_body: &str) -> String {
    check_bytes(prefix_and_body.as_bytes()).iter().map(|&c| char::from(c)).collect()
}

/// [`check_chars`] without allocating (the verify hot path).
fn check_bytes(prefix_and_body: &[u8]) -> [u8; CHECK_LEN] {
    let mut crc = u64::from(crc32(prefix_and_body));
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

/// Whether `prefix` is a valid token prefix: `^[a-z][a-z0-9]{1,15}(_[a-z0-9]{1,16})?$`.
pub fn valid_prefix(prefix: &str) -> bool {
    let (head, tail) = match prefix.split_once('_') {
        Some((h, t)) => (h, Some(t)),
        None => (prefix, None),
    };
    let alnum = |s: &str| s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let head_ok = (2..=16).contains(&head.len()) && head.as_bytes()[0].is_ascii_lowercase() && alnum(head);
    let tail_ok = match tail {
        None => true,
        Some(t) => (1..=16).contains(&t.len()) && alnum(t),
    };
    head_ok && tail_ok
}

/// A freshly minted token and what is stored about it.
pub struct Minted {
    /// The whole token; shown to the caller once and never stored.
    pub token: String,
    /// `<prefix>_` + the first eight body characters; stored, unique, display-safe.
    pub display_prefix: String,
    /// `key-` + the first eight body characters: the default key name.
    pub default_name: String,
}

/// 32 bytes from the operating system's CSPRNG; `None` if it failed.
pub fn random_body() -> Option<[u8; BODY_BYTES]> {
    use rand::RngCore;
    let mut bytes = [0u8; BODY_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).ok()?;
    Some(bytes)
}

/// Build a token from a prefix and 32 random bytes. The prefix must already
/// have passed [`valid_prefix`].
pub fn build(prefix: &str, random: &[u8; BODY_BYTES]) -> Minted {
    let body = encode_body(random);
    let mut token = String::with_capacity(prefix.len() + 1 + BODY_LEN + CHECK_LEN);
    token.push_str(prefix);
    token.push('_');
    token.push_str(&body);
    let check = check_chars(&token);
    token.push_str(&check);
    let head = &body[..DISPLAY_BODY_CHARS];
    Minted {
        display_prefix: format!("{prefix}_{head}"),
        default_name: format!("key-{}", head.to_ascii_lowercase()),
        token,
    }
}

/// The parts of a well-formed token.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub prefix: &'a str,
    pub body: &'a str,
}

/// Why a string is not a well-formed token (never shown to clients: every
/// failure looks the same from outside).
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Length,
    Prefix,
    Body,
    Checksum,
}

/// Parse and check a token without touching any table.
pub fn parse(token: &str) -> Result<Parsed<'_>, ParseError> {
    let tail = BODY_LEN + CHECK_LEN;
    // shortest: a 2-character prefix, '_', body, check
    if token.len() > MAX_TOKEN_LEN || token.len() < 2 + 1 + tail || !token.is_ascii() {
        return Err(ParseError::Length);
    }
    let split = token.len() - tail;
    let (head, rest) = token.split_at(split);
    let prefix = head.strip_suffix('_').ok_or(ParseError::Prefix)?;
    if !valid_prefix(prefix) {
        return Err(ParseError::Prefix);
    }
    let (body, check) = rest.split_at(BODY_LEN);
    if !body.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ParseError::Body);
    }
    // the body must be a canonical encoding of 32 bytes (see MAX_BODY)
    if body > MAX_BODY {
        return Err(ParseError::Body);
    }
    if check_bytes(&token.as_bytes()[..token.len() - CHECK_LEN]) != check.as_bytes() {
        return Err(ParseError::Checksum);
    }
    Ok(Parsed { prefix, body })
}

/// Longest token of another shape (an imported key) that is hashed and
/// looked up; anything longer is rejected without hashing.
pub const MAX_FOREIGN_TOKEN_LEN: usize = 1024;

/// What `verify_key` does with a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    /// This extension's format with a good checksum: look its hash up.
    Own,
    /// This extension's shape (a valid prefix, `_`, 49 base62 characters)
    /// but a wrong checksum or body: a mistyped or forged token, rejected
    /// without touching a table.
    Mistyped,
    /// Any other non-empty string of at most [`MAX_FOREIGN_TOKEN_LEN`] bytes:
    /// possibly a key imported from another keystore, looked up by hash.
    Foreign,
    /// Empty or too long: rejected without hashing.
    Rejected,
}

/// Classify a token before any table access.
pub fn shape(token: &str) -> Shape {
    match parse(token) {
        Ok(_) => Shape::Own,
        Err(ParseError::Checksum | ParseError::Body)
            if token.bytes().rev().take(BODY_LEN + CHECK_LEN).all(|c| c.is_ascii_alphanumeric()) =>
        {
            Shape::Mistyped
        }
        Err(_) if token.is_empty() || token.len() > MAX_FOREIGN_TOKEN_LEN => Shape::Rejected,
        Err(_) => Shape::Foreign,
    }
}

/// SHA-256 of the whole token: the only thing ever stored about a secret.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    // unwrap() here is a test assertion: this module is compiled only for
    // `cargo test`, so no client can reach it.
    use super::*;

    fn sample(prefix: &str, seed: u8) -> Minted {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(i as u8 * 7);
        }
        build(prefix, &bytes)
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // the CRC-32 "check" value from the catalogue of parametrised CRCs
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32_more(crc32(b"1234"), b"56789"), 0xCBF4_3926);
    }

    #[test]
    fn base62_round_trips_and_keeps_width() {
        for bytes in [[0u8; 32], [0xff; 32], [1u8; 32]] {
            let s = encode_body(&bytes);
            assert_eq!(s.len(), BODY_LEN);
            assert_eq!(base62_decode(&s, 32).unwrap(), bytes.to_vec());
        }
        assert_eq!(encode_body(&[0u8; 32]), "0".repeat(BODY_LEN));
        // the largest value needs all 43 digits and decodes back
        let max = encode_body(&[0xff; 32]);
        assert_eq!(max, MAX_BODY);
        // one above the largest body does not fit in 32 bytes
        assert_eq!(base62_decode("yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp2", 32), None);
        assert_ne!(max.as_bytes()[0], b'0');
        assert_eq!(check_chars("x").len(), CHECK_LEN);
        assert_eq!(base62_fixed(&u32::MAX.to_be_bytes(), CHECK_LEN), "4gfFC3");
    }

    #[test]
    fn base62_decode_rejects_overflow_and_foreign_chars() {
        assert!(base62_decode(&"z".repeat(BODY_LEN), 32).is_none());
        assert!(base62_decode("abc-", 32).is_none());
        assert!(base62_decode("é", 32).is_none());
    }

    #[test]
    fn built_tokens_parse_back() {
        for prefix in ["sk", "sk_live", "ab", "a123456789abcdef_0123456789abcdef"] {
            let m = sample(prefix, 9);
            let p = parse(&m.token).unwrap();
            assert_eq!(p.prefix, prefix);
            assert_eq!(p.body.len(), BODY_LEN);
            assert!(m.token.len() <= MAX_TOKEN_LEN);
            assert_eq!(m.display_prefix, format!("{prefix}_{}", &p.body[..8]));
            assert!(m.default_name.starts_with("key-"));
        }
    }

    #[test]
    fn checksum_catches_every_single_character_change() {
        let m = sample("sk_live", 3);
        let alphabet: Vec<char> =
            "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-".chars().collect();
        let original: Vec<char> = m.token.chars().collect();
        let mut tried = 0;
        for i in 0..original.len() {
            for &c in &alphabet {
                if c == original[i] {
                    continue;
                }
                let mut changed = original.clone();
                changed[i] = c;
                let s: String = changed.into_iter().collect();
                assert!(parse(&s).is_err(), "change at {i} to {c:?} was accepted");
                tried += 1;
            }
        }
        assert!(tried > 3000);
    }

    #[test]
    fn checksum_catches_adjacent_swaps() {
        let m = sample("sk", 5);
        let b = m.token.as_bytes();
        for i in 0..b.len() - 1 {
            if b[i] == b[i + 1] {
                continue;
            }
            let mut v = b.to_vec();
            v.swap(i, i + 1);
            let s = String::from_utf8(v).unwrap();
            assert!(parse(&s).is_err(), "swap at {i} accepted");
        }
    }

    #[test]
    fn malformed_tokens_are_rejected_by_shape() {
        let m = sample("sk", 1);
        assert_eq!(parse(""), Err(ParseError::Length));
        assert_eq!(parse("sk_"), Err(ParseError::Length));
        assert_eq!(parse(&"a".repeat(1 << 20)), Err(ParseError::Length));
        assert_eq!(parse(&m.token[1..]), Err(ParseError::Length)); // one short
        assert_eq!(parse(&format!("1{}", &m.token[1..])), Err(ParseError::Prefix)); // "1k_..."
        let no_sep = m.token.replacen('_', "x", 1);
        assert!(parse(&no_sep).is_err());
        let upper = m.token.replacen("sk", "SK", 1);
        assert_eq!(parse(&upper), Err(ParseError::Prefix));
        let mut with_unicode = m.token.clone();
        with_unicode.replace_range(5..6, "é");
        assert_eq!(parse(&with_unicode), Err(ParseError::Length));
        let mut nul = m.token.clone();
        nul.replace_range(5..6, "\0");
        assert_eq!(parse(&nul), Err(ParseError::Body));
    }

    #[test]
    fn prefix_rules() {
        for ok in ["sk", "sk_live", "pk2", "a1", "abcdefghijklmnop", "sk_0123456789abcdef"] {
            assert!(valid_prefix(ok), "{ok}");
        }
        for bad in [
            "",
            "s",
            "1k",
            "Sk",
            "sk_",
            "_sk",
            "sk__live",
            "sk_live_x",
            "sk-live",
            "abcdefghijklmnopq",
            "sk_0123456789abcdefg",
            "sk live",
            "sk_Live",
            "ск",
        ] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn digest_is_sha256_of_the_whole_token() {
        assert_eq!(
            hex::encode(digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn different_randomness_gives_different_tokens() {
        let a = sample("sk", 1);
        let b = sample("sk", 2);
        assert_ne!(a.token, b.token);
        assert_ne!(a.display_prefix, b.display_prefix);
    }

    #[test]
    fn shapes_decide_the_lookup() {
        let good = sample("sk", 7).token;
        assert_eq!(shape(&good), Shape::Own);
        // one character changed in the body or the check: ours, mistyped
        let mut typo = good.clone().into_bytes();
        typo[5] = if typo[5] == b'a' { b'b' } else { b'a' };
        assert_eq!(shape(std::str::from_utf8(&typo).unwrap()), Shape::Mistyped);
        let mut bad_check = good.clone();
        bad_check.pop();
        bad_check.push(if good.ends_with('0') { '1' } else { '0' });
        assert_eq!(shape(&bad_check), Shape::Mistyped);
        // other keystores' shapes are looked up by hash
        assert_eq!(shape("ghp_16C7e42F292c6912E7710c838347Ae178B4a"), Shape::Foreign);
        assert_eq!(shape("legacy-token-123"), Shape::Foreign);
        assert_eq!(shape("SK_not ours at all"), Shape::Foreign);
        assert_eq!(shape(&"x".repeat(MAX_FOREIGN_TOKEN_LEN)), Shape::Foreign);
        assert_eq!(shape(&"x".repeat(MAX_FOREIGN_TOKEN_LEN + 1)), Shape::Rejected);
        assert_eq!(shape(""), Shape::Rejected);
    }
}
