//! Every map of the data plane, one per purpose. Types come from `gateway-common`; sizes here are
//! defaults the daemon may override at load time (`EbpfLoader::map_max_entries`).

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use gateway_common::{
    AuthEntry, FlowEvent, GatewayConfig, NatForward, NatKey, NatReverse, PortRuleSet, RouteEntry,
    Session, SessionStats, TargetNetwork, COUNTER_COUNT, PORT_RULE_SETS,
};

/// Active sessions by client tunnel address.
#[map]
pub static SESSIONS: HashMap<[u8; 4], Session> = HashMap::with_max_entries(65536, 0);

/// Per-session counters by client tunnel address.
#[map]
pub static SESSION_STATS: PerCpuHashMap<[u8; 4], SessionStats> =
    PerCpuHashMap::with_max_entries(65536, 0);

/// Authorization rules, double-buffered: `POLICY_SLOT` says which pair (AUTH_n, ROUTE_n) is live.
#[map]
pub static AUTH_0: LpmTrie<[u8; 4], AuthEntry> = LpmTrie::with_max_entries(16384, 0);
#[map]
pub static AUTH_1: LpmTrie<[u8; 4], AuthEntry> = LpmTrie::with_max_entries(16384, 0);

/// Port-limited rules by `AuthEntry::port_set - 1`, double-buffered with `AUTH_n` (same slot).
#[map]
pub static PORT_RULES_0: Array<PortRuleSet> = Array::with_max_entries(PORT_RULE_SETS, 0);
#[map]
pub static PORT_RULES_1: Array<PortRuleSet> = Array::with_max_entries(PORT_RULE_SETS, 0);

/// Routes to target networks, double-buffered with the rules.
#[map]
pub static ROUTE_0: LpmTrie<[u8; 4], RouteEntry> = LpmTrie::with_max_entries(4096, 0);
#[map]
pub static ROUTE_1: LpmTrie<[u8; 4], RouteEntry> = LpmTrie::with_max_entries(4096, 0);

/// Index 0: the live policy slot (0 or 1). One 4-byte write flips rules and routes together.
#[map]
pub static POLICY_SLOT: Array<u32> = Array::with_max_entries(1, 0);

/// Target networks by id.
#[map]
pub static TARGETS: HashMap<u32, TargetNetwork> = HashMap::with_max_entries(1024, 0);

/// Index 0: global settings.
#[map]
pub static CONFIG: Array<GatewayConfig> = Array::with_max_entries(1, 0);

/// NAT, client side: (proto, client, remote, client port, remote port) -> translation.
/// A plain hash, not LRU: a full table refuses new flows instead of evicting anyone's (see
/// `gateway_common`'s map inventory).
#[map]
pub static NAT_FWD: HashMap<NatKey, NatForward> = HashMap::with_max_entries(262144, 0);

/// NAT, target side: (proto, SNAT address, remote, SNAT port, remote port) -> client.
#[map]
pub static NAT_REV: HashMap<NatKey, NatReverse> = HashMap::with_max_entries(262144, 0);

/// NAT entries each session's flows created (kernel, atomic adds). The daemon creates the
/// entry with the session and deletes it with the session's NAT entries.
#[map]
pub static NAT_CREATED: HashMap<[u8; 4], u64> = HashMap::with_max_entries(65536, 0);

/// NAT entries of each session the daemon's expiry removed (written only by the daemon).
/// `NAT_CREATED - NAT_RELEASED` is what the session holds now.
#[map]
pub static NAT_RELEASED: HashMap<[u8; 4], u64> = HashMap::with_max_entries(65536, 0);

/// Global counters, indexed by `gateway_common::Counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Flow events for the flow log (denied, no route, unknown source, NAT full).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

// Keep the event type in the object's BTF for tools that inspect the ring buffer.
#[allow(dead_code)]
const _EVENT_SIZE: usize = core::mem::size_of::<FlowEvent>();
