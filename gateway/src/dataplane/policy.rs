//! Authorization rules and routes (the model's [`Policy`]), compiled into the entries of the
//! kernel's LPM tries.
//!
//! Pure code: no maps here, so the compilation is unit-tested without a kernel.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gateway_common::{
    AuthEntry, GroupSet, PortRule, PortRuleSet, RouteEntry, MAX_GROUPS, PORT_RULES_PER_PREFIX,
    PORT_RULE_SETS,
};
use ipnet::Ipv4Net;

use super::DataPlaneError;

// re-export: the types live in model
pub use crate::model::policy::{Access, AuthorizationRule, Policy, PortMatch, Route};

/// LPM key as the kernel stores it: (prefix length, network address bytes).
pub type Prefix = (u32, [u8; 4]);

pub(crate) fn prefix_of(net: &Ipv4Net) -> Prefix {
    let net = net.trunc();
    (u32::from(net.prefix_len()), net.network().octets())
}

/// Assigns each group name a bit of [`GroupSet`]. A bit freed by one policy is not reused by the
/// very next one, so that while the old policy is still live no session gains a bit that the
/// old policy gives to another group (see [`GroupInterner::plan`]).
#[derive(Debug, Default)]
pub struct GroupInterner {
    bits: HashMap<String, usize>,
}

/// The group assignment for a policy change: `transition` is valid for both the old and the new
/// policy (sessions get it before the flip), `next` only for the new one (after the flip).
#[derive(Debug)]
pub struct GroupPlan {
    pub transition: HashMap<String, usize>,
    pub next: HashMap<String, usize>,
}

impl GroupInterner {
    pub fn plan(&self, policy: &Policy) -> Result<GroupPlan, DataPlaneError> {
        let wanted: BTreeSet<&str> = policy
            .rules
            .iter()
            .filter_map(|r| match &r.access {
                Access::Group(g) => Some(g.as_str()),
                Access::AllGroups => None,
            })
            .collect();
        let used_now: BTreeSet<usize> = self.bits.values().copied().collect();
        let mut next = HashMap::new();
        for g in &wanted {
            if let Some(&bit) = self.bits.get(*g) {
                next.insert((*g).to_string(), bit);
            }
        }
        let mut free = (0..MAX_GROUPS).filter(|b| !used_now.contains(b));
        for g in &wanted {
            if next.contains_key(*g) {
                continue;
            }
            let bit = free.next().ok_or(DataPlaneError::TooManyGroups {
                wanted: wanted.len(),
                max: MAX_GROUPS,
            })?;
            next.insert((*g).to_string(), bit);
        }
        let mut transition = self.bits.clone();
        transition.extend(next.iter().map(|(k, v)| (k.clone(), *v)));
        Ok(GroupPlan { transition, next })
    }

    pub fn commit(&mut self, plan: GroupPlan) {
        self.bits = plan.next;
    }

    pub fn current(&self) -> &HashMap<String, usize> {
        &self.bits
    }
}

/// The group set of a user under an assignment; groups no rule names get no bit.
pub fn group_set<S: AsRef<str>>(groups: &[S], bits: &HashMap<String, usize>) -> GroupSet {
    let mut set = GroupSet::EMPTY;
    for g in groups {
        if let Some(&bit) = bits.get(g.as_ref()) {
            set.insert(bit);
        }
    }
    set
}

/// The kernel's authorization maps of a policy: one [`AuthEntry`] per prefix (`AUTH_n`) and
/// the port-limited rules of the prefixes that have some (`PORT_RULES_n`, indexed by
/// [`AuthEntry::port_set`] - 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledRules {
    pub auth: BTreeMap<Prefix, AuthEntry>,
    pub port_sets: Vec<PortRuleSet>,
}

/// Folds all rules of one prefix into one entry: the kernel's single LPM lookup then finds the
/// longest matching prefix and, with it, every rule that counts (AWS semantics). Rules limited
/// to a protocol and ports are folded per (protocol, range) into the prefix's port set.
pub fn compile_rules(
    rules: &[AuthorizationRule],
    bits: &HashMap<String, usize>,
) -> Result<CompiledRules, DataPlaneError> {
    let mut auth: BTreeMap<Prefix, AuthEntry> = BTreeMap::new();
    let mut ported: BTreeMap<Prefix, BTreeMap<PortMatch, PortRule>> = BTreeMap::new();
    for rule in rules {
        let prefix = prefix_of(&rule.destination);
        let entry = auth.entry(prefix).or_default();
        let all = rule.access == Access::AllGroups;
        let bit = match &rule.access {
            Access::Group(g) => bits.get(g).copied(),
            Access::AllGroups => None,
        };
        match rule.ports {
            None => {
                if all {
                    entry.all_groups = 1;
                }
                if let Some(b) = bit {
                    entry.groups.insert(b);
                }
            }
            Some(m) => {
                let r = ported
                    .entry(prefix)
                    .or_default()
                    .entry(m)
                    .or_insert(PortRule {
                        protocol: m.protocol,
                        from_port: m.from_port,
                        to_port: m.to_port,
                        ..PortRule::default()
                    });
                if all {
                    r.all_groups = 1;
                }
                if let Some(b) = bit {
                    r.groups.insert(b);
                }
            }
        }
    }
    let mut port_sets = Vec::new();
    for (prefix, by_match) in ported {
        if by_match.len() > PORT_RULES_PER_PREFIX {
            return Err(DataPlaneError::TooManyPortRules {
                destination: format!("{}/{}", std::net::Ipv4Addr::from(prefix.1), prefix.0),
                wanted: by_match.len(),
                max: PORT_RULES_PER_PREFIX,
            });
        }
        let mut set = PortRuleSet::default();
        for (i, r) in by_match.into_values().enumerate() {
            set.rules[i] = r;
        }
        set.count = set.rules.iter().take_while(|r| r.protocol != 0).count() as u32;
        port_sets.push(set);
        if port_sets.len() > PORT_RULE_SETS as usize {
            return Err(DataPlaneError::TooManyPortRuleSets {
                max: PORT_RULE_SETS as usize,
            });
        }
        if let Some(e) = auth.get_mut(&prefix) {
            e.port_set = port_sets.len() as u32;
        }
    }
    Ok(CompiledRules { auth, port_sets })
}

/// Routes by prefix. Two routes for the same prefix: the first wins (the control plane refuses
/// duplicates before they get here).
pub fn compile_routes(routes: &[Route]) -> BTreeMap<Prefix, RouteEntry> {
    let mut out = BTreeMap::new();
    for r in routes {
        out.entry(prefix_of(&r.destination)).or_insert(RouteEntry {
            target_id: r.target,
        });
    }
    out
}

/// The decision the kernel makes, computed in userspace from the same compiled maps: used by
/// tests as the reference model, and by the CLI to explain a decision. `protocol` and `dport`
/// are the packet's (IP protocol number; destination port, 0 for ICMP).
pub fn authorize(
    compiled: &CompiledRules,
    groups: &GroupSet,
    dst: std::net::Ipv4Addr,
    protocol: u8,
    dport: u16,
) -> bool {
    let d = u32::from(dst);
    let best = compiled
        .auth
        .iter()
        .filter(|((len, net), _)| {
            let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
            d & mask == u32::from_be_bytes(*net)
        })
        .max_by_key(|((len, _), _)| *len);
    match best {
        Some((_, e)) => {
            e.all_groups != 0
                || e.groups.intersects(groups)
                || (e.port_set != 0
                    && compiled
                        .port_sets
                        .get(e.port_set as usize - 1)
                        .is_some_and(|set| {
                            set.rules[..set.count as usize]
                                .iter()
                                .any(|r| r.admits(protocol, dport, groups))
                        }))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, access: Access) -> AuthorizationRule {
        AuthorizationRule {
            destination: cidr.parse().unwrap(),
            access,
            ports: None,
        }
    }

    #[test]
    fn longest_prefix_takes_the_destination_away_from_broader_rules() {
        let policy = Policy {
            rules: vec![
                rule("0.0.0.0/0", Access::AllGroups),
                rule("10.1.0.0/16", Access::Group("a".into())),
                rule("10.1.2.0/24", Access::Group("b".into())),
            ],
            routes: vec![],
        };
        let plan = GroupInterner::default().plan(&policy).unwrap();
        let entries = compile_rules(&policy.rules, &plan.next).unwrap();
        let a = group_set(&["a"], &plan.next);
        let b = group_set(&["b"], &plan.next);
        let ip = |s: &str| s.parse().unwrap();
        let ok = |g, d| authorize(&entries, g, ip(d), 6, 443);
        assert!(ok(&a, "10.1.9.9"));
        assert!(!ok(&b, "10.1.9.9"));
        // The /24 for B takes 10.1.2.0/24 away from A's /16 and from 0.0.0.0/0.
        assert!(ok(&b, "10.1.2.3"));
        assert!(!ok(&a, "10.1.2.3"));
        // Only 0.0.0.0/0 covers 8.8.8.8: everyone.
        assert!(ok(&GroupSet::EMPTY, "8.8.8.8"));
    }

    #[test]
    fn port_rules_narrow_a_prefix_without_moving_the_longest_match() {
        let tcp443 = PortMatch {
            protocol: 6,
            from_port: 443,
            to_port: 443,
        };
        let udp = PortMatch {
            protocol: 17,
            from_port: 5000,
            to_port: 5100,
        };
        let ported = |cidr: &str, access, ports| AuthorizationRule {
            destination: cidr.parse().unwrap(),
            access,
            ports: Some(ports),
        };
        let policy = Policy {
            rules: vec![
                rule("10.0.0.0/8", Access::Group("a".into())),
                ported("10.1.0.0/16", Access::Group("a".into()), tcp443),
                ported("10.1.0.0/16", Access::AllGroups, udp),
            ],
            routes: vec![],
        };
        let plan = GroupInterner::default().plan(&policy).unwrap();
        let c = compile_rules(&policy.rules, &plan.next).unwrap();
        assert_eq!(c.port_sets.len(), 1);
        assert_eq!(c.port_sets[0].count, 2);
        let a = group_set(&["a"], &plan.next);
        let ip = |s: &str| s.parse().unwrap();
        // The /16 is the longest match: only its port rules count there.
        assert!(authorize(&c, &a, ip("10.1.0.1"), 6, 443));
        assert!(!authorize(&c, &a, ip("10.1.0.1"), 6, 80));
        assert!(authorize(&c, &GroupSet::EMPTY, ip("10.1.0.1"), 17, 5050));
        assert!(!authorize(&c, &GroupSet::EMPTY, ip("10.1.0.1"), 17, 5101));
        assert!(!authorize(&c, &GroupSet::EMPTY, ip("10.1.0.1"), 6, 443));
        // Elsewhere in the /8, A's unrestricted rule: every port.
        assert!(authorize(&c, &a, ip("10.2.0.1"), 6, 80));
        // Nine port ranges at one prefix: refused, not truncated.
        let rules: Vec<_> = (0..9)
            .map(|i| {
                ported(
                    "10.9.0.0/16",
                    Access::AllGroups,
                    PortMatch {
                        protocol: 6,
                        from_port: 1000 + i,
                        to_port: 1000 + i,
                    },
                )
            })
            .collect();
        let err = compile_rules(&rules, &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn freed_bits_are_not_reused_by_the_next_policy() {
        let mut interner = GroupInterner::default();
        let p1 = Policy {
            rules: vec![rule("10.0.0.0/8", Access::Group("old".into()))],
            routes: vec![],
        };
        let plan = interner.plan(&p1).unwrap();
        let old_bit = plan.next["old"];
        interner.commit(plan);
        let p2 = Policy {
            rules: vec![rule("10.0.0.0/8", Access::Group("new".into()))],
            routes: vec![],
        };
        let plan = interner.plan(&p2).unwrap();
        assert_ne!(plan.next["new"], old_bit);
        assert_eq!(plan.transition["old"], old_bit);
        assert!(!plan.next.contains_key("old"));
    }

    #[test]
    fn too_many_groups_is_an_error_not_a_panic() {
        let rules = (0..=MAX_GROUPS)
            .map(|i| rule("10.0.0.0/8", Access::Group(format!("g{i}"))))
            .collect();
        let err = GroupInterner::default()
            .plan(&Policy {
                rules,
                routes: vec![],
            })
            .unwrap_err();
        assert!(err.to_string().contains("groups"), "{err}");
    }
}
