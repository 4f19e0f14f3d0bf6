//! `cvpn`: the daemon and its command line.
use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::dataplane::{DataPlane, DataPlaneConfig};

#[derive(Parser)]
#[command(name = "cvpn", version, about = "Self-hosted Client VPN gateway with a kernel (eBPF) data plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checks that this host can run the data plane: loads the kernel programs and maps
    /// (without attaching them anywhere) and prints the counters.
    Check,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CVPN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
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
