//! The exported client configuration: a plain OpenVPN profile that any stock OpenVPN client
//! imports ([`render_client_profile`] lists its lines).

use crate::model::{validate, ApiError, Directory, Endpoint, MfaMode, TransportProtocol};

/// The text a client shows when it asks for the MFA code (`static-challenge`).
pub const MFA_PROMPT: &str = "Enter MFA code";

/// User sign-in (directory endpoints): the client asks for a user name and password, and
/// with MFA for a code too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserAuth {
    /// `static-challenge "<prompt>" 1`: the client asks for the code (echoed) and sends it as
    /// `SCRV1:<b64 password>:<b64 code>`.
    pub static_challenge: bool,
}

impl UserAuth {
    pub fn for_directory(d: &Directory) -> Self {
        UserAuth {
            static_challenge: d.mfa != MfaMode::None,
        }
    }
}

/// What a client profile is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientProfile {
    /// Host names or addresses clients connect to: one (a name the operator gave, or the only
    /// node), or every node serving the endpoint, which clients try in random order.
    pub remote_hosts: Vec<String>,
    /// The endpoint's port.
    pub port: u16,
    /// The endpoint's transport.
    pub transport: TransportProtocol,
    /// `data-ciphers`, best first; the first is also written as `cipher` for OpenVPN 2.4
    /// clients, which do not read `data-ciphers`.
    pub data_ciphers: Vec<String>,
    /// The CA certificates that verify the server (PEM).
    pub ca_pem: String,
    /// Directory sign-in; `None`: the certificate alone.
    pub user_auth: Option<UserAuth>,
    /// Web sign-in at the endpoint's identity provider (single sign-on).
    pub web_sign_in: bool,
    /// The user's own client certificate and key (PEM), inline: what the self-service portal
    /// issues where the endpoint holds its client CA's key.
    pub client_certificate: Option<(String, String)>,
}

impl ClientProfile {
    /// The profile of `endpoint` reached at `remote_hosts` (each checked: a host name or an
    /// address, nothing that could smuggle another directive into the profile).
    pub fn for_endpoint(
        endpoint: &Endpoint,
        remote_hosts: &[String],
        data_ciphers: &[String],
    ) -> Result<ClientProfile, ApiError> {
        if remote_hosts.is_empty() {
            return Err(ApiError::missing(
                "remote-host",
                "no host for the profile's remote line: give one (--remote-host)",
            ));
        }
        Ok(ClientProfile {
            remote_hosts: remote_hosts
                .iter()
                .map(|h| remote_host_param(h))
                .collect::<Result<_, _>>()?,
            port: endpoint.vpn_port,
            transport: endpoint.transport_protocol,
            data_ciphers: data_ciphers.to_vec(),
            ca_pem: server_ca_pem(endpoint)?,
            user_auth: None,
            web_sign_in: endpoint.idp_id().is_some(),
            client_certificate: None,
        })
    }

    /// The profile text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("client\ndev tun\n");
        s.push_str(&format!("proto {}\n", self.transport.as_str()));
        for host in &self.remote_hosts {
            s.push_str(&format!("remote {host} {}\n", self.port));
        }
        if self.remote_hosts.len() > 1 {
            // Several nodes serve the endpoint: spread clients over them, and move on to the
            // next one quickly when one does not answer (a node down).
            s.push_str(&format!(
                "remote-random\nserver-poll-timeout {SERVER_POLL_TIMEOUT_SECS}\n"
            ));
        }
        s.push_str("remote-cert-tls server\nnobind\nresolv-retry infinite\n");
        if self.transport == TransportProtocol::Udp {
            // Tell the gateway when the client goes, so the session (and the connection list)
            // ends at once rather than after the keepalive timeout.
            s.push_str("explicit-exit-notify 1\n");
        }
        if !self.data_ciphers.is_empty() {
            s.push_str(&format!("data-ciphers {}\n", self.data_ciphers.join(":")));
            s.push_str(&format!("cipher {}\n", self.data_ciphers[0]));
        }
        if let Some(u) = &self.user_auth {
            s.push_str("auth-user-pass\n");
            if u.static_challenge {
                s.push_str(&format!("static-challenge \"{MFA_PROMPT}\" 1\n"));
            }
            // Keep the password out of the client's memory once the auth-token replaces it.
            s.push_str("auth-nocache\n");
        }
        if self.web_sign_in {
            // Stock clients offer web sign-in only when told to; the gateway then answers
            // with the sign-in link (shown by the 2.6 CLI, opened by GUIs).
            s.push_str("setenv IV_SSO webauth\n");
            // A client without a certificate starts only with some user name and password:
            // these are placeholders (the gateway ignores them), replaced by the session's
            // auth-token after the sign-in, so reconnects need no second sign-in.
            s.push_str("<auth-user-pass>\nsso\nweb-sign-in\n</auth-user-pass>\n");
        }
        s.push_str("verb 3\n");
        s.push_str("<ca>\n");
        s.push_str(self.ca_pem.trim_end());
        s.push_str("\n</ca>\n");
        if let Some((cert, key)) = &self.client_certificate {
            s.push_str(&format!(
                "<cert>\n{}\n</cert>\n<key>\n{}\n</key>\n",
                cert.trim_end(),
                key.trim_end()
            ));
        }
        s
    }
}

/// How long a client with several `remote` lines waits for one node before it tries the next.
pub const SERVER_POLL_TIMEOUT_SECS: u32 = 5;

/// Where a profile of endpoint `id` sends clients: the host the operator names (`given`: a DNS
/// name for all its nodes, say), else every live node that serves it and has a public
/// address, else `fallback` (this daemon's `public_host`).
pub(crate) fn remote_hosts(
    store: &crate::storage::Store,
    id: &str,
    given: Option<String>,
    fallback: Option<String>,
) -> Result<Vec<String>, ApiError> {
    if let Some(h) = given {
        return Ok(vec![remote_host_param(&h)?]);
    }
    let nodes = store.endpoint_node_addresses(id)?;
    if !nodes.is_empty() {
        return Ok(nodes);
    }
    match fallback {
        Some(h) => Ok(vec![remote_host_param(&h)?]),
        None => Err(ApiError::missing(
            "remote-host",
            "no node serving the endpoint has a public address, and none was given; give the \
             name or address clients connect to (CLI: --remote-host HOST; API: \
             ?remote-host=HOST), or set public_host in each node's daemon configuration",
        )),
    }
}

/// The profile of endpoint `id` as the store has it: its server CA, its transport, and how
/// its users sign in (directory prompts, web sign-in).
pub(crate) fn endpoint_profile(
    store: &crate::storage::Store,
    id: &str,
    remote_hosts: &[String],
    data_ciphers: &[String],
) -> Result<ClientProfile, ApiError> {
    let ep = store.describe_endpoint(id)?;
    let mut p = ClientProfile::for_endpoint(&ep, remote_hosts, data_ciphers)?;
    p.user_auth = store
        .endpoint_directory(id)?
        .map(|d| UserAuth::for_directory(&d));
    Ok(p)
}

/// The OpenVPN client profile of `endpoint` reached at `remote_host`.
pub fn render_client_profile(
    endpoint: &Endpoint,
    remote_host: &str,
    data_ciphers: &[String],
) -> Result<String, ApiError> {
    Ok(ClientProfile::for_endpoint(endpoint, &[remote_host.to_string()], data_ciphers)?.render())
}

/// Checks a remote host: 1..=253 characters of letters, digits, `.`, `-`, `_`, `:` (IPv6).
pub(crate) fn remote_host_param(s: &str) -> Result<String, ApiError> {
    const FIELD: &str = "remote-host";
    if s.is_empty() || s.len() > 253 {
        return Err(ApiError::invalid(FIELD, "must be 1 to 253 characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
    {
        return Err(ApiError::invalid(
            FIELD,
            format!("{s:?} is not a host name or an IP address (character {c:?})"),
        ));
    }
    Ok(s.to_string())
}

/// One PEM certificate block of a bundle: its text and its parsed names.
struct Block {
    text: String,
    subject: Vec<u8>,
    issuer: Vec<u8>,
}

/// Splits a PEM bundle into its certificate blocks.
fn blocks(field: &str, pem: &str) -> Result<Vec<Block>, ApiError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else { break };
        let text = &after[..end + END.len()];
        let der = validate::certificates(field, text)?;
        let Some(der) = der.first() else { break };
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| ApiError::invalid(field, format!("unreadable certificate: {e}")))?;
        out.push(Block {
            text: text.to_string(),
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
        });
        rest = &after[end + END.len()..];
    }
    Ok(out)
}

/// The CA certificates a client needs to verify the endpoint's server certificate: the chain
/// after the leaf, completed with the certificate that issued its last element when the
/// client CA bundle holds it (the usual setup: one CA issues server and client certificates);
/// a self-signed server certificate is its own CA.
fn server_ca_pem(endpoint: &Endpoint) -> Result<String, ApiError> {
    let chain = blocks("server-certificate", &endpoint.server_certificate)?;
    let Some((leaf, rest)) = chain.split_first() else {
        return Err(ApiError::internal(format!(
            "endpoint {} has no server certificate",
            endpoint.client_vpn_endpoint_id
        )));
    };
    let mut ca: Vec<&Block> = rest.iter().collect();
    let last = ca.last().copied().unwrap_or(leaf);
    let client_ca = blocks(
        "client-root-certificate-chain",
        endpoint.client_ca().unwrap_or(""),
    )?;
    if last.subject == last.issuer {
        if ca.is_empty() {
            ca.push(leaf);
        }
    } else if let Some(issuer) = client_ca.iter().find(|b| b.subject == last.issuer) {
        ca.push(issuer);
    }
    if ca.is_empty() {
        return Err(ApiError::incorrect_state(format!(
            "endpoint {}: neither the server certificate chain nor the client CA bundle holds \
             the CA that issued the server certificate, so no client profile can verify the \
             server; modify the endpoint with a server certificate chain that includes its CA",
            endpoint.client_vpn_endpoint_id
        )));
    }
    Ok(ca
        .iter()
        .map(|b| b.text.trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}
