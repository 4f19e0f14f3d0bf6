//! The `cvpn` resource commands: one subcommand group per resource of the model, each a
//! client of the management API ([`crate::api`]) on the daemon's Unix socket (default
//! [`DEFAULT_SOCKET_PATH`]) or, with `--api https://HOST:PORT`, its TLS listener.
//!
//! ```text
//! cvpn endpoint   create | modify | delete | describe | revoke-user | certificates
//! cvpn network    associate | disassociate | describe
//! cvpn route      create | delete | describe
//! cvpn rule       authorize | revoke | describe
//! cvpn connection list | terminate
//! cvpn config     export
//! cvpn crl        import | export
//! cvpn directory  create | modify | delete | describe
//! cvpn mfa        enroll | remove | list
//! cvpn idp        create | modify | delete | describe | list
//! ```
//!
//! Output is a human table by default and the API's JSON with `--output json`. A request the
//! API refuses prints `Code: message` (e.g. `InvalidParameterValue: client-cidr-block: …`) on
//! standard error and exits 1.
//!
//! The binary embeds [`ResourceCommand`] in its own command enum and calls [`run`]; the
//! standalone [`CliArgs`] parser is the same commands under a `cvpn` root (tests use it).
//!
//! The HTTP client is hyper 1's connection-level HTTP/1.1 client over Tokio's `UnixStream`
//! or a tokio-rustls stream ([`client`]), on a current-thread runtime per command.

pub mod access_key;
pub mod client;
pub mod directory;
pub mod identity_provider;
pub mod security_group;
pub mod table;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use serde_json::{json, Map, Value};

use self::client::{ApiReply, ApiRequest, ClientError, Target};
use self::table::{opt, Table};
use crate::api::types::*;
use crate::api::DEFAULT_SOCKET_PATH;
use crate::model::{
    AssociateResult, AuthorizationRule, Connection, CrlSummary, DeleteEndpointResult,
    DisassociateResult, Endpoint, ListenerStatus, ModifyEndpointResult, Route, TargetNetwork,
};

// ---- command line -------------------------------------------------------------------------------

/// The resource commands under their own `cvpn` root (the binary flattens
/// [`ResourceCommand`] into its command enum instead).
#[derive(Debug, Parser)]
#[command(
    name = "cvpn",
    about = "Manage a cvpn gateway's Client VPN resources through its API"
)]
pub struct CliArgs {
    /// The resource and the action.
    #[command(subcommand)]
    pub command: ResourceCommand,
}

/// How to print results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    #[default]
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Where the API is and how to print; accepted anywhere after the resource name.
#[derive(Clone, Debug, Args)]
#[allow(rustdoc::bare_urls)] // The doc comments are the --help text: plain URLs read best there.
pub struct ApiOptions {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "CVPN_SOCKET", value_name = "PATH", default_value = DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,
    /// Use the API's TLS listener instead of the socket, e.g. https://gw.example.com:8443
    /// (port 443 if none).
    #[arg(long, global = true, env = "CVPN_API", value_name = "URL")]
    pub api: Option<String>,
    /// Bearer token for --api. Prefer the CVPN_API_TOKEN environment variable: command lines
    /// are visible to other users of the host.
    #[arg(
        long,
        global = true,
        env = "CVPN_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// CA certificate(s), PEM, that verify the TLS listener's certificate for --api (default:
    /// the system's CA bundle).
    #[arg(long, global = true, env = "CVPN_API_CA", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Output format: human-readable tables, or the API's JSON.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The resource commands, one group per resource. Each talks to the daemon's API.
#[derive(Debug, Subcommand)]
pub enum ResourceCommand {
    /// Client VPN endpoints: create, modify, delete, describe; revoke a user's portal
    /// certificates, list them.
    Endpoint {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: EndpointCommand,
    },
    /// Target networks (gateway-host interfaces client traffic leaves through): associate,
    /// disassociate, describe.
    Network {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: NetworkCommand,
    },
    /// Routes: create, delete, describe.
    Route {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: RouteCommand,
    },
    /// Authorization rules (default deny): authorize, revoke, describe.
    Rule {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: RuleCommand,
    },
    /// Client connections: list, terminate.
    Connection {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: ConnectionCommand,
    },
    /// Client configuration: export an OpenVPN profile.
    Config {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// Certificate revocation list: import, export.
    Crl {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: CrlCommand,
    },
    /// Directories (LDAP / Active Directory) users sign in against: create, modify, delete,
    /// describe.
    Directory {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: directory::DirectoryCommand,
    },
    /// TOTP enrolments of directory users: enroll, remove, list.
    Mfa {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: directory::MfaCommand,
    },
    /// Identity providers (OIDC / SAML) users sign in at with federated authentication:
    /// create, modify, delete, describe, list.
    Idp {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: identity_provider::IdpCommand,
    },
    /// Security groups: egress rules for the traffic leaving through the target networks they
    /// are applied to (`cvpn network apply-security-groups`): create, describe, delete.
    SecurityGroup {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: security_group::SecurityGroupCommand,
    },
    /// Access keys that sign requests to the AWS-compatible API (`aws ec2 … --endpoint-url`):
    /// create (the secret is shown once), list, delete.
    AccessKey {
        /// Where the API is and how to print.
        #[command(flatten)]
        api: ApiOptions,
        /// The action.
        #[command(subcommand)]
        action: access_key::AccessKeyCommand,
    },
}

/// Endpoint settings that both create and modify take.
#[derive(Clone, Debug, Default, Args)]
pub struct EndpointSettings {
    /// VPN port: 443 or 1194 (create: default 443).
    #[arg(long, value_name = "PORT")]
    pub port: Option<i64>,
    /// A DNS server pushed to clients; repeat for a second (at most 2). On modify, replaces the
    /// list.
    #[arg(long = "dns-server", value_name = "IPV4")]
    pub dns_servers: Vec<String>,
    /// Split tunnel: push the routes instead of redirecting all traffic (create: default
    /// false). Bare flag means true.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub split_tunnel: Option<bool>,
    /// Maximum session length in hours: 8, 10, 12 or 24 (create: default 24).
    #[arg(long, value_name = "HOURS")]
    pub session_timeout_hours: Option<i64>,
    /// At the session timeout, disconnect the client instead of letting it reconnect silently.
    /// Bare flag means true.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub disconnect_on_session_timeout: Option<bool>,
    /// Show this login banner to clients (at most 1400 characters).
    #[arg(long, value_name = "TEXT", conflicts_with = "no_banner")]
    pub banner: Option<String>,
    /// Turn the login banner off.
    #[arg(long)]
    pub no_banner: bool,
    /// Client connect handler called on every connection attempt: an http(s) URL or the
    /// absolute path of an executable.
    #[arg(long, value_name = "URL|PATH", conflicts_with = "no_connect_handler")]
    pub connect_handler: Option<String>,
    /// Turn the client connect handler off.
    #[arg(long)]
    pub no_connect_handler: bool,
    /// Write the connection log (create: default true).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub connection_log: Option<bool>,
    /// Also write connection log entries to the daemon's standard output (create: default
    /// false). Bare flag means true.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub connection_log_stdout: Option<bool>,
    /// Free-text description (at most 255 characters; on modify, "" clears it).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// A tag KEY=VALUE; repeat for more (on modify, replaces all tags).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// The self-service portal, where users sign in at the identity provider and download
    /// their profile: enabled or disabled (create: default disabled; needs --idp).
    #[arg(long, value_name = "enabled|disabled", value_parser = ["enabled", "disabled"])]
    pub self_service_portal: Option<String>,
}

/// `cvpn endpoint …`.
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Creates an endpoint. It is pending-associate until a target network is associated.
    Create {
        /// Client address range, IPv4 CIDR /12../22 (immutable), e.g. 10.2.0.0/22.
        #[arg(long, value_name = "CIDR")]
        client_cidr: String,
        /// Server certificate chain, PEM file.
        #[arg(long, value_name = "FILE")]
        server_cert: PathBuf,
        /// Server private key, PEM file.
        #[arg(long, value_name = "FILE")]
        server_key: PathBuf,
        /// CA bundle (PEM file) that client certificates must chain to (certificate
        /// authentication; immutable).
        #[arg(long, value_name = "FILE", required_unless_present_any = ["directory", "idp"])]
        client_ca: Option<PathBuf>,
        /// Sign users in against this directory (id or name; `cvpn directory create`): with
        /// --client-ca both must pass (AWS's mutual + Active Directory); alone, users sign in
        /// with a user name and password only (immutable).
        #[arg(long, value_name = "DIR", conflicts_with = "idp")]
        directory: Option<String>,
        /// Sign users in at this identity provider (id or name; `cvpn idp create`): single
        /// sign-on in the browser. With --client-ca both must pass; alone, the identity
        /// provider only (immutable).
        #[arg(long, value_name = "IDP")]
        idp: Option<String>,
        /// Transport: udp (default) or tcp (immutable).
        #[arg(long, value_name = "udp|tcp")]
        transport: Option<String>,
        /// Settings.
        #[command(flatten)]
        settings: EndpointSettings,
    },
    /// Modifies an endpoint's mutable settings; only the given ones change.
    Modify {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// A new server certificate chain, PEM file.
        #[arg(long, value_name = "FILE")]
        server_cert: Option<PathBuf>,
        /// A new server private key, PEM file (must match the certificate).
        #[arg(long, value_name = "FILE")]
        server_key: Option<PathBuf>,
        /// Remove every DNS server.
        #[arg(long, conflicts_with = "dns_servers")]
        no_dns_servers: bool,
        /// The client CA's private key, PEM file (PKCS#8, PKCS#1 or SEC1; must belong to a
        /// certificate of the client CA): the self-service portal then issues users short-lived
        /// client certificates. Never shown again; "" removes it.
        #[arg(long, value_name = "FILE", conflicts_with = "remove_client_ca_key")]
        client_ca_key: Option<String>,
        /// Remove the client CA's private key (the portal stops issuing certificates).
        #[arg(long)]
        remove_client_ca_key: bool,
        /// Settings.
        #[command(flatten)]
        settings: EndpointSettings,
    },
    /// Ends a user's access: revokes the client certificates the self-service portal issued
    /// them (a new CRL, signed with the endpoint's client CA key) and terminates their
    /// connections.
    RevokeUser {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// The user.
        #[arg(long, value_name = "NAME")]
        username: String,
    },
    /// Lists the client certificates the self-service portal issued.
    Certificates {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// Only this user's.
        #[arg(long, value_name = "NAME")]
        username: Option<String>,
    },
    /// Deletes an endpoint (disassociate its target networks first).
    Delete {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
    },
    /// Describes endpoints: all of them, or the ones given.
    Describe {
        /// Endpoints, cvpn-endpoint-…; none means all.
        endpoint_ids: Vec<String>,
    },
}

/// `cvpn network …`.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Associates a target network: a gateway-host interface client traffic leaves through.
    /// The first association makes the endpoint available.
    Associate {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// The interface name, e.g. eth1.
        #[arg(long, alias = "target-network-id", value_name = "NAME")]
        interface: String,
        /// The interface's subnet (network address), e.g. 10.88.0.0/24; a route to it is
        /// added.
        #[arg(long, value_name = "CIDR")]
        subnet: Option<String>,
        /// Source address for NAT on that network (default: the interface's own).
        #[arg(long, value_name = "IPV4")]
        snat_address: Option<String>,
        /// The node (gateway host) whose interface this is; that node serves the endpoint
        /// (default: the node whose API is asked).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Disassociates a target network and removes its routes; the last one terminates every
    /// connection.
    Disassociate {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// The association, cvpn-assoc-….
        association_id: String,
    },
    /// Applies security groups to the endpoint's target networks (of one node with --node):
    /// only what their egress rules allow leaves through them. No --security-group: back to
    /// the default (everything may leave).
    ApplySecurityGroups {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// A security group, sg-…; repeat for more (at most 5).
        #[arg(long = "security-group", value_name = "SG")]
        security_groups: Vec<String>,
        /// Only this node's target networks (AWS: the VPC).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
    /// Describes an endpoint's target network associations.
    Describe {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// Associations, cvpn-assoc-…; none means all.
        association_ids: Vec<String>,
    },
}

/// `cvpn route …`.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Adds a route through an associated target network.
    Create {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// The destination, e.g. 10.99.0.0/16 or 0.0.0.0/0.
        #[arg(long, value_name = "CIDR")]
        destination: String,
        /// The interface of the associated target network the traffic leaves through.
        #[arg(long, alias = "target-network-id", value_name = "NAME")]
        interface: String,
        /// Free-text description.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Deletes a route added with `route create` (routes of associated subnets go with their
    /// network).
    Delete {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// The destination.
        #[arg(long, value_name = "CIDR")]
        destination: String,
        /// The target network's interface (needed when several routes share the destination).
        #[arg(long, alias = "target-network-id", value_name = "NAME")]
        interface: Option<String>,
    },
    /// Describes an endpoint's routes.
    Describe {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
    },
}

/// `cvpn rule …`.
#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Authorizes a group (or all groups) to reach a destination.
    #[command(group(ArgGroup::new("who").required(true).args(["group", "all_groups"])))]
    Authorize {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// The destination, e.g. 10.88.0.0/24.
        #[arg(long, value_name = "CIDR")]
        destination: String,
        /// The group admitted (from the client certificate).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Admit every client.
        #[arg(long)]
        all_groups: bool,
        /// Admit only this protocol: tcp, udp or icmp (beyond AWS; default: every packet).
        #[arg(long, value_name = "PROTOCOL")]
        protocol: Option<String>,
        /// With --protocol tcp or udp: only these destination ports, 443 or 8000-8100.
        #[arg(long, value_name = "PORTS", requires = "protocol")]
        ports: Option<String>,
        /// Free-text description.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Revokes an authorization rule.
    #[command(group(ArgGroup::new("who").required(true).args(["group", "all_groups"])))]
    Revoke {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// The rule's destination.
        #[arg(long, value_name = "CIDR")]
        destination: String,
        /// The rule's group.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// The all-groups rule.
        #[arg(long)]
        all_groups: bool,
        /// The rule's protocol, if it has one.
        #[arg(long, value_name = "PROTOCOL")]
        protocol: Option<String>,
        /// The rule's ports, if it has them.
        #[arg(long, value_name = "PORTS", requires = "protocol")]
        ports: Option<String>,
    },
    /// Describes an endpoint's authorization rules.
    Describe {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
    },
}

/// `cvpn connection …`.
#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// Lists connections: active ones and those ended in the retention period (default 1 h).
    List {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// Only this connection, cvpn-connection-….
        #[arg(long, value_name = "ID")]
        connection_id: Option<String>,
        /// Only this user's connections.
        #[arg(long, value_name = "NAME")]
        username: Option<String>,
        /// Only connections in this state: active, terminating, terminated or
        /// failed-to-terminate.
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
    },
    /// Terminates a connection, or every active connection of a user.
    #[command(group(ArgGroup::new("which").required(true).args(["connection_id", "username"])))]
    Terminate {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// The connection, cvpn-connection-….
        #[arg(long, value_name = "ID")]
        connection_id: Option<String>,
        /// The user whose connections end (with certificate authentication, the user is the
        /// certificate's common name).
        #[arg(long, value_name = "NAME")]
        username: Option<String>,
    },
}

/// `cvpn config …`.
#[derive(Debug, Subcommand)]
#[allow(rustdoc::invalid_html_tags)] // The doc comments are the --help text: <cert> is literal.
pub enum ConfigCommand {
    /// Prints the endpoint's OpenVPN client profile.
    Export {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// The host name or address clients connect to (default: every node serving the
        /// endpoint, by its public_host, else the daemon's configured public host).
        #[arg(long, value_name = "HOST")]
        remote_host: Option<String>,
        /// Append this client certificate (PEM file) to the profile as <cert>.
        #[arg(long, value_name = "FILE", requires = "key")]
        cert: Option<PathBuf>,
        /// Append this client private key (PEM file) to the profile as <key>.
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<PathBuf>,
    },
}

/// `cvpn crl …`.
#[derive(Debug, Subcommand)]
pub enum CrlCommand {
    /// Imports (replaces) the endpoint's certificate revocation list; sessions of revoked
    /// certificates are terminated.
    Import {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
        /// PEM file with one or more X509 CRL blocks issued by the client CA; - reads standard
        /// input.
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// Prints the endpoint's certificate revocation list (PEM).
    Export {
        /// The endpoint, cvpn-endpoint-….
        endpoint_id: String,
    },
}

// ---- running ------------------------------------------------------------------------------------

/// Runs a resource command, printing to standard output and error. Returns the exit code: 0
/// on success, 1 when the API refused the request (its `Code: message` is printed). Errors
/// (API unreachable, unreadable files) are returned.
pub fn run(cmd: ResourceCommand) -> anyhow::Result<i32> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    run_with(cmd, &mut stdout.lock(), &mut stderr.lock())
}

/// [`run`], printing to `out` and `err`.
pub fn run_with(
    cmd: ResourceCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    runtime.block_on(run_async(cmd, out, err))
}

/// [`run_with`] on the caller's runtime.
pub async fn run_async(
    cmd: ResourceCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<i32> {
    let (api, action) = split(cmd);
    let target = target(&api)?;
    let mut cx = Cx {
        target,
        output: api.output,
        out,
    };
    match action.run(&mut cx).await {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Api { .. }) => {
                writeln!(err, "{e}")?;
                Ok(1)
            }
            _ => Err(e),
        },
    }
}

enum Action {
    Endpoint(EndpointCommand),
    Network(NetworkCommand),
    Route(RouteCommand),
    Rule(RuleCommand),
    Connection(ConnectionCommand),
    Config(ConfigCommand),
    Crl(CrlCommand),
    Directory(directory::DirectoryCommand),
    Mfa(directory::MfaCommand),
    Idp(identity_provider::IdpCommand),
    AccessKey(access_key::AccessKeyCommand),
    SecurityGroup(security_group::SecurityGroupCommand),
}

fn split(cmd: ResourceCommand) -> (ApiOptions, Action) {
    match cmd {
        ResourceCommand::Endpoint { api, action } => (api, Action::Endpoint(action)),
        ResourceCommand::Network { api, action } => (api, Action::Network(action)),
        ResourceCommand::Route { api, action } => (api, Action::Route(action)),
        ResourceCommand::Rule { api, action } => (api, Action::Rule(action)),
        ResourceCommand::Connection { api, action } => (api, Action::Connection(action)),
        ResourceCommand::Config { api, action } => (api, Action::Config(action)),
        ResourceCommand::Crl { api, action } => (api, Action::Crl(action)),
        ResourceCommand::Directory { api, action } => (api, Action::Directory(action)),
        ResourceCommand::Mfa { api, action } => (api, Action::Mfa(action)),
        ResourceCommand::Idp { api, action } => (api, Action::Idp(action)),
        ResourceCommand::AccessKey { api, action } => (api, Action::AccessKey(action)),
        ResourceCommand::SecurityGroup { api, action } => (api, Action::SecurityGroup(action)),
    }
}

fn target(api: &ApiOptions) -> anyhow::Result<Target> {
    match &api.api {
        Some(url) => Ok(Target::https(
            url,
            api.ca_cert.as_deref(),
            api.token.clone(),
        )?),
        None => Ok(Target::Unix(api.socket.clone())),
    }
}

/// What a command runs with.
struct Cx<'a> {
    target: Target,
    output: Output,
    out: &'a mut dyn Write,
}

impl Cx<'_> {
    async fn send(&self, req: ApiRequest) -> Result<ApiReply, ClientError> {
        client::send(&self.target, req).await
    }

    /// Sends a JSON object body with `method` to `path`.
    async fn send_json(
        &self,
        method: Method,
        path: String,
        body: Map<String, Value>,
    ) -> Result<ApiReply, ClientError> {
        self.send(ApiRequest::new(method, path).json(&Value::Object(body)))
            .await
    }

    async fn get(&self, path: String) -> Result<ApiReply, ClientError> {
        self.send(ApiRequest::new(Method::GET, path)).await
    }

    /// Prints a reply: its JSON in JSON mode, else the table `table` makes of it.
    fn show<T: serde::de::DeserializeOwned>(
        &mut self,
        reply: &ApiReply,
        table: impl FnOnce(T) -> String,
    ) -> anyhow::Result<()> {
        match self.output {
            Output::Json => {
                let _: Value = reply.decode()?;
                writeln!(self.out, "{}", pretty_json(&reply.body))?;
            }
            Output::Table => {
                let t: T = reply.decode()?;
                self.out.write_all(table(t).as_bytes())?;
            }
        }
        Ok(())
    }
}

/// Indents JSON text (two spaces, as `serde_json::to_string_pretty`) keeping its key order,
/// which a round trip through `serde_json::Value` would sort. `text` must be valid JSON.
fn pretty_json(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                let close = if c == '{' { '}' } else { ']' };
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value (everything but RFC 3986's unreserved).
fn enc(s: &str) -> String {
    crate::http_client::percent_encode(s)
}

/// `path?k=v&…` with the given (encoded) parameters, skipping absent ones.
fn with_query(path: String, params: &[(&str, Option<&str>)]) -> String {
    let q: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        path
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

fn ep_path(id: &str) -> String {
    format!("/v1/endpoints/{}", enc(id))
}

fn read_file(path: &Path, what: &str) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .with_context(|| format!("reading the {what} from standard input"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn insert<T: serde::Serialize>(m: &mut Map<String, Value>, k: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(k.to_string(), json!(v));
    }
}

fn tags(list: &[String]) -> Value {
    Value::Array(
        list.iter()
            .map(|t| {
                let (k, v) = t.split_once('=').unwrap_or((t.as_str(), ""));
                json!({"key": k, "value": v})
            })
            .collect(),
    )
}

impl EndpointSettings {
    /// The request fields these settings give (`log_base`: the connection log settings to
    /// complete when only one of its two flags is given).
    fn fields(&self, m: &mut Map<String, Value>, log_base: (bool, bool)) {
        insert(m, "vpn-port", self.port);
        if !self.dns_servers.is_empty() {
            m.insert("dns-servers".into(), json!(self.dns_servers));
        }
        insert(m, "split-tunnel", self.split_tunnel);
        insert(m, "session-timeout-hours", self.session_timeout_hours);
        insert(
            m,
            "disconnect-on-session-timeout",
            self.disconnect_on_session_timeout,
        );
        if let Some(text) = &self.banner {
            m.insert(
                "client-login-banner-options".into(),
                json!({"enabled": true, "banner-text": text}),
            );
        } else if self.no_banner {
            m.insert(
                "client-login-banner-options".into(),
                json!({"enabled": false}),
            );
        }
        if let Some(h) = &self.connect_handler {
            m.insert(
                "client-connect-options".into(),
                json!({"enabled": true, "handler": h}),
            );
        } else if self.no_connect_handler {
            m.insert("client-connect-options".into(), json!({"enabled": false}));
        }
        if self.connection_log.is_some() || self.connection_log_stdout.is_some() {
            m.insert(
                "connection-log-options".into(),
                json!({
                    "enabled": self.connection_log.unwrap_or(log_base.0),
                    "stdout": self.connection_log_stdout.unwrap_or(log_base.1),
                }),
            );
        }
        insert(m, "description", self.description.as_deref());
        if !self.tags.is_empty() {
            m.insert("tags".into(), tags(&self.tags));
        }
        if let Some(p) = &self.self_service_portal {
            m.insert("self-service-portal".into(), json!(p == "enabled"));
        }
    }

    fn only_one_log_flag(&self) -> bool {
        self.connection_log.is_some() != self.connection_log_stdout.is_some()
    }
}

impl Action {
    async fn run(self, cx: &mut Cx<'_>) -> anyhow::Result<()> {
        match self {
            Action::Endpoint(c) => endpoint(c, cx).await,
            Action::Network(c) => network(c, cx).await,
            Action::Route(c) => route(c, cx).await,
            Action::Rule(c) => rule(c, cx).await,
            Action::Connection(c) => connection(c, cx).await,
            Action::Config(c) => config(c, cx).await,
            Action::Crl(c) => crl(c, cx).await,
            Action::Directory(c) => directory::directory(c, cx).await,
            Action::Mfa(c) => directory::mfa(c, cx).await,
            Action::Idp(c) => identity_provider::idp(c, cx).await,
            Action::AccessKey(c) => access_key::access_key(c, cx).await,
            Action::SecurityGroup(c) => security_group::security_group(c, cx).await,
        }
    }
}

// ---- endpoint -----------------------------------------------------------------------------------

async fn endpoint(c: EndpointCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        EndpointCommand::Create {
            client_cidr,
            server_cert,
            server_key,
            client_ca,
            directory,
            idp,
            transport,
            settings,
        } => {
            let mut m = Map::new();
            m.insert("client-cidr-block".into(), json!(client_cidr));
            m.insert(
                "server-certificate".into(),
                json!(read_file(&server_cert, "server certificate")?),
            );
            m.insert(
                "server-private-key".into(),
                json!(read_file(&server_key, "server key")?),
            );
            let mut auth = Vec::new();
            if let Some(ca) = &client_ca {
                auth.push(json!({
                    "type": "certificate-authentication",
                    "client-root-certificate-chain": read_file(ca, "client CA")?,
                }));
            }
            if let Some(dir) = directory {
                // A name is resolved to its id (the option carries AWS's directory-id).
                let dir = if dir.starts_with(crate::model::DIRECTORY_ID_PREFIX) {
                    dir
                } else {
                    let reply = cx.get(format!("/v1/directories/{}", enc(&dir))).await?;
                    reply.decode::<crate::model::Directory>()?.directory_id
                };
                auth.push(json!({
                    "type": "directory-service-authentication",
                    "directory-id": dir,
                }));
            }
            if let Some(idp) = idp {
                // A name is resolved to its id (the option carries AWS's SAMLProviderArn).
                let idp = if crate::model::is_valid_id(crate::model::IDP_ID_PREFIX, &idp) {
                    idp
                } else {
                    let reply = cx
                        .get(format!("/v1/identity-providers/{}", enc(&idp)))
                        .await?;
                    reply.decode::<crate::model::IdentityProvider>()?.id
                };
                auth.push(json!({
                    "type": "federated-authentication",
                    "saml-provider-arn": idp,
                }));
            }
            m.insert("authentication-options".into(), Value::Array(auth));
            insert(&mut m, "transport-protocol", transport);
            settings.fields(&mut m, (true, false));
            let reply = cx
                .send_json(Method::POST, "/v1/endpoints".into(), m)
                .await?;
            cx.show(&reply, |e: Endpoint| endpoint_table(&[e]))
        }
        EndpointCommand::Modify {
            endpoint_id,
            server_cert,
            server_key,
            no_dns_servers,
            client_ca_key,
            remove_client_ca_key,
            settings,
        } => {
            let mut m = Map::new();
            match client_ca_key {
                Some(p) if p.is_empty() => {
                    m.insert("client-ca-key".into(), json!(""));
                }
                Some(p) => {
                    m.insert(
                        "client-ca-key".into(),
                        json!(read_file(Path::new(&p), "client CA key")?),
                    );
                }
                None if remove_client_ca_key => {
                    m.insert("client-ca-key".into(), json!(""));
                }
                None => {}
            }
            if let Some(p) = server_cert {
                m.insert(
                    "server-certificate".into(),
                    json!(read_file(&p, "server certificate")?),
                );
            }
            if let Some(p) = server_key {
                m.insert(
                    "server-private-key".into(),
                    json!(read_file(&p, "server key")?),
                );
            }
            if no_dns_servers {
                m.insert("dns-servers".into(), json!([]));
            }
            let mut log_base = (true, false);
            if settings.only_one_log_flag() {
                let cur: Endpoint = cx.get(ep_path(&endpoint_id)).await?.decode()?;
                log_base = (
                    cur.connection_log_options.enabled,
                    cur.connection_log_options.stdout,
                );
            }
            settings.fields(&mut m, log_base);
            let reply = cx
                .send_json(Method::PATCH, ep_path(&endpoint_id), m)
                .await?;
            cx.show(&reply, |r: ModifyEndpointResult| {
                let mut s = endpoint_table(&[r.endpoint]);
                if r.changed.is_empty() {
                    s.push_str("no change\n");
                } else {
                    s.push_str(&format!(
                        "changed: {}\n",
                        r.changed
                            .iter()
                            .map(|f| f.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                s
            })
        }
        EndpointCommand::Delete { endpoint_id } => {
            let reply = cx
                .send(ApiRequest::new(Method::DELETE, ep_path(&endpoint_id)))
                .await?;
            cx.show(&reply, |r: DeleteEndpointResult| {
                let mut s = endpoint_table(&[r.endpoint]);
                if !r.terminate_connections.is_empty() {
                    s.push_str(&format!(
                        "terminating {} connection(s)\n",
                        r.terminate_connections.len()
                    ));
                }
                s
            })
        }
        EndpointCommand::RevokeUser {
            endpoint_id,
            username,
        } => {
            let mut m = Map::new();
            m.insert("username".into(), json!(username));
            let reply = cx
                .send_json(
                    Method::POST,
                    format!("{}/revoke-user", ep_path(&endpoint_id)),
                    m,
                )
                .await?;
            cx.show(&reply, |r: RevokeUserResult| {
                let mut s = format!("{}\n", r.message);
                for serial in &r.revoked_serials {
                    s.push_str(&format!("revoked {serial}\n"));
                }
                for c in &r.connection_statuses {
                    s.push_str(&format!("terminating {}\n", c.connection_id));
                }
                s
            })
        }
        EndpointCommand::Certificates {
            endpoint_id,
            username,
        } => {
            let path = with_query(
                format!("{}/issued-certificates", ep_path(&endpoint_id)),
                &[("username", username.as_deref())],
            );
            let reply = cx.get(path).await?;
            cx.show(&reply, |l: IssuedCertificateList| {
                let mut t = Table::new(&[
                    "SERIAL",
                    "USERNAME",
                    "STATUS",
                    "ISSUED",
                    "NOT AFTER",
                    "REVOKED",
                ]);
                for c in l.issued_certificates {
                    t.row(vec![
                        c.serial,
                        c.username,
                        c.status,
                        c.issue_time.to_string(),
                        c.not_after.to_string(),
                        c.revocation_time
                            .map_or_else(|| "-".to_string(), |t| t.to_string()),
                    ]);
                }
                t.render()
            })
        }
        EndpointCommand::Describe { endpoint_ids } => {
            let ids = endpoint_ids.join(",");
            let path = with_query(
                "/v1/endpoints".into(),
                &[(
                    "client-vpn-endpoint-ids",
                    (!ids.is_empty()).then_some(ids.as_str()),
                )],
            );
            let reply = cx.get(path).await?;
            cx.show(&reply, |l: EndpointList| {
                endpoint_table(&l.client_vpn_endpoints)
            })
        }
    }
}

fn endpoint_table(list: &[Endpoint]) -> String {
    let mut t = Table::new(&[
        "ENDPOINT ID",
        "STATUS",
        "CLIENT CIDR",
        "TRANSPORT",
        "PORT",
        "SPLIT TUNNEL",
        "DNS SERVERS",
        "LISTENER",
        "CREATED",
        "DESCRIPTION",
    ]);
    for e in list {
        let dns: Vec<String> = e.dns_servers.iter().map(|d| d.to_string()).collect();
        t.row(vec![
            e.client_vpn_endpoint_id.clone(),
            e.status.to_string(),
            e.client_cidr_block.to_string(),
            e.transport_protocol.to_string(),
            e.vpn_port.to_string(),
            e.split_tunnel.to_string(),
            if dns.is_empty() {
                "-".into()
            } else {
                dns.join(",")
            },
            e.listener
                .as_ref()
                .map_or_else(|| "-".to_string(), |l| l.state.clone()),
            e.creation_time.to_string(),
            opt(&e.description),
        ]);
    }
    let mut out = t.render();
    // Why a listener is not serving, and what to do.
    for e in list {
        if let Some(ListenerStatus {
            state,
            message: Some(m),
        }) = &e.listener
        {
            out.push_str(&format!(
                "{}: listener {state}: {m}\n",
                e.client_vpn_endpoint_id
            ));
        }
        if let Some(url) = &e.self_service_portal_url {
            out.push_str(&format!(
                "{}: self-service portal: {url}\n",
                e.client_vpn_endpoint_id
            ));
        }
        // Only where the portal is in play (JSON always has both fields).
        if e.self_service_portal || e.client_ca_key_set || e.self_service_portal_downloads > 0 {
            out.push_str(&format!(
                "{}: client-ca-key-set: {}, self-service-portal-downloads: {}\n",
                e.client_vpn_endpoint_id, e.client_ca_key_set, e.self_service_portal_downloads
            ));
        }
    }
    out
}

// ---- target networks ----------------------------------------------------------------------------

async fn network(c: NetworkCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        NetworkCommand::Associate {
            endpoint_id,
            interface,
            subnet,
            snat_address,
            node,
        } => {
            let mut m = Map::new();
            m.insert("target-network-id".into(), json!(interface));
            insert(&mut m, "subnet-cidr", subnet);
            insert(&mut m, "snat-address", snat_address);
            insert(&mut m, "node", node);
            let path = format!("{}/target-networks", ep_path(&endpoint_id));
            let reply = cx.send_json(Method::POST, path, m).await?;
            cx.show(&reply, |r: AssociateResult| {
                let mut s = network_table(&[r.association]);
                if let Some(route) = r.route {
                    s.push_str(&format!(
                        "route added: {} via {}\n",
                        route.destination_cidr, route.target_subnet
                    ));
                }
                s.push_str(&format!("endpoint status: {}\n", r.endpoint_status));
                s
            })
        }
        NetworkCommand::Disassociate {
            endpoint_id,
            association_id,
        } => {
            let path = format!(
                "{}/target-networks/{}",
                ep_path(&endpoint_id),
                enc(&association_id)
            );
            let reply = cx.send(ApiRequest::new(Method::DELETE, path)).await?;
            cx.show(&reply, |r: DisassociateResult| {
                let mut s = network_table(&[r.association]);
                for route in &r.removed_routes {
                    s.push_str(&format!(
                        "route removed: {} via {}\n",
                        route.destination_cidr, route.target_subnet
                    ));
                }
                s.push_str(&format!("endpoint status: {}\n", r.endpoint_status));
                if !r.terminate_connections.is_empty() {
                    s.push_str(&format!(
                        "terminating {} connection(s)\n",
                        r.terminate_connections.len()
                    ));
                }
                s
            })
        }
        NetworkCommand::ApplySecurityGroups {
            endpoint_id,
            security_groups,
            node,
        } => {
            let mut m = Map::new();
            m.insert("security-group-ids".into(), json!(security_groups));
            insert(&mut m, "vpc-id", node);
            let path = format!("{}/security-groups", ep_path(&endpoint_id));
            let reply = cx.send_json(Method::POST, path, m).await?;
            cx.show(&reply, |r: crate::model::ApplySecurityGroupsResult| {
                format!(
                    "security groups [{}] applied to {}\n",
                    r.security_group_ids.join(", "),
                    r.association_ids.join(", ")
                )
            })
        }
        NetworkCommand::Describe {
            endpoint_id,
            association_ids,
        } => {
            let ids = association_ids.join(",");
            let path = with_query(
                format!("{}/target-networks", ep_path(&endpoint_id)),
                &[("association-ids", (!ids.is_empty()).then_some(ids.as_str()))],
            );
            let reply = cx.get(path).await?;
            cx.show(&reply, |l: TargetNetworkList| {
                network_table(&l.client_vpn_target_networks)
            })
        }
    }
}

fn network_table(list: &[TargetNetwork]) -> String {
    let mut t = Table::new(&[
        "ASSOCIATION ID",
        "INTERFACE",
        "SUBNET",
        "SNAT ADDRESS",
        "STATUS",
        "TARGET ID",
        "CREATED",
        "NODE",
        "SECURITY GROUPS",
    ]);
    for a in list {
        t.row(vec![
            a.association_id.clone(),
            a.target_network_id.clone(),
            opt(&a.subnet_cidr),
            opt(&a.snat_address),
            a.status.to_string(),
            a.target_id.to_string(),
            a.creation_time.to_string(),
            opt(&a.node),
            if a.security_group_ids.is_empty() {
                "(default)".to_string()
            } else {
                a.security_group_ids.join(",")
            },
        ]);
    }
    t.render()
}

// ---- routes -------------------------------------------------------------------------------------

async fn route(c: RouteCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        RouteCommand::Create {
            endpoint_id,
            destination,
            interface,
            description,
        } => {
            let mut m = Map::new();
            m.insert("destination-cidr-block".into(), json!(destination));
            m.insert("target-network-id".into(), json!(interface));
            insert(&mut m, "description", description);
            let path = format!("{}/routes", ep_path(&endpoint_id));
            let reply = cx.send_json(Method::POST, path, m).await?;
            cx.show(&reply, |r: Route| route_table(&[r]))
        }
        RouteCommand::Delete {
            endpoint_id,
            destination,
            interface,
        } => {
            let mut m = Map::new();
            m.insert("destination-cidr-block".into(), json!(destination));
            insert(&mut m, "target-network-id", interface);
            let path = format!("{}/routes", ep_path(&endpoint_id));
            let reply = cx.send_json(Method::DELETE, path, m).await?;
            cx.show(&reply, |r: Route| route_table(&[r]))
        }
        RouteCommand::Describe { endpoint_id } => {
            let reply = cx.get(format!("{}/routes", ep_path(&endpoint_id))).await?;
            cx.show(&reply, |l: RouteList| route_table(&l.routes))
        }
    }
}

fn route_table(list: &[Route]) -> String {
    let mut t = Table::new(&[
        "DESTINATION",
        "TARGET",
        "ASSOCIATION ID",
        "ORIGIN",
        "STATUS",
        "DESCRIPTION",
    ]);
    for r in list {
        t.row(vec![
            r.destination_cidr.to_string(),
            r.target_subnet.clone(),
            r.association_id.clone(),
            r.origin.to_string(),
            r.status.to_string(),
            opt(&r.description),
        ]);
    }
    t.render()
}

// ---- rules --------------------------------------------------------------------------------------

async fn rule(c: RuleCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        RuleCommand::Authorize {
            endpoint_id,
            destination,
            group,
            all_groups,
            protocol,
            ports,
            description,
        } => {
            let mut m = Map::new();
            m.insert("target-network-cidr".into(), json!(destination));
            insert(&mut m, "access-group-id", group);
            if all_groups {
                m.insert("authorize-all-groups".into(), json!(true));
            }
            insert(&mut m, "protocol", protocol);
            insert(&mut m, "port-range", ports);
            insert(&mut m, "description", description);
            let path = format!("{}/authorization-rules", ep_path(&endpoint_id));
            let reply = cx.send_json(Method::POST, path, m).await?;
            cx.show(&reply, |r: AuthorizationRule| rule_table(&[r]))
        }
        RuleCommand::Revoke {
            endpoint_id,
            destination,
            group,
            all_groups,
            protocol,
            ports,
        } => {
            let mut m = Map::new();
            m.insert("target-network-cidr".into(), json!(destination));
            insert(&mut m, "access-group-id", group);
            if all_groups {
                m.insert("revoke-all-groups".into(), json!(true));
            }
            insert(&mut m, "protocol", protocol);
            insert(&mut m, "port-range", ports);
            let path = format!("{}/authorization-rules", ep_path(&endpoint_id));
            let reply = cx.send_json(Method::DELETE, path, m).await?;
            cx.show(&reply, |r: AuthorizationRule| rule_table(&[r]))
        }
        RuleCommand::Describe { endpoint_id } => {
            let reply = cx
                .get(format!("{}/authorization-rules", ep_path(&endpoint_id)))
                .await?;
            cx.show(&reply, |l: AuthorizationRuleList| {
                rule_table(&l.authorization_rules)
            })
        }
    }
}

fn rule_table(list: &[AuthorizationRule]) -> String {
    let mut t = Table::new(&["DESTINATION", "GROUP", "PORTS", "DESCRIPTION", "CREATED"]);
    for r in list {
        t.row(vec![
            r.destination_cidr.to_string(),
            match (&r.group_id, r.access_all) {
                (Some(g), false) => g.clone(),
                _ => "(all groups)".to_string(),
            },
            r.ports()
                .map_or_else(|| "all".to_string(), |m| m.describe()),
            opt(&r.description),
            r.creation_time.to_string(),
        ]);
    }
    t.render()
}

// ---- connections --------------------------------------------------------------------------------

async fn connection(c: ConnectionCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        ConnectionCommand::List {
            endpoint_id,
            connection_id,
            username,
            status,
        } => {
            let path = with_query(
                format!("{}/connections", ep_path(&endpoint_id)),
                &[
                    ("connection-id", connection_id.as_deref()),
                    ("username", username.as_deref()),
                    ("status", status.as_deref()),
                ],
            );
            let reply = cx.get(path).await?;
            cx.show(&reply, |l: ConnectionList| connection_table(&l.connections))
        }
        ConnectionCommand::Terminate {
            endpoint_id,
            connection_id,
            username,
        } => {
            let mut m = Map::new();
            insert(&mut m, "connection-id", connection_id);
            insert(&mut m, "username", username);
            let path = format!("{}/connections/terminate", ep_path(&endpoint_id));
            let reply = cx.send_json(Method::POST, path, m).await?;
            cx.show(&reply, |r: TerminateResult| {
                let mut t = Table::new(&["CONNECTION ID", "PREVIOUS STATUS", "CURRENT STATUS"]);
                for c in r.connection_statuses {
                    t.row(vec![
                        c.connection_id,
                        c.previous_status.to_string(),
                        c.current_status.to_string(),
                    ]);
                }
                t.render()
            })
        }
    }
}

fn connection_table(list: &[Connection]) -> String {
    let mut t = Table::new(&[
        "CONNECTION ID",
        "STATUS",
        "USERNAME",
        "COMMON NAME",
        "CLIENT IP",
        "DEVICE",
        "STARTED",
        "ENDED",
        "INGRESS BYTES",
        "EGRESS BYTES",
    ]);
    for c in list {
        let device = match c.device_ip {
            std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", c.port),
            std::net::IpAddr::V4(ip) => format!("{ip}:{}", c.port),
        };
        t.row(vec![
            c.connection_id.clone(),
            c.status.to_string(),
            opt(&c.username),
            c.common_name.clone(),
            c.client_ip.to_string(),
            format!("{device}/{}", c.transport_protocol),
            c.connection_start_time.to_string(),
            opt(&c.connection_end_time),
            c.ingress_bytes.to_string(),
            c.egress_bytes.to_string(),
        ]);
    }
    t.render()
}

// ---- client configuration -----------------------------------------------------------------------

async fn config(c: ConfigCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        ConfigCommand::Export {
            endpoint_id,
            remote_host,
            cert,
            key,
        } => {
            let extra = match (cert, key) {
                (Some(cert), Some(key)) => format!(
                    "<cert>\n{}\n</cert>\n<key>\n{}\n</key>\n",
                    read_file(&cert, "client certificate")?.trim_end(),
                    read_file(&key, "client key")?.trim_end()
                ),
                _ => String::new(),
            };
            let path = with_query(
                format!("{}/client-config", ep_path(&endpoint_id)),
                &[("remote-host", remote_host.as_deref())],
            );
            let mut req = ApiRequest::new(Method::GET, path);
            req.accept = Some("application/json");
            let reply = cx.send(req).await?;
            let mut export: ClientConfigExport = reply.decode()?;
            export.client_configuration.push_str(&extra);
            match cx.output {
                Output::Json => writeln!(cx.out, "{}", serde_json::to_string_pretty(&export)?)?,
                Output::Table => cx.out.write_all(export.client_configuration.as_bytes())?,
            }
            Ok(())
        }
    }
}

// ---- CRL ----------------------------------------------------------------------------------------

async fn crl(c: CrlCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        CrlCommand::Import { endpoint_id, file } => {
            let pem = read_file(&file, "certificate revocation list")?;
            let path = format!("{}/crl", ep_path(&endpoint_id));
            let body = json!({ "certificate-revocation-list": pem });
            let reply = cx
                .send(ApiRequest::new(Method::PUT, path).json(&body))
                .await?;
            cx.show(&reply, |s: CrlSummary| {
                let mut t = Table::new(&["ENDPOINT ID", "CRLS", "REVOKED CERTIFICATES"]);
                t.row(vec![
                    s.client_vpn_endpoint_id,
                    s.crls.to_string(),
                    s.entries.to_string(),
                ]);
                t.render()
            })
        }
        CrlCommand::Export { endpoint_id } => {
            let reply = cx.get(format!("{}/crl", ep_path(&endpoint_id))).await?;
            cx.show(&reply, |e: CrlExport| {
                e.certificate_revocation_list.unwrap_or_default()
            })
        }
    }
}
