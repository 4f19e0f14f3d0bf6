//! A tiny HTTP/1.1 server and client for traffic through tunnels: the server answers every
//! request with the peer address it saw (`peer=<ip>:<port> uploaded=<n>`), reads request
//! bodies completely, and sends 4 MB more for `GET /big`.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};

/// Bytes `GET /big` adds to the answer.
pub const BIG: usize = 4 << 20;

/// Serves connections one after the other until the listener fails.
pub fn serve(listener: TcpListener) {
    for s in listener.incoming() {
        let Ok(mut s) = s else { continue };
        let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        // Read the whole request: closing with unread bytes would reset the connection.
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&req).to_string();
        let upload: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("Content-Length: ")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        let mut got = req.len()
            - req
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(req.len(), |p| p + 4);
        while got < upload {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        let extra = if head.starts_with("GET /big") { BIG } else { 0 };
        let body = format!("peer={peer} uploaded={got}\n");
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len() + extra
        );
        let _ = s.write_all(&vec![b'x'; extra]);
    }
}

/// Binds `addr:port` on a thread inside `ns` and serves there in the background.
pub fn spawn_server(ns: &crate::Netns, addr: Ipv4Addr, port: u16) -> Result<()> {
    let listener = ns.run(move || Ok(TcpListener::bind((addr, port))?))?;
    std::thread::spawn(move || serve(listener));
    Ok(())
}

/// Sends `<line> HTTP/1.1` with `upload` bytes of body; returns the whole response.
pub fn request(
    host: Ipv4Addr,
    port: u16,
    line: &str,
    upload: usize,
    connect_timeout: Duration,
) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((host, port)), connect_timeout)
        .with_context(|| format!("no answer from {host}:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(
        format!("{line} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {upload}\r\n\r\n").as_bytes(),
    )?;
    s.write_all(&vec![b'u'; upload])?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).to_string())
}

/// The body of a response.
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Packets received, from the summary line of `ping -q`.
pub fn ping_received(summary: &str) -> u32 {
    summary
        .split(',')
        .find_map(|p| {
            p.trim()
                .strip_suffix(" received")
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Starts `ping -q -c <count> -i 0.05 -W 1 <host>` inside `ns`; the handle yields its summary
/// (see [`ping_received`]).
pub fn spawn_ping(
    ns: &crate::Netns,
    host: Ipv4Addr,
    count: u32,
) -> Result<std::thread::JoinHandle<String>> {
    let child = ns
        .command("ping")
        .args([
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.05",
            "-W",
            "1",
            &host.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting ping")?;
    Ok(std::thread::spawn(move || {
        child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }))
}
