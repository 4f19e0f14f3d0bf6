//! `cvpn directory …` and `cvpn mfa …`: directories (LDAP / Active Directory) endpoints sign
//! users in against, and users' TOTP enrolments.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Map, Value};

use super::table::Table;
use super::{enc, insert, read_file, Cx};
use crate::model::{Directory, DirectoryList, MfaEnrollment};

/// Directory settings that both create and modify take.
#[derive(Clone, Debug, Default, Args)]
pub struct DirectorySettings {
    /// A description (on modify, "" clears it).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Service account that searches for users (with --bind-password-file); without it the
    /// search is anonymous.
    #[arg(long, value_name = "DN")]
    pub bind_dn: Option<String>,
    /// File holding the service account's password (its trailing newline is removed; never
    /// printed).
    #[arg(long, value_name = "FILE")]
    pub bind_password_file: Option<PathBuf>,
    /// openldap or active-directory: the defaults of --user-filter and --groups.
    #[arg(long, value_name = "PRESET")]
    pub preset: Option<String>,
    /// The user search filter, {username} standing for the escaped name, e.g. '(uid={username})'.
    #[arg(long, value_name = "FILTER")]
    pub user_filter: Option<String>,
    /// How groups are found: memberof, ad-nested (Active Directory, nested) or groupofnames
    /// (searched recursively).
    #[arg(long, value_name = "MODE")]
    pub groups: Option<String>,
    /// CA bundle (PEM file) that signs the directory servers' certificates.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow ldap:// without StartTLS (passwords cross the network in clear). Bare flag means
    /// true.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_plaintext: Option<bool>,
    /// Active Directory realm for user@realm names, e.g. EXAMPLE.COM.
    #[arg(long, value_name = "REALM")]
    pub realm: Option<String>,
    /// Deadline of each lookup, milliseconds (default 5000).
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<i64>,
    /// Minutes between checks of a connected user's account and groups (default 5).
    #[arg(long, value_name = "MINUTES", conflicts_with = "recheck_seconds")]
    pub recheck_minutes: Option<i64>,
    /// The same in seconds (10 or more), for finer control.
    #[arg(long, value_name = "SECONDS")]
    pub recheck_seconds: Option<i64>,
    /// Second factor: none, totp or radius.
    #[arg(long, value_name = "MODE")]
    pub mfa: Option<String>,
    /// RADIUS server for --mfa radius, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub radius_server: Option<String>,
    /// File holding the RADIUS shared secret (never printed).
    #[arg(long, value_name = "FILE")]
    pub radius_secret_file: Option<PathBuf>,
    /// RADIUS: each try's timeout, milliseconds (default 3000).
    #[arg(long, value_name = "MS")]
    pub radius_timeout_ms: Option<i64>,
    /// RADIUS: tries (default 3).
    #[arg(long, value_name = "N")]
    pub radius_retries: Option<i64>,
}

impl DirectorySettings {
    fn fields(&self, m: &mut Map<String, Value>) -> anyhow::Result<()> {
        insert(m, "description", self.description.as_deref());
        insert(m, "bind-dn", self.bind_dn.as_deref());
        if let Some(f) = &self.bind_password_file {
            m.insert(
                "bind-password".into(),
                json!(read_file(f, "bind password")?),
            );
        }
        insert(m, "preset", self.preset.as_deref());
        insert(m, "user-filter", self.user_filter.as_deref());
        insert(m, "groups", self.groups.as_deref());
        if let Some(f) = &self.ca_file {
            m.insert("ca-pem".into(), json!(read_file(f, "directory CA")?));
        }
        insert(m, "allow-plaintext", self.allow_plaintext);
        insert(m, "realm", self.realm.as_deref());
        insert(m, "timeout-ms", self.timeout_ms);
        insert(m, "recheck-minutes", self.recheck_minutes);
        insert(m, "recheck-seconds", self.recheck_seconds);
        insert(m, "mfa", self.mfa.as_deref());
        insert(m, "radius-server", self.radius_server.as_deref());
        if let Some(f) = &self.radius_secret_file {
            m.insert(
                "radius-secret".into(),
                json!(read_file(f, "RADIUS secret")?),
            );
        }
        insert(m, "radius-timeout-ms", self.radius_timeout_ms);
        insert(m, "radius-retries", self.radius_retries);
        Ok(())
    }
}

/// `cvpn directory …`.
#[derive(Debug, Subcommand)]
pub enum DirectoryCommand {
    /// Creates a directory; prints its id. Endpoints use it with `--directory ID`.
    Create {
        /// A name for it (unique).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// An ldap:// (StartTLS) or ldaps:// URL; repeat for more (tried in order: domain
        /// controllers fail over).
        #[arg(long = "url", value_name = "URL", required = true)]
        urls: Vec<String>,
        /// Where users and groups are searched, e.g. dc=example,dc=com.
        #[arg(long, value_name = "DN")]
        base_dn: String,
        /// Settings.
        #[command(flatten)]
        settings: DirectorySettings,
    },
    /// Modifies a directory; endpoints that use it take the change for new sign-ins and the
    /// next re-checks, without disconnecting anyone.
    Modify {
        /// The directory: id or name.
        directory: String,
        /// New name.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Replace the URLs (repeat).
        #[arg(long = "url", value_name = "URL")]
        urls: Vec<String>,
        /// New base DN.
        #[arg(long, value_name = "DN")]
        base_dn: Option<String>,
        /// Settings.
        #[command(flatten)]
        settings: DirectorySettings,
    },
    /// Deletes a directory (refused while an endpoint uses it).
    Delete {
        /// The directory: id or name.
        directory: String,
    },
    /// Describes directories: all, or the one given. Passwords and secrets are never shown.
    Describe {
        /// The directory: id or name; none means all.
        directory: Option<String>,
    },
}

/// `cvpn mfa …`.
#[derive(Debug, Subcommand)]
pub enum MfaCommand {
    /// Enrols a user for TOTP: prints the secret and the otpauth:// URI for an authenticator
    /// app, once.
    Enroll {
        /// The directory: id or name.
        #[arg(long, value_name = "DIR")]
        directory: String,
        /// The directory user name.
        #[arg(long, value_name = "USER")]
        username: String,
        /// Replace an existing enrolment (the old secret stops working).
        #[arg(long)]
        replace: bool,
    },
    /// Removes a user's TOTP enrolment.
    Remove {
        /// The directory: id or name.
        #[arg(long, value_name = "DIR")]
        directory: String,
        /// The directory user name.
        #[arg(long, value_name = "USER")]
        username: String,
    },
    /// Lists the users enrolled for TOTP.
    List {
        /// The directory: id or name.
        #[arg(long, value_name = "DIR")]
        directory: String,
    },
}

fn dir_path(id: &str) -> String {
    format!("/v1/directories/{}", enc(id))
}

fn directory_table(list: &[Directory]) -> String {
    let mut t = Table::new(&[
        "DIRECTORY ID",
        "NAME",
        "URLS",
        "BASE DN",
        "PRESET",
        "GROUPS",
        "MFA",
        "BIND",
        "CREATED",
    ]);
    for d in list {
        t.row(vec![
            d.directory_id.clone(),
            d.name.clone(),
            d.urls.join(","),
            d.base_dn.clone(),
            d.preset.to_string(),
            d.groups.to_string(),
            d.mfa.to_string(),
            d.bind_dn.clone().unwrap_or_else(|| "anonymous".into()),
            d.creation_time.to_string(),
        ]);
    }
    t.render()
}

pub(super) async fn directory(c: DirectoryCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        DirectoryCommand::Create {
            name,
            urls,
            base_dn,
            settings,
        } => {
            let mut m = Map::new();
            m.insert("name".into(), json!(name));
            m.insert("urls".into(), json!(urls));
            m.insert("base-dn".into(), json!(base_dn));
            settings.fields(&mut m)?;
            let reply = cx
                .send_json(Method::POST, "/v1/directories".into(), m)
                .await?;
            cx.show(&reply, |d: Directory| format!("{}\n", d.directory_id))
        }
        DirectoryCommand::Modify {
            directory,
            name,
            urls,
            base_dn,
            settings,
        } => {
            let mut m = Map::new();
            insert(&mut m, "name", name);
            if !urls.is_empty() {
                m.insert("urls".into(), json!(urls));
            }
            insert(&mut m, "base-dn", base_dn);
            settings.fields(&mut m)?;
            let reply = cx.send_json(Method::PATCH, dir_path(&directory), m).await?;
            cx.show(&reply, |d: Directory| directory_table(&[d]))
        }
        DirectoryCommand::Delete { directory } => {
            let reply = cx
                .send(super::client::ApiRequest::new(
                    Method::DELETE,
                    dir_path(&directory),
                ))
                .await?;
            cx.show(&reply, |d: Directory| {
                format!("deleted {}\n", d.directory_id)
            })
        }
        DirectoryCommand::Describe { directory: Some(d) } => {
            let reply = cx.get(dir_path(&d)).await?;
            cx.show(&reply, |d: Directory| directory_table(&[d]))
        }
        DirectoryCommand::Describe { directory: None } => {
            let reply = cx.get("/v1/directories".into()).await?;
            cx.show(&reply, |l: DirectoryList| directory_table(&l.directories))
        }
    }
}

pub(super) async fn mfa(c: MfaCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        MfaCommand::Enroll {
            directory,
            username,
            replace,
        } => {
            let mut m = Map::new();
            m.insert("username".into(), json!(username));
            m.insert("replace".into(), json!(replace));
            let path = format!("{}/mfa-enrollments", dir_path(&directory));
            let reply = cx.send_json(Method::POST, path, m).await?;
            cx.show(&reply, |e: MfaEnrollment| {
                format!(
                    "user:   {}\nsecret: {}\nuri:    {}\n(shown once: give the URI to the user's authenticator app, e.g. as a QR code)\n",
                    e.username, e.secret, e.otpauth_uri
                )
            })
        }
        MfaCommand::Remove {
            directory,
            username,
        } => {
            let path = format!(
                "{}/mfa-enrollments/{}",
                dir_path(&directory),
                enc(&username)
            );
            let reply = cx
                .send(super::client::ApiRequest::new(Method::DELETE, path))
                .await?;
            cx.show(&reply, |_: Directory| format!("removed {username}\n"))
        }
        MfaCommand::List { directory } => {
            let path = format!("{}/mfa-enrollments", dir_path(&directory));
            let reply = cx.get(path).await?;
            cx.show(&reply, |v: Value| {
                let mut t = Table::new(&["USERNAME"]);
                for u in v["usernames"].as_array().into_iter().flatten() {
                    t.row(vec![u.as_str().unwrap_or("").to_string()]);
                }
                t.render()
            })
        }
    }
}
