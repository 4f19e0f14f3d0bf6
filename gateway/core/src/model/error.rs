//! The resource model's error: an AWS-style code and a message that names the field and the rule.
//!
//! The codes are AWS Client VPN's own where AWS has one (EC2 API error codes), so scripts written
//! against AWS keep matching on them. [`ApiError::http_status`] maps a code to the HTTP status the
//! management API answers with.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The error codes the store returns, AWS spelling.
pub mod codes {
    /// A parameter has an invalid value (the message names the parameter and the rule).
    pub const INVALID_PARAMETER_VALUE: &str = "InvalidParameterValue";
    /// Parameters that cannot be given together, or a dependent parameter is missing.
    pub const INVALID_PARAMETER_COMBINATION: &str = "InvalidParameterCombination";
    /// A required parameter is absent.
    pub const MISSING_PARAMETER: &str = "MissingParameter";
    /// No Client VPN endpoint has this id.
    pub const ENDPOINT_NOT_FOUND: &str = "InvalidClientVpnEndpointId.NotFound";
    /// No target network association has this id (AWS spells this one without a dot).
    pub const ASSOCIATION_NOT_FOUND: &str = "InvalidClientVpnAssociationIdNotFound";
    /// The endpoint has no associated target network (it is `pending-associate`).
    pub const ACTIVE_ASSOCIATION_NOT_FOUND: &str = "InvalidClientVpnActiveAssociationNotFound";
    /// The target network is already associated with the endpoint.
    pub const DUPLICATE_ASSOCIATION: &str = "InvalidClientVpnDuplicateAssociationException";
    /// The target network's subnet overlaps the endpoint's client CIDR.
    pub const SUBNET_OVERLAPPING_CIDR: &str = "InvalidClientVpnSubnetId.OverlappingCidr";
    /// No route matches.
    pub const ROUTE_NOT_FOUND: &str = "InvalidClientVpnRouteNotFound";
    /// The route already exists.
    pub const DUPLICATE_ROUTE: &str = "InvalidClientVpnDuplicateRoute";
    /// No authorization rule matches.
    pub const AUTHORIZATION_RULE_NOT_FOUND: &str =
        "InvalidClientVpnEndpointAuthorizationRuleNotFound";
    /// The authorization rule already exists.
    pub const DUPLICATE_AUTHORIZATION_RULE: &str = "InvalidClientVpnDuplicateAuthorizationRule";
    /// No connection has this id.
    pub const CONNECTION_NOT_FOUND: &str = "InvalidClientVpnConnection.IdNotFound";
    /// The user has no active connection.
    pub const CONNECTION_USER_NOT_FOUND: &str = "InvalidClientVpnConnection.UserNotFound";
    /// The endpoint's authorization rule quota is used up.
    pub const AUTHORIZATION_RULE_LIMIT_EXCEEDED: &str = "ClientVpnAuthorizationRuleLimitExceeded";
    /// The association's route quota is used up.
    pub const ROUTE_LIMIT_EXCEEDED: &str = "ClientVpnRouteLimitExceeded";
    /// The certificate revocation list is too large.
    pub const CRL_LIMIT_EXCEEDED: &str = "ClientVpnCertificateRevocationListLimitExceeded";
    /// The resource is not in a state that allows the operation.
    pub const INCORRECT_STATE: &str = "IncorrectState";
    /// No directory with that id (AWS's `InvalidDirectoryId.NotFound` has no Client VPN
    /// counterpart; this follows its form).
    pub const DIRECTORY_NOT_FOUND: &str = "InvalidDirectoryId.NotFound";
    /// No MFA enrolment for that user.
    pub const MFA_ENROLLMENT_NOT_FOUND: &str = "InvalidMfaEnrollment.NotFound";
    /// A directory with that name, or an enrolment for that user, exists already.
    pub const DUPLICATE_DIRECTORY_RESOURCE: &str = "InvalidDirectory.Duplicate";
    /// No identity provider with that id or name.
    pub const IDENTITY_PROVIDER_NOT_FOUND: &str = "InvalidIdentityProviderId.NotFound";
    /// An identity provider with that name exists already.
    pub const DUPLICATE_IDENTITY_PROVIDER: &str = "InvalidIdentityProvider.Duplicate";
    /// The operation is never allowed on this resource (immutable field, associate-origin route).
    pub const OPERATION_NOT_PERMITTED: &str = "OperationNotPermitted";
    /// No security group with that id (EC2's code).
    pub const SECURITY_GROUP_NOT_FOUND: &str = "InvalidGroup.NotFound";
    /// A security group with that name exists already (EC2's code).
    pub const DUPLICATE_SECURITY_GROUP: &str = "InvalidGroup.Duplicate";
    /// The security group is applied to a target network (EC2's code).
    pub const SECURITY_GROUP_IN_USE: &str = "DependencyViolation";
    /// No access key with that id.
    pub const ACCESS_KEY_NOT_FOUND: &str = "InvalidAccessKeyId.NotFound";
    /// No imported certificate with that ARN (ACM's code).
    pub const CERTIFICATE_NOT_FOUND: &str = "ResourceNotFoundException";
    /// The certificate is in use by an endpoint (ACM's code).
    pub const CERTIFICATE_IN_USE: &str = "ResourceInUseException";
    /// A quota of the store (access keys, imported certificates) is used up (ACM's code).
    pub const LIMIT_EXCEEDED: &str = "LimitExceededException";
    /// The database failed (I/O, corruption, a schema newer than this program).
    pub const INTERNAL_ERROR: &str = "InternalError";
    /// The shared database (PostgreSQL) does not answer: changes wait until it does; running
    /// sessions are not affected. HTTP 503; AWS's code for a service that cannot answer now.
    pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
}

/// An error of the control plane: `code` is stable and machine-readable (AWS names), `message`
/// is for people and names the field and the rule that refused the request.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// One of [`codes`].
    pub code: &'static str,
    /// What is wrong and, where it helps, what to do instead.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// `InvalidParameterValue` for `field`: the message reads `field: detail`.
    pub fn invalid(field: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(codes::INVALID_PARAMETER_VALUE, format!("{field}: {detail}"))
    }

    /// `MissingParameter` for `field`.
    pub fn missing(field: &str, why: impl std::fmt::Display) -> Self {
        Self::new(codes::MISSING_PARAMETER, format!("{field}: {why}"))
    }

    /// `InvalidParameterCombination` with a message.
    pub fn combination(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMETER_COMBINATION, message)
    }

    /// `IncorrectState` with a message.
    pub fn incorrect_state(message: impl Into<String>) -> Self {
        Self::new(codes::INCORRECT_STATE, message)
    }

    /// `OperationNotPermitted` with a message.
    pub fn not_permitted(message: impl Into<String>) -> Self {
        Self::new(codes::OPERATION_NOT_PERMITTED, message)
    }

    /// `InternalError` with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL_ERROR, message)
    }

    /// The HTTP status for this error: 404 for unknown ids, 409 for state conflicts and
    /// duplicates, 500 for internal errors, 400 for everything else (invalid parameters and
    /// quotas, as AWS does; no 429: a quota is not a rate limit), 503 while the shared database does
    /// not answer.
    pub fn http_status(&self) -> u16 {
        use codes::*;
        match self.code {
            ENDPOINT_NOT_FOUND
            | ASSOCIATION_NOT_FOUND
            | ROUTE_NOT_FOUND
            | AUTHORIZATION_RULE_NOT_FOUND
            | CONNECTION_NOT_FOUND
            | CONNECTION_USER_NOT_FOUND
            | DIRECTORY_NOT_FOUND
            | MFA_ENROLLMENT_NOT_FOUND
            | IDENTITY_PROVIDER_NOT_FOUND
            | ACCESS_KEY_NOT_FOUND
            | CERTIFICATE_NOT_FOUND
            | SECURITY_GROUP_NOT_FOUND => 404,
            INCORRECT_STATE
            | DUPLICATE_DIRECTORY_RESOURCE
            | DUPLICATE_IDENTITY_PROVIDER
            | ACTIVE_ASSOCIATION_NOT_FOUND
            | DUPLICATE_ASSOCIATION
            | DUPLICATE_ROUTE
            | DUPLICATE_AUTHORIZATION_RULE
            | CERTIFICATE_IN_USE
            | DUPLICATE_SECURITY_GROUP
            | SECURITY_GROUP_IN_USE => 409,
            INTERNAL_ERROR => 500,
            SERVICE_UNAVAILABLE => 503,
            _ => 400,
        }
    }
}

/// The error body of the management API's answers: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// AWS-style code, e.g. `InvalidParameterValue`.
    pub code: String,
    /// What is wrong; names the field.
    pub message: String,
}

/// A database error is an internal error (the store's `?` relies on it).
#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(format!("database: {e}"))
    }
}
