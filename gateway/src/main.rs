//! `cvpn`: the daemon and its command line.
use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::dataplane::{DataPlane, DataPlaneConfig};

#[derive(Parser)]
#[command(
    name = "cvpn",
    version,
    about = "Self-hosted Client VPN gateway with a kernel (eBPF) data plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway daemon until SIGINT or SIGTERM: every endpoint of the database
    /// (managed with the resource commands below, or `cvpn apply -f`), the management API on
    /// a Unix socket, connection and flow logs in the data directory. SIGTERM tells every
    /// client to reconnect and detaches the kernel programs.
    ///
    /// --config takes the daemon configuration (data_dir, listen_address, public_host, [api],
    /// [log], [connections], [tunnel]; see README). Given an endpoint file instead (one with an
    /// [endpoint] table), it serves that one endpoint from the file without a database or API,
    /// as before; SIGHUP then reloads the file's rules and routes.
    Serve {
        /// Daemon configuration file (TOML; every key optional), or an endpoint file.
        #[arg(long, short = 'c')]
        config: Option<std::path::PathBuf>,
        /// Endpoint-file mode only: the TUN device carrying decrypted client packets.
        #[arg(long, default_value = "cvpn0")]
        tun: String,
        /// Data directory: database (cvpn.db), connection.log and flow.log, size-rotated.
        /// Overrides the configuration's data_dir [default: /var/lib/cvpn].
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// A shared PostgreSQL database (postgres://USER[:PASSWORD]@HOST[:PORT]/DBNAME)
        /// instead of SQLite in the data directory. Overrides the configuration's database.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// The API's Unix socket. Overrides the configuration's [api] socket
        /// [default: /run/cvpn/api.sock].
        #[arg(long, value_name = "PATH")]
        api_socket: Option<std::path::PathBuf>,
        /// Also print connection-log and flow-log lines on stdout.
        #[arg(long)]
        log_stdout: bool,
    },
    /// Imports an endpoint file (the keys of `serve --config`) into the control-plane
    /// database, idempotently: the same file applied twice changes nothing. Prints what changed.
    Apply {
        /// The endpoint's TOML file.
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
        /// Data directory holding the database (cvpn.db) [default: the daemon configuration's
        /// data_dir, else /var/lib/cvpn]. A running daemon applies the change on SIGHUP
        /// (`systemctl reload cvpn`).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// The shared PostgreSQL database [default: the daemon configuration's database].
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// The daemon configuration (`cvpn serve --config`): its data_dir, database and
        /// [quotas] apply.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<std::path::PathBuf>,
    },
    /// Checks that this host can run the data plane: loads the kernel programs and maps
    /// (without attaching them anywhere) and prints the counters.
    Check,
    #[command(flatten)]
    Resource(Box<gateway::cli::ResourceCommand>),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CVPN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            tun,
            data_dir,
            database,
            api_socket,
            log_stdout,
        } => {
            let endpoint_file = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading the configuration {}", path.display()))?;
                    gateway::control::config::is_endpoint_file(&text)
                }
                None => false,
            };
            match config {
                Some(path) if endpoint_file => serve(
                    &path,
                    tun,
                    data_dir.unwrap_or_else(|| gateway::storage::DEFAULT_DATA_DIR.into()),
                    log_stdout,
                )?,
                config => serve_daemon(config, data_dir, database, api_socket, log_stdout)?,
            }
        }
        Command::Resource(cmd) => {
            let code = gateway::cli::run(*cmd)?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Command::Apply {
            file,
            data_dir,
            database,
            config,
        } => {
            let mut daemon = match &config {
                Some(p) => gateway::control::DaemonConfig::load(p)?,
                None => gateway::control::DaemonConfig::default(),
            };
            override_store(&mut daemon, data_dir, database)?;
            apply(&file, &daemon)?
        }
        Command::Check => {
            let dp = DataPlane::load(DataPlaneConfig::default())
                .context("the kernel data plane cannot run on this host")?;
            println!("data plane: programs and maps load on this kernel");
            for (name, value) in dp.global_counters()?.0 {
                println!("  {name:<24} {value}");
            }
        }
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. Needs a Tokio runtime.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}

/// `--data-dir` and `--database` over the configuration's.
fn override_store(
    cfg: &mut gateway::control::DaemonConfig,
    data_dir: Option<std::path::PathBuf>,
    database: Option<String>,
) -> anyhow::Result<()> {
    if let Some(dir) = data_dir {
        cfg.data_dir = dir;
    }
    if let Some(url) = database {
        let ca = cfg.database.take().and_then(|d| d.ca);
        cfg.database = Some(
            gateway::control::config::DatabaseConfig::parse(&url, ca)
                .map_err(|e| anyhow::anyhow!("--database: {e}"))?,
        );
    }
    Ok(())
}

fn serve_daemon(
    config: Option<std::path::PathBuf>,
    data_dir: Option<std::path::PathBuf>,
    database: Option<String>,
    api_socket: Option<std::path::PathBuf>,
    log_stdout: bool,
) -> anyhow::Result<()> {
    use gateway::control::DaemonConfig;
    let mut cfg = match &config {
        Some(path) => DaemonConfig::load(path)?,
        None => DaemonConfig::default(),
    };
    override_store(&mut cfg, data_dir, database)?;
    if let Some(sock) = api_socket {
        cfg.api.socket = sock;
    }
    cfg.log.stdout |= log_stdout;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        gateway::control::run(cfg, shutdown_signal()?).await
    })
}

fn serve(
    path: &std::path::Path,
    tun_name: String,
    data_dir: std::path::PathBuf,
    log_stdout: bool,
) -> anyhow::Result<()> {
    use gateway::{
        config::EndpointConfig,
        dataplane::TargetSpec,
        protocol::tls::TlsMaterial,
        server::{Server, ServerSettings},
    };
    let cfg = EndpointConfig::load(path)?;
    let tls = TlsMaterial::load(
        &cfg.server_cert,
        &cfg.server_key,
        file_client_ca(&cfg)?,
        cfg.crl.as_deref(),
    )?;
    let targets: Vec<TargetSpec> = cfg
        .target_networks
        .iter()
        .enumerate()
        .map(|(i, t)| TargetSpec {
            id: i as u32 + 1,
            interface: t.interface.clone(),
            snat_addr: t.snat_address,
            egress: None,
        })
        .collect();
    let policy = cfg.policy(|iface| {
        targets
            .iter()
            .find(|t| t.interface == iface)
            .map_or(0, |t| t.id)
    });
    let targets_by_interface: Vec<(String, u32)> = targets
        .iter()
        .map(|t| (t.interface.clone(), t.id))
        .collect();
    let settings = ServerSettings {
        listen: std::net::SocketAddr::new(cfg.listen, cfg.port),
        transport: cfg.transport,
        client_cidr: cfg.client_cidr,
        tls,
        split_tunnel: cfg.split_tunnel,
        dns_servers: cfg.dns_servers.clone(),
        targets,
        policy,
        tun_name,
        ciphers: ServerSettings::default_ciphers(),
        force_tls_prf: cfg.key_derivation == gateway::config::KeyDerivation::TlsPrf,
        // Stable across restarts: derived from what identifies the endpoint on this host.
        endpoint_id: endpoint_id(&cfg),
        log_dir: Some(data_dir),
        log_options: gateway::connlog::LogOptions {
            stdout: log_stdout,
            ..Default::default()
        },
        ping: cfg.ping,
        ping_restart: cfg.ping_restart,
        reneg_after: (cfg.reneg_sec > 0)
            .then(|| std::time::Duration::from_secs(cfg.reneg_sec.into())),
        shared_logs: None,
        recorder: None,
        counters_every: std::time::Duration::from_secs(5),
        print_log_lines: false,
        live: Default::default(),
        authenticator: None,
        sso: None,
        // The only endpoint of this process: the whole SNAT range.
        nat_port_range: None,
        address_blocks: None,
        metrics: None,
        offloads: cfg.offloads,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let config_path = path.to_path_buf();
    runtime.block_on(async move {
        let server = Server::new(settings)?;
        // SIGHUP: read the file again and apply its rules and routes live.
        let (commands, receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let target_ids = targets_by_interface;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match EndpointConfig::load(&config_path) {
                    Ok(cfg) => {
                        let policy = cfg.policy(|iface| target_ids.iter().find(|(i, _)| i == iface).map_or(0, |(_, id)| *id));
                        tracing::info!(path = %config_path.display(), "configuration reloaded (rules and routes)");
                        let _ = commands.send(gateway::server::ServerCommand::ReplacePolicy(policy));
                        // The certificates and the CRL too: new handshakes and running
                        // sessions' renegotiations use them, and revoked sessions end.
                        match file_tls(&cfg) {
                            Ok((tls, revoked_serials)) => {
                                let _ = commands.send(gateway::server::ServerCommand::ReplaceTls { tls, revoked_serials });
                            }
                            Err(e) => tracing::warn!(error = %e, "certificates or CRL not reloaded; the running ones stay"),
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "configuration not reloaded; the running one stays"),
                }
            }
        });
        server.run_with_commands(shutdown_signal()?, receiver).await
    })
}

/// The client CA of an endpoint file served without a database: required there (directory
/// and identity provider sign-in need the database: `cvpn apply -f`, then `cvpn serve`).
fn file_client_ca(cfg: &gateway::config::EndpointConfig) -> anyhow::Result<&std::path::Path> {
    cfg.client_ca.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "[endpoint] client_ca is required to serve an endpoint file; an endpoint whose users \
             sign in with a directory or an identity provider runs from the database: `cvpn apply -f FILE`, then `cvpn serve`"
        )
    })
}

/// The TLS material of an endpoint file and the serials its CRL revokes.
fn file_tls(
    cfg: &gateway::config::EndpointConfig,
) -> anyhow::Result<(gateway::protocol::tls::TlsMaterial, Vec<String>)> {
    let client_ca = file_client_ca(cfg)?;
    let tls = gateway::protocol::tls::TlsMaterial::load(
        &cfg.server_cert,
        &cfg.server_key,
        client_ca,
        cfg.crl.as_deref(),
    )?;
    let revoked = match &cfg.crl {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading the CRL {}", path.display()))?;
            let ca = std::fs::read_to_string(client_ca)
                .with_context(|| format!("reading the client CA {}", client_ca.display()))?;
            gateway::storage::validate::crl("crl", &pem, &ca, usize::MAX)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .revoked_serials
        }
        None => Vec::new(),
    };
    Ok((tls, revoked))
}

/// `cvpn-endpoint-` and 17 hex digits of a digest of the endpoint's client CIDR, transport and
/// port: the same endpoint keeps its id across restarts.
fn endpoint_id(cfg: &gateway::config::EndpointConfig) -> String {
    let key = format!(
        "{}|{}|{}",
        cfg.client_cidr,
        cfg.transport.as_str(),
        cfg.port
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("cvpn-endpoint-{}", &hex[..17])
}

fn apply(path: &std::path::Path, daemon: &gateway::control::DaemonConfig) -> anyhow::Result<()> {
    use gateway::{
        config::EndpointConfig,
        storage::{apply_endpoint_config, Store},
    };
    let cfg = EndpointConfig::load(path)?;
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read_to_string(p).with_context(|| format!("reading the {what} {}", p.display()))
    };
    let cert = read(&cfg.server_cert, "server certificate")?;
    let key = read(&cfg.server_key, "server key")?;
    let ca = cfg
        .client_ca
        .as_deref()
        .map(|p| read(p, "client CA"))
        .transpose()?;
    let crl = cfg.crl.as_deref().map(|p| read(p, "CRL")).transpose()?;
    let options = daemon.store_options().map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = Store::open(options)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("opening the database in {}", daemon.store_location()))?;
    let report = apply_endpoint_config(&store, &cfg, &cert, &key, ca.as_deref(), crl.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if report.created {
        println!("created {}", report.endpoint_id);
    }
    if report.changed() {
        for change in &report.changes {
            println!("{}: {change}", report.endpoint_id);
        }
    } else {
        println!("{}: no changes", report.endpoint_id);
    }
    if report.changed() {
        println!("a running daemon applies this on `systemctl reload cvpn` (SIGHUP to cvpn serve)");
    }
    for old in &report.superseded {
        println!("note: {old} was applied from a file with the same listener and another client CIDR; it is left as it is");
    }
    Ok(())
}
