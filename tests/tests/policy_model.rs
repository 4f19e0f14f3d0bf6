//! Property test: for random rule sets, the kernel's authorization decision (client program run
//! through `BPF_PROG_TEST_RUN`) equals the userspace reference model, `policy::authorize` (and,
//! with random security groups on the target network, an egress model written in this file).
//!
//! Rules are drawn from a small address space (mostly inside 10.88.0.0/16, prefix lengths
//! 0, 8, 16, 20, 24, 28 and 32) so that their prefixes nest, overlap and repeat. A route
//! 0.0.0.0/0 to the one target network makes every authorized packet routable: the verdict is
//! then the authorization decision alone (redirect = allowed, shot = denied).
//!
//! The data plane is loaded once; each case replaces the policy (so group bits are re-planned
//! from case to case, as in a daemon whose policy changes) and asks about random destinations
//! and about the edges of every rule's network, for every session.

use std::{
    cell::{Cell, RefCell},
    net::Ipv4Addr,
    time::Instant,
};

use cvpn_tests::{
    is_root,
    packets::{build, L4},
    Netns,
};
use gateway::dataplane::{
    policy::{self, Access, AuthorizationRule, Policy, PortMatch, Route},
    DataPlane, DataPlaneConfig, EgressRule, ProgramKind,
};
use ipnet::Ipv4Net;
use proptest::{
    collection::vec,
    prelude::*,
    sample::select,
    test_runner::{Config, TestCaseError, TestError, TestRunner},
};

const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

/// Random policies per run (about 5 ms each); `PROPTEST_CASES` overrides it for longer runs.
const CASES: u32 = 256;

/// Sessions: tunnel address and the user's groups. "zz" is a group no rule ever names.
const SESSIONS: &[(Ipv4Addr, &[&str])] = &[
    (Ipv4Addr::new(10, 77, 0, 11), &["a"]),
    (Ipv4Addr::new(10, 77, 0, 12), &["b", "c"]),
    (Ipv4Addr::new(10, 77, 0, 13), &[]),
    (Ipv4Addr::new(10, 77, 0, 14), &["d", "a"]),
    (Ipv4Addr::new(10, 77, 0, 15), &["c", "zz"]),
];

/// A namespace with a veth as target interface, the programs loaded in it, the sessions added.
fn setup() -> (Netns, DataPlane) {
    let (ns, mut dp) = cvpn_tests::fixture_dataplane("pm", DataPlaneConfig::default())
        .expect("fixture data plane");
    for (i, (addr, groups)) in SESSIONS.iter().enumerate() {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        dp.add_session(*addr, i as u64 + 1, &groups).unwrap();
    }
    (ns, dp)
}

/// An octet, biased to the edges of /20, /24 and /28 networks.
fn octet() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0u8),
        Just(1u8),
        Just(15u8),
        Just(16u8),
        Just(17u8),
        Just(255u8),
        any::<u8>(),
    ]
}

/// An address inside 10.88.0.0/16.
fn inside() -> impl Strategy<Value = Ipv4Addr> {
    (octet(), octet()).prop_map(|(c, d)| Ipv4Addr::new(10, 88, c, d))
}

/// An address outside 10.88.0.0/16: elsewhere in 10.0.0.0/8, or anywhere.
fn outside() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        (any::<u8>(), octet(), octet())
            .prop_filter("outside 10.88.0.0/16", |(b, _, _)| *b != 88)
            .prop_map(|(b, c, d)| Ipv4Addr::new(10, b, c, d)),
        any::<u32>().prop_map(Ipv4Addr::from),
    ]
}

fn destination() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![6 => inside(), 1 => outside()]
}

/// A rule; its CIDR may have host bits set (the compiler truncates them).
fn rule() -> impl Strategy<Value = AuthorizationRule> {
    let addr = prop_oneof![9 => inside(), 1 => outside()];
    let len = select(vec![0u8, 8, 16, 20, 24, 28, 32]);
    let access = prop_oneof![
        1 => Just(Access::AllGroups),
        4 => select(vec!["a", "b", "c", "d"]).prop_map(|g| Access::Group(g.to_string())),
    ];
    // One rule in four is limited to a protocol and ports (cvpn, beyond AWS).
    let pm = |protocol, from_port, to_port| {
        Some(PortMatch {
            protocol,
            from_port,
            to_port,
        })
    };
    let ports = prop_oneof![
        12 => Just(None),
        1 => Just(pm(6, 80, 90)),
        1 => Just(pm(6, 53, 53)),
        1 => Just(pm(17, 50, 60)),
        1 => Just(pm(1, 0, 0)),
    ];
    (addr, len, access, ports).prop_map(|(addr, len, access, ports)| AuthorizationRule {
        destination: Ipv4Net::new(addr, len).expect("prefix length <= 32"),
        access,
        ports,
    })
}

/// The security groups of the one target network: none (AWS's default group) half the time,
/// else up to six egress rules.
fn egress() -> impl Strategy<Value = Option<Vec<EgressRule>>> {
    let protocol = select(vec![None, Some(6u8), Some(17), Some(1)]);
    let ports = select(vec![(1u16, 65535u16), (53, 53), (80, 90), (20, 30)]);
    let len = select(vec![0u8, 8, 16, 24, 32]);
    let one =
        (protocol, ports, destination(), len).prop_map(|(protocol, (from, to), addr, len)| {
            EgressRule {
                protocol,
                from_port: from,
                to_port: to,
                destination: Ipv4Net::new(addr, len).expect("prefix").trunc(),
            }
        });
    prop_oneof![1 => Just(None), 1 => vec(one, 0..6).prop_map(Some)]
}

/// The security-group decision, written here from its description (not the kernel's code):
/// without groups everything leaves; with them, a rule must match the destination, and the
/// protocol unless it is any, and for TCP and UDP the port.
fn egress_model(egress: &Option<Vec<EgressRule>>, dst: Ipv4Addr, protocol: u8, dport: u16) -> bool {
    let Some(rules) = egress else { return true };
    rules.iter().any(|r| {
        r.destination.contains(&dst)
            && match r.protocol {
                None => true,
                Some(p) if p != protocol => false,
                Some(6) | Some(17) => (r.from_port..=r.to_port).contains(&dport),
                Some(_) => true,
            }
    })
}

/// The packets sent to every destination: (what, protocol, destination port, L4).
const PROBES: [(&str, u8, u16, L4); 4] = [
    (
        "udp/53",
        17,
        53,
        L4::Udp {
            sport: 40000,
            dport: 53,
        },
    ),
    (
        "tcp/85",
        6,
        85,
        L4::Tcp {
            sport: 40001,
            dport: 85,
            fin: false,
        },
    ),
    (
        "tcp/22",
        6,
        22,
        L4::Tcp {
            sport: 40002,
            dport: 22,
            fin: false,
        },
    ),
    ("icmp", 1, 0, L4::EchoRequest { id: 9, seq: 1 }),
];

/// The edges of a rule's network: first and last address, and one step outside each side.
fn edges(net: &Ipv4Net) -> [Ipv4Addr; 4] {
    let first = u32::from(net.network());
    let last = u32::from(net.broadcast());
    [first, last, first.wrapping_sub(1), last.wrapping_add(1)].map(Ipv4Addr::from)
}

fn show_rules(rules: &[AuthorizationRule]) -> String {
    rules
        .iter()
        .map(|r| {
            let ports = r
                .ports
                .map(|p| format!(" on {}", p.describe()))
                .unwrap_or_default();
            match &r.access {
                Access::AllGroups => format!("{} -> all groups{ports}", r.destination),
                Access::Group(g) => format!("{} -> group {g}{ports}", r.destination),
            }
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Runs one case: installs the rules, then compares kernel and model for every session and
/// destination. Returns the number of packets checked.
fn check_case(
    dp: &mut DataPlane,
    rules: &[AuthorizationRule],
    egress: &Option<Vec<EgressRule>>,
    random_dsts: &[Ipv4Addr],
) -> Result<usize, TestCaseError> {
    let policy = Policy {
        rules: rules.to_vec(),
        routes: vec![Route {
            destination: "0.0.0.0/0".parse().unwrap(),
            target: 1,
        }],
    };
    dp.replace_policy(policy)
        .map_err(|e| TestCaseError::fail(format!("replace_policy: {e}")))?;
    dp.set_target_egress(1, egress.clone())
        .map_err(|e| TestCaseError::fail(format!("set_target_egress: {e}")))?;
    // Each case starts with sessions that hold no NAT entries: the probes of earlier cases
    // would otherwise fill each session's NAT cap, which the model does not know of.
    for (i, (addr, groups)) in SESSIONS.iter().enumerate() {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        dp.remove_session(*addr)
            .map_err(|e| TestCaseError::fail(format!("remove_session: {e}")))?;
        dp.add_session(*addr, i as u64 + 1, &groups)
            .map_err(|e| TestCaseError::fail(format!("add_session: {e}")))?;
    }
    let bits = dp.group_bits().clone();
    let entries = policy::compile_rules(rules, &bits)
        .map_err(|e| TestCaseError::fail(format!("compile_rules: {e}")))?;

    let mut dsts: Vec<Ipv4Addr> = random_dsts.to_vec();
    dsts.extend(rules.iter().flat_map(|r| edges(&r.destination.trunc())));
    dsts.sort();
    dsts.dedup();

    let mut mismatches = Vec::new();
    for (src, groups) in SESSIONS {
        let set = policy::group_set(groups, &bits);
        for (&dst, &(what, protocol, dport, l4)) in
            dsts.iter().flat_map(|d| PROBES.iter().map(move |p| (d, p)))
        {
            let want = policy::authorize(&entries, &set, dst, protocol, dport)
                && egress_model(egress, dst, protocol, dport);
            let packet = build(*src, dst, l4, b"model");
            let out = dp
                .test_run(ProgramKind::ClientIngress, &packet, 1)
                .map_err(|e| TestCaseError::fail(format!("test run: {e}")))?;
            let got = match out.verdict {
                TC_ACT_REDIRECT => true,
                TC_ACT_SHOT => false,
                v => {
                    return Err(TestCaseError::fail(format!(
                        "session {src} {groups:?} -> {dst} {what}: unexpected verdict {v}"
                    )))
                }
            };
            if got != want {
                mismatches.push(format!(
                    "session {src} groups {groups:?} -> {dst} {what}: kernel {}, model {}",
                    if got { "allowed" } else { "denied" },
                    if want { "allowed" } else { "denied" },
                ));
            }
        }
    }
    if mismatches.is_empty() {
        Ok(dsts.len() * SESSIONS.len() * PROBES.len())
    } else {
        Err(TestCaseError::fail(format!(
            "{} disagreement(s) between kernel and model, e.g.\n  {}\ngroup bits: {bits:?}",
            mismatches.len(),
            mismatches
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  "),
        )))
    }
}

#[test]
fn kernel_authorization_matches_the_reference_model() {
    if !is_root() {
        panic!("the policy model test needs root (BPF_PROG_TEST_RUN, namespaces): run `cargo xtask test` as root");
    }
    let (_ns, dp) = setup();
    let dp = RefCell::new(dp);
    let checked = Cell::new(0usize);
    let started = Instant::now();

    // Driven by hand so that the namespace and the loaded programs serve every case; no
    // regression file (the cases are cheap to find again).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (vec(rule(), 1..40), egress(), vec(destination(), 0..32));
    let result = runner.run(&strategy, |(rules, egress, dsts)| {
        let n = check_case(&mut dp.borrow_mut(), &rules, &egress, &dsts)?;
        checked.set(checked.get() + n);
        Ok(())
    });
    match result {
        Ok(()) => println!(
            "{cases} policies, {} packets checked in {:?}",
            checked.get(),
            started.elapsed()
        ),
        Err(TestError::Fail(why, (rules, egress, dsts))) => panic!(
            "kernel and model disagree.\n{why}\nminimal policy ({} rules):\n  {}\nsecurity groups' egress: {egress:?}\nrandom destinations: {dsts:?}",
            rules.len(),
            show_rules(&rules),
        ),
        Err(TestError::Abort(why)) => panic!("property test aborted: {why}"),
    }
}
