//! `ClientToken`s of the AWS-compatible API: a create call made again with the same token
//! (a retry after a lost answer) returns the first call's answer instead of creating twice, and
//! the same token with other parameters is refused (`IdempotentParameterMismatch`), as EC2
//! does. Kept in the database so that a retry through another node, or after a restart, is
//! recognised too.

use super::*;

/// How long a token is remembered.
pub const CLIENT_TOKEN_TTL_SECS: i64 = 24 * 60 * 60;
/// Most tokens remembered at once: the oldest are forgotten first beyond it.
pub const MAX_CLIENT_TOKENS: i64 = 10_000;
/// Longest token (EC2's limit).
pub const MAX_CLIENT_TOKEN_CHARS: usize = 64;

/// What a token says about a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenClaim {
    /// First use: run the call, then [`Store::finish_client_token`].
    Fresh,
    /// Used before for the same call with the same parameters: its answer.
    Answered(String),
    /// Used before for the same call with the same parameters, which is still running.
    Running,
    /// Used before with other parameters.
    Mismatch,
}

impl Store {
    /// Claims `token` for `action` with parameters hashing to `request_hash`.
    pub fn claim_client_token(
        &self,
        token: &str,
        action: &str,
        request_hash: &str,
    ) -> Result<TokenClaim, ApiError> {
        if token.is_empty() || token.chars().count() > MAX_CLIENT_TOKEN_CHARS {
            return Err(ApiError::invalid(
                "ClientToken",
                format!("use 1 to {MAX_CLIENT_TOKEN_CHARS} characters"),
            ));
        }
        self.record(|db, now| {
            db.prepare_cached("DELETE FROM client_tokens WHERE created_at < ?1")?
                .execute([now.0 - CLIENT_TOKEN_TTL_SECS])?;
            let seen: Option<(String, Option<String>)> = db
                .prepare_cached(
                    "SELECT request_hash, response FROM client_tokens \
                     WHERE token = ?1 AND action = ?2",
                )?
                .query_row([token, action], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match seen {
                Some((hash, _)) if hash != request_hash => return Ok(TokenClaim::Mismatch),
                Some((_, Some(answer))) => return Ok(TokenClaim::Answered(answer)),
                Some((_, None)) => return Ok(TokenClaim::Running),
                None => {}
            }
            let n: i64 = db
                .prepare_cached("SELECT count(*) FROM client_tokens")?
                .query_row((), |r| r.get(0))?;
            if n >= MAX_CLIENT_TOKENS {
                db.prepare_cached(
                    "DELETE FROM client_tokens WHERE (token, action) IN (SELECT token, action \
                     FROM client_tokens ORDER BY created_at LIMIT ?1)",
                )?
                .execute([n - MAX_CLIENT_TOKENS + 1])?;
            }
            db.prepare_cached(
                "INSERT INTO client_tokens (token, action, request_hash, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![token, action, request_hash, now.0])?;
            Ok(TokenClaim::Fresh)
        })
    }

    /// Records the answer of the call that claimed `token` (`None`: it failed, and the token is
    /// forgotten so that a retry runs the call again).
    pub fn finish_client_token(
        &self,
        token: &str,
        action: &str,
        answer: Option<&str>,
    ) -> Result<(), ApiError> {
        self.record(|db, _| {
            match answer {
                Some(a) => db
                    .prepare_cached(
                        "UPDATE client_tokens SET response = ?3 WHERE token = ?1 AND action = ?2",
                    )?
                    .execute(params![token, action, a])?,
                None => db
                    .prepare_cached("DELETE FROM client_tokens WHERE token = ?1 AND action = ?2")?
                    .execute([token, action])?,
            };
            Ok(())
        })
    }
}
