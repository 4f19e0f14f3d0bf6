//! `cargo xtask bench session-memory [--clients N]`
//!
//! What one connected client costs the endpoint in heap, counted by the allocator rather than
//! read off the process's RSS: N clients of the project's sans-IO test client (a stock 2.6
//! client's handshake: TLS 1.3, key-method 2, TLS-EKM, `PUSH_REQUEST`) are connected to one
//! `Endpoint` and its `DataPath` in virtual time, in this process, with no sockets. The live
//! heap is read before the first client and after all are admitted and the clients themselves
//! are dropped, so what remains is what the endpoint keeps per session; the same again at
//! each step (after the handshake, after admission) shows where it grows.
//!
//! It answers issue 13's question "an idle session needs little more than its keys, replay
//! window and addresses: find what else stays allocated after the handshake" with a number per
//! session that is free of allocator fragmentation, which `bench scale`'s RSS figure includes.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    sync::{
        atomic::{AtomicIsize, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context, Result};
use gateway::{
    endpoint::{
        datapath::DataPath,
        test_client::{tls_config, TestClient},
        Clock, Endpoint, EndpointConfig, LiveSettings, Output, Peer,
    },
    protocol::{cookie::CookieJar, session::SessionConfig, tls::TlsMaterial},
};

/// The system allocator, counting live bytes and allocations.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Live allocations by exact size (the last slot: 64 KiB and more).
const SIZES: usize = 65_537;
static BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];

fn size_slot(size: usize) -> &'static AtomicIsize {
    &BY_SIZE[size.min(SIZES - 1)]
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        size_slot(l.size()).fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        size_slot(l.size()).fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        size_slot(l.size()).fetch_sub(1, Ordering::Relaxed);
        size_slot(new).fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut clients = 1000usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--clients" => {
                clients = it
                    .next()
                    .context("--clients N")?
                    .parse()
                    .context("--clients N")?
            }
            other => bail!("unknown argument {other:?}; use --clients N (default 1000)"),
        }
    }
    if !(1..=4000).contains(&clients) {
        bail!("--clients must be 1 to 4000 (addresses of a /20)");
    }

    let mut ca = cvpn_tests::pki::Ca::new("session memory CA")?;
    let server = ca.server("vpn.example.com")?;
    let client = ca.client("alice", &["engineering"])?;
    let material = TlsMaterial::from_pem(&server.cert, &server.key, &ca.cert_pem(), None)?;
    let tls = material.server_config()?;
    let client_tls = tls_config(&ca.cert_pem(), &client.cert, &client.key)?;
    let start = Instant::now();
    let mut clock = Clock {
        now: start,
        wall: SystemTime::now(),
    };

    let before_endpoint = live();
    let mut endpoint = Endpoint::new(
        EndpointConfig {
            endpoint_id: "cvpn-endpoint-0123456789abcdef0".into(),
            transport: gateway::model::TransportProtocol::Udp,
            client_cidr: "10.77.0.0/20".parse()?,
            split_tunnel: true,
            dns_servers: vec![],
            ciphers: vec!["AES-256-GCM".into()],
            ping: 10,
            ping_restart: 60,
            reneg_after: Some(Duration::from_secs(3600)),
            live: LiveSettings::default(),
        },
        Arc::new(SessionConfig {
            require_client_certificate: true,
            ..SessionConfig::new(tls)
        }),
        CookieJar::with_key(b"session memory cookie key"),
        start,
    )?;
    let mut datapath = DataPath::new();
    let empty = live();
    let sizes_before: Vec<isize> = BY_SIZE.iter().map(|a| a.load(Ordering::Relaxed)).collect();

    // Connects the clients a batch at a time (the endpoint bounds handshakes in progress).
    let mut admitted = 0usize;
    for batch in (0..clients).collect::<Vec<_>>().chunks(16) {
        let mut peers: Vec<(SocketAddr, TestClient)> = batch
            .iter()
            .map(|&i| {
                let addr: SocketAddr = format!(
                    "198.51.{}.{}:{}",
                    100 + i / 250,
                    1 + i % 250,
                    40000 + i % 1000
                )
                .parse()
                .expect("address");
                let mut id = [0u8; 8];
                id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
                (
                    addr,
                    TestClient::new(client_tls.clone(), "vpn.example.com", id).expect("client"),
                )
            })
            .collect();
        for _ in 0..200 {
            let mut moved = false;
            for (addr, c) in &mut peers {
                while let Some(p) = c.poll_transmit() {
                    moved = true;
                    endpoint.handle_packet(clock, Peer::Udp(*addr), *addr, &p);
                }
            }
            while let Some(out) = endpoint.poll_output() {
                match out {
                    Output::Transmit {
                        peer: Peer::Udp(to),
                        packet,
                    } => {
                        if let Some((_, c)) = peers.iter_mut().find(|(a, _)| *a == to) {
                            moved = true;
                            c.handle_packet(&packet).context("client")?;
                        }
                    }
                    Output::Keys {
                        conn,
                        peer_id,
                        peer,
                        opener,
                        activity,
                        ..
                    } => datapath.install_keys(conn, peer_id, peer, *opener, activity),
                    Output::Admitted {
                        peer_id, client_ip, ..
                    } => {
                        datapath.admit(peer_id, client_ip);
                        admitted += 1;
                    }
                    _ => {}
                }
            }
            if !moved {
                break;
            }
        }
        clock.now += Duration::from_millis(1);
        clock.wall += Duration::from_millis(1);
        endpoint.handle_timeout(clock);
        // The clients go; what they held is theirs, not the endpoint's.
        drop(peers);
    }
    let all = live();
    if admitted != clients {
        bail!("only {admitted} of {clients} clients were admitted");
    }
    let per = (all - empty) as f64 / clients as f64;
    println!(
        "=== what the endpoint keeps per connected client: `cargo xtask bench session-memory` ==="
    );
    println!("{clients} clients of the sans-IO test client (TLS 1.3, ECDSA P-256 server key, AES-256-GCM), admitted and idle");
    println!(
        "endpoint + data path before the first client: {} bytes (endpoint alone {})",
        empty,
        empty - before_endpoint
    );
    println!(
        "live heap after all were admitted, the clients dropped: {} bytes",
        all
    );
    println!(
        "per connected client: {per:.0} bytes ({:.1} KB); goal of issue 13: 10 KB",
        per / 1024.0
    );
    println!(
        "allocations made in all: {}",
        ALLOCS.load(Ordering::Relaxed)
    );
    // Where it goes: the allocation sizes that grew, by bytes per client.
    let mut grown: Vec<(usize, isize)> = BY_SIZE
        .iter()
        .enumerate()
        .map(|(size, a)| (size, a.load(Ordering::Relaxed) - sizes_before[size]))
        .filter(|(_, n)| *n > 0)
        .collect();
    grown.sort_by_key(|(size, n)| -(*size as isize * n));
    println!("live allocations added, by size (the largest shares of the per-client bytes):");
    for (size, n) in grown.iter().take(15) {
        println!(
            "  {size:>6} bytes x {n:>6} ({:.2} per client, {:.0} bytes per client)",
            *n as f64 / clients as f64,
            (*size as isize * n) as f64 / clients as f64
        );
    }
    Ok(())
}
