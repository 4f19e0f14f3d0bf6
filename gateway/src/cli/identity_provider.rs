//! `cvpn idp …`: identity providers (OIDC / SAML) that endpoints with federated authentication
//! send users to for single sign-on.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use hyper::Method;
use serde_json::{json, Map, Value};

use super::table::{opt, Table};
use super::{enc, insert, read_file, Cx};
use crate::model::{IdentityProvider, IdentityProviderList, MAX_SAML_METADATA_BYTES};

/// Identity provider settings that both create and modify take.
#[derive(Clone, Debug, Default, Args)]
pub struct IdpSettings {
    /// A description (on modify, "" clears it).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// OIDC: the provider's issuer URL, e.g. https://login.example.com/realms/corp (http://
    /// only to 127.0.0.1, localhost or [::1]).
    #[arg(long, value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// OIDC: the gateway's client id at the provider.
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// OIDC: file holding the gateway's client secret (its trailing newline is removed; never
    /// printed); - reads standard input.
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// OIDC: the claim holding the user's groups (default groups).
    #[arg(long, value_name = "CLAIM")]
    pub groups_claim: Option<String>,
    /// OIDC: the claim holding the user name (default email).
    #[arg(long, value_name = "CLAIM")]
    pub username_claim: Option<String>,
    /// OIDC: a scope to ask for; repeat for more (default openid, email, profile; openid is
    /// always asked for). On modify, replaces the list.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// OIDC: minutes between refreshes of a connected user's session (default 15).
    #[arg(long, value_name = "MINUTES", conflicts_with = "recheck_seconds")]
    pub recheck_minutes: Option<i64>,
    /// The same in seconds (10 or more).
    #[arg(long, value_name = "SECONDS")]
    pub recheck_seconds: Option<i64>,
    /// SAML: the identity provider's metadata, a file or an https:// URL (fetched once, now;
    /// the document is stored).
    #[arg(long, value_name = "FILE|URL")]
    pub saml_metadata: Option<String>,
    /// SAML: the assertion attribute holding the user's groups (default memberOf).
    #[arg(long, value_name = "NAME")]
    pub groups_attribute: Option<String>,
    /// SAML: the assertion attribute holding the user name (default: the subject's NameID;
    /// on modify, "" goes back to it).
    #[arg(long, value_name = "NAME")]
    pub username_attribute: Option<String>,
}

impl IdpSettings {
    async fn fields(&self, m: &mut Map<String, Value>) -> anyhow::Result<()> {
        insert(m, "description", self.description.as_deref());
        insert(m, "issuer", self.oidc_issuer.as_deref());
        insert(m, "client-id", self.client_id.as_deref());
        if let Some(f) = &self.client_secret_file {
            m.insert(
                "client-secret".into(),
                json!(read_file(f, "client secret")?),
            );
        }
        insert(m, "groups-claim", self.groups_claim.as_deref());
        insert(m, "username-claim", self.username_claim.as_deref());
        if !self.scopes.is_empty() {
            m.insert("scopes".into(), json!(self.scopes));
        }
        insert(m, "recheck-minutes", self.recheck_minutes);
        insert(m, "recheck-seconds", self.recheck_seconds);
        if let Some(src) = &self.saml_metadata {
            let (xml, url) = read_metadata(src).await?;
            m.insert("metadata-xml".into(), json!(xml));
            insert(m, "metadata-url", url);
        }
        insert(m, "groups-attribute", self.groups_attribute.as_deref());
        insert(m, "username-attribute", self.username_attribute.as_deref());
        Ok(())
    }
}

/// The metadata document of `--saml-metadata`: a file's text, or an `https://` URL's answer
/// (with the URL, kept as `metadata-url`).
async fn read_metadata(src: &str) -> anyhow::Result<(String, Option<String>)> {
    if src.starts_with("https://") || src.starts_with("http://") {
        return Ok((fetch_metadata(src).await?, Some(src.to_string())));
    }
    Ok((read_file(Path::new(src), "SAML metadata")?, None))
}

/// `GET`s an `https://` URL (verified with the system's CA bundle), at most
/// [`MAX_SAML_METADATA_BYTES`].
async fn fetch_metadata(url: &str) -> anyhow::Result<String> {
    use crate::http_client::{send, Request, Target};
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        anyhow::anyhow!("{url}: metadata is fetched over https:// only (or give a file)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = Target::https(&format!("https://{authority}"), None, None)
        .with_context(|| format!("fetching the SAML metadata {url}"))?;
    let reply = send(
        &target,
        Request::new(Method::GET, path).max_body(MAX_SAML_METADATA_BYTES),
    )
    .await
    .with_context(|| format!("fetching the SAML metadata {url}"))?;
    reply
        .text()
        .with_context(|| format!("the SAML metadata at {url}"))
}

/// `cvpn idp …`.
#[derive(Debug, Subcommand)]
pub enum IdpCommand {
    /// Creates an identity provider; prints its id. Endpoints use it with `--idp ID`.
    /// OIDC: --oidc-issuer, --client-id and --client-secret-file; SAML: --saml-metadata.
    #[command(group(ArgGroup::new("protocol").required(true).args(["oidc_issuer", "saml_metadata"])))]
    Create {
        /// A name for it (unique).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Settings.
        #[command(flatten)]
        settings: IdpSettings,
    },
    /// Modifies an identity provider (not its protocol); endpoints that use it take the
    /// change for new sign-ins and the next session refreshes.
    Modify {
        /// The identity provider: id or name.
        idp: String,
        /// New name.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Settings.
        #[command(flatten)]
        settings: IdpSettings,
    },
    /// Deletes an identity provider (refused while an endpoint uses it).
    Delete {
        /// The identity provider: id or name.
        idp: String,
    },
    /// Describes identity providers: all, or the one given. The client secret is never shown.
    Describe {
        /// The identity provider: id or name; none means all.
        idp: Option<String>,
    },
    /// Lists the identity providers.
    List,
}

fn idp_path(id: &str) -> String {
    format!("/v1/identity-providers/{}", enc(id))
}

fn idp_table(list: &[IdentityProvider]) -> String {
    let mut t = Table::new(&[
        "IDP ID",
        "NAME",
        "PROTOCOL",
        "ISSUER / ENTITY ID",
        "CLIENT ID / SSO URL",
        "GROUPS",
        "USERNAME",
        "CREATED",
        "DESCRIPTION",
    ]);
    for p in list {
        let (who, at, groups, user) = match (&p.oidc, &p.saml) {
            (Some(o), _) => (
                o.issuer.clone(),
                o.client_id.clone(),
                o.groups_claim.clone(),
                o.username_claim.clone(),
            ),
            (None, Some(s)) => (
                s.entity_id.clone(),
                s.sso_url.clone(),
                s.groups_attribute.clone(),
                s.username_attribute
                    .clone()
                    .unwrap_or_else(|| "NameID".into()),
            ),
            (None, None) => Default::default(),
        };
        t.row(vec![
            p.id.clone(),
            p.name.clone(),
            p.protocol.to_string(),
            who,
            at,
            groups,
            user,
            p.creation_time.to_string(),
            opt(&p.description),
        ]);
    }
    let mut out = t.render();
    // What the provider's administrator needs from us (when the daemon has a web listener).
    for p in list {
        if let Some(u) = &p.redirect_uri {
            out.push_str(&format!(
                "{}: register the redirect URI {u} at the provider\n",
                p.id
            ));
        }
        if let Some(u) = &p.sp_metadata_url {
            out.push_str(&format!(
                "{}: give the provider our SAML metadata, {u} (entity id: the same URL)\n",
                p.id
            ));
        }
    }
    out
}

pub(super) async fn idp(c: IdpCommand, cx: &mut Cx<'_>) -> anyhow::Result<()> {
    match c {
        IdpCommand::Create { name, settings } => {
            let mut m = Map::new();
            m.insert("name".into(), json!(name));
            settings.fields(&mut m).await?;
            let reply = cx
                .send_json(Method::POST, "/v1/identity-providers".into(), m)
                .await?;
            cx.show(&reply, |p: IdentityProvider| format!("{}\n", p.id))
        }
        IdpCommand::Modify {
            idp,
            name,
            settings,
        } => {
            let mut m = Map::new();
            insert(&mut m, "name", name);
            settings.fields(&mut m).await?;
            let reply = cx.send_json(Method::PATCH, idp_path(&idp), m).await?;
            cx.show(&reply, |p: IdentityProvider| idp_table(&[p]))
        }
        IdpCommand::Delete { idp } => {
            let reply = cx
                .send(super::client::ApiRequest::new(
                    Method::DELETE,
                    idp_path(&idp),
                ))
                .await?;
            cx.show(&reply, |p: IdentityProvider| format!("deleted {}\n", p.id))
        }
        IdpCommand::Describe { idp: Some(p) } => {
            let reply = cx.get(idp_path(&p)).await?;
            cx.show(&reply, |p: IdentityProvider| idp_table(&[p]))
        }
        IdpCommand::Describe { idp: None } | IdpCommand::List => {
            let reply = cx.get("/v1/identity-providers".into()).await?;
            cx.show(&reply, |l: IdentityProviderList| {
                idp_table(&l.identity_providers)
            })
        }
    }
}
