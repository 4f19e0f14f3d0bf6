//! Identity providers (OIDC / SAML): create, modify, delete, describe; the secrets the daemon
//! reads.

use crate::model::{
    CreateIdentityProviderRequest, IdentityProvider, IdpProtocol, IdpSecrets,
    ModifyIdentityProviderRequest, OidcSettings, SamlBinding, SamlSettings,
    DEFAULT_IDP_RECHECK_SECONDS, DEFAULT_OIDC_GROUPS_CLAIM, DEFAULT_OIDC_SCOPES,
    DEFAULT_OIDC_USERNAME_CLAIM, DEFAULT_SAML_GROUPS_ATTRIBUTE, IDP_ID_PREFIX,
    MIN_IDP_RECHECK_SECONDS,
};

use super::*;

const IDP_COLS: &str = "id, name, description, protocol, settings, client_secret IS NOT NULL, \
    recheck_seconds, created_at";

fn idp_row(r: &Row<'_>) -> sql::Result<IdentityProvider> {
    let protocol = col_enum(r, 3, IdpProtocol::parse)?;
    let settings: String = r.get(4)?;
    let bad = |e: serde_json::Error| conversion_error(4, format!("settings: {e}"));
    let (oidc, saml) = match protocol {
        IdpProtocol::Oidc => (Some(serde_json::from_str(&settings).map_err(bad)?), None),
        IdpProtocol::Saml => (None, Some(serde_json::from_str(&settings).map_err(bad)?)),
    };
    Ok(IdentityProvider {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        protocol,
        oidc,
        saml,
        client_secret_set: r.get(5)?,
        recheck_seconds: u32::try_from(r.get::<_, i64>(6)?)
            .map_err(|_| conversion_error(6, "out of range".into()))?,
        creation_time: ts(r, 7)?,
        redirect_uri: None,
        sp_metadata_url: None,
    })
}

fn idp_not_found(id: &str) -> ApiError {
    ApiError::new(
        codes::IDENTITY_PROVIDER_NOT_FOUND,
        format!(
            "identity-provider-id: identity provider {id} does not exist (see `cvpn idp list`)"
        ),
    )
}

/// The identity provider `id` (format checked first).
pub(super) fn load_identity_provider(db: &Db, id: &str) -> Result<IdentityProvider, ApiError> {
    validate::id("identity-provider-id", IDP_ID_PREFIX, id)?;
    db.prepare_cached(&format!(
        "SELECT {IDP_COLS} FROM identity_providers WHERE id = ?1"
    ))?
    .query_row([id], idp_row)
    .optional()?
    .ok_or_else(|| idp_not_found(id))
}

/// An identity provider by id or by name.
fn resolve(db: &Db, id_or_name: &str) -> Result<IdentityProvider, ApiError> {
    if id_or_name.starts_with(IDP_ID_PREFIX) && is_valid_id(IDP_ID_PREFIX, id_or_name) {
        return load_identity_provider(db, id_or_name);
    }
    db.prepare_cached(&format!(
        "SELECT {IDP_COLS} FROM identity_providers WHERE name = ?1"
    ))?
    .query_row([id_or_name], idp_row)
    .optional()?
    .ok_or_else(|| idp_not_found(id_or_name))
}

fn load_secrets(db: &Db, id: &str) -> Result<IdpSecrets, ApiError> {
    Ok(db
        .prepare_cached("SELECT client_secret FROM identity_providers WHERE id = ?1")?
        .query_row([id], |r| {
            Ok(IdpSecrets {
                client_secret: r.get(0)?,
            })
        })?)
}

/// The re-check interval in seconds, from minutes or seconds (not both), at least
/// [`MIN_IDP_RECHECK_SECONDS`].
fn recheck(minutes: Option<i64>, seconds: Option<i64>) -> Result<Option<u32>, ApiError> {
    match (minutes, seconds) {
        (Some(_), Some(_)) => Err(ApiError::combination(
            "give recheck-minutes or recheck-seconds, not both",
        )),
        (Some(m), None) => Ok(Some(
            validate::bounded("recheck-minutes", m, 1, 1440, "minutes")? * 60,
        )),
        (None, Some(s)) => Ok(Some(validate::bounded(
            "recheck-seconds",
            s,
            i64::from(MIN_IDP_RECHECK_SECONDS),
            86_400,
            "seconds",
        )?)),
        (None, None) => Ok(None),
    }
}

/// A secret as given: a file's trailing line break removed; `""` clears it.
fn optional_secret(field: &str, s: &str) -> Result<Option<String>, ApiError> {
    let s = s.trim_end_matches(['\n', '\r']);
    if s.is_empty() {
        return Ok(None);
    }
    validate::secret(field, s).map(Some)
}

/// Refuses the fields of the other protocol.
fn check_fields(
    protocol: IdpProtocol,
    req: &ModifyIdentityProviderRequest,
) -> Result<(), ApiError> {
    let (wrong, other) = match protocol {
        IdpProtocol::Oidc => (req.saml_fields(), "saml"),
        IdpProtocol::Saml => {
            let mut f = req.oidc_fields();
            // The re-check interval is stored for both (SAML sessions are not refreshed).
            f.retain(|n| !n.starts_with("recheck-"));
            (f, "oidc")
        }
    };
    if !wrong.is_empty() {
        return Err(ApiError::combination(format!(
            "{} apply to {other} identity providers only; this one is {protocol}",
            wrong.join(", ")
        )));
    }
    Ok(())
}

/// Applies the given fields of a request (each validated, naming its field), then the rules
/// the fields must keep together.
fn apply_changes(
    p: &mut IdentityProvider,
    secrets: &mut IdpSecrets,
    req: &ModifyIdentityProviderRequest,
) -> Result<(), ApiError> {
    if let Some(s) = &req.protocol {
        let proto = IdpProtocol::parse(s)
            .ok_or_else(|| ApiError::invalid("protocol", format!("{s:?}: give oidc or saml")))?;
        if proto != p.protocol {
            return Err(ApiError::not_permitted(format!(
                "protocol is immutable (identity provider {} is {}); create another identity \
                 provider",
                p.id, p.protocol
            )));
        }
    }
    check_fields(p.protocol, req)?;
    if let Some(s) = &req.name {
        p.name = validate::directory_name("name", s)?;
    }
    if let Some(s) = &req.description {
        p.description = validate::description("description", Some(s))?;
    }
    if let Some(n) = recheck(req.recheck_minutes, req.recheck_seconds)? {
        p.recheck_seconds = n;
    }
    if let Some(o) = &mut p.oidc {
        if let Some(s) = &req.issuer {
            o.issuer = validate::https_url("issuer", s.trim())?;
        }
        if let Some(s) = &req.client_id {
            o.client_id = validate::token_name("client-id", s)?;
        }
        if let Some(s) = &req.client_secret {
            secrets.client_secret = optional_secret("client-secret", s)?;
        }
        if let Some(s) = &req.groups_claim {
            o.groups_claim = validate::token_name("groups-claim", s)?;
        }
        if let Some(s) = &req.username_claim {
            o.username_claim = validate::token_name("username-claim", s)?;
        }
        if let Some(l) = &req.scopes {
            o.scopes = validate::oidc_scopes("scopes", l)?;
        }
        if o.issuer.is_empty() {
            return Err(ApiError::missing(
                "issuer",
                "required for oidc: the provider's issuer URL (e.g. https://login.example.com)",
            ));
        }
        if o.client_id.is_empty() {
            return Err(ApiError::missing(
                "client-id",
                "required for oidc: the gateway's client id at the provider",
            ));
        }
        if secrets.client_secret.is_none() {
            return Err(ApiError::missing(
                "client-secret",
                "required for oidc: the gateway's client secret at the provider",
            ));
        }
    }
    if let Some(sa) = &mut p.saml {
        if let Some(xml) = &req.metadata_xml {
            let md = validate::saml_metadata("metadata-xml", xml)?;
            sa.metadata_xml = xml.clone();
            sa.entity_id = md.entity_id;
            sa.sso_url = md.sso_url;
            sa.sso_binding = md.sso_binding;
            sa.signing_certificates = md.signing_certificates;
        }
        if let Some(s) = &req.metadata_url {
            sa.metadata_url = if s.is_empty() {
                None
            } else {
                Some(validate::https_url("metadata-url", s.trim())?)
            };
        }
        if let Some(s) = &req.groups_attribute {
            sa.groups_attribute = validate::token_name("groups-attribute", s)?;
        }
        if let Some(s) = &req.username_attribute {
            sa.username_attribute = if s.is_empty() {
                None
            } else {
                Some(validate::token_name("username-attribute", s)?)
            };
        }
        if sa.metadata_xml.is_empty() {
            return Err(ApiError::missing(
                "metadata-xml",
                "required for saml: the identity provider's metadata document",
            ));
        }
    }
    p.client_secret_set = secrets.client_secret.is_some();
    Ok(())
}

/// Identity provider names are unique.
fn check_name_free(db: &Db, p: &IdentityProvider) -> Result<(), ApiError> {
    let taken: Option<String> = db
        .prepare_cached("SELECT id FROM identity_providers WHERE name = ?1 AND id <> ?2")?
        .query_row([&p.name, &p.id], |r| r.get(0))
        .optional()?;
    match taken {
        Some(other) => Err(ApiError::new(
            codes::DUPLICATE_IDENTITY_PROVIDER,
            format!(
                "name: identity provider {other} is named {:?} already; choose another name",
                p.name
            ),
        )),
        None => Ok(()),
    }
}

fn users(db: &Db, id: &str) -> Result<Vec<String>, ApiError> {
    query(
        db,
        "SELECT id FROM endpoints WHERE idp_id = ?1 AND state <> 'deleted' ORDER BY id",
        [id],
        |r| r.get(0),
    )
}

impl Store {
    /// Creates an identity provider: the protocol (given, or told by the fields: `issuer`
    /// means oidc, `metadata-xml` saml), then every field as modify takes it, defaults filling
    /// in what is not given.
    pub fn create_identity_provider(
        &self,
        req: &CreateIdentityProviderRequest,
    ) -> Result<IdentityProvider, ApiError> {
        if req.name.is_none() {
            return Err(ApiError::missing("name", "required (e.g. corp-sso)"));
        }
        let protocol =
            match req.protocol.as_deref() {
                Some(s) => IdpProtocol::parse(s).ok_or_else(|| {
                    ApiError::invalid("protocol", format!("{s:?}: give oidc or saml"))
                })?,
                None => match (req.issuer.is_some(), req.metadata_xml.is_some()) {
                    (true, false) => IdpProtocol::Oidc,
                    (false, true) => IdpProtocol::Saml,
                    (true, true) => {
                        return Err(ApiError::combination(
                            "give issuer (oidc) or metadata-xml (saml), not both",
                        ))
                    }
                    (false, false) => return Err(ApiError::missing(
                        "protocol",
                        "give issuer, client-id and client-secret (oidc) or metadata-xml (saml)",
                    )),
                },
            };
        let mut p = IdentityProvider {
            id: new_id(IDP_ID_PREFIX)?,
            name: String::new(),
            description: None,
            protocol,
            oidc: (protocol == IdpProtocol::Oidc).then(|| OidcSettings {
                issuer: String::new(),
                client_id: String::new(),
                groups_claim: DEFAULT_OIDC_GROUPS_CLAIM.to_string(),
                username_claim: DEFAULT_OIDC_USERNAME_CLAIM.to_string(),
                scopes: DEFAULT_OIDC_SCOPES.iter().map(|s| s.to_string()).collect(),
            }),
            saml: (protocol == IdpProtocol::Saml).then(|| SamlSettings {
                metadata_xml: String::new(),
                metadata_url: None,
                groups_attribute: DEFAULT_SAML_GROUPS_ATTRIBUTE.to_string(),
                username_attribute: None,
                entity_id: String::new(),
                sso_url: String::new(),
                sso_binding: SamlBinding::HttpRedirect,
                signing_certificates: Vec::new(),
            }),
            client_secret_set: false,
            recheck_seconds: DEFAULT_IDP_RECHECK_SECONDS,
            creation_time: Timestamp(0),
            redirect_uri: None,
            sp_metadata_url: None,
        };
        let mut secrets = IdpSecrets::default();
        apply_changes(
            &mut p,
            &mut secrets,
            &ModifyIdentityProviderRequest::from(req.clone()),
        )?;
        self.write(|db, now| {
            check_name_free(db, &p)?;
            save(db, &p, &secrets, now, true)?;
            load_identity_provider(db, &p.id)
        })
    }

    /// Modifies an identity provider (not its protocol); running endpoints that use it take
    /// the change for new sign-ins and the next session refreshes.
    pub fn modify_identity_provider(
        &self,
        id_or_name: &str,
        req: &ModifyIdentityProviderRequest,
    ) -> Result<IdentityProvider, ApiError> {
        self.write(|db, now| {
            let mut p = resolve(db, id_or_name)?;
            let mut secrets = load_secrets(db, &p.id)?;
            apply_changes(&mut p, &mut secrets, req)?;
            check_name_free(db, &p)?;
            save(db, &p, &secrets, now, false)?;
            load_identity_provider(db, &p.id)
        })
    }

    /// Deletes an identity provider; refused while an endpoint uses it.
    pub fn delete_identity_provider(&self, id_or_name: &str) -> Result<IdentityProvider, ApiError> {
        self.write(|db, _now| {
            let p = resolve(db, id_or_name)?;
            let users = users(db, &p.id)?;
            if !users.is_empty() {
                return Err(ApiError::incorrect_state(format!(
                    "identity provider {} is used by endpoint(s) {}: delete them first \
                     (disassociate their target networks, then `cvpn endpoint delete`), or keep \
                     the provider and change its settings with `cvpn idp modify`",
                    p.id,
                    users.join(", ")
                )));
            }
            // Deleted endpoints keep their row for the retention period: they forget it.
            db.prepare_cached("UPDATE endpoints SET idp_id = NULL WHERE idp_id = ?1")?
                .execute([&p.id])?;
            db.prepare_cached("DELETE FROM identity_providers WHERE id = ?1")?
                .execute([&p.id])?;
            Ok(p)
        })
    }

    /// One identity provider, by id or name.
    pub fn describe_identity_provider(
        &self,
        id_or_name: &str,
    ) -> Result<IdentityProvider, ApiError> {
        self.read(|db| resolve(db, id_or_name))
    }

    /// All identity providers, by name.
    pub fn describe_identity_providers(&self) -> Result<Vec<IdentityProvider>, ApiError> {
        self.read(|db| {
            query(
                db,
                &format!("SELECT {IDP_COLS} FROM identity_providers ORDER BY name"),
                (),
                idp_row,
            )
        })
    }

    /// An identity provider's secrets (the daemon's; never returned by the API).
    pub fn identity_provider_secrets(&self, id: &str) -> Result<IdpSecrets, ApiError> {
        self.read(|db| {
            load_identity_provider(db, id)?;
            load_secrets(db, id)
        })
    }

    /// The endpoints that use an identity provider (not deleted ones).
    pub fn endpoints_using_identity_provider(&self, id: &str) -> Result<Vec<String>, ApiError> {
        self.read(|db| users(db, id))
    }

    /// The identity provider of an endpoint and its secrets, if the endpoint uses one.
    pub fn endpoint_identity_provider(
        &self,
        endpoint_id: &str,
    ) -> Result<Option<(IdentityProvider, IdpSecrets)>, ApiError> {
        self.read(|db| {
            let ep = load_endpoint(db, endpoint_id)?;
            match ep.idp_id() {
                None => Ok(None),
                Some(id) => {
                    let p = load_identity_provider(db, &id)?;
                    let s = load_secrets(db, &id)?;
                    Ok(Some((p, s)))
                }
            }
        })
    }
}

fn save(
    db: &Db,
    p: &IdentityProvider,
    secrets: &IdpSecrets,
    now: Timestamp,
    insert: bool,
) -> Result<(), ApiError> {
    let settings = match (&p.oidc, &p.saml) {
        (Some(o), _) => serde_json::to_string(o),
        (None, Some(s)) => serde_json::to_string(s),
        (None, None) => return Err(ApiError::internal("identity provider without settings")),
    }
    .map_err(|e| ApiError::internal(format!("identity provider settings: {e}")))?;
    let sql = if insert {
        "INSERT INTO identity_providers (id, name, description, protocol, settings, \
         client_secret, recheck_seconds, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    } else {
        "UPDATE identity_providers SET name = ?2, description = ?3, protocol = ?4, \
         settings = ?5, client_secret = ?6, recheck_seconds = ?7 WHERE id = ?1 AND ?8 = ?8"
    };
    db.prepare_cached(sql)?.execute(params![
        p.id,
        p.name,
        p.description,
        p.protocol.as_str(),
        settings,
        secrets.client_secret,
        p.recheck_seconds,
        now.0,
    ])?;
    Ok(())
}
