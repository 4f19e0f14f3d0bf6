//! A real SAML 2.0 identity provider for the single sign-on tests: Debian's SimpleSAMLphp
//! (`simplesamlphp` + `php-cli` + `php-xml`, `cargo xtask setup` installs them) served by PHP's
//! built-in web server, `SIMPLESAMLPHP_CONFIG_DIR=<dir> php -S 127.0.0.1:<port> -t
//! /usr/share/simplesamlphp/www`, started by the test on a free port and stopped (by PID) on
//! drop.
//!
//! Everything it needs is written into a fresh directory: `config.php` (Debian's, with the
//! URL, directories, salt and admin password overridden; the SAML 2.0 IdP enabled),
//! `authsources.php` (an `exampleauth:UserPass` source with [`SamlIdpUser`]s: `uid`, `mail`
//! and a `memberOf` array), `metadata/saml20-idp-hosted.php` (signing key and certificate made
//! now with the `openssl` CLI; responses and assertions signed, RSA-SHA256) and
//! `metadata/saml20-sp-remote.php` (each [`SamlSp`]: entity id, ACS URL for HTTP-POST, the
//! NameID taken from `uid`). Sign-in is SimpleSAMLphp's own login page
//! (`input[name=username]`, `input[name=password]`); after it, its HTTP-POST page posts the
//! SAMLResponse to the SP's ACS (with JavaScript; a button without it).

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    directory_servers::free_port,
    gateway::TempDir,
    oidc_idp::{http_request, random_hex},
    sh, terminate,
};

/// Debian's SimpleSAMLphp.
pub const SIMPLESAMLPHP: &str = "/usr/share/simplesamlphp";
/// How long the IdP may take to serve its metadata.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A service provider the IdP knows.
#[derive(Clone, Debug)]
pub struct SamlSp {
    pub entity_id: String,
    /// Its assertion consumer service (HTTP-POST binding).
    pub acs_url: String,
}

/// A user of the `exampleauth:UserPass` source; she signs in with `uid` and `password`.
#[derive(Clone, Debug)]
pub struct SamlIdpUser {
    pub uid: String,
    pub password: String,
    pub mail: String,
    /// The `memberOf` attribute's values.
    pub groups: Vec<String>,
}

impl SamlIdpUser {
    pub fn new(uid: &str, password: &str, groups: &[&str]) -> Self {
        SamlIdpUser {
            uid: uid.into(),
            password: password.into(),
            mail: format!("{uid}@example.test"),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// What the IdP knows and does.
#[derive(Clone, Debug)]
pub struct SamlIdpConfig {
    pub sps: Vec<SamlSp>,
    pub users: Vec<SamlIdpUser>,
    /// Sign the Response (default true).
    pub sign_response: bool,
    /// Sign the Assertion (default true).
    pub sign_assertion: bool,
}

impl Default for SamlIdpConfig {
    fn default() -> Self {
        SamlIdpConfig {
            sps: Vec::new(),
            users: Vec::new(),
            sign_response: true,
            sign_assertion: true,
        }
    }
}

/// A running SimpleSAMLphp IdP; stopped (SIGTERM to its PID, then SIGKILL) and its directory
/// removed on drop.
pub struct SamlIdp {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    base_url: String,
    cert_pem: String,
}

impl SamlIdp {
    /// Writes the configuration, starts PHP's web server on a free port and waits (bounded)
    /// until the IdP serves its metadata.
    pub fn start(config: SamlIdpConfig) -> Result<Self> {
        for p in [SIMPLESAMLPHP, "/usr/bin/php"] {
            if !Path::new(p).exists() {
                bail!("{p} is missing: apt-get install simplesamlphp php-cli php-xml (`cargo xtask setup` does)");
            }
        }
        let dir = TempDir::new("saml-idp")?;
        for sub in ["cert", "metadata", "log", "data", "tmp", "sessions"] {
            fs::create_dir_all(dir.0.join(sub))?;
        }
        let (key, cert) = (dir.0.join("cert/idp.key"), dir.0.join("cert/idp.crt"));
        sh(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
            ])
            .args(["-subj", "/CN=simplesamlphp.test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert))?;
        let cert_pem = fs::read_to_string(&cert)?;
        let mut idp = SamlIdp {
            child: None,
            dir,
            port: 0,
            base_url: String::new(),
            cert_pem,
        };
        // The free port is found by binding port 0 and closing the socket: another process
        // can take it in between. Try again with another port if the IdP fails to start.
        let mut last_err = None;
        for _ in 0..3 {
            idp.port = free_port()?;
            idp.base_url = format!("http://127.0.0.1:{}/", idp.port);
            match idp.write_config(&config).and_then(|_| idp.launch()) {
                Ok(()) => return Ok(idp),
                Err(e) => {
                    idp.stop();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap())
    }

    fn write_config(&self, config: &SamlIdpConfig) -> Result<()> {
        let d = &self.dir.0;
        let dir = |sub: &str| php_str(&format!("{}/", d.join(sub).display()));
        fs::write(
            d.join("config.php"),
            format!(
                r#"<?php
require '/etc/simplesamlphp/config.php';
$config['baseurlpath'] = '/';
$config['certdir'] = {cert};
$config['loggingdir'] = {log};
$config['datadir'] = {data};
$config['tempdir'] = {tmp};
$config['metadatadir'] = {metadata};
$config['metadata.sources'] = [['type' => 'flatfile', 'directory' => {metadata}]];
$config['secretsalt'] = {salt};
$config['auth.adminpassword'] = {admin};
$config['enable.saml20-idp'] = true;
$config['module.enable'] = ['exampleauth' => true, 'core' => true, 'saml' => true, 'admin' => true];
$config['logging.handler'] = 'file';
$config['logging.logfile'] = 'simplesamlphp.log';
$config['logging.level'] = SimpleSAML\Logger::INFO;
// Plain HTTP on loopback: no Secure cookies, and so no SameSite=None (Chromium drops those).
$config['session.cookie.secure'] = false;
$config['session.cookie.samesite'] = 'Lax';
$config['language.cookie.secure'] = false;
$config['language.cookie.samesite'] = 'Lax';
$config['session.phpsession.savepath'] = {sessions};
$config['store.type'] = 'phpsession';
$config['timezone'] = 'UTC';
$config['showerrors'] = true;
$config['errorreporting'] = false;
"#,
                cert = dir("cert"),
                log = dir("log"),
                data = dir("data"),
                tmp = dir("tmp"),
                metadata = dir("metadata"),
                sessions = php_str(&d.join("sessions").display().to_string()),
                salt = php_str(&random_hex(16)?),
                admin = php_str(&random_hex(16)?),
            ),
        )?;
        let users: String = config
            .users
            .iter()
            .map(|u| {
                format!(
                    "    {} => ['uid' => [{}], 'mail' => [{}], 'memberOf' => [{}]],\n",
                    php_str(&format!("{}:{}", u.uid, u.password)),
                    php_str(&u.uid),
                    php_str(&u.mail),
                    u.groups
                        .iter()
                        .map(|g| php_str(g))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        fs::write(
            d.join("authsources.php"),
            format!(
                "<?php\n$config = [\n  'admin' => ['core:AdminPassword'],\n  'example-userpass' => [\n    'exampleauth:UserPass',\n{users}  ],\n];\n"
            ),
        )?;
        fs::write(
            d.join("metadata/saml20-idp-hosted.php"),
            format!(
                r#"<?php
$metadata[{entity}] = [
    'host' => '__DEFAULT__',
    'privatekey' => 'idp.key',
    'certificate' => 'idp.crt',
    'auth' => 'example-userpass',
    'signature.algorithm' => 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256',
    'saml20.sign.response' => {sign_response},
    'saml20.sign.assertion' => {sign_assertion},
    'attributes.NameFormat' => 'urn:oasis:names:tc:SAML:2.0:attrname-format:basic',
];
"#,
                entity = php_str(&self.entity_id()),
                sign_response = config.sign_response,
                sign_assertion = config.sign_assertion,
            ),
        )?;
        let sps: String = config
            .sps
            .iter()
            .map(|sp| {
                format!(
                    r#"$metadata[{entity}] = [
    'AssertionConsumerService' => [[
        'Binding' => 'urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST',
        'Location' => {acs},
    ]],
    'NameIDFormat' => 'urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified',
    'simplesaml.nameidattribute' => 'uid',
];
"#,
                    entity = php_str(&sp.entity_id),
                    acs = php_str(&sp.acs_url),
                )
            })
            .collect();
        fs::write(
            d.join("metadata/saml20-sp-remote.php"),
            format!("<?php\n{sps}"),
        )?;
        Ok(())
    }

    fn launch(&mut self) -> Result<()> {
        let log = File::create(self.server_log_path())?;
        let child = Command::new("php")
            .arg("-S")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("-t")
            .arg(format!("{SIMPLESAMLPHP}/www"))
            .env("SIMPLESAMLPHP_CONFIG_DIR", &self.dir.0)
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start php -S")?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok((200, body)) = http_request("GET", &self.metadata_url(), &[], "") {
                if body.contains("EntityDescriptor") {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "SimpleSAMLphp (php -S) exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "SimpleSAMLphp was not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn server_log_path(&self) -> PathBuf {
        self.dir.0.join("php-server.log")
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IdP's process id (PHP's web server).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `<base>saml2/idp/metadata.php` (SimpleSAMLphp's usual entity id, and its metadata URL).
    pub fn entity_id(&self) -> String {
        self.metadata_url()
    }

    /// `<base>saml2/idp/metadata.php`.
    pub fn metadata_url(&self) -> String {
        format!("{}saml2/idp/metadata.php", self.base_url)
    }

    /// The single sign-on service (HTTP-Redirect binding): `<base>saml2/idp/SSOService.php`.
    pub fn sso_url(&self) -> String {
        format!("{}saml2/idp/SSOService.php", self.base_url)
    }

    /// The signing certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The IdP's metadata XML as it serves it.
    pub fn metadata_xml(&self) -> Result<String> {
        let (status, body) = http_request("GET", &self.metadata_url(), &[], "")?;
        if status != 200 {
            bail!("{}: {status}\n{body}", self.metadata_url());
        }
        Ok(body)
    }

    /// What PHP's web server and SimpleSAMLphp have logged so far.
    pub fn log(&self) -> String {
        let server = fs::read_to_string(self.server_log_path()).unwrap_or_default();
        let ssp = fs::read_to_string(self.dir.0.join("log/simplesamlphp.log")).unwrap_or_default();
        format!("--- php -S ---\n{server}\n--- simplesamlphp.log ---\n{ssp}")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(3));
        }
    }
}

impl Drop for SamlIdp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PHP single-quoted string literal.
fn php_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}
