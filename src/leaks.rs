//! GitHub's secret-scanning intake: `apikeys.github_secret_scanning(body,
//! key_identifier, signature)`.
//!
//! GitHub POSTs a JSON array `[{token, type, url, source}]`, signed with
//! ECDSA P-256 / SHA-256 over the exact bytes of the body; the signature
//! (base64 of ASN.1 DER) and the id of GitHub's signing key come in two
//! headers. The signature is checked with RustCrypto's `p256` against a
//! public key an administrator loaded into `apikeys.scanning_keys`; only
//! then is every token acted on as `report_leaked` acts on it (that function
//! does the revoking, the audit and the labels), and the feedback GitHub
//! accepts is returned: `[{token_hash, token_type, label}]`.
//!
//! A token is recognised by its digest, never by the `type` field, which is
//! only echoed back. Unknown or retired key id, a signature that does not
//! verify: `PT401`, nothing revoked. A body that is not the expected array,
//! or over [`MAX_BODY_BYTES`]: `22023`.

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::errors::{ApiError, ApiResult};
use crate::fmgr::deferred;
use crate::rules::RuleError;

/// Largest report accepted: 1 MiB (GitHub batches reports well below it).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most tokens in one report (as `report_leaked` accepts per call).
pub const MAX_TOKENS: usize = 1000;

/// Longest `source` and `url` that `report_leaked` records.
const MAX_SOURCE_CHARS: usize = 256;
const MAX_URL_CHARS: usize = 2048;

/// Whether a report's text field can be recorded as is: no NUL, at most
/// `max` characters.
fn fits(s: &str, max: usize) -> bool {
    !s.contains('\0') && s.chars().count() <= max
}

/// One reported token, as GitHub sends it.
#[derive(Debug, PartialEq)]
pub struct Reported {
    pub token: String,
    pub token_type: Option<String>,
    pub url: Option<String>,
    pub source: Option<String>,
}

/// Parse a report body: a JSON array of objects, each with a string
/// `token` and optional string `type`, `url`, `source`.
pub fn parse_report(body: &str) -> Result<Vec<Reported>, RuleError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(RuleError::Report);
    }
    let items = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(items)) if items.len() <= MAX_TOKENS => items,
        _ => return Err(RuleError::Report),
    };
    let text =
        |o: &serde_json::Map<String, serde_json::Value>, k: &str| -> Result<Option<String>, RuleError> {
            match o.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(RuleError::Report),
            }
        };
    items
        .iter()
        .map(|item| {
            let o = item.as_object().ok_or(RuleError::Report)?;
            Ok(Reported {
                token: text(o, "token")?.ok_or(RuleError::Report)?,
                token_type: text(o, "type")?,
                url: text(o, "url")?,
                source: text(o, "source")?,
            })
        })
        .collect()
}

/// Whether `signature` (base64 of an ASN.1 DER ECDSA signature) signs
/// `body` under the P-256 public key `pem`.
pub fn signature_valid(pem: &str, body: &[u8], signature: &str) -> bool {
    let Ok(key) = VerifyingKey::from_public_key_pem(pem) else { return false };
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else { return false };
    let Ok(sig) = Signature::from_der(&der) else { return false };
    key.verify(body, &sig).is_ok()
}

/// The current public key GitHub signs with under `key_identifier`.
fn scanning_key(client: &SpiClient<'_>, key_identifier: &str) -> ApiResult<Option<String>> {
    let rows = client.select(
        "SELECT public_key_pem FROM apikeys.scanning_keys WHERE key_identifier = $1 AND is_current",
        Some(1),
        &[key_identifier.into()],
    )?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(rows.first().get(1)?)
}

fn github_secret_scanning_impl(
    body: Option<&str>,
    key_identifier: Option<&str>,
    signature: Option<&str>,
) -> ApiResult<pgrx::Json> {
    crate::errors::require_writable()?;
    let body = body.ok_or(ApiError::NullArgument(c"body must not be null"))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(RuleError::Report.into());
    }
    let (Some(key_identifier), Some(signature)) = (key_identifier, signature) else {
        return Err(ApiError::BadSignature);
    };
    Spi::connect_mut(|client| {
        let pem = scanning_key(client, key_identifier)?.ok_or(ApiError::BadSignature)?;
        if !signature_valid(&pem, body.as_bytes(), signature) {
            return Err(ApiError::BadSignature);
        }
        let reported = parse_report(body)?;
        let mut feedback = Vec::with_capacity(reported.len());
        // each token stands alone: a field report_leaked would refuse (a
        // url or source too long, a NUL) is left out of the audit rather
        // than failing the batch, and a token that text cannot hold (a
        // NUL) is no key of ours
        for r in &reported {
            let (token_hash, label) = if r.token.contains('\0') {
                (hex::encode(crate::token::digest(&r.token)), "false_positive".to_owned())
            } else {
                let source = r.source.as_deref().filter(|s| fits(s, MAX_SOURCE_CHARS));
                let url = r.url.as_deref().filter(|u| fits(u, MAX_URL_CHARS));
                let row = client.update(
                    "SELECT token_hash, label FROM apikeys.report_leaked(ARRAY[$1], $2, $3)",
                    Some(1),
                    &[r.token.as_str().into(), source.into(), url.into()],
                )?;
                let row = row.first();
                let token_hash: String = row.get(1)?.ok_or(ApiError::Internal)?;
                let label: String = row.get(2)?.ok_or(ApiError::Internal)?;
                (token_hash, label)
            };
            feedback.push(serde_json::json!({
                "token_hash": token_hash,
                "token_type": r.token_type,
                "label": label,
            }));
        }
        Ok(pgrx::Json(serde_json::Value::Array(feedback)))
    })
}

#[pg_extern(sql = false)]
fn github_secret_scanning(
    body: Option<&str>,
    key_identifier: Option<&str>,
    signature: Option<&str>,
) -> Option<pgrx::Json> {
    deferred(github_secret_scanning_impl(body, key_identifier, signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey;

    fn keypair() -> (SigningKey, String) {
        let sk = SigningKey::from_bytes(&[7u8; 32].into()).expect("a valid scalar"); // ok: test
        let pem = sk.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).expect("encodes"); // ok: test
        (sk, pem)
    }

    fn sign(sk: &SigningKey, body: &str) -> String {
        let sig: Signature = sk.sign(body.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }

    #[test]
    fn a_signature_verifies_only_the_exact_body_under_its_key() {
        let (sk, pem) = keypair();
        let body = r#"[{"token":"sk_x","type":"pg_apikeys","url":"u","source":"content"}]"#;
        let sig = sign(&sk, body);
        assert!(signature_valid(&pem, body.as_bytes(), &sig));
        // the same JSON with other whitespace is another body
        let spaced = r#"[{"token": "sk_x","type":"pg_apikeys","url":"u","source":"content"}]"#;
        assert!(!signature_valid(&pem, spaced.as_bytes(), &sig));
        // another key, a broken signature, a broken key
        let other = SigningKey::from_bytes(&[9u8; 32].into()).expect("a valid scalar"); // ok: test
        assert!(!signature_valid(&pem, body.as_bytes(), &sign(&other, body)));
        assert!(!signature_valid(&pem, body.as_bytes(), "not base64!"));
        assert!(!signature_valid(&pem, body.as_bytes(), "AAAA"));
        assert!(!signature_valid("not a pem", body.as_bytes(), &sig));
    }

    #[test]
    fn reports_parse_or_are_refused() {
        let r = parse_report(r#"[{"token":"t1","type":"x","url":"u","source":"s"},{"token":"t2"}]"#);
        assert_eq!(
            r,
            Ok(vec![
                Reported {
                    token: "t1".into(),
                    token_type: Some("x".into()),
                    url: Some("u".into()),
                    source: Some("s".into())
                },
                Reported { token: "t2".into(), token_type: None, url: None, source: None },
            ])
        );
        for bad in [
            "",
            "{}",
            r#"{"token":"t"}"#,
            "[1]",
            r#"[{"type":"x"}]"#,
            r#"[{"token":7}]"#,
            r#"[{"token":"t","url":[]}]"#,
            "[",
        ] {
            assert_eq!(parse_report(bad), Err(RuleError::Report), "{bad:?}");
        }
        assert_eq!(parse_report("[]"), Ok(vec![]));
        let too_big = format!(r#"[{{"token":"{}"}}]"#, "t".repeat(MAX_BODY_BYTES));
        assert_eq!(parse_report(&too_big), Err(RuleError::Report));
        let too_many = format!("[{}]", vec![r#"{"token":"t"}"#; MAX_TOKENS + 1].join(","));
        assert_eq!(parse_report(&too_many), Err(RuleError::Report));
    }
}
