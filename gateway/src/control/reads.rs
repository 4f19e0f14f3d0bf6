//! What the daemon reads from the store about an endpoint, gathered in one call
//! ([`EndpointRead::read`]) so that it can run off the event loop ([`off_loop`]): the
//! endpoints' own event loops share the daemon's thread, and a database that stops answering
//! (each statement waits out its deadline) must not stall their traffic.

use std::sync::Arc;

use crate::model::policy::Policy;
use crate::model::{Directory, DirectorySecrets, IdentityProvider, IdpSecrets, TargetSpec};
use crate::storage::{ApiError, Endpoint, EndpointSecrets, Store};

/// An endpoint as the daemon needs it to serve it.
pub struct EndpointRead {
    pub endpoint: Endpoint,
    /// Whether this node serves it ([`Store::serves_endpoint`]).
    pub serves: bool,
    pub secrets: EndpointSecrets,
    /// This node's target networks and the policy over them.
    pub targets: Vec<TargetSpec>,
    pub policy: Policy,
    /// Its directory, the directory's secrets and the MFA enrolments.
    pub directory: Option<DirectoryRead>,
    /// Its identity provider and the provider's secrets.
    pub idp: Option<(IdentityProvider, IdpSecrets)>,
}

/// An endpoint's directory as the daemon needs it.
pub struct DirectoryRead {
    pub directory: Directory,
    pub secrets: DirectorySecrets,
    /// (user, TOTP secret bytes) of every enrolled user.
    pub enrolled: Vec<(String, Vec<u8>)>,
}

impl EndpointRead {
    /// Everything about endpoint `id`, read now (blocking: see [`off_loop`]).
    pub fn read(store: &Store, id: &str) -> Result<EndpointRead, ApiError> {
        let endpoint = store.describe_endpoint(id)?;
        let directory = match store.endpoint_directory(id)? {
            Some(directory) => Some(DirectoryRead {
                secrets: store.directory_secrets(&directory.directory_id)?,
                enrolled: store.mfa_secrets(&directory.directory_id)?,
                directory,
            }),
            None => None,
        };
        Ok(EndpointRead {
            serves: store.serves_endpoint(id)?,
            secrets: store.endpoint_secrets(id)?,
            targets: store.target_specs(id)?,
            policy: store.policy_for(id)?,
            idp: store.endpoint_identity_provider(id)?,
            directory,
            endpoint,
        })
    }
}

/// Runs `f` on the store on a blocking thread and waits for it without holding the event
/// loop: the endpoints' tasks run meanwhile. `None` if the blocking task panicked.
pub async fn off_loop<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> T + Send + 'static,
) -> Option<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store)).await.ok()
}
