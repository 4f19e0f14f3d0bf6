//! The resource model: the types every other part of the crate speaks — resources, ids,
//! requests and results, validation rules and their error, the policy handed to the data plane,
//! traffic counters. One type per concept. It depends on nothing else in the crate (only on
//! libraries), so storage, the API, the CLI, the daemon and the data plane all use it without
//! using each other.
//!
//! * [`resources`]: endpoints, target networks, routes, authorization rules, connections, CRL
//!   summaries, quotas, timestamps, and the request and result bodies of the API (AWS names).
//! * [`ids`]: resource ids (`cvpn-endpoint-<17 hex>`, ...): the one generator.
//! * [`error`]: [`ApiError`] (AWS-style codes) and the API's error body.
//! * [`validate`]: the value rules (CIDRs, ports, names, PEM material, handlers), each naming the
//!   field it refuses.
//! * [`policy`]: authorization rules, routes and target networks as the data plane takes them.
//! * [`counters`]: traffic counters.
//! * [`directory`]: directories (LDAP / Active Directory) that endpoints sign users in against.
//! * [`aws`]: access keys that sign requests to the AWS-compatible API, and certificates
//!   imported through its ACM-compatible calls.
//! * [`identity_provider`]: OIDC and SAML identity providers that federated endpoints send
//!   users to for single sign-on.
//!
//! Everything but the modules [`policy`] and [`validate`] is re-exported here, so
//! `model::Endpoint`, `model::new_id`, `model::ApiError` work.

pub mod aws;
pub mod counters;
pub mod directory;
pub mod error;
pub mod identity_provider;
pub mod ids;
pub mod policy;
pub mod resources;
pub mod validate;

pub use aws::*;
pub use counters::{Counters, SessionCounters};
pub use directory::*;
pub use error::{codes, ApiError, ErrorBody, ErrorDetail};
pub use identity_provider::*;
pub use ids::*;
pub use policy::TargetSpec;
pub use resources::*;
