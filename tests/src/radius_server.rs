//! A real RADIUS server for MFA tests: Debian's FreeRADIUS 3.2 (`apt-get install freeradius`,
//! which `cargo xtask setup` does), started by the test with a configuration of its own in a
//! temporary directory and stopped (by PID) on drop.
//!
//! The configuration is written from scratch rather than copied from `/etc/freeradius`: one
//! client (127.0.0.1, a random shared secret, Message-Authenticator required, as a
//! BlastRADIUS-hardened server does), one auth listener on 127.0.0.1 and a free port, the
//! `files` module (a users file: `name Cleartext-Password := "code"`) and `pap`. No EAP, no
//! inner tunnel, no certificates, no accounting; `reject_delay = 0` so wrong codes are
//! answered at once. It runs in the foreground as the calling user (`-f -X`: no fork, no
//! switch to `freerad`), its debug output in `radiusd.log` in the directory ([`FreeRadius::log`]).

use std::{
    fmt::Write as _,
    fs::{self, File},
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::gateway::TempDir;

/// How long FreeRADIUS may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What the server knows.
#[derive(Clone, Debug, Default)]
pub struct FreeRadiusOptions {
    /// `(user name, code)`: the code is the user's `Cleartext-Password`.
    pub users: Vec<(String, String)>,
    /// Put a Message-Authenticator in every Access-Accept and Access-Reject (servers before
    /// 3.2.5 send none unless told to).
    pub reply_message_authenticator: bool,
}

/// A running FreeRADIUS; stopped and its directory removed on drop.
pub struct FreeRadius {
    child: Option<Child>,
    dir: TempDir,
    addr: SocketAddr,
    secret: String,
    options: FreeRadiusOptions,
}

impl FreeRadius {
    /// The server's program (`freeradius` on Debian, `radiusd` elsewhere), if installed.
    pub fn program() -> Option<PathBuf> {
        ["/usr/sbin/freeradius", "/usr/sbin/radiusd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }

    /// Starts a server that knows `users` (`(name, code)`).
    pub fn start(users: &[(&str, &str)]) -> Result<Self> {
        Self::start_with(FreeRadiusOptions {
            users: users
                .iter()
                .map(|(u, c)| (u.to_string(), c.to_string()))
                .collect(),
            reply_message_authenticator: false,
        })
    }

    /// Starts a server with `options`.
    pub fn start_with(options: FreeRadiusOptions) -> Result<Self> {
        let mut server = FreeRadius {
            child: None,
            dir: TempDir::new("radius")?,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret: random_hex(16)?,
            options,
        };
        // The free port is found by binding port 0 and closing the socket: another process
        // can take it in between. Try again with another port if the server fails to start.
        let mut last_err = None;
        for _ in 0..3 {
            server.addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.stop();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap())
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared secret of its one client (127.0.0.1).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The server's debug output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("radiusd.log")).unwrap_or_default()
    }

    /// Sets `user`'s code (adding the user if new) and restarts the server on the same port.
    pub fn set_code(&mut self, user: &str, code: &str) -> Result<()> {
        match self.options.users.iter_mut().find(|(u, _)| u == user) {
            Some(entry) => entry.1 = code.to_owned(),
            None => self.options.users.push((user.to_owned(), code.to_owned())),
        }
        self.stop();
        self.launch()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::terminate(&mut child, Duration::from_secs(3));
        }
    }

    fn launch(&mut self) -> Result<()> {
        let dir = self.dir.0.clone();
        fs::write(dir.join("radiusd.conf"), self.config(&dir))?;
        fs::write(dir.join("users"), self.users_file())?;
        let log_path = dir.join("radiusd.log");
        let log = File::create(&log_path)?;
        let program = Self::program().context(
            "FreeRADIUS is not installed (apt-get install freeradius; `cargo xtask setup` does)",
        )?;
        let child = Command::new(program)
            .args(["-f", "-X", "-d"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start freeradius")?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("Ready to process requests") {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!("freeradius exited ({status}) before it was ready:\n{text}");
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!("freeradius not ready after {READY_TIMEOUT:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config(&self, dir: &Path) -> String {
        let dir = dir.display();
        let port = self.addr.port();
        let secret = &self.secret;
        let reply_ma = if self.options.reply_message_authenticator {
            "update reply {\n\t\t\tMessage-Authenticator := 0x00\n\t\t}"
        } else {
            ""
        };
        format!(
            r#"# Written by cvpn-tests (radius_server.rs).
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
libdir = /usr/lib/freeradius
name = freeradius
raddbdir = {dir}
confdir = {dir}
modconfdir = {dir}
logdir = {dir}
radacctdir = {dir}
run_dir = {dir}
db_dir = {dir}
pidfile = {dir}/freeradius.pid
max_request_time = 10
cleanup_delay = 2
max_requests = 1024
hostname_lookups = no
log {{
	destination = stdout
	colourise = no
	auth = yes
}}
security {{
	allow_core_dumps = no
	max_attributes = 200
	reject_delay = 0
	status_server = yes
}}
client localhost {{
	ipaddr = 127.0.0.1
	secret = "{secret}"
	require_message_authenticator = yes
}}
modules {{
	pap {{
		normalise = yes
	}}
	files {{
		filename = {dir}/users
	}}
}}
server default {{
	listen {{
		type = auth
		ipaddr = 127.0.0.1
		port = {port}
	}}
	authorize {{
		files
		pap
	}}
	authenticate {{
		Auth-Type PAP {{
			pap
		}}
	}}
	post-auth {{
		{reply_ma}
		Post-Auth-Type REJECT {{
			{reply_ma}
		}}
	}}
}}
"#
        )
    }

    fn users_file(&self) -> String {
        let mut s = String::new();
        for (user, code) in &self.options.users {
            let _ = writeln!(
                s,
                "\"{}\"\tCleartext-Password := \"{}\"",
                quote(user),
                quote(code)
            );
        }
        s
    }
}

impl Drop for FreeRadius {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A users-file string's content: backslash and double quote escaped.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A UDP port on 127.0.0.1 free a moment ago.
pub fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

/// `n` random bytes from the kernel, as hex.
fn random_hex(n: usize) -> Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
