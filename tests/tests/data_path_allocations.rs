//! The steady-state data path allocates nothing per packet (issue 13), checked by a counting
//! allocator in this test binary: after warm-up, 20 000 packets go each way through the same
//! code the daemon runs per packet — opening (`DataPath::open`: peer-id lookup, AEAD, replay
//! window, own-source check) and the coalescer on the way in; cutting a TCP super-packet
//! (`Segments`) and sealing each segment into a send buffer on the way out — and the number
//! of allocations must not move. (Syscalls are per batch, not per packet: one receive call
//! takes up to 16 GRO buffers of up to 64 datagrams, one TUN write takes a super-packet, one
//! TUN read returns up to 64 KiB and one `sendmsg` sends up to 64 segments — see README.)
//!
//! No root, no kernel: in-process, sans-IO.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use gateway::{
    datachannel::{
        offload::{Coalescer, Segments, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN},
        Cipher, DataChannel, Role, OVERHEAD,
    },
    endpoint::{
        datapath::{Activity, DataPath, Opened},
        Peer,
    },
};

struct Counting;

thread_local! {
    /// Allocations made by this thread (the tests run on threads of their own, side by side).
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> usize {
    ALLOCS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PEER_ID: u32 = 7;
const PACKETS: usize = 20_000;

/// A TCP/IPv4 segment from the client with `payload` bytes (checksums are not looked at on
/// this path).
fn segment(seq: u32, payload: usize) -> Vec<u8> {
    let total = 40 + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&CLIENT_IP.octets());
    p[16..20].copy_from_slice(&[10, 88, 0, 10]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x10;
    p
}

fn channels() -> (DataChannel, DataChannel) {
    let material = [42u8; 256];
    let server =
        DataChannel::from_ekm(&material, Cipher::Aes256Gcm, Role::Server, 0, PEER_ID).unwrap();
    let client =
        DataChannel::from_ekm(&material, Cipher::Aes256Gcm, Role::Client, 0, PEER_ID).unwrap();
    (server, client)
}

#[test]
fn the_receive_path_allocates_nothing_per_packet() {
    let (server, mut client) = channels();
    let (_, opener) = server.split();
    let mut datapath = DataPath::new();
    let peer = Peer::Udp(SocketAddr::from(([198, 51, 100, 7], 40000)));
    datapath.install_keys(
        1,
        PEER_ID,
        peer,
        opener,
        Arc::new(Activity::new(Instant::now())),
    );
    datapath.admit(PEER_ID, CLIENT_IP);
    // Every datagram sealed beforehand, in buffers the "socket" hands over one by one (this
    // allocates, and the counter must see it: it is not a counter that cannot move).
    let setup = allocations();
    let mut datagrams: Vec<Vec<u8>> = (0..PACKETS + 1000)
        .map(|i| {
            let inner = segment((i * 1400) as u32, 1400);
            let mut out = Vec::new();
            client.seal(&inner, &mut out).unwrap();
            out
        })
        .collect();
    assert!(
        allocations() - setup >= PACKETS,
        "the counter does not count"
    );
    let mut coalescer = Coalescer::new();
    let mut written = 0usize;
    let mut bytes = 0usize;
    let now = Instant::now();
    let mut run =
        |datagrams: &mut [Vec<u8>], datapath: &mut DataPath, coalescer: &mut Coalescer| {
            for batch in datagrams.chunks_mut(32) {
                for d in batch.iter_mut() {
                    let Opened::Accepted {
                        forward: Some(p), ..
                    } = datapath.open(now, peer, d)
                    else {
                        panic!("a data packet was not accepted");
                    };
                    coalescer.push(p, &mut |_: &[u8; VNET_HDR_LEN], p: &[u8]| {
                        written += 1;
                        bytes += p.len();
                    });
                }
                coalescer.flush(&mut |_: &[u8; VNET_HDR_LEN], p: &[u8]| {
                    written += 1;
                    bytes += p.len();
                });
            }
        };
    let (warm, steady) = datagrams.split_at_mut(1000);
    run(warm, &mut datapath, &mut coalescer);
    let before = allocations();
    run(steady, &mut datapath, &mut coalescer);
    let allocs = allocations() - before;
    assert_eq!(
        allocs, 0,
        "{allocs} allocations for {PACKETS} packets opened and coalesced"
    );
    // The batches of 32 became super-packets (each 64 KiB at most): the coalescer worked.
    assert!(written < (PACKETS + 1000) / 10, "{written} TUN writes");
    assert_eq!(bytes, (PACKETS + 1000) * 1400 + written * 40);
}

#[test]
fn the_send_path_allocates_nothing_per_packet() {
    let (server, _) = channels();
    let (mut sealer, _) = server.split();
    // A 64 KiB TCP super-packet as the TUN hands it over, and a GSO send buffer.
    let payload = 45 * 1400;
    let mut packet = segment(1, payload);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 40,
        gso_size: 1400,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut batch = vec![0u8; 65_000 + OVERHEAD + 65_535];
    let mut sent = 0usize;
    let mut run = |rounds: usize, packet: &mut [u8], batch: &mut [u8]| {
        for _ in 0..rounds {
            let mut segments = Segments::new(hdr, packet).unwrap();
            let mut at = 0;
            while let Some(n) = segments.write_next(&mut batch[at + OVERHEAD..]) {
                let len = sealer
                    .seal_in_place(&mut batch[at..at + OVERHEAD + n], n)
                    .unwrap();
                at += len;
                sent += 1;
            }
        }
    };
    run(10, &mut packet, &mut batch);
    let before = allocations();
    let rounds = PACKETS / 45;
    run(rounds, &mut packet, &mut batch);
    let allocs = allocations() - before;
    assert_eq!(
        allocs,
        0,
        "{allocs} allocations for {} segments cut and sealed",
        rounds * 45
    );
    assert_eq!(sent, (rounds + 10) * 45);
}
