//! `with-postgres COMMAND [ARGS…]`: runs COMMAND with a fresh PostgreSQL server on loopback,
//! its administrator URL in `CVPN_TEST_POSTGRES`, and stops the server afterwards (also when
//! the command fails). Exits with the command's status. `cargo xtask test` runs the storage
//! suite on PostgreSQL through it.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use cvpn_tests::postgres::PostgresServer;

fn main() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        bail!("usage: with-postgres COMMAND [ARGS…]");
    };
    let server = PostgresServer::start()?;
    let url = server.url("postgres");
    eprintln!("with-postgres: PostgreSQL on 127.0.0.1:{}", server.port());
    let mut cmd = Command::new(program);
    // A nested cargo must not see `cargo run`'s package variables (see without_package_env).
    cvpn_tests::without_package_env(&mut cmd);
    let status = cmd
        .args(rest)
        .env("CVPN_TEST_POSTGRES", &url)
        .status()
        .with_context(|| format!("cannot run {program}"));
    server.stop()?;
    let status = status?;
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}
