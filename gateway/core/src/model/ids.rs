//! Resource ids in AWS's form: a prefix naming the kind (`cvpn-endpoint-`, `cvpn-assoc-`,
//! `cvpn-connection-`) and 17 lowercase hex digits. The one generator of ids in the crate: the
//! store (endpoints, associations, connections it records) and the endpoint daemon (connection
//! ids of file-mode endpoints) both call [`new_id`].

use super::error::ApiError;

/// Prefix of endpoint ids: `cvpn-endpoint-` and 17 lowercase hex digits.
pub const ENDPOINT_ID_PREFIX: &str = "cvpn-endpoint-";
/// Prefix of target network association ids: `cvpn-assoc-` and 17 lowercase hex digits.
pub const ASSOCIATION_ID_PREFIX: &str = "cvpn-assoc-";
/// Prefix of connection ids: `cvpn-connection-` and 17 lowercase hex digits.
pub const CONNECTION_ID_PREFIX: &str = "cvpn-connection-";
/// Prefix of directory ids: `cvpn-directory-` and 17 lowercase hex digits.
pub const DIRECTORY_ID_PREFIX: &str = "cvpn-directory-";
/// Prefix of identity provider ids: `idp-` and 17 lowercase hex digits.
pub const IDP_ID_PREFIX: &str = "idp-";
/// Prefix of security group ids: `sg-` and 17 lowercase hex digits (AWS's form).
pub const SECURITY_GROUP_ID_PREFIX: &str = "sg-";
/// Number of hex digits after an id's prefix (as AWS's ids).
pub const ID_HEX_DIGITS: usize = 17;

/// A new random id: `prefix` and [`ID_HEX_DIGITS`] lowercase hex digits (68 random bits from
/// the system's CSPRNG).
pub fn new_id(prefix: &str) -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 9];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::internal("no system randomness for a new resource id"))?;
    let mut id = String::with_capacity(prefix.len() + ID_HEX_DIGITS);
    id.push_str(prefix);
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id.truncate(prefix.len() + ID_HEX_DIGITS);
    Ok(id)
}

/// True if `id` is `prefix` followed by exactly [`ID_HEX_DIGITS`] lowercase hex digits.
pub fn is_valid_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|hex| {
        hex.len() == ID_HEX_DIGITS && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_aws_form() {
        for prefix in [
            ENDPOINT_ID_PREFIX,
            ASSOCIATION_ID_PREFIX,
            CONNECTION_ID_PREFIX,
            DIRECTORY_ID_PREFIX,
            IDP_ID_PREFIX,
        ] {
            let id = new_id(prefix).unwrap();
            assert_eq!(id.len(), prefix.len() + 17, "{id}");
            assert!(is_valid_id(prefix, &id), "{id}");
            assert_ne!(id, new_id(prefix).unwrap());
        }
        assert!(is_valid_id(
            ENDPOINT_ID_PREFIX,
            "cvpn-endpoint-0123456789abcdef0"
        ));
        for bad in [
            "cvpn-endpoint-0123456789abcdef",   // 16 digits
            "cvpn-endpoint-0123456789abcdef01", // 18 digits
            "cvpn-endpoint-0123456789ABCDEF0",  // upper case
            "cvpn-endpoint-0123456789abcdefg",  // not hex
            "cvpn-assoc-0123456789abcdef0",     // other kind
            "",
        ] {
            assert!(!is_valid_id(ENDPOINT_ID_PREFIX, bad), "{bad}");
        }
    }
}
