//! A real PostgreSQL server for tests: Debian's PostgreSQL 15, a data directory of its own
//! under the system temp dir, listening on a free loopback port (and a Unix socket in that
//! directory), made by the test and stopped by it.
//!
//! PostgreSQL refuses to run as root, so the directory belongs to the `postgres` account and
//! the server runs as that account (`runuser`); the superuser role is `cvpn`, trusted on
//! loopback (`initdb -A trust`): the server is reachable from this host only, for the length of
//! the test. Starting takes about 0.6 s. [`PostgresServer::stop`] (or drop) stops it with
//! `pg_ctl -m fast stop` and removes the directory.
//!
//! `with-postgres` (a binary of this crate) runs a command with a server around it, the server's
//! administrator URL in `CVPN_TEST_POSTGRES`: `cargo xtask test` runs the storage suite so.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{directory_servers::free_port, sh, unique_tag, Netns};

/// Where Debian installs the server's programs.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// A running PostgreSQL server. See the [module documentation](self).
#[derive(Debug)]
pub struct PostgresServer {
    dir: PathBuf,
    port: u16,
    running: bool,
    /// The address it listens on.
    listen: String,
    /// The network namespace it runs in (`None`: the test's own).
    netns: Option<String>,
}

impl PostgresServer {
    /// `program` of the server's, run as the `postgres` account in the server's namespace.
    fn as_postgres(&self, program: &str) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "runuser"]);
                c
            }
            None => Command::new("runuser"),
        };
        c.args(["-u", "postgres", "--"])
            .arg(Path::new(BIN_DIR).join(program));
        c
    }

    /// Makes a fresh cluster and starts it on `127.0.0.1`.
    pub fn start() -> Result<PostgresServer> {
        Self::start_with(None, "127.0.0.1", None, None)
    }

    /// Like [`PostgresServer::start`], serving TLS with this certificate and key (PEM) and
    /// refusing connections without it (`pg_hba.conf`: `hostssl` only).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<PostgresServer> {
        Self::start_with(None, "127.0.0.1", Some((cert_pem, key_pem)), None)
    }

    /// Makes a fresh cluster and starts it in `ns`, listening on `listen` (an address of the
    /// namespace's: its loopback, or a veth address other namespaces reach).
    pub fn start_in(ns: &Netns, listen: &str) -> Result<PostgresServer> {
        Self::start_with(Some(ns.name().to_string()), listen, None, None)
    }

    /// Like [`PostgresServer::start_in`], trusting connections from `network` (a CIDR such as
    /// `10.55.0.0/24`) as well as loopback: `host all all NETWORK trust` in `pg_hba.conf`,
    /// written before the server starts. For a server other namespaces reach over a veth or
    /// a bridge (`initdb -A trust` trusts loopback only).
    pub fn start_in_for_network(ns: &Netns, listen: &str, network: &str) -> Result<PostgresServer> {
        Self::start_with(Some(ns.name().to_string()), listen, None, Some(network))
    }

    fn start_with(
        netns: Option<String>,
        listen: &str,
        tls: Option<(&str, &str)>,
        network: Option<&str>,
    ) -> Result<PostgresServer> {
        if !Path::new(BIN_DIR).join("postgres").exists() {
            bail!("PostgreSQL 15 is not installed ({BIN_DIR}); run `cargo xtask setup`");
        }
        let dir = std::env::temp_dir().join(format!("cvpn-pg-{}", unique_tag()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        sh(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        let mut server = PostgresServer {
            dir,
            port: free_port()?,
            running: false,
            netns,
            listen: listen.to_string(),
        };
        let data = server.dir.join("data");
        sh(server.as_postgres("initdb").arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "cvpn",
            "--no-sync",
            "-E",
            "UTF8",
        ]))?;
        if let Some((cert, key)) = tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
                sh(Command::new("chown").arg("postgres:postgres").arg(&path))?;
            }
            let conf = data.join("postgresql.conf");
            let mut text = fs::read_to_string(&conf)?;
            text.push_str(
                "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            );
            fs::write(&conf, text)?;
            fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )?;
        }
        if let Some(network) = network {
            let hba = data.join("pg_hba.conf");
            let mut text = fs::read_to_string(&hba)?;
            text.push_str(&format!("host all all {network} trust\n"));
            fs::write(&hba, text)?;
        }
        server.pg_ctl_start()?;
        Ok(server)
    }

    fn pg_ctl_start(&mut self) -> Result<()> {
        let data = self.dir.join("data");
        let options = format!(
            "-k {} -p {} -c listen_addresses={} -c fsync=off -c max_connections=200",
            self.dir.display(),
            self.port,
            self.listen
        );
        sh(self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "30", "start"]))?;
        self.running = true;
        Ok(())
    }

    /// The administrator's URL of database `db` (the cvpn role, no password: loopback is
    /// trusted).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://cvpn@{}:{}/{db}?sslmode=disable",
            self.listen, self.port
        )
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` (through `createdb`, over the server's Unix socket).
    pub fn create_database(&self, name: &str) -> Result<()> {
        sh(self.as_postgres("createdb").arg("-h").arg(&self.dir).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "cvpn",
            name,
        ]))?;
        Ok(())
    }

    /// Stops it (the database going away under running nodes); [`PostgresServer::restart`]
    /// brings it back with the same data on the same port.
    pub fn pause(&mut self) -> Result<()> {
        if self.running {
            sh(self
                .as_postgres("pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w", "stop"]))?;
            self.running = false;
        }
        Ok(())
    }

    /// Starts it again after [`PostgresServer::pause`].
    pub fn restart(&mut self) -> Result<()> {
        if !self.running {
            self.pg_ctl_start()?;
        }
        Ok(())
    }

    /// Stops the server and removes its directory.
    pub fn stop(mut self) -> Result<()> {
        self.pause()?;
        fs::remove_dir_all(&self.dir).with_context(|| format!("removing {}", self.dir.display()))
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.pause();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
