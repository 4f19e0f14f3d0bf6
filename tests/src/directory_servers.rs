//! Real directories for the directory client's tests, made and torn down by the test itself:
//!
//! * [`Slapd`]: OpenLDAP's `slapd` on loopback (a plain/StartTLS port and an LDAPS port, a
//!   certificate for 127.0.0.1 from a fresh test CA), base `dc=example,dc=test`, a service
//!   account `cn=reader`, users and `groupOfNames` groups (nesting included); the `dynlist`
//!   overlay computes each user's `memberOf`, nested groups included. One per test (it starts
//!   in ~50 ms); killed by PID and its directory removed on drop.
//! * [`SambaAd`]: a Samba Active Directory domain controller `EXAMPLE.TEST` in a network
//!   namespace of its own (it takes ports 389/636/3268/3269), reached on the namespace's
//!   loopback: the client under test runs inside the namespace ([`SambaAd::block_on`]).
//!   Provisioning takes seconds, so [`SambaAd::shared`] makes one per test binary and removes
//!   it (process, namespace, files) when the binary exits; its `-i` mode also makes Samba exit
//!   when this process goes away without cleaning up (its stdin is a pipe held here).
//!
//! Samba's auto-generated LDAPS certificate names the DC only in its subject CN, without a
//! subjectAltName, which rustls (rightly, RFC 6125) never matches: no name or address could
//! verify it. So the harness installs its own test CA and a certificate for 127.0.0.1 (and
//! `dc.example.test`) where Samba looks for them (`private/tls/{ca,cert,key}.pem`), as an
//! administrator installs a real certificate, and the tests verify the DC against that CA.

use std::{
    fs,
    future::Future,
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::{sh, terminate, unique_tag, Netns};

/// A CA and a server certificate for `names` (IP addresses become IP SANs), as PEM:
/// (ca, cert, key).
pub fn server_pki(ca_name: &str, names: &[&str]) -> Result<(String, String, String)> {
    let now = OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(30);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, names[0]);
    for n in names {
        p.subject_alt_names
            .push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into()?),
            });
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(30);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok((issuer.pem(), cert.pem(), key.serialize_pem()))
}

/// A port nothing listens on right now (bound, read, released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn wait_tcp(addr: SocketAddr, until: Instant) -> bool {
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn temp_dir(what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cvpn-{what}-{}", unique_tag()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// The base of the test directory.
pub const LDAP_BASE_DN: &str = "dc=example,dc=test";
const LDAP_ADMIN_DN: &str = "cn=admin,dc=example,dc=test";
const LDAP_ADMIN_PW: &str = "admin-secret";
const LDAP_READER_DN: &str = "cn=reader,dc=example,dc=test";
const LDAP_READER_PW: &str = "reader-secret";

/// OpenLDAP's slapd on loopback; see the module docs.
pub struct Slapd {
    dir: PathBuf,
    child: Child,
    port: u16,
    ldaps_port: u16,
    ca_pem: String,
}

impl Slapd {
    /// Writes the configuration and base entries, starts slapd and waits until it accepts
    /// connections on both ports.
    pub fn start() -> Result<Slapd> {
        let dir = temp_dir("slapd")?;
        match Self::start_in(&dir) {
            Ok(s) => Ok(s),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn start_in(dir: &Path) -> Result<Slapd> {
        let (ca_pem, cert, key) = server_pki("cvpn test LDAP CA", &["127.0.0.1"])?;
        fs::write(dir.join("ca.pem"), &ca_pem)?;
        fs::write(dir.join("cert.pem"), &cert)?;
        fs::write(dir.join("key.pem"), &key)?;
        fs::set_permissions(dir.join("key.pem"), fs::Permissions::from_mode(0o600))?;
        fs::create_dir_all(dir.join("db"))?;
        let d = dir.display();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/dyngroup.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             moduleload memberof\n\
             moduleload dynlist\n\
             pidfile {d}/slapd.pid\n\
             argsfile {d}/slapd.args\n\
             TLSCACertificateFile {d}/ca.pem\n\
             TLSCertificateFile {d}/cert.pem\n\
             TLSCertificateKeyFile {d}/key.pem\n\
             database mdb\n\
             maxsize 33554432\n\
             suffix \"{LDAP_BASE_DN}\"\n\
             rootdn \"{LDAP_ADMIN_DN}\"\n\
             rootpw {LDAP_ADMIN_PW}\n\
             directory {d}/db\n\
             access to attrs=userPassword by anonymous auth by * none\n\
             access to * by * read\n\
             overlay dynlist\n\
             dynlist-attrset groupOfURLs memberURL member+memberOf@groupOfNames*\n"
        );
        fs::write(dir.join("slapd.conf"), conf)?;
        let base = format!(
            "dn: {LDAP_BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: ou=people,{LDAP_BASE_DN}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{LDAP_BASE_DN}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: {LDAP_READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
             cn: reader\nuserPassword: {LDAP_READER_PW}\n"
        );
        fs::write(dir.join("base.ldif"), base)?;
        sh(Command::new("slapadd")
            .arg("-f")
            .arg(dir.join("slapd.conf"))
            .arg("-l")
            .arg(dir.join("base.ldif")))?;
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let ldaps_port = free_port()?;
            let log = fs::File::create(dir.join("slapd.log"))?;
            // -d 256 (stats): foreground, one line per operation (binds included) on stderr.
            let mut child = Command::new("slapd")
                .arg("-f")
                .arg(dir.join("slapd.conf"))
                .arg("-h")
                .arg(format!(
                    "ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{ldaps_port}/"
                ))
                .args(["-d", "256"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start slapd (apt-get install slapd ldap-utils)")?;
            let until = Instant::now() + Duration::from_secs(10);
            let ok = wait_tcp(SocketAddr::from(([127, 0, 0, 1], port)), until)
                && wait_tcp(SocketAddr::from(([127, 0, 0, 1], ldaps_port)), until);
            if ok {
                if let Ok(None) = child.try_wait() {
                    return Ok(Slapd {
                        dir: dir.to_path_buf(),
                        child,
                        port,
                        ldaps_port,
                        ca_pem,
                    });
                }
            }
            terminate(&mut child, Duration::from_secs(2));
            last = fs::read_to_string(dir.join("slapd.log")).unwrap_or_default();
        }
        bail!("slapd did not start: {last}")
    }

    /// `ldap://127.0.0.1:PORT` (plain or StartTLS).
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    /// The CA that signed the server's certificate (for 127.0.0.1).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn base_dn(&self) -> &str {
        LDAP_BASE_DN
    }

    /// The service account.
    pub fn bind_dn(&self) -> &str {
        LDAP_READER_DN
    }

    pub fn bind_password(&self) -> &str {
        LDAP_READER_PW
    }

    pub fn user_dn(uid: &str) -> String {
        format!("uid={uid},ou=people,{LDAP_BASE_DN}")
    }

    pub fn group_dn(cn: &str) -> String {
        format!("cn={cn},ou=groups,{LDAP_BASE_DN}")
    }

    /// slapd's process ID (the benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// slapd's operation log so far (`-d 256`: `BIND dn="…"` lines and the like).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("slapd.log")).unwrap_or_default()
    }

    /// Applies an LDIF change as the rootDN (`ldapmodify`).
    pub fn modify(&self, ldif: &str) -> Result<()> {
        let mut child = Command::new("ldapmodify")
            .env("LDAPNOINIT", "1")
            .args([
                "-x",
                "-H",
                &self.url(),
                "-D",
                LDAP_ADMIN_DN,
                "-w",
                LDAP_ADMIN_PW,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run ldapmodify (apt-get install ldap-utils)")?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(ldif.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "ldapmodify failed ({}): {}{}\n{ldif}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Adds `uid=<uid>,ou=people,…` (inetOrgPerson) with the password; returns its DN.
    pub fn add_user(&self, uid: &str, password: &str) -> Result<String> {
        let dn = Self::user_dn(uid);
        self.modify(&format!(
            "dn: {dn}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {password}\n"
        ))?;
        Ok(dn)
    }

    /// Adds `cn=<cn>,ou=groups,…` (groupOfNames) with the member DNs (users or groups: a
    /// group member nests); returns its DN. groupOfNames needs one member at least.
    pub fn add_group(&self, cn: &str, members: &[&str]) -> Result<String> {
        let dn = Self::group_dn(cn);
        let mut ldif = format!("dn: {dn}\nchangetype: add\nobjectClass: groupOfNames\ncn: {cn}\n");
        for m in members {
            ldif.push_str(&format!("member: {m}\n"));
        }
        self.modify(&ldif)?;
        Ok(dn)
    }

    pub fn add_member(&self, group_cn: &str, member_dn: &str) -> Result<()> {
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nadd: member\nmember: {member_dn}\n",
            Self::group_dn(group_cn)
        ))
    }

    pub fn remove_member(&self, group_cn: &str, member_dn: &str) -> Result<()> {
        self.modify(&format!(
            "dn: {}\nchangetype: modify\ndelete: member\nmember: {member_dn}\n",
            Self::group_dn(group_cn)
        ))
    }

    pub fn delete_user(&self, uid: &str) -> Result<()> {
        self.modify(&format!("dn: {}\nchangetype: delete\n", Self::user_dn(uid)))
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(2));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The test domain.
pub const AD_REALM: &str = "EXAMPLE.TEST";
pub const AD_BASE_DN: &str = "DC=example,DC=test";
const AD_ADMIN_PW: &str = "Adm1n-Secret-42!";
const AD_READER: &str = "cvpn-reader";
const AD_READER_PW: &str = "Rd-Secret-42!x";

/// A Samba AD DC in its own namespace; see the module docs.
pub struct SambaAd {
    dir: PathBuf,
    netns: Netns,
    child: Mutex<Option<(Child, ChildStdin)>>,
    ca_pem: String,
}

static SHARED: OnceLock<std::result::Result<SambaAd, String>> = OnceLock::new();

extern "C" fn shutdown_shared() {
    if let Some(Ok(ad)) = SHARED.get() {
        ad.shutdown();
    }
}

impl SambaAd {
    /// One DC for the whole test binary, provisioned on first use and removed when the
    /// process exits (normally or through a failed test).
    pub fn shared() -> Result<&'static SambaAd> {
        let r = SHARED.get_or_init(|| {
            let r = SambaAd::start().map_err(|e| format!("{e:#}"));
            if r.is_ok() {
                // SAFETY: registers a plain `extern "C" fn` without arguments.
                unsafe {
                    libc::atexit(shutdown_shared);
                }
            }
            r
        });
        r.as_ref().map_err(|e| anyhow!("Samba AD DC: {e}"))
    }

    /// Provisions `EXAMPLE.TEST` into a temporary directory, installs the test TLS
    /// certificate, starts `samba -i` in a new namespace, waits for LDAPS and creates the
    /// service account.
    pub fn start() -> Result<SambaAd> {
        let dir = temp_dir("samba")?;
        let netns = match Netns::new("ad") {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut ad = SambaAd {
            dir,
            netns,
            child: Mutex::new(None),
            ca_pem: String::new(),
        };
        // On error, Drop stops what was started.
        ad.ca_pem = ad.provision_and_start()?;
        ad.create_user(AD_READER, AD_READER_PW)?;
        Ok(ad)
    }

    fn provision_and_start(&self) -> Result<String> {
        let d = &self.dir;
        sh(Command::new("samba-tool")
            .args(["domain", "provision"])
            .arg(format!("--targetdir={}", d.display()))
            .args([
                "--realm=EXAMPLE.TEST",
                "--domain=EXAMPLE",
                "--host-name=dc",
                "--server-role=dc",
                "--dns-backend=NONE",
            ])
            .arg(format!("--adminpass={AD_ADMIN_PW}"))
            .args([
                "--option=interfaces=lo",
                "--option=bind interfaces only=yes",
                "--option=server services=ldap",
            ])
            .arg(format!("--option=log file={}/log.%m", d.display())))
        .context("samba-tool domain provision (apt-get install samba-ad-dc samba-ad-provision)")?;
        // Simple binds without SASL sealing (the client binds over TLS), logs in here.
        let conf_path = d.join("etc/smb.conf");
        let conf = fs::read_to_string(&conf_path)?;
        let conf = conf.replacen(
            "[global]\n",
            &format!(
                "[global]\n\tldap server require strong auth = no\n\tlog file = {}/log.%m\n",
                d.display()
            ),
            1,
        );
        fs::write(&conf_path, conf)?;
        // Samba's own certificate has no subjectAltName (see the module docs): install ours.
        let tls = d.join("private/tls");
        fs::create_dir_all(&tls)?;
        let (ca, cert, key) = server_pki("cvpn test AD CA", &["127.0.0.1", "dc.example.test"])?;
        fs::write(tls.join("ca.pem"), &ca)?;
        fs::write(tls.join("cert.pem"), &cert)?;
        fs::write(tls.join("key.pem"), &key)?;
        fs::set_permissions(tls.join("key.pem"), fs::Permissions::from_mode(0o600))?;
        let log = fs::File::create(d.join("samba.out"))?;
        // -i: foreground, and exit at EOF on stdin (a pipe this process holds).
        let mut child = self
            .netns
            .command("samba")
            .arg("-s")
            .arg(&conf_path)
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start samba")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        *self.child.lock().map_err(|_| anyhow!("poisoned"))? = Some((child, stdin));
        let up = self.netns.run(|| {
            let until = Instant::now() + Duration::from_secs(30);
            Ok(wait_tcp(SocketAddr::from(([127, 0, 0, 1], 636)), until)
                && wait_tcp(SocketAddr::from(([127, 0, 0, 1], 389)), until))
        })?;
        if !up {
            bail!(
                "samba did not open ports 389 and 636: {}",
                fs::read_to_string(d.join("samba.out")).unwrap_or_default()
            );
        }
        Ok(fs::read_to_string(tls.join("ca.pem"))?)
    }

    /// Stops samba, deletes the namespace and the files (idempotent).
    pub fn shutdown(&self) {
        if let Ok(mut c) = self.child.lock() {
            if let Some((mut child, stdin)) = c.take() {
                drop(stdin);
                terminate(&mut child, Duration::from_secs(5));
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", self.netns.name()])
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// `ldaps://127.0.0.1` — inside the DC's namespace (see [`SambaAd::block_on`]).
    pub fn ldaps_url(&self) -> String {
        "ldaps://127.0.0.1".into()
    }

    /// `ldap://127.0.0.1` (StartTLS) inside the DC's namespace.
    pub fn url(&self) -> String {
        "ldap://127.0.0.1".into()
    }

    /// The CA of the DC's certificate (`private/tls/ca.pem`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn base_dn(&self) -> &str {
        AD_BASE_DN
    }

    pub fn realm(&self) -> &str {
        AD_REALM
    }

    /// The service account (a plain domain user: AD lets any user read users and groups).
    pub fn bind_dn(&self) -> String {
        Self::user_dn(AD_READER)
    }

    pub fn bind_password(&self) -> &str {
        AD_READER_PW
    }

    /// Where `samba-tool user create` puts a user.
    pub fn user_dn(name: &str) -> String {
        format!("CN={name},CN=Users,{AD_BASE_DN}")
    }

    pub fn group_dn(name: &str) -> String {
        format!("CN={name},CN=Users,{AD_BASE_DN}")
    }

    /// Runs `samba-tool <args> -s smb.conf -H sam.ldb` (on the database directly).
    pub fn tool(&self, args: &[&str]) -> Result<String> {
        let out = sh(Command::new("samba-tool")
            .args(args)
            .arg("-s")
            .arg(self.dir.join("etc/smb.conf"))
            .arg("-H")
            .arg(self.dir.join("private/sam.ldb")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A user (`samba-tool user create`; the password must meet AD's complexity rules and
    /// not contain the name).
    pub fn create_user(&self, name: &str, password: &str) -> Result<()> {
        self.tool(&["user", "create", name, password]).map(|_| ())
    }

    pub fn create_group(&self, name: &str) -> Result<()> {
        self.tool(&["group", "add", name]).map(|_| ())
    }

    /// Adds users or groups (by name) to a group; a group member nests.
    pub fn add_members(&self, group: &str, members: &[&str]) -> Result<()> {
        self.tool(&["group", "addmembers", group, &members.join(",")])
            .map(|_| ())
    }

    pub fn disable_user(&self, name: &str) -> Result<()> {
        self.tool(&["user", "disable", name]).map(|_| ())
    }

    /// The object SID of a user or group (`S-1-5-21-…`), as Samba shows it.
    pub fn sid_of(&self, name: &str) -> Result<String> {
        let out = self.tool(&["user", "show", name, "--attributes=objectSid"]);
        let out = match out {
            Ok(o) => o,
            Err(_) => self.tool(&["group", "show", name, "--attributes=objectSid"])?,
        };
        out.lines()
            .find_map(|l| l.strip_prefix("objectSid: "))
            .map(|s| s.trim().to_string())
            .ok_or_else(|| anyhow!("no objectSid for {name}: {out}"))
    }

    /// Runs `f`'s future on a new single-thread runtime on a thread inside the DC's namespace
    /// (its sockets reach the DC on 127.0.0.1).
    pub fn block_on<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        self.netns.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(f()))
        })
    }
}

impl Drop for SambaAd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A TCP port on the loopback of one namespace that carries every connection to an address on
/// the loopback of another: how a daemon in a gateway namespace reaches a directory that binds
/// only its own namespace's loopback (Samba's `interfaces = lo`). Stopped on drop.
pub struct LoopbackBridge {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    port: u16,
}

impl LoopbackBridge {
    /// Listens on `127.0.0.1:<free port>` in `listen_in`; connects to `target` from inside
    /// `target_ns` for each connection accepted.
    pub fn start(listen_in: &Netns, target_ns: &Netns, target: SocketAddr) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = listen_in.run(|| Ok(TcpListener::bind("127.0.0.1:0")?))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let path = format!("/run/netns/{}", target_ns.name());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((inbound, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let path = path.clone();
                std::thread::spawn(move || {
                    let Ok(ns) = fs::File::open(&path) else {
                        return;
                    };
                    use std::os::fd::AsFd;
                    if nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_err()
                    {
                        return;
                    }
                    let _ = inbound.set_nonblocking(false);
                    let Ok(outbound) = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    else {
                        return;
                    };
                    let (Ok(mut a_read), Ok(mut b_write)) =
                        (inbound.try_clone(), outbound.try_clone())
                    else {
                        return;
                    };
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a_read, &mut b_write);
                        let _ = b_write.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut b_read, mut a_write) = (outbound, inbound);
                    let _ = std::io::copy(&mut b_read, &mut a_write);
                    let _ = a_write.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        Ok(LoopbackBridge {
            stop,
            thread: Some(thread),
            port,
        })
    }

    /// The port on the listening namespace's 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LoopbackBridge {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl SambaAd {
    /// The DC's LDAPS port carried into `ns`'s loopback (the DC's certificate names
    /// 127.0.0.1, so TLS verifies there too).
    pub fn ldaps_bridge_into(&self, ns: &Netns) -> Result<LoopbackBridge> {
        LoopbackBridge::start(ns, &self.netns, SocketAddr::from(([127, 0, 0, 1], 636)))
    }
}
