//! API actions other parts of the daemon (the self-service portal, `crate::web`) call
//! directly with the API's state (`crate::api::revoke_user(&state, …)`): each runs the store call on the blocking pool and sends the [`ControlEvent`]s
//! the matching route handler sends, so a change made from the portal takes effect exactly as
//! one made through the API.

use std::sync::Arc;
use std::time::Duration;

use super::types::RevokeUserResult;
use super::{ApiState, ControlEvent};
use crate::model::{codes, PortalCertificate, TerminateTarget, TerminatedConnection};
use crate::storage::{ApiError, IssuedCertificate, Store};

/// Runs a store call on the blocking pool (SQLite fsyncs on every commit).
async fn blocking<T: Send + 'static>(
    state: &ApiState,
    f: impl FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
}

/// Sends the daemon the connections to close (nothing for an empty list).
pub fn send_terminate(state: &ApiState, endpoint_id: &str, connection_ids: Vec<String>) {
    if !connection_ids.is_empty() {
        state.emit(ControlEvent::Terminate {
            endpoint_id: endpoint_id.to_string(),
            connection_ids,
        });
    }
}

/// Terminates the connections of `target` on the endpoint, as `POST
/// /v1/endpoints/{id}/connections/terminate` does: marks them `terminating` and tells the
/// daemon to close them.
pub async fn terminate(
    state: &ApiState,
    endpoint_id: &str,
    target: TerminateTarget,
) -> Result<Vec<TerminatedConnection>, ApiError> {
    let id = endpoint_id.to_string();
    let statuses = blocking(state, move |s| s.terminate_connections(&id, &target)).await?;
    send_terminate(
        state,
        endpoint_id,
        statuses.iter().map(|c| c.connection_id.clone()).collect(),
    );
    Ok(statuses)
}

/// Terminates one connection of the endpoint (the caller checks whose it is): what the
/// portal's disconnect button does.
pub async fn terminate_connection(
    state: &ApiState,
    endpoint_id: &str,
    connection_id: &str,
) -> Result<Vec<TerminatedConnection>, ApiError> {
    terminate(
        state,
        endpoint_id,
        TerminateTarget::ConnectionId(connection_id.to_string()),
    )
    .await
}

/// Ends a user's access to the endpoint, as `POST /v1/endpoints/{id}/revoke-user` does:
/// revokes the client certificates the portal issued them (a new CRL, signed with the
/// endpoint's client CA key; the daemon loads it and ends the sessions of those certificates,
/// [`ControlEvent::CrlChanged`]) and terminates the user's active connections. A user with
/// neither is no error: the result says nothing was to be done.
pub async fn revoke_user(
    state: &ApiState,
    endpoint_id: &str,
    username: &str,
) -> Result<RevokeUserResult, ApiError> {
    if username.trim().is_empty() {
        return Err(ApiError::missing(
            "username",
            "give the user whose access ends",
        ));
    }
    let (id, user) = (endpoint_id.to_string(), username.to_string());
    let revoked = blocking(state, move |s| s.revoke_user_certificates(&id, &user)).await?;
    if !revoked.is_empty() {
        state.emit(ControlEvent::CrlChanged {
            endpoint_id: endpoint_id.to_string(),
            revoked_serials: revoked.clone(),
        });
    }
    let statuses = match terminate(
        state,
        endpoint_id,
        TerminateTarget::Username(username.to_string()),
    )
    .await
    {
        Ok(s) => s,
        Err(e) if e.code == codes::CONNECTION_USER_NOT_FOUND => Vec::new(),
        Err(e) => return Err(e),
    };
    let message = match (revoked.len(), statuses.len()) {
        (0, 0) => format!(
            "{username} has no unrevoked, unexpired certificate from the self-service portal \
             and no active connection on endpoint {endpoint_id}: nothing to do"
        ),
        (0, c) => format!(
            "{username} has no unrevoked, unexpired certificate from the self-service portal \
             to revoke; terminating {c} connection(s)"
        ),
        (r, c) => format!(
            "revoked {r} certificate(s) the self-service portal issued {username} (the \
             endpoint's CRL lists them) and terminating {c} connection(s)"
        ),
    };
    Ok(RevokeUserResult {
        client_vpn_endpoint_id: endpoint_id.to_string(),
        username: username.to_string(),
        revoked_serials: revoked,
        connection_statuses: statuses,
        message,
    })
}

/// Issues `username` a client certificate of the endpoint's client CA for `lifetime`
/// ([`Store::issue_portal_certificate`]; refused when the endpoint holds no client CA key).
pub async fn issue_portal_certificate(
    state: &ApiState,
    endpoint_id: &str,
    username: &str,
    lifetime: Duration,
) -> Result<IssuedCertificate, ApiError> {
    let (id, user) = (endpoint_id.to_string(), username.to_string());
    blocking(state, move |s| {
        s.issue_portal_certificate(&id, &user, lifetime)
    })
    .await
}

/// Counts one profile download from the endpoint's portal; returns the count.
pub async fn record_portal_download(state: &ApiState, endpoint_id: &str) -> Result<u64, ApiError> {
    let id = endpoint_id.to_string();
    blocking(state, move |s| s.record_portal_download(&id)).await
}

/// The certificates the portal issued on the endpoint (all, or `username`'s).
pub async fn issued_certificates(
    state: &ApiState,
    endpoint_id: &str,
    username: Option<&str>,
) -> Result<Vec<PortalCertificate>, ApiError> {
    let (id, user) = (endpoint_id.to_string(), username.map(str::to_string));
    blocking(state, move |s| s.issued_certificates(&id, user.as_deref())).await
}
