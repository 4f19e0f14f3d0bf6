//! The EC2 Query protocol's request: a form-encoded body of `Name=value` pairs, lists flattened
//! as `Name.1`, `Name.2`, structures as `Name.Member`, lists of structures as
//! `Name.1.Member`. [`Params`] reads it; every parameter must be read by the operation, so an
//! unknown or misspelt one is refused by name (`UnknownParameter`) rather than ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::model::ApiError;

/// Most parameters in one request (a CRL is one parameter; 1000 filters values would be many).
pub const MAX_PARAMS: usize = 2000;
/// Longest parameter name.
pub const MAX_NAME_LEN: usize = 256;
/// Most items of one flattened list.
pub const MAX_LIST_ITEMS: usize = 1000;

/// EC2's code for a parameter the operation does not take.
pub const UNKNOWN_PARAMETER: &str = "UnknownParameter";

/// The parameters of one request.
#[derive(Debug, Default)]
pub struct Params {
    map: BTreeMap<String, String>,
    read: Mutex<BTreeSet<String>>,
}

impl Params {
    /// Parses a form body. Refused: more than [`MAX_PARAMS`] pairs, a name longer than
    /// [`MAX_NAME_LEN`], a name given twice, text that is not UTF-8.
    pub fn parse(body: &[u8]) -> Result<Params, ApiError> {
        let mut map = BTreeMap::new();
        for (i, (k, v)) in form_urlencoded::parse(body).enumerate() {
            if i >= MAX_PARAMS {
                return Err(ApiError::invalid(
                    "request",
                    format!("more than {MAX_PARAMS} parameters"),
                ));
            }
            if k.len() > MAX_NAME_LEN || k.is_empty() {
                return Err(ApiError::invalid(
                    "request",
                    format!("a parameter name must have 1 to {MAX_NAME_LEN} characters"),
                ));
            }
            if k.contains('\u{fffd}') || v.contains('\u{fffd}') {
                return Err(ApiError::invalid(&k, "not UTF-8 text (or it holds U+FFFD)"));
            }
            if map.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(ApiError::invalid(&k, "given more than once"));
            }
        }
        Ok(Params {
            map,
            read: Mutex::new(BTreeSet::new()),
        })
    }

    fn mark(&self, k: &str) {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k.to_string());
    }

    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<String> {
        self.mark(name);
        self.map.get(name).cloned()
    }

    /// A required parameter's value.
    pub fn required(&self, name: &str) -> Result<String, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::missing(name, format!("the request must include {name}")))
    }

    /// A boolean (`true` / `false`).
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name).as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("{v:?} is not true or false"),
            )),
        }
    }

    /// An integer.
    pub fn int(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::invalid(name, format!("{v:?} is not an integer")))
            })
            .transpose()
    }

    /// The indexes `i` of `prefix.i…` given, in numeric order; refused beyond
    /// [`MAX_LIST_ITEMS`] or for an index that is not a positive number.
    fn indexes(&self, prefix: &str) -> Result<Vec<u32>, ApiError> {
        let start = format!("{prefix}.");
        let mut out = BTreeSet::new();
        for k in self.map.range(start.clone()..).map(|(k, _)| k) {
            let Some(rest) = k.strip_prefix(&start) else {
                break;
            };
            let idx = rest.split('.').next().unwrap_or(rest);
            let n: u32 = idx
                .parse()
                .ok()
                .filter(|n| *n >= 1 && !idx.starts_with('0'))
                .ok_or_else(|| {
                    ApiError::invalid(k, format!("{prefix} items are numbered from 1"))
                })?;
            out.insert(n);
            if out.len() > MAX_LIST_ITEMS {
                return Err(ApiError::invalid(
                    prefix,
                    format!("more than {MAX_LIST_ITEMS} items"),
                ));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// A flattened list of values: `prefix.1`, `prefix.2`, …
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        for i in self.indexes(prefix)? {
            let k = format!("{prefix}.{i}");
            match self.get(&k) {
                Some(v) => out.push(v),
                None => return Err(ApiError::invalid(&k, "expected a value here")),
            }
        }
        Ok(out)
    }

    /// A flattened list of structures: the prefixes `prefix.1`, `prefix.2`, … to read each
    /// one's members under.
    pub fn structs(&self, prefix: &str) -> Result<Vec<String>, ApiError> {
        Ok(self
            .indexes(prefix)?
            .into_iter()
            .map(|i| format!("{prefix}.{i}"))
            .collect())
    }

    /// Whether any parameter starts with `prefix.` (a structure was given).
    pub fn has_struct(&self, prefix: &str) -> bool {
        let start = format!("{prefix}.");
        self.map.keys().any(|k| k.starts_with(&start))
    }

    /// Counts every parameter as read (an answer replayed for a `ClientToken` took them all).
    pub fn mark_all(&self) {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(self.map.keys().cloned());
    }

    /// Refuses the request if a parameter was never read: the operation does not take it.
    pub fn finish(&self) -> Result<(), ApiError> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        match self.map.keys().find(|k| !read.contains(*k)) {
            None => Ok(()),
            Some(k) => Err(ApiError::new(
                UNKNOWN_PARAMETER,
                format!("the parameter {k} is not recognized by this action"),
            )),
        }
    }

    /// Every parameter but the listed ones, as sorted `name=value` lines: what a
    /// `ClientToken` stands for (its hash is compared on a retry).
    pub fn canonical_without(&self, skip: &[&str]) -> String {
        self.map
            .iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_structures_flatten_as_the_cli_sends_them() {
        let p = Params::parse(
            b"Action=X&ClientVpnEndpointId.2=b&ClientVpnEndpointId.1=a&ClientVpnEndpointId.10=c\
              &Filter.1.Name=username&Filter.1.Value.1=alice&Filter.1.Value.2=bob\
              &DnsServers.CustomDnsServers.1=10.0.0.2&Description=a%20b%2Bc",
        )
        .unwrap();
        assert_eq!(p.get("Action").as_deref(), Some("X"));
        assert_eq!(p.list("ClientVpnEndpointId").unwrap(), ["a", "b", "c"]);
        let filters = p.structs("Filter").unwrap();
        assert_eq!(filters, ["Filter.1"]);
        assert_eq!(p.get("Filter.1.Name").as_deref(), Some("username"));
        assert_eq!(p.list("Filter.1.Value").unwrap(), ["alice", "bob"]);
        assert!(
            p.finish().is_err(),
            "DnsServers and Description not read yet"
        );
        assert_eq!(p.list("DnsServers.CustomDnsServers").unwrap(), ["10.0.0.2"]);
        assert_eq!(p.get("Description").as_deref(), Some("a b+c"));
        p.finish().unwrap();
    }

    #[test]
    fn hostile_forms_are_refused_by_name() {
        let e = Params::parse(b"A=1&A=2").unwrap_err();
        assert!(e.message.contains("more than once"), "{e}");
        let e = Params::parse(b"Id.0=x").unwrap().list("Id").unwrap_err();
        assert!(e.message.contains("numbered from 1"), "{e}");
        let e = Params::parse(b"Id.01=x").unwrap().list("Id").unwrap_err();
        assert!(e.message.contains("numbered from 1"), "{e}");
        let e = Params::parse(b"Id.x=x").unwrap().list("Id").unwrap_err();
        assert!(e.message.contains("numbered from 1"), "{e}");
        let e = Params::parse(b"Id.1.Name=x")
            .unwrap()
            .list("Id")
            .unwrap_err();
        assert!(e.message.contains("expected a value"), "{e}");
        let many: String = (0..=MAX_PARAMS).map(|i| format!("P{i}=1&")).collect();
        assert!(Params::parse(many.as_bytes()).is_err());
        let long = format!("{}=1", "N".repeat(MAX_NAME_LEN + 1));
        assert!(Params::parse(long.as_bytes()).is_err());
        assert!(Params::parse(b"A=%ff").is_err());
        let p = Params::parse(b"Unknown=1").unwrap();
        assert_eq!(p.finish().unwrap_err().code, UNKNOWN_PARAMETER);
        let p = Params::parse(b"B=maybe&N=1x").unwrap();
        assert!(p.bool("B").is_err());
        assert!(p.int("N").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_body_parses_or_is_refused_without_panicking(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(p) = Params::parse(&body) {
                let _ = p.list("A");
                let _ = p.structs("A");
                let _ = p.finish();
            }
        }
    }
}
