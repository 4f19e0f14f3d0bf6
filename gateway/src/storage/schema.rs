//! The database schema, as an ordered list of migrations, once for each backend.
//!
//! SQLite: `PRAGMA user_version` holds the number of migrations applied. PostgreSQL: the one
//! row of `cvpn_schema`. On open, each missing migration runs in its own transaction together
//! with the version bump, so a crash leaves the schema at a whole version; on PostgreSQL an
//! advisory lock makes nodes that start together migrate one after the other. Migrations are
//! append-only: never edit one that has shipped, add the next — to both lists, with the same
//! number ([`MIGRATIONS`] and [`POSTGRES_MIGRATIONS`] have the same tables and columns, which
//! the storage tests check).
//!
//! The PostgreSQL text differs only where the dialects do: `BIGINT` for every integer (SQLite's
//! `INTEGER` is 64-bit, PostgreSQL's 32), `BYTEA` for `BLOB`, identity columns for
//! `AUTOINCREMENT`, `coalesce` for `ifnull`, and an ICU collation `nocase` for `COLLATE NOCASE`.

use rusqlite::TransactionBehavior;

use super::sql::PgPool;
use crate::model::ApiError;

/// The migrations, in order; migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the resources of the model (endpoints, associations, routes, rules, connections, CRLs).
    r#"
CREATE TABLE endpoints (
    id                            TEXT    PRIMARY KEY NOT NULL,
    state                         TEXT    NOT NULL
        CHECK (state IN ('pending-associate', 'available', 'deleting', 'deleted')),
    client_cidr                   TEXT    NOT NULL,
    transport                     TEXT    NOT NULL CHECK (transport IN ('udp', 'tcp')),
    vpn_port                      INTEGER NOT NULL,
    split_tunnel                  INTEGER NOT NULL,
    dns_servers                   TEXT    NOT NULL,  -- comma-separated IPv4 addresses
    session_timeout_hours         INTEGER NOT NULL,
    disconnect_on_session_timeout INTEGER NOT NULL,
    banner_enabled                INTEGER NOT NULL,
    banner_text                   TEXT,
    connect_enabled               INTEGER NOT NULL,
    connect_handler               TEXT,
    log_enabled                   INTEGER NOT NULL,
    log_stdout                    INTEGER NOT NULL,
    self_service_portal           INTEGER NOT NULL,
    description                   TEXT,
    server_cert_pem               TEXT    NOT NULL,
    server_key_pem                TEXT    NOT NULL,  -- emptied when the endpoint is deleted
    client_ca_pem                 TEXT    NOT NULL,
    crl_pem                       TEXT,
    crl_entries                   INTEGER NOT NULL DEFAULT 0,
    policy_revision               INTEGER NOT NULL DEFAULT 0,
    created_at                    INTEGER NOT NULL,
    deleted_at                    INTEGER
) STRICT;

CREATE TABLE endpoint_tags (
    endpoint_id TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    PRIMARY KEY (endpoint_id, key)
) STRICT;

-- seq is the data plane's target id: AUTOINCREMENT never reuses one.
CREATE TABLE associations (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    endpoint_id  TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    interface    TEXT    NOT NULL,
    subnet       TEXT,
    snat_address TEXT,
    state        TEXT    NOT NULL
        CHECK (state IN ('associating', 'associated', 'disassociating', 'disassociated')),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX associations_endpoint ON associations(endpoint_id);
CREATE UNIQUE INDEX associations_live ON associations(endpoint_id, interface)
    WHERE state <> 'disassociated';

CREATE TABLE routes (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id     TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    destination     TEXT    NOT NULL,
    association_seq INTEGER NOT NULL REFERENCES associations(seq) ON DELETE CASCADE,
    origin          TEXT    NOT NULL CHECK (origin IN ('associate', 'add-route')),
    state           TEXT    NOT NULL CHECK (state IN ('creating', 'active', 'deleting')),
    description     TEXT,
    created_at      INTEGER NOT NULL,
    UNIQUE (endpoint_id, destination, association_seq)
) STRICT;
CREATE INDEX routes_association ON routes(association_seq);

CREATE TABLE authorization_rules (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    destination TEXT    NOT NULL,
    group_id    TEXT,
    access_all  INTEGER NOT NULL CHECK (access_all IN (0, 1)),
    description TEXT,
    created_at  INTEGER NOT NULL,
    CHECK ((access_all = 1) = (group_id IS NULL))
) STRICT;
CREATE UNIQUE INDEX authorization_rules_key
    ON authorization_rules(endpoint_id, destination, access_all, ifnull(group_id, ''));

CREATE TABLE connections (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    endpoint_id      TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    status           TEXT    NOT NULL
        CHECK (status IN ('active', 'terminating', 'terminated', 'failed-to-terminate')),
    client_ip        TEXT    NOT NULL,
    common_name      TEXT    NOT NULL,
    username         TEXT,
    device_ip        TEXT    NOT NULL,
    device_port      INTEGER NOT NULL,
    transport        TEXT    NOT NULL CHECK (transport IN ('udp', 'tcp')),
    start_time       INTEGER NOT NULL,
    last_update_time INTEGER NOT NULL,
    end_time         INTEGER,
    ingress_bytes    INTEGER NOT NULL DEFAULT 0,
    egress_bytes     INTEGER NOT NULL DEFAULT 0,
    ingress_packets  INTEGER NOT NULL DEFAULT 0,
    egress_packets   INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX connections_endpoint ON connections(endpoint_id, status);
CREATE INDEX connections_ended ON connections(end_time) WHERE end_time IS NOT NULL;
"#,
    // 2: directories (LDAP / Active Directory) that endpoints sign users in against, and TOTP
    // enrolments.
    r#"
CREATE TABLE directories (
    id                TEXT    PRIMARY KEY NOT NULL,
    name              TEXT    NOT NULL UNIQUE,
    description       TEXT,
    urls              TEXT    NOT NULL,  -- one per line, tried in order
    base_dn           TEXT    NOT NULL,
    bind_dn           TEXT,
    bind_password     TEXT,
    preset            TEXT    NOT NULL CHECK (preset IN ('openldap', 'active-directory')),
    user_filter       TEXT    NOT NULL,
    groups_mode       TEXT    NOT NULL CHECK (groups_mode IN ('memberof', 'ad-nested', 'groupofnames')),
    ca_pem            TEXT,
    allow_plaintext   INTEGER NOT NULL,
    realm             TEXT,
    timeout_ms        INTEGER NOT NULL,
    recheck_seconds   INTEGER NOT NULL,
    mfa               TEXT    NOT NULL CHECK (mfa IN ('none', 'totp', 'radius')),
    radius_server     TEXT,
    radius_secret     TEXT,
    radius_timeout_ms INTEGER NOT NULL,
    radius_retries    INTEGER NOT NULL,
    created_at        INTEGER NOT NULL
) STRICT;

CREATE TABLE mfa_enrollments (
    directory_id TEXT    NOT NULL REFERENCES directories(id) ON DELETE CASCADE,
    username     TEXT    NOT NULL COLLATE NOCASE,
    secret       BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (directory_id, username)
) STRICT;

ALTER TABLE endpoints ADD COLUMN directory_id TEXT REFERENCES directories(id);
"#,
    // 3: identity providers (OIDC / SAML) that federated endpoints send users to. The
    // protocol's settings are one JSON object (OidcSettings or SamlSettings, kebab-case);
    // the client secret has its column, never returned by describe calls.
    // `endpoints.self_service_portal` exists since migration 1.
    r#"
CREATE TABLE identity_providers (
    id              TEXT    PRIMARY KEY NOT NULL,
    name            TEXT    NOT NULL UNIQUE,
    description     TEXT,
    protocol        TEXT    NOT NULL CHECK (protocol IN ('oidc', 'saml')),
    settings        TEXT    NOT NULL,
    client_secret   TEXT,
    recheck_seconds INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
) STRICT;

ALTER TABLE endpoints ADD COLUMN idp_id TEXT REFERENCES identity_providers(id);
"#,
    // 4: the self-service portal's certificates. An endpoint may hold its client CA's private
    // key (never returned by describe calls; erased when the endpoint is deleted): the portal
    // then issues users short-lived client certificates, recorded here so that removing a
    // user's access revokes them through the endpoint's CRL. Profile downloads are counted.
    r#"
ALTER TABLE endpoints ADD COLUMN client_ca_key_pem TEXT;

CREATE TABLE issued_certificates (
    serial      TEXT    PRIMARY KEY NOT NULL,  -- aa:bb:… hex, the TLS layer's format
    endpoint_id TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    username    TEXT    NOT NULL COLLATE NOCASE,
    issued_at   INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
CREATE INDEX issued_certificates_user ON issued_certificates(endpoint_id, username);

CREATE TABLE portal_downloads (
    endpoint_id TEXT    PRIMARY KEY NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    count       INTEGER NOT NULL
) STRICT;
"#,
    // 5: the daemons (nodes) serving from this database, each with its heartbeat.
    r#"
CREATE TABLE nodes (
    name         TEXT    PRIMARY KEY NOT NULL,
    instance     TEXT    NOT NULL,  -- this run of the daemon (a restart is a new instance)
    address      TEXT,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
) STRICT;

-- The node that holds each connection (none: recorded before nodes existed).
ALTER TABLE connections ADD COLUMN node TEXT;

-- A counter every configuration change increments in its own transaction: nodes watch it
-- to learn of changes made through other nodes (or tools) and resynchronise.
CREATE TABLE changes (
    one INTEGER PRIMARY KEY NOT NULL CHECK (one = 1),
    seq INTEGER NOT NULL
) STRICT;
INSERT INTO changes (one, seq) VALUES (1, 0);

-- When an administrator last ended a user's access to an endpoint (revoke-user): portal
-- sessions begun before it may not take new profiles.
CREATE TABLE user_revocations (
    endpoint_id TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    username    TEXT    NOT NULL COLLATE NOCASE,
    revoked_at  INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, username)
) STRICT;
"#,
    // 6: several nodes serve one endpoint. An association names the node whose interface it
    // is (none: made before nodes existed, served by whichever node serves the database), and
    // one interface name may be associated once per node. Each node hands out client addresses
    // only from the blocks of the client CIDR it has claimed here.
    r#"
ALTER TABLE associations ADD COLUMN node TEXT;
DROP INDEX associations_live;
CREATE UNIQUE INDEX associations_live ON associations(endpoint_id, coalesce(node, ''), interface)
    WHERE state <> 'disassociated';

CREATE TABLE address_blocks (
    endpoint_id TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    block       TEXT    NOT NULL,  -- a CIDR inside the endpoint's client CIDR
    node        TEXT    NOT NULL,
    claimed_at  INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, block)
) STRICT;
CREATE INDEX address_blocks_node ON address_blocks(node);

-- When a sweep recorded the connection as ended because its node was found dead (none: it
-- ended otherwise). A node that was only cut off reports the connection's counters again when
-- it is back, which makes the connection active again.
ALTER TABLE connections ADD COLUMN swept_at INTEGER;
"#,
    // 7: the AWS-compatible API. Access keys sign its requests (SigV4 needs the secret itself
    // to check a signature, as AWS keeps it: whoever reads this database is an administrator
    // already, it holds the endpoints' private keys); certificates imported through its ACM
    // calls are named by ARN; a ClientToken makes a create call idempotent.
    r#"
CREATE TABLE access_keys (
    id          TEXT    PRIMARY KEY NOT NULL,
    secret      TEXT    NOT NULL,
    permission  TEXT    NOT NULL CHECK (permission IN ('full', 'read-only')),
    description TEXT,
    created_at  INTEGER NOT NULL,
    last_used   INTEGER
) STRICT;

CREATE TABLE imported_certificates (
    arn             TEXT    PRIMARY KEY NOT NULL,
    certificate_pem TEXT    NOT NULL,
    chain_pem       TEXT    NOT NULL,
    private_key_pem TEXT,
    subject         TEXT    NOT NULL,
    issuer          TEXT    NOT NULL,
    domain_name     TEXT    NOT NULL,
    serial          TEXT    NOT NULL,
    not_before      INTEGER NOT NULL,
    not_after       INTEGER NOT NULL,
    key_algorithm   TEXT    NOT NULL,
    imported_at     INTEGER NOT NULL
) STRICT;

CREATE TABLE client_tokens (
    token        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    response     TEXT,   -- the answer, once the call finished (none: under way or failed)
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (token, action)
) STRICT;
"#,
    // 8: an authorization rule may be limited to a protocol and destination ports (cvpn,
    // beyond AWS): `tcp` / `udp` / `icmp`, and `443` or `8000-8100` (none: every port); and
    // security groups limit what leaves through a target network.
    r#"
ALTER TABLE authorization_rules ADD COLUMN protocol TEXT;
ALTER TABLE authorization_rules ADD COLUMN port_range TEXT;
DROP INDEX authorization_rules_key;
CREATE UNIQUE INDEX authorization_rules_key
    ON authorization_rules(endpoint_id, destination, access_all, ifnull(group_id, ''),
                           ifnull(protocol, ''), ifnull(port_range, ''));

-- Security groups: egress rules (JSON, `SecurityGroupRule`s) for the target networks they are
-- applied to; an association with none applied lets everything leave (AWS's default group).
CREATE TABLE security_groups (
    id          TEXT    PRIMARY KEY NOT NULL,
    name        TEXT    NOT NULL UNIQUE,
    description TEXT,
    egress      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE association_security_groups (
    association_id    TEXT    NOT NULL REFERENCES associations(id) ON DELETE CASCADE,
    security_group_id TEXT    NOT NULL REFERENCES security_groups(id),
    position          INTEGER NOT NULL,
    PRIMARY KEY (association_id, security_group_id)
) STRICT;
"#,
];

/// The PostgreSQL text of each of [`MIGRATIONS`], same numbers, same tables and columns.
pub const POSTGRES_MIGRATIONS: &[&str] = &[
    // 1
    r#"
CREATE TABLE endpoints (
    id                            TEXT    PRIMARY KEY NOT NULL,
    state                         TEXT    NOT NULL
        CHECK (state IN ('pending-associate', 'available', 'deleting', 'deleted')),
    client_cidr                   TEXT    NOT NULL,
    transport                     TEXT    NOT NULL CHECK (transport IN ('udp', 'tcp')),
    vpn_port                      BIGINT  NOT NULL,
    split_tunnel                  BIGINT  NOT NULL,
    dns_servers                   TEXT    NOT NULL,
    session_timeout_hours         BIGINT  NOT NULL,
    disconnect_on_session_timeout BIGINT  NOT NULL,
    banner_enabled                BIGINT  NOT NULL,
    banner_text                   TEXT,
    connect_enabled               BIGINT  NOT NULL,
    connect_handler               TEXT,
    log_enabled                   BIGINT  NOT NULL,
    log_stdout                    BIGINT  NOT NULL,
    self_service_portal           BIGINT  NOT NULL,
    description                   TEXT,
    server_cert_pem               TEXT    NOT NULL,
    server_key_pem                TEXT    NOT NULL,
    client_ca_pem                 TEXT    NOT NULL,
    crl_pem                       TEXT,
    crl_entries                   BIGINT  NOT NULL DEFAULT 0,
    policy_revision               BIGINT  NOT NULL DEFAULT 0,
    created_at                    BIGINT  NOT NULL,
    deleted_at                    BIGINT
);

CREATE TABLE endpoint_tags (
    endpoint_id TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    position    BIGINT  NOT NULL,
    key         TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    PRIMARY KEY (endpoint_id, key)
);

CREATE TABLE associations (
    seq          BIGINT  GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    endpoint_id  TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    interface    TEXT    NOT NULL,
    subnet       TEXT,
    snat_address TEXT,
    state        TEXT    NOT NULL
        CHECK (state IN ('associating', 'associated', 'disassociating', 'disassociated')),
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL
);
CREATE INDEX associations_endpoint ON associations(endpoint_id);
CREATE UNIQUE INDEX associations_live ON associations(endpoint_id, interface)
    WHERE state <> 'disassociated';

CREATE TABLE routes (
    seq             BIGINT  GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    endpoint_id     TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    destination     TEXT    NOT NULL,
    association_seq BIGINT  NOT NULL REFERENCES associations(seq) ON DELETE CASCADE,
    origin          TEXT    NOT NULL CHECK (origin IN ('associate', 'add-route')),
    state           TEXT    NOT NULL CHECK (state IN ('creating', 'active', 'deleting')),
    description     TEXT,
    created_at      BIGINT  NOT NULL,
    UNIQUE (endpoint_id, destination, association_seq)
);
CREATE INDEX routes_association ON routes(association_seq);

CREATE TABLE authorization_rules (
    seq         BIGINT  GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    endpoint_id TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    destination TEXT    NOT NULL,
    group_id    TEXT,
    access_all  BIGINT  NOT NULL CHECK (access_all IN (0, 1)),
    description TEXT,
    created_at  BIGINT  NOT NULL,
    CHECK ((access_all = 1) = (group_id IS NULL))
);
CREATE UNIQUE INDEX authorization_rules_key
    ON authorization_rules(endpoint_id, destination, access_all, (coalesce(group_id, '')));

CREATE TABLE connections (
    seq              BIGINT  GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    endpoint_id      TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    status           TEXT    NOT NULL
        CHECK (status IN ('active', 'terminating', 'terminated', 'failed-to-terminate')),
    client_ip        TEXT    NOT NULL,
    common_name      TEXT    NOT NULL,
    username         TEXT,
    device_ip        TEXT    NOT NULL,
    device_port      BIGINT  NOT NULL,
    transport        TEXT    NOT NULL CHECK (transport IN ('udp', 'tcp')),
    start_time       BIGINT  NOT NULL,
    last_update_time BIGINT  NOT NULL,
    end_time         BIGINT,
    ingress_bytes    BIGINT  NOT NULL DEFAULT 0,
    egress_bytes     BIGINT  NOT NULL DEFAULT 0,
    ingress_packets  BIGINT  NOT NULL DEFAULT 0,
    egress_packets   BIGINT  NOT NULL DEFAULT 0
);
CREATE INDEX connections_endpoint ON connections(endpoint_id, status);
CREATE INDEX connections_ended ON connections(end_time) WHERE end_time IS NOT NULL;
"#,
    // 2
    r#"
CREATE COLLATION IF NOT EXISTS nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);

CREATE TABLE directories (
    id                TEXT    PRIMARY KEY NOT NULL,
    name              TEXT    NOT NULL UNIQUE,
    description       TEXT,
    urls              TEXT    NOT NULL,
    base_dn           TEXT    NOT NULL,
    bind_dn           TEXT,
    bind_password     TEXT,
    preset            TEXT    NOT NULL CHECK (preset IN ('openldap', 'active-directory')),
    user_filter       TEXT    NOT NULL,
    groups_mode       TEXT    NOT NULL CHECK (groups_mode IN ('memberof', 'ad-nested', 'groupofnames')),
    ca_pem            TEXT,
    allow_plaintext   BIGINT  NOT NULL,
    realm             TEXT,
    timeout_ms        BIGINT  NOT NULL,
    recheck_seconds   BIGINT  NOT NULL,
    mfa               TEXT    NOT NULL CHECK (mfa IN ('none', 'totp', 'radius')),
    radius_server     TEXT,
    radius_secret     TEXT,
    radius_timeout_ms BIGINT  NOT NULL,
    radius_retries    BIGINT  NOT NULL,
    created_at        BIGINT  NOT NULL
);

CREATE TABLE mfa_enrollments (
    directory_id TEXT    NOT NULL REFERENCES directories(id) ON DELETE CASCADE,
    username     TEXT    NOT NULL COLLATE nocase,
    secret       BYTEA   NOT NULL,
    created_at   BIGINT  NOT NULL,
    PRIMARY KEY (directory_id, username)
);

ALTER TABLE endpoints ADD COLUMN directory_id TEXT REFERENCES directories(id);
"#,
    // 3
    r#"
CREATE TABLE identity_providers (
    id              TEXT    PRIMARY KEY NOT NULL,
    name            TEXT    NOT NULL UNIQUE,
    description     TEXT,
    protocol        TEXT    NOT NULL CHECK (protocol IN ('oidc', 'saml')),
    settings        TEXT    NOT NULL,
    client_secret   TEXT,
    recheck_seconds BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL
);

ALTER TABLE endpoints ADD COLUMN idp_id TEXT REFERENCES identity_providers(id);
"#,
    // 4
    r#"
ALTER TABLE endpoints ADD COLUMN client_ca_key_pem TEXT;

CREATE TABLE issued_certificates (
    serial      TEXT    PRIMARY KEY NOT NULL,
    endpoint_id TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    username    TEXT    NOT NULL COLLATE nocase,
    issued_at   BIGINT  NOT NULL,
    not_after   BIGINT  NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX issued_certificates_user ON issued_certificates(endpoint_id, username);

CREATE TABLE portal_downloads (
    endpoint_id TEXT    PRIMARY KEY NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    count       BIGINT  NOT NULL
);
"#,
    // 5
    r#"
CREATE TABLE nodes (
    name         TEXT    PRIMARY KEY NOT NULL,
    instance     TEXT    NOT NULL,
    address      TEXT,
    started_at   BIGINT  NOT NULL,
    heartbeat_at BIGINT  NOT NULL
);

ALTER TABLE connections ADD COLUMN node TEXT;

CREATE TABLE changes (
    one BIGINT PRIMARY KEY NOT NULL CHECK (one = 1),
    seq BIGINT NOT NULL
);
INSERT INTO changes (one, seq) VALUES (1, 0);

CREATE TABLE user_revocations (
    endpoint_id TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    username    TEXT    NOT NULL COLLATE nocase,
    revoked_at  BIGINT  NOT NULL,
    PRIMARY KEY (endpoint_id, username)
);
"#,
    // 6
    r#"
ALTER TABLE associations ADD COLUMN node TEXT;
DROP INDEX associations_live;
CREATE UNIQUE INDEX associations_live ON associations(endpoint_id, coalesce(node, ''), interface)
    WHERE state <> 'disassociated';

CREATE TABLE address_blocks (
    endpoint_id TEXT    NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    block       TEXT    NOT NULL,
    node        TEXT    NOT NULL,
    claimed_at  BIGINT  NOT NULL,
    PRIMARY KEY (endpoint_id, block)
);
CREATE INDEX address_blocks_node ON address_blocks(node);

ALTER TABLE connections ADD COLUMN swept_at BIGINT;
"#,
    // 7
    r#"
CREATE TABLE access_keys (
    id          TEXT    PRIMARY KEY NOT NULL,
    secret      TEXT    NOT NULL,
    permission  TEXT    NOT NULL CHECK (permission IN ('full', 'read-only')),
    description TEXT,
    created_at  BIGINT  NOT NULL,
    last_used   BIGINT
);

CREATE TABLE imported_certificates (
    arn             TEXT    PRIMARY KEY NOT NULL,
    certificate_pem TEXT    NOT NULL,
    chain_pem       TEXT    NOT NULL,
    private_key_pem TEXT,
    subject         TEXT    NOT NULL,
    issuer          TEXT    NOT NULL,
    domain_name     TEXT    NOT NULL,
    serial          TEXT    NOT NULL,
    not_before      BIGINT  NOT NULL,
    not_after       BIGINT  NOT NULL,
    key_algorithm   TEXT    NOT NULL,
    imported_at     BIGINT  NOT NULL
);

CREATE TABLE client_tokens (
    token        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    response     TEXT,
    created_at   BIGINT  NOT NULL,
    PRIMARY KEY (token, action)
);
"#,
    // 8
    r#"
ALTER TABLE authorization_rules ADD COLUMN protocol TEXT;
ALTER TABLE authorization_rules ADD COLUMN port_range TEXT;
DROP INDEX authorization_rules_key;
CREATE UNIQUE INDEX authorization_rules_key
    ON authorization_rules(endpoint_id, destination, access_all, (coalesce(group_id, '')),
                           (coalesce(protocol, '')), (coalesce(port_range, '')));

CREATE TABLE security_groups (
    id          TEXT    PRIMARY KEY NOT NULL,
    name        TEXT    NOT NULL UNIQUE,
    description TEXT,
    egress      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE association_security_groups (
    association_id    TEXT    NOT NULL REFERENCES associations(id) ON DELETE CASCADE,
    security_group_id TEXT    NOT NULL REFERENCES security_groups(id),
    position          BIGINT  NOT NULL,
    PRIMARY KEY (association_id, security_group_id)
);
"#,
];

/// Applies the missing SQLite migrations, each in one transaction with its `user_version` bump.
pub(super) fn migrate_sqlite(db: &mut rusqlite::Connection) -> Result<(), ApiError> {
    let current: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let current = known_version(current)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = db.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)
            .map_err(|e| ApiError::internal(format!("migration {}: {e}", i + 1)))?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// Refuses a schema newer than this program's.
fn known_version(current: i64) -> Result<usize, ApiError> {
    let known = MIGRATIONS.len();
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > known {
        return Err(ApiError::internal(format!(
            "schema version {current} is newer than this cvpn knows ({known}); run a newer cvpn"
        )));
    }
    Ok(current)
}

/// The advisory lock key nodes take while migrating ("cvpn" in ASCII).
const MIGRATION_LOCK: i64 = 0x6376_706e;

/// Applies the missing PostgreSQL migrations, each in one transaction with its version bump,
/// under an advisory lock so that nodes starting together do not race.
pub(super) fn migrate_postgres(pool: &PgPool) -> Result<(), ApiError> {
    pool.batch("CREATE TABLE IF NOT EXISTS cvpn_schema (one BIGINT PRIMARY KEY CHECK (one = 1), version BIGINT NOT NULL); \
                INSERT INTO cvpn_schema (one, version) VALUES (1, 0) ON CONFLICT (one) DO NOTHING")
        .map_err(|e| ApiError::new(crate::model::codes::SERVICE_UNAVAILABLE, e))?;
    for (i, sql) in POSTGRES_MIGRATIONS.iter().enumerate() {
        let number = i64::try_from(i + 1).unwrap_or(i64::MAX);
        pool.transaction("BEGIN", 1, |db| {
            db.query_all(
                "SELECT pg_advisory_xact_lock(?1)::text",
                [MIGRATION_LOCK],
                |_| Ok(()),
            )?;
            let current: i64 = db
                .query_all("SELECT version FROM cvpn_schema", (), |r| r.get(0))?
                .first()
                .copied()
                .unwrap_or(0);
            if known_version(current)? > i {
                return Ok(());
            }
            db.batch(sql)
                .map_err(|e| ApiError::internal(format!("migration {}: {e}", i + 1)))?;
            db.execute("UPDATE cvpn_schema SET version = ?1", [number])?;
            Ok(())
        })?;
    }
    Ok(())
}

/// The PostgreSQL schema version.
pub(super) fn postgres_version(pool: &PgPool) -> Result<u32, ApiError> {
    pool.transaction("BEGIN READ ONLY", 1, |db| {
        let v: Vec<u32> = db.query_all("SELECT version FROM cvpn_schema", (), |r| r.get(0))?;
        Ok(v.first().copied().unwrap_or(0))
    })
}
