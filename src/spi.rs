//! Write helpers the SQL surfaces share (keys.rs, public_keys.rs): one place
//! for the retry of an insert that may collide on a random value, for the
//! "revoke once, else report the original time" latch, and for the key-name
//! check. Every SQL text is a constant with `$n` parameters.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

use crate::errors::{ApiError, ApiResult};
use crate::token;

/// How often an insert whose random part (a display prefix of 47 random
/// bits, a public key) collided with a stored one is tried again. Four
/// collisions in a row do not happen by chance.
pub const RANDOM_INSERT_ATTEMPTS: usize = 4;

/// 32 bytes from the operating system's CSPRNG, for a token body.
pub fn random_body() -> ApiResult<[u8; token::BODY_BYTES]> {
    token::random_body().ok_or(ApiError::Internal)
}

/// Run `attempt` until it inserts (returns `Some`), at most
/// [`RANDOM_INSERT_ATTEMPTS`] times; `exhausted` when every attempt
/// collided. An attempt ends the loop early by returning an error.
pub fn insert_with_retry<T>(
    client: &mut SpiClient<'_>,
    exhausted: ApiError,
    mut attempt: impl FnMut(&mut SpiClient<'_>) -> ApiResult<Option<T>>,
) -> ApiResult<T> {
    for _ in 0..RANDOM_INSERT_ATTEMPTS {
        if let Some(done) = attempt(client)? {
            return Ok(done);
        }
    }
    Err(exhausted)
}

/// Whether an active key (neither revoked nor replaced) of the workspace
/// holds `name`.
pub fn name_taken(client: &SpiClient<'_>, workspace_id: Uuid, name: &str) -> ApiResult<bool> {
    Ok(!client
        .select(
            "SELECT 1 FROM apikeys.keys
              WHERE workspace_id = $1 AND name = $2 AND revoked_at IS NULL AND replaced_by IS NULL",
            Some(1),
            &[workspace_id.into(), name.into()],
        )?
        .is_empty())
}

/// A revocation latch, as `revoke_key` and `revoke_public_key` use it: set
/// `revoked_at` if it is unset and return it; if it was set already, return
/// the original time.
pub struct RevokeOnce {
    /// `UPDATE … SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING revoked_at`
    pub set: &'static str,
    /// `SELECT revoked_at FROM … WHERE id = $1`
    pub get: &'static str,
}

impl RevokeOnce {
    pub fn run(&self, client: &mut SpiClient<'_>, id: Uuid) -> ApiResult<TimestampWithTimeZone> {
        let set = client.update(self.set, None, &[id.into()])?;
        if !set.is_empty() {
            return set.first().get(1)?.ok_or(ApiError::Internal);
        }
        client.select(self.get, Some(1), &[id.into()])?.first().get(1)?.ok_or(ApiError::Internal)
    }
}
