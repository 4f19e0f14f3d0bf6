//! Fixture tables for the kernel programs, run through `BPF_PROG_TEST_RUN`: each row is a
//! description, an input packet and the map state it meets, the expected verdict, and what the
//! output packet must look like (checksums verified from scratch).
//!
//! The programs are loaded in Ethernet mode (the kernel's test runner hands TC programs a frame
//! with an Ethernet header); the target network is a veth in a namespace of the
//! test's own.

use std::net::Ipv4Addr;

use cvpn_tests::{
    is_root,
    packets::{build, parse_and_verify, L4},
    Netns,
};
use gateway::dataplane::{
    policy::{Access, AuthorizationRule, Policy, Route},
    DataPlane, DataPlaneConfig, FlowEventKind, ProgramKind,
};
use gateway_common::Counter;

const TC_ACT_OK: i32 = 0;
/// `TC_ACT_UNSPEC` (TCX: `TCX_NEXT`): not ours, the next program (or the host) decides.
const TC_PASS: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const XDP_PASS: i32 = 2;
const XDP_REDIRECT: i32 = 4;

const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11); // group "a"
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12); // group "b"
const NOGROUP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 13);
const A2: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 14); // group "a", second client
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99); // no session
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 88, 5, 7); // inside B's more specific /24
const UNROUTED: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 5);
const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn rule(cidr: &str, access: Access) -> AuthorizationRule {
    AuthorizationRule {
        destination: cidr.parse().unwrap(),
        access,
        ports: None,
    }
}

fn group(g: &str) -> Access {
    Access::Group(g.to_string())
}

/// A namespace with a veth as the target interface, and the programs loaded in it.
fn setup() -> (Netns, DataPlane) {
    setup_with(DataPlaneConfig::default())
}

/// [`setup`] with other load-time settings (the SNAT range is always 20000-20999).
fn setup_with(config: DataPlaneConfig) -> (Netns, DataPlane) {
    let (ns, mut dp) = cvpn_tests::fixture_dataplane(
        "fx",
        DataPlaneConfig {
            nat_port_range: (20000, 20999),
            ..config
        },
    )
    .expect("fixture data plane");
    assert_eq!(
        dp.target_snat_addr(1),
        Some(SNAT),
        "SNAT address is taken from the interface"
    );
    dp.add_session(A, 1, &["a".to_string()]).unwrap();
    dp.add_session(B, 2, &["b".to_string()]).unwrap();
    dp.add_session(NOGROUP, 3, &[]).unwrap();
    dp.add_session(A2, 4, &["a".to_string(), "unused".to_string()])
        .unwrap();
    dp.replace_policy(Policy {
        rules: vec![
            rule("10.88.0.0/16", group("a")),
            rule("10.88.5.0/24", group("b")),
            rule("10.99.0.0/16", Access::AllGroups),
        ],
        routes: vec![Route {
            destination: "10.88.0.0/16".parse().unwrap(),
            target: 1,
        }],
    })
    .unwrap();
    (ns, dp)
}

struct Row {
    what: &'static str,
    program: ProgramKind,
    input: Vec<u8>,
    verdict: i32,
    /// Expected (src, sport, dst, dport) of the output, when the packet is forwarded.
    output: Option<(Ipv4Addr, u16, Ipv4Addr, u16)>,
}

fn client(what: &'static str, src: Ipv4Addr, dst: Ipv4Addr, l4: L4, verdict: i32) -> Row {
    Row {
        what,
        program: ProgramKind::ClientIngress,
        input: build(src, dst, l4, b"fixture"),
        verdict,
        output: None,
    }
}

fn run_rows(dp: &mut DataPlane, rows: Vec<Row>) {
    let mut failures = Vec::new();
    for row in rows {
        let out = dp.test_run(row.program, &row.input, 1).expect("test run");
        if out.verdict != row.verdict {
            failures.push(format!(
                "{}: verdict {} (want {})",
                row.what, out.verdict, row.verdict
            ));
            continue;
        }
        if let Some((src, sport, dst, dport)) = row.output {
            match parse_and_verify(&out.packet) {
                Ok(p) if (p.src, p.sport, p.dst, p.dport) == (src, sport, dst, dport) => {}
                Ok(p) => failures.push(format!(
                    "{}: output {}:{} -> {}:{} (want {src}:{sport} -> {dst}:{dport})",
                    row.what, p.src, p.sport, p.dst, p.dport
                )),
                Err(e) => failures.push(format!("{}: {e}", row.what)),
            }
        }
        if row.verdict == TC_ACT_SHOT || row.verdict == TC_ACT_OK || row.verdict == TC_PASS {
            // Dropped or passed packets are not rewritten.
            if out.packet != row.input {
                failures.push(format!(
                    "{}: packet changed although not forwarded",
                    row.what
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fixture failures:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn client_path_allow_deny_unknown_and_route_miss() {
    if !is_root() {
        panic!("the fixture tests need root (BPF_PROG_TEST_RUN, namespaces): run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    let mut events = dp.take_flow_events().unwrap();
    let tcp = |sport, dport| L4::Tcp {
        sport,
        dport,
        fin: false,
    };
    let udp = |sport, dport| L4::Udp { sport, dport };
    let echo = |id| L4::EchoRequest { id, seq: 1 };
    let fwd = |mut r: Row, out: (Ipv4Addr, u16, Ipv4Addr, u16)| {
        r.output = Some(out);
        r
    };
    run_rows(
        &mut dp,
        vec![
            fwd(
                client(
                    "TCP, group a, /16 rule: allowed, SNAT keeps a port of the SNAT range",
                    A,
                    HOST,
                    tcp(20040, 80),
                    TC_ACT_REDIRECT,
                ),
                (SNAT, 20040, HOST, 80),
            ),
            fwd(
                client(
                    "UDP, group a: allowed",
                    A,
                    HOST,
                    udp(20041, 53),
                    TC_ACT_REDIRECT,
                ),
                (SNAT, 20041, HOST, 53),
            ),
            fwd(
                client(
                    "ICMP echo, group a: allowed, id kept",
                    A,
                    HOST,
                    echo(777),
                    TC_ACT_REDIRECT,
                ),
                (SNAT, 777, HOST, 0),
            ),
            client(
                "TCP, group b, only a's /16 covers it: denied",
                B,
                HOST,
                tcp(40000, 80),
                TC_ACT_SHOT,
            ),
            client(
                "UDP, no groups: denied",
                NOGROUP,
                HOST,
                udp(40000, 53),
                TC_ACT_SHOT,
            ),
            client("ICMP echo, group b: denied", B, HOST, echo(5), TC_ACT_SHOT),
            client(
                "unknown source: dropped",
                STRANGER,
                HOST,
                tcp(40000, 80),
                TC_ACT_SHOT,
            ),
            client(
                "authorized for all groups but no route: dropped",
                A,
                UNROUTED,
                tcp(40000, 80),
                TC_ACT_SHOT,
            ),
            fwd(
                client(
                    "group b's /24 inside a's /16: b allowed",
                    B,
                    HOST_B,
                    tcp(20410, 443),
                    TC_ACT_REDIRECT,
                ),
                (SNAT, 20410, HOST_B, 443),
            ),
            client(
                "group b's /24 takes the destination away from group a",
                A,
                HOST_B,
                tcp(41000, 443),
                TC_ACT_SHOT,
            ),
        ],
    );
    let c = dp.global_counters().unwrap();
    assert_eq!(c.get(Counter::Forwarded), 4);
    assert_eq!(c.get(Counter::Denied), 4);
    assert_eq!(c.get(Counter::UnknownSource), 1);
    assert_eq!(c.get(Counter::NoRoute), 1);
    assert_eq!(c.get(Counter::NatCreated), 4);

    // The flow events say who tried what.
    let got = events.wait(std::time::Duration::from_millis(200));
    let kinds: Vec<_> = got.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            FlowEventKind::Denied,
            FlowEventKind::Denied,
            FlowEventKind::Denied,
            FlowEventKind::UnknownSource,
            FlowEventKind::NoRoute,
            FlowEventKind::Denied
        ],
        "{got:?}"
    );
    let first = &got[0];
    assert_eq!(
        (
            first.session_id,
            first.src,
            first.src_port,
            first.dst,
            first.dst_port,
            first.protocol
        ),
        (2, B, 40000, HOST, 80, 6)
    );
    assert_eq!(got[3].session_id, 0);
    assert_eq!((got[4].session_id, got[4].dst), (1, UNROUTED));

    // Per-session counters: A forwarded 3 packets and had 2 dropped.
    let a = dp.session_counters(A).unwrap().unwrap();
    assert_eq!((a.from_client_packets, a.dropped_packets), (3, 2));
    assert!(a.from_client_bytes > 3 * 28);
}

#[test]
fn longest_prefix_wins_over_zero_route_and_policy_swaps_apply_to_next_packet() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    let mut events = dp.take_flow_events().unwrap();
    // Add 0.0.0.0/0 for all groups: it is considered last.
    let mut policy = dp.policy().clone();
    policy.rules.push(rule("0.0.0.0/0", Access::AllGroups));
    dp.replace_policy(policy.clone()).unwrap();
    let tcp = L4::Tcp {
        sport: 42000,
        dport: 80,
        fin: false,
    };
    run_rows(
        &mut dp,
        vec![
            client(
                "a to b's /24: still denied, 0.0.0.0/0 does not help",
                A,
                HOST_B,
                tcp,
                TC_ACT_SHOT,
            ),
            client(
                "no groups to a's /16: denied, the /16 is longer than /0",
                NOGROUP,
                HOST,
                L4::Udp { sport: 1, dport: 2 },
                TC_ACT_SHOT,
            ),
            client(
                "no groups to the internet: authorized by /0, but no route",
                NOGROUP,
                INTERNET,
                L4::Udp { sport: 1, dport: 2 },
                TC_ACT_SHOT,
            ),
        ],
    );
    let kinds: Vec<_> = events
        .wait(std::time::Duration::from_millis(200))
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            FlowEventKind::Denied,
            FlowEventKind::Denied,
            FlowEventKind::NoRoute
        ]
    );

    // Swap to a policy where group b owns the /16: the very next packet is judged by it.
    dp.replace_policy(Policy {
        rules: vec![rule("10.88.0.0/16", group("b"))],
        routes: policy.routes.clone(),
    })
    .unwrap();
    run_rows(
        &mut dp,
        vec![
            client(
                "after the swap group a is denied",
                A,
                HOST,
                L4::Udp { sport: 3, dport: 4 },
                TC_ACT_SHOT,
            ),
            client(
                "after the swap group b is allowed",
                B,
                HOST,
                L4::Udp { sport: 3, dport: 4 },
                TC_ACT_REDIRECT,
            ),
        ],
    );
    // And back: a group that was dropped and comes back gets a bit again.
    dp.replace_policy(Policy {
        rules: vec![rule("10.88.0.0/16", group("a"))],
        routes: policy.routes,
    })
    .unwrap();
    run_rows(
        &mut dp,
        vec![client(
            "group a again",
            A,
            HOST,
            L4::Udp { sport: 5, dport: 6 },
            TC_ACT_REDIRECT,
        )],
    );
}

#[test]
fn snat_reverse_nat_and_port_collisions() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    let tcp = |sport, dport| L4::Tcp {
        sport,
        dport,
        fin: false,
    };
    // Two clients, same source port, same destination.
    let first = dp
        .test_run(
            ProgramKind::ClientIngress,
            &build(A, HOST, tcp(20050, 80), b"x"),
            1,
        )
        .unwrap();
    let second = dp
        .test_run(
            ProgramKind::ClientIngress,
            &build(A2, HOST, tcp(20050, 80), b"y"),
            1,
        )
        .unwrap();
    assert_eq!(
        (first.verdict, second.verdict),
        (TC_ACT_REDIRECT, TC_ACT_REDIRECT)
    );
    let p1 = parse_and_verify(&first.packet).unwrap();
    let p2 = parse_and_verify(&second.packet).unwrap();
    assert_eq!(
        (p1.src, p1.sport),
        (SNAT, 20050),
        "the first flow keeps its port"
    );
    assert_eq!(p2.src, SNAT);
    assert_ne!(p2.sport, 20050, "the second flow must get another port");
    assert!(
        (20000..=20999).contains(&p2.sport),
        "remapped port {} outside the configured range",
        p2.sport
    );
    // Repeated packets of a flow keep their translation.
    let again = dp
        .test_run(
            ProgramKind::ClientIngress,
            &build(A2, HOST, tcp(20050, 80), b"z"),
            1,
        )
        .unwrap();
    assert_eq!(parse_and_verify(&again.packet).unwrap().sport, p2.sport);

    // ICMP echo ids collide the same way.
    let e1 = dp
        .test_run(
            ProgramKind::ClientIngress,
            &build(A, HOST, L4::EchoRequest { id: 9, seq: 1 }, b"p"),
            1,
        )
        .unwrap();
    let e2 = dp
        .test_run(
            ProgramKind::ClientIngress,
            &build(A2, HOST, L4::EchoRequest { id: 9, seq: 1 }, b"p"),
            1,
        )
        .unwrap();
    let e2_id = parse_and_verify(&e2.packet).unwrap().sport;
    assert_eq!(parse_and_verify(&e1.packet).unwrap().sport, 9);
    assert_ne!(e2_id, 9);

    // Return traffic finds each client.
    let ret = |src_port: u16, dst_port: u16| build(HOST, SNAT, tcp(src_port, dst_port), b"reply");
    run_rows(
        &mut dp,
        vec![
            Row {
                what: "reply to the first flow",
                program: ProgramKind::TargetIngress,
                input: ret(80, 20050),
                verdict: TC_ACT_REDIRECT,
                output: Some((HOST, 80, A, 20050)),
            },
            Row {
                what: "reply to the remapped flow",
                program: ProgramKind::TargetIngress,
                input: ret(80, p2.sport),
                verdict: TC_ACT_REDIRECT,
                output: Some((HOST, 80, A2, 20050)),
            },
            Row {
                what: "echo reply to the remapped id",
                program: ProgramKind::TargetIngress,
                input: build(HOST, SNAT, L4::EchoReply { id: e2_id, seq: 1 }, b"p"),
                verdict: TC_ACT_REDIRECT,
                output: Some((HOST, 9, A2, 0)),
            },
            Row {
                what: "not NAT traffic: passed on untouched",
                program: ProgramKind::TargetIngress,
                input: ret(80, 12345),
                verdict: TC_PASS,
                output: None,
            },
            Row {
                what: "UDP to the gateway itself: passed untouched",
                program: ProgramKind::TargetIngress,
                input: build(
                    HOST,
                    SNAT,
                    L4::Udp {
                        sport: 53,
                        dport: 53,
                    },
                    b"dns",
                ),
                verdict: TC_PASS,
                output: None,
            },
        ],
    );
    // The XDP return path does the same with direct packet access and incremental checksums.
    let mut udp_no_csum = build(
        HOST,
        SNAT,
        L4::Udp {
            sport: 53,
            dport: 20051,
        },
        b"nocsum",
    );
    udp_no_csum[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let udp_fwd = dp
        .test_run(
            ProgramKind::ClientIngress,
            &build(
                A2,
                HOST,
                L4::Udp {
                    sport: 20051,
                    dport: 53,
                },
                b"q",
            ),
            1,
        )
        .unwrap();
    assert_eq!(udp_fwd.verdict, TC_ACT_REDIRECT);
    run_rows(
        &mut dp,
        vec![
            Row {
                what: "XDP: reply to the remapped flow",
                program: ProgramKind::TargetXdp,
                input: ret(80, p2.sport),
                verdict: XDP_REDIRECT,
                output: Some((HOST, 80, A2, 20050)),
            },
            Row {
                what: "XDP: echo reply",
                program: ProgramKind::TargetXdp,
                input: build(HOST, SNAT, L4::EchoReply { id: e2_id, seq: 2 }, b"p"),
                verdict: XDP_REDIRECT,
                output: Some((HOST, 9, A2, 0)),
            },
            Row {
                what: "XDP: UDP without checksum keeps none",
                program: ProgramKind::TargetXdp,
                input: udp_no_csum,
                verdict: XDP_REDIRECT,
                output: Some((HOST, 53, A2, 20051)),
            },
            Row {
                what: "XDP: not NAT traffic passes untouched",
                program: ProgramKind::TargetXdp,
                input: ret(80, 12345),
                verdict: XDP_PASS,
                output: None,
            },
        ],
    );
    let a2 = dp.session_counters(A2).unwrap().unwrap();
    assert_eq!(a2.to_client_packets, 5);

    // A session that ended: its entries went with it, its return traffic is not delivered.
    dp.remove_session(A).unwrap();
    let out = dp
        .test_run(ProgramKind::TargetIngress, &ret(80, 20050), 1)
        .unwrap();
    assert_eq!(out.verdict, TC_PASS);
    // Nothing is left for expiry to find.
    let report = dp.expire_nat();
    assert_eq!(report.orphaned, 0, "{report:?}");
}

#[test]
fn malformed_and_unsupported_packets_are_dropped_without_changes() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    let good = build(
        A,
        HOST,
        L4::Tcp {
            sport: 1234,
            dport: 80,
            fin: false,
        },
        b"",
    );
    let mut ipv6 = good.clone();
    ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x43;
    let mut long_total = good.clone();
    long_total[16..18].copy_from_slice(&1500u16.to_be_bytes());
    let mut fragment = good.clone();
    fragment[20] = 0x20; // MF
    let mut gre = good.clone();
    gre[23] = 47;
    let rows = vec![
        Row {
            what: "IPv6 ethertype",
            program: ProgramKind::ClientIngress,
            input: ipv6,
            verdict: TC_ACT_SHOT,
            output: None,
        },
        Row {
            what: "ARP on an Ethernet client link goes to the host",
            program: ProgramKind::ClientIngress,
            input: arp,
            verdict: TC_ACT_OK,
            output: None,
        },
        Row {
            what: "IP header only, TCP header cut off",
            program: ProgramKind::ClientIngress,
            input: good[..34].to_vec(),
            verdict: TC_ACT_SHOT,
            output: None,
        },
        Row {
            what: "IHL below 5",
            program: ProgramKind::ClientIngress,
            input: bad_ihl,
            verdict: TC_ACT_SHOT,
            output: None,
        },
        Row {
            what: "total length beyond the packet",
            program: ProgramKind::ClientIngress,
            input: long_total,
            verdict: TC_ACT_SHOT,
            output: None,
        },
        Row {
            what: "fragment",
            program: ProgramKind::ClientIngress,
            input: fragment,
            verdict: TC_ACT_SHOT,
            output: None,
        },
        Row {
            what: "GRE",
            program: ProgramKind::ClientIngress,
            input: gre,
            verdict: TC_ACT_SHOT,
            output: None,
        },
        Row {
            what: "echo reply from a client",
            program: ProgramKind::ClientIngress,
            input: build(A, HOST, L4::EchoReply { id: 1, seq: 1 }, b""),
            verdict: TC_ACT_SHOT,
            output: None,
        },
    ];
    run_rows(&mut dp, rows);
    let c = dp.global_counters().unwrap();
    assert_eq!(c.get(Counter::NotIpv4), 1);
    assert_eq!(c.get(Counter::Malformed), 3);
    assert_eq!(c.get(Counter::Unsupported), 3);
    assert_eq!(c.get(Counter::Forwarded), 0);
}

/// Recomputes the IPv4 header checksum of an Ethernet + IPv4 packet.
fn fix_ip_csum(p: &mut [u8]) {
    let ihl = usize::from(p[14] & 0x0f) * 4;
    p[24] = 0;
    p[25] = 0;
    let mut sum = 0u32;
    for c in p[14..14 + ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fn with_ttl(mut p: Vec<u8>, ttl: u8) -> Vec<u8> {
    p[14 + 8] = ttl;
    fix_ip_csum(&mut p);
    p
}

/// The same packet with four bytes of IP options (NOP, NOP, NOP, end of list): IHL 6.
fn with_ip_options(p: Vec<u8>) -> Vec<u8> {
    let mut out = p[..34].to_vec();
    out.extend_from_slice(&[1, 1, 1, 0]);
    out.extend_from_slice(&p[34..]);
    out[14] = 0x46;
    let total = u16::from_be_bytes([out[16], out[17]]) + 4;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_csum(&mut out);
    out
}

fn tcp(sport: u16, dport: u16) -> L4 {
    L4::Tcp {
        sport,
        dport,
        fin: false,
    }
}

fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

/// Runs one client packet; returns the verdict and the SNAT port when forwarded.
fn forward(dp: &mut DataPlane, src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> (i32, Option<u16>) {
    let out = dp
        .test_run(ProgramKind::ClientIngress, &build(src, dst, l4, b"f"), 1)
        .unwrap();
    let port =
        (out.verdict == TC_ACT_REDIRECT).then(|| parse_and_verify(&out.packet).unwrap().sport);
    (out.verdict, port)
}

/// Attack 3: SNAT ports come only from the configured SNAT range; a client's port is kept only
/// when it lies inside it, and return traffic to a port outside it is never ours.
#[test]
fn snat_ports_come_only_from_the_snat_range() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    let range = 20000..=20999;
    assert_eq!(
        forward(&mut dp, A, HOST, tcp(20500, 80)),
        (TC_ACT_REDIRECT, Some(20500)),
        "a port inside the range is kept"
    );
    for (what, l4) in [
        ("TCP from the kernel's local port range", tcp(40000, 80)),
        ("UDP from a privileged port", udp(53, 53)),
        ("UDP from port 1023", udp(1023, 53)),
        ("UDP from port 65535", udp(65535, 53)),
    ] {
        let (verdict, port) = forward(&mut dp, A, HOST, l4);
        assert_eq!(verdict, TC_ACT_REDIRECT, "{what}");
        let port = port.unwrap();
        assert!(
            range.contains(&port),
            "{what}: SNAT port {port} outside the range"
        );
    }
    let (_, remapped) = forward(&mut dp, A, HOST, tcp(40000, 80));
    let remapped = remapped.unwrap();
    let ret = |dport| build(HOST, SNAT, tcp(80, dport), b"reply");
    run_rows(
        &mut dp,
        vec![
            Row {
                what: "reply to the client's own port (outside the range): the host's, passed on",
                program: ProgramKind::TargetIngress,
                input: ret(40000),
                verdict: TC_PASS,
                output: None,
            },
            Row {
                what: "XDP: reply to a port outside the range: passed",
                program: ProgramKind::TargetXdp,
                input: ret(40000),
                verdict: XDP_PASS,
                output: None,
            },
            Row {
                what: "reply to the remapped port: delivered",
                program: ProgramKind::TargetIngress,
                input: ret(remapped),
                verdict: TC_ACT_REDIRECT,
                output: Some((HOST, 80, A, 40000)),
            },
        ],
    );
}

/// Attack 4: one session cannot hold more than its cap of NAT entries; the next new flow is
/// dropped and counted as NAT full, while its existing flows and other sessions go on.
#[test]
fn nat_entries_per_session_are_capped() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    const CAP: u16 = 4096; // the default
    for i in 1..=CAP {
        let (verdict, _) = forward(&mut dp, A, HOST, udp(20001, i));
        assert_eq!(verdict, TC_ACT_REDIRECT, "flow {i} of the cap");
    }
    let (verdict, _) = forward(&mut dp, A, HOST, udp(20001, CAP + 1));
    assert_eq!(
        verdict, TC_ACT_SHOT,
        "the flow after the cap must be dropped"
    );
    let c = dp.global_counters().unwrap();
    assert_eq!(
        (c.get(Counter::NatFull), c.get(Counter::NatSessionCap)),
        (1, 1)
    );
    assert_eq!(
        forward(&mut dp, A, HOST, udp(20001, 1)).0,
        TC_ACT_REDIRECT,
        "existing flows of the capped session go on"
    );
    assert_eq!(
        forward(&mut dp, A2, HOST, udp(20001, 1)).0,
        TC_ACT_REDIRECT,
        "another session still gets entries"
    );
    // The session ends: its entries go, and the address starts from zero again.
    dp.remove_session(A).unwrap();
    dp.add_session(A, 21, &["a".to_string()]).unwrap();
    assert_eq!(
        forward(&mut dp, A, HOST, udp(20001, CAP + 1)).0,
        TC_ACT_REDIRECT,
        "a new session on the same address is not capped by the old one's entries"
    );
}

/// Attack 4: a client spraying ports into a full NAT table cannot evict another session's flow.
#[test]
fn a_spraying_client_cannot_evict_other_sessions_flows() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup_with(DataPlaneConfig {
        nat_table_size: 64,
        ..DataPlaneConfig::default()
    });
    let (verdict, port) = forward(&mut dp, A2, HOST, udp(20002, 53));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let port = port.unwrap();
    let mut refused = 0;
    for i in 0..200 {
        if forward(&mut dp, A, HOST, udp(20001, 1000 + i)).0 == TC_ACT_SHOT {
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "the table is full: some of the spray is refused"
    );
    run_rows(
        &mut dp,
        vec![Row {
            what: "the other session's flow survives the spray",
            program: ProgramKind::TargetIngress,
            input: build(HOST, SNAT, udp(53, port), b"answer"),
            verdict: TC_ACT_REDIRECT,
            output: Some((HOST, 53, A2, 20002)),
        }],
    );
    assert_eq!(
        forward(&mut dp, A2, HOST, udp(20002, 53)),
        (TC_ACT_REDIRECT, Some(port))
    );
}

/// Attack 4: `remove_session` deletes the session's NAT entries before it returns, so a new
/// session given the same address inherits no flow.
#[test]
fn remove_session_deletes_its_nat_entries_at_once() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    assert_eq!(forward(&mut dp, A, HOST, tcp(20300, 80)).0, TC_ACT_REDIRECT);
    assert_eq!(forward(&mut dp, A, HOST, udp(20301, 53)).0, TC_ACT_REDIRECT);
    assert_eq!(
        forward(&mut dp, A2, HOST, tcp(20300, 80)).0,
        TC_ACT_REDIRECT
    );
    dp.remove_session(A).unwrap();
    let left = dp.nat_entries();
    assert!(left.iter().all(|e| e.client.0 != A), "{left:?}");
    assert_eq!(left.len(), 1, "the other session's entry stays: {left:?}");
    // The address is handed out again: the old flow's replies must not reach the new session.
    dp.add_session(A, 99, &["a".to_string()]).unwrap();
    run_rows(
        &mut dp,
        vec![Row {
            what: "reply to the ended session's flow, address reused: not delivered",
            program: ProgramKind::TargetIngress,
            input: build(HOST, SNAT, tcp(80, 20300), b"old"),
            verdict: TC_PASS,
            output: None,
        }],
    );
}

/// Attack 11: client packets with IP options are dropped; TTL is decremented (checksum fixed),
/// and a packet that would expire at the gateway is dropped.
#[test]
fn ip_options_and_ttl_on_the_client_path() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    let pkt = || build(A, HOST, tcp(20600, 80), b"payload");
    let rows = vec![
        Row {
            what: "IP options (IHL 6): dropped",
            program: ProgramKind::ClientIngress,
            input: with_ip_options(pkt()),
            verdict: TC_ACT_SHOT,
            output: None,
        },
        Row {
            what: "TTL 1: dropped",
            program: ProgramKind::ClientIngress,
            input: with_ttl(pkt(), 1),
            verdict: TC_ACT_SHOT,
            output: None,
        },
        Row {
            what: "TTL 0: dropped",
            program: ProgramKind::ClientIngress,
            input: with_ttl(pkt(), 0),
            verdict: TC_ACT_SHOT,
            output: None,
        },
    ];
    run_rows(&mut dp, rows);
    for ttl in [2u8, 64, 255] {
        let out = dp
            .test_run(ProgramKind::ClientIngress, &with_ttl(pkt(), ttl), 1)
            .unwrap();
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "TTL {ttl}");
        parse_and_verify(&out.packet).unwrap();
        assert_eq!(out.packet[14 + 8], ttl - 1, "TTL {ttl} is decremented");
    }
    let c = dp.global_counters().unwrap();
    assert_eq!(c.get(Counter::Forwarded), 3);
    assert_eq!(c.get(Counter::IpOptions), 1);
    assert_eq!(c.get(Counter::TtlExpired), 2);
    assert_eq!(
        c.get(Counter::NatCreated),
        1,
        "expired packets make no NAT state"
    );
}

/// Attack 11: the return path delivers a packet to a client only when it matches a flow
/// exactly (protocol, SNAT address and port, remote address and port); the TC and XDP paths
/// agree.
#[test]
fn return_path_never_delivers_without_a_matching_flow() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    assert_eq!(
        forward(&mut dp, A, HOST, tcp(20400, 80)),
        (TC_ACT_REDIRECT, Some(20400))
    );
    let cases = [
        ("other remote port", build(HOST, SNAT, tcp(81, 20400), b"r")),
        (
            "other remote host",
            build(HOST_B, SNAT, tcp(80, 20400), b"r"),
        ),
        ("other protocol", build(HOST, SNAT, udp(80, 20400), b"r")),
        (
            "other SNAT address",
            build(HOST, Ipv4Addr::new(10, 88, 0, 2), tcp(80, 20400), b"r"),
        ),
        (
            "other SNAT port in the range",
            build(HOST, SNAT, tcp(80, 20401), b"r"),
        ),
    ];
    let mut rows = Vec::new();
    for (what, input) in cases {
        rows.push(Row {
            what,
            program: ProgramKind::TargetIngress,
            input: input.clone(),
            verdict: TC_PASS,
            output: None,
        });
        rows.push(Row {
            what,
            program: ProgramKind::TargetXdp,
            input,
            verdict: XDP_PASS,
            output: None,
        });
    }
    rows.push(Row {
        what: "the flow's own reply",
        program: ProgramKind::TargetIngress,
        input: build(HOST, SNAT, tcp(80, 20400), b"r"),
        verdict: TC_ACT_REDIRECT,
        output: Some((HOST, 80, A, 20400)),
    });
    run_rows(&mut dp, rows);
    let c = dp.global_counters().unwrap();
    assert_eq!(c.get(Counter::ReturnDelivered), 1);
    assert_eq!(c.get(Counter::ReturnPassed), 10);
}

/// An ICMP error from the private side (`host`, type 3 code 4: fragmentation needed, MTU 1400)
/// about a packet that went from `snat:snat_port` to `remote:remote_port`, quoting its IP
/// header and first 8 bytes (as routers do at least).
fn icmp_frag_needed(host: Ipv4Addr, snat: Ipv4Addr, quoted_l4: L4) -> Vec<u8> {
    // The quoted packet as it left the gateway: its IP header and 8 bytes of TCP/UDP.
    let sent = build(snat, HOST, quoted_l4, b"quoted payload");
    let quoted = &sent[14..14 + 28];
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(cvpn_tests::packets::MAC_A, cvpn_tests::packets::MAC_B)
        .ipv4(host.octets(), snat.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut out, quoted)
        .unwrap();
    out
}

/// RFC 1071 sum over `data` is all ones: the checksum it contains is right.
fn checksum_ok(data: &[u8]) -> bool {
    let mut acc: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc == 0xffff
}

/// Attack 11: ICMP errors about a translated flow (here: fragmentation needed, which path-MTU
/// discovery depends on) reach its client with the outer destination and the quoted packet's
/// source address and port translated back, every checksum right; errors about no flow of
/// ours pass untouched.
#[test]
fn icmp_errors_about_a_translated_flow_reach_its_client() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    // Client A's UDP flow to HOST:53 gets an SNAT port; so does a TCP flow.
    let (v, udp_port) = forward(&mut dp, A, HOST, udp(20600, 53));
    assert_eq!(v, TC_ACT_REDIRECT);
    let udp_port = udp_port.unwrap();
    let (v, tcp_port) = forward(&mut dp, A, HOST, tcp(20601, 443));
    assert_eq!(v, TC_ACT_REDIRECT);
    let tcp_port = tcp_port.unwrap();
    for (what, quoted, client_port) in [
        ("UDP", udp(udp_port, 53), 20600u16),
        ("TCP", tcp(tcp_port, 443), 20601u16),
    ] {
        let input = icmp_frag_needed(HOST, SNAT, quoted);
        let out = dp
            .test_run(ProgramKind::TargetIngress, &input, 1)
            .expect("test run");
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "{what}: not delivered");
        let ip = &out.packet[14..];
        assert_eq!(&ip[16..20], &A.octets()[..], "{what}: outer destination");
        assert!(checksum_ok(&ip[..20]), "{what}: outer IP checksum");
        let icmp = &ip[20..];
        assert_eq!((icmp[0], icmp[1]), (3, 4), "{what}: still frag needed");
        assert_eq!(
            u16::from_be_bytes([icmp[6], icmp[7]]),
            1400,
            "{what}: MTU kept"
        );
        assert!(checksum_ok(icmp), "{what}: ICMP checksum");
        let q = &icmp[8..];
        assert_eq!(&q[12..16], &A.octets()[..], "{what}: quoted source");
        assert_eq!(&q[16..20], &HOST.octets()[..], "{what}: quoted destination");
        assert!(checksum_ok(&q[..20]), "{what}: quoted IP checksum");
        assert_eq!(
            u16::from_be_bytes([q[20], q[21]]),
            client_port,
            "{what}: quoted source port"
        );
    }
    // Errors about no flow of ours (another port in the range, another remote) pass untouched.
    let mut rows = Vec::new();
    for (what, input) in [
        (
            "an error about a port with no flow",
            icmp_frag_needed(HOST, SNAT, udp(20999, 53)),
        ),
        (
            "an error about another remote",
            icmp_frag_needed(HOST, SNAT, udp(udp_port, 54)),
        ),
    ] {
        rows.push(Row {
            what,
            program: ProgramKind::TargetIngress,
            input,
            verdict: TC_PASS,
            output: None,
        });
    }
    run_rows(&mut dp, rows);
    let c = dp.global_counters().unwrap();
    assert_eq!(c.get(Counter::IcmpErrorTranslated), 2);
}

#[test]
fn port_rules_admit_their_protocol_and_ports_only_and_leave_aws_rules_alone() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    let mut events = dp.take_flow_events().unwrap();
    let ported = |cidr: &str, access: Access, protocol: u8, from: u16, to: u16| AuthorizationRule {
        destination: cidr.parse().unwrap(),
        access,
        ports: Some(gateway::dataplane::policy::PortMatch {
            protocol,
            from_port: from,
            to_port: to,
        }),
    };
    // 10.88.0.10/32: group b on tcp/8080 only, everyone on udp/5000-5100 and icmp. The /32 is
    // the longest match there: a's unrestricted /16 no longer counts for that host (AWS's
    // longest-prefix rule, whatever the ports). Elsewhere in the /16 nothing changes.
    let mut policy = dp.policy().clone();
    policy.rules.extend([
        ported("10.88.0.10/32", group("b"), 6, 8080, 8080),
        ported("10.88.0.10/32", Access::AllGroups, 17, 5000, 5100),
        ported("10.88.0.10/32", Access::AllGroups, 1, 0, 0),
    ]);
    dp.replace_policy(policy).unwrap();
    let other = Ipv4Addr::new(10, 88, 0, 11);
    run_rows(
        &mut dp,
        vec![
            client(
                "b to tcp/8080: its port rule",
                B,
                HOST,
                tcp(40000, 8080),
                TC_ACT_REDIRECT,
            ),
            client(
                "b to tcp/8081: no rule for that port",
                B,
                HOST,
                tcp(40000, 8081),
                TC_ACT_SHOT,
            ),
            client(
                "b to tcp/22: no rule for that port",
                B,
                HOST,
                tcp(40001, 22),
                TC_ACT_SHOT,
            ),
            client(
                "a to tcp/8080: the rule is b's",
                A,
                HOST,
                tcp(40002, 8080),
                TC_ACT_SHOT,
            ),
            client(
                "anyone to udp/5000",
                NOGROUP,
                HOST,
                udp(40003, 5000),
                TC_ACT_REDIRECT,
            ),
            client(
                "anyone to udp/5100 (inclusive)",
                NOGROUP,
                HOST,
                udp(40004, 5100),
                TC_ACT_REDIRECT,
            ),
            client(
                "anyone to udp/5101",
                NOGROUP,
                HOST,
                udp(40005, 5101),
                TC_ACT_SHOT,
            ),
            client(
                "udp/8080 is not tcp/8080",
                B,
                HOST,
                udp(40006, 8080),
                TC_ACT_SHOT,
            ),
            client(
                "icmp echo: its protocol rule",
                NOGROUP,
                HOST,
                L4::EchoRequest { id: 77, seq: 1 },
                TC_ACT_REDIRECT,
            ),
            client(
                "a to another host of its /16, any port: AWS's rule as before",
                A,
                other,
                tcp(40007, 22),
                TC_ACT_REDIRECT,
            ),
            client(
                "b to that host: still denied",
                B,
                other,
                tcp(40008, 8080),
                TC_ACT_SHOT,
            ),
        ],
    );
    // The dropped flows are flow-logged as denied, with their ports.
    let denied: Vec<_> = events
        .wait(std::time::Duration::from_millis(200))
        .into_iter()
        .filter(|e| e.kind == FlowEventKind::Denied && e.dst == HOST)
        .map(|e| (e.protocol, e.dst_port))
        .collect();
    assert!(denied.contains(&(6, 8081)), "{denied:?}");
    assert!(denied.contains(&(6, 22)), "{denied:?}");
    assert!(denied.contains(&(17, 5101)), "{denied:?}");
    // Revoking the port rules gives the host back to a's /16.
    let mut policy = dp.policy().clone();
    policy.rules.retain(|r| r.ports.is_none());
    dp.replace_policy(policy).unwrap();
    run_rows(
        &mut dp,
        vec![
            client(
                "a to tcp/22 again",
                A,
                HOST,
                tcp(40009, 22),
                TC_ACT_REDIRECT,
            ),
            client("b no longer", B, HOST, tcp(40010, 8080), TC_ACT_SHOT),
        ],
    );
}

#[test]
fn security_groups_let_out_only_what_their_egress_rules_allow() {
    if !is_root() {
        panic!("the fixture tests need root: run `cargo xtask test` as root");
    }
    let (_ns, mut dp) = setup();
    let mut events = dp.take_flow_events().unwrap();
    let egress =
        |protocol: Option<u8>, from: u16, to: u16, cidr: &str| gateway::dataplane::EgressRule {
            protocol,
            from_port: from,
            to_port: to,
            destination: cidr.parse().unwrap(),
        };
    // Only tcp/8080 to HOST, and icmp anywhere in the /16, may leave through target 1.
    dp.set_target_egress(
        1,
        Some(vec![
            egress(Some(6), 8080, 8080, "10.88.0.10/32"),
            egress(Some(1), 0, 0, "10.88.0.0/16"),
        ]),
    )
    .unwrap();
    let other = Ipv4Addr::new(10, 88, 0, 11);
    run_rows(
        &mut dp,
        vec![
            client(
                "tcp/8080 to the host: its rule",
                A,
                HOST,
                tcp(41000, 8080),
                TC_ACT_REDIRECT,
            ),
            client(
                "tcp/9090 to the host: no rule",
                A,
                HOST,
                tcp(41001, 9090),
                TC_ACT_SHOT,
            ),
            client(
                "udp/8080: another protocol",
                A,
                HOST,
                udp(41002, 8080),
                TC_ACT_SHOT,
            ),
            client(
                "tcp/8080 to another host",
                A,
                other,
                tcp(41003, 8080),
                TC_ACT_SHOT,
            ),
            client(
                "icmp in the /16",
                A,
                other,
                L4::EchoRequest { id: 5, seq: 1 },
                TC_ACT_REDIRECT,
            ),
            // Authorization still comes first: b may not reach a's /16 at all.
            client(
                "b, unauthorized, to tcp/8080",
                B,
                HOST,
                tcp(41004, 8080),
                TC_ACT_SHOT,
            ),
        ],
    );
    let got: Vec<_> = events
        .wait(std::time::Duration::from_millis(200))
        .into_iter()
        .map(|e| (e.kind, e.dst_port))
        .collect();
    assert!(
        got.contains(&(FlowEventKind::SecurityGroup, 9090)),
        "{got:?}"
    );
    assert!(
        got.contains(&(FlowEventKind::Denied, 8080)),
        "b's drop is a denial: {got:?}"
    );
    assert!(dp.global_counters().unwrap().get(Counter::SecurityGroup) >= 3);
    // No group: AWS's default, everything leaves again.
    dp.set_target_egress(1, None).unwrap();
    run_rows(
        &mut dp,
        vec![client(
            "tcp/9090 again",
            A,
            HOST,
            tcp(41005, 9090),
            TC_ACT_REDIRECT,
        )],
    );
    // An empty group set lets nothing out.
    dp.set_target_egress(1, Some(vec![])).unwrap();
    run_rows(
        &mut dp,
        vec![client(
            "nothing may leave",
            A,
            HOST,
            tcp(41006, 8080),
            TC_ACT_SHOT,
        )],
    );
    // The count the metrics read (per-session counters) agrees with a walk of the NAT table.
    let walked = dp.nat_entries().len() as u64;
    assert!(walked >= 3, "{walked}");
    assert_eq!(dp.nat_entry_count(), walked);
    // Beyond the kernel's bound: refused, not truncated.
    let many = (0..17)
        .map(|i| egress(Some(6), 1000 + i, 1000 + i, "10.0.0.0/8"))
        .collect();
    assert!(dp.set_target_egress(1, Some(many)).is_err());
}

/// A GSO super-packet (what the TUN hands the client path when the daemon coalesced a flow's
/// segments) is forwarded like one packet, and the session counts the segments it stands for,
/// each with its own headers — what the same traffic counts without offloads.
#[test]
fn a_super_packet_counts_as_its_segments() {
    let (_ns, mut dp) = setup();
    let before = dp.session_counters(A).unwrap().unwrap();
    let payload = vec![7u8; 3000];
    let input = build(A, "10.88.1.1".parse().unwrap(), tcp(40000, 443), &payload);
    let out = dp
        .test_run_gso(ProgramKind::ClientIngress, &input, 1, Some((3, 1000)))
        .unwrap();
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let p = parse_and_verify(&out.packet).unwrap();
    assert_eq!((p.src, p.dst), (SNAT, "10.88.1.1".parse().unwrap()));
    let after = dp.session_counters(A).unwrap().unwrap();
    let ip_len = (input.len() - 14) as u64;
    assert_eq!(after.from_client_packets - before.from_client_packets, 3);
    // One IP + TCP header (20 + 20) more for each segment after the first.
    assert_eq!(
        after.from_client_bytes - before.from_client_bytes,
        ip_len + 2 * 40
    );
    // The same packet without GSO counts once.
    let plain = build(A, "10.88.1.1".parse().unwrap(), tcp(40001, 443), &payload);
    let out = dp.test_run(ProgramKind::ClientIngress, &plain, 1).unwrap();
    assert_eq!(out.verdict, TC_ACT_REDIRECT);
    let last = dp.session_counters(A).unwrap().unwrap();
    assert_eq!(last.from_client_packets - after.from_client_packets, 1);
    assert_eq!(last.from_client_bytes - after.from_client_bytes, ip_len);
}
