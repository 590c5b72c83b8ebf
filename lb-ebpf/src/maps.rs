//! The BPF maps of the data plane and small helpers around them.
//!
//! Sizes come from named constants in `lb-common`, which userspace uses too.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, BackendCounters, BackendLoad, DEFAULT_FLOW_CAPACITY, Flow, FlowKey, GlobalCounter,
    LOCAL_PORT_WORDS, MAGLEV_SLOTS, MAX_ATTACHED, MAX_BACKENDS, MAX_BRIDGE_HOSTS, MAX_INTERFACES,
    MAX_LOCAL_SOCKETS, MAX_SERVICES, Reply, Service, ServiceKey, SockKey, SockPeer,
    TrafficCounters,
    bridge::BridgePortKey,
    counters::GLOBAL_COUNTERS,
    filter::{ADDRESS_WORDS, address_slot, roles_in, word_of},
    flood::{FLOOD_STATE_LEN, MAX_SOURCES},
    flow::NextHop,
    service::ServiceSlot,
};

/// Services by (VIP, port, protocol); filled by userspace.
#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Services by id, with their keys (`lb_common::service::ServiceSlot`):
/// where an established flow's packets take their service from.
#[map]
pub static SERVICE_SLOTS: Array<ServiceSlot> = Array::with_max_entries(MAX_SERVICES, 0);

/// The service of a packet that hit its flow: the flow's service id's
/// slot, if it still holds the packet's service (the agent clears a slot
/// when its service goes, and rewrites it when the id is reused).
#[inline(always)]
pub fn service_of_flow(flow: &Flow, key: &FlowKey) -> Option<&'static Service> {
    let slot = SERVICE_SLOTS.get(flow.service)?;
    (slot.key == *key.service_key()).then_some(&slot.service)
}

/// Every service's two Maglev tables, back to back: slot → backend id.
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(MAGLEV_SLOTS, 0);

/// Backends by id.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Next hop towards each backend, by backend id, shared by its flows: the
/// data plane refreshes an entry when it is a second old; the agent clears
/// one whose id it gives to another address.
#[map]
pub static BACKEND_HOPS: Array<NextHop> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The address filter (`lb_common::filter`): `ROLE_*` bits by address slot,
/// eight slots to an entry, written by the agent.
#[map]
pub static ADDRESS_ROLES: Array<u64> = Array::with_max_entries(ADDRESS_WORDS, 0);

/// The `ROLE_*` bits of `addr`'s slot in the address filter.
#[inline(always)]
pub fn address_roles(addr: &[u8; 16]) -> u8 {
    let slot = address_slot(addr);
    ADDRESS_ROLES
        .get(word_of(slot))
        .map_or(0, |&word| roles_in(word, slot))
}

/// Client flow (as received) → its backend.
#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// Backend reply (as received) → how to rewrite it for the client.
#[map]
pub static REPLIES: LruHashMap<FlowKey, Reply> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// Backends whose `dnat` flows keep no `REPLIES` entry: a backend's
/// (address, port, protocol) → the key (VIP, port, protocol) of its one
/// such service, both in a `ServiceKey`'s shape. Its replies find their
/// flow in `FLOWS` by it. Written by the agent.
#[map]
pub static REPLY_SERVICES: HashMap<ServiceKey, ServiceKey> =
    HashMap::with_max_entries(MAX_BACKENDS, 0);

/// `dnat` services with `stateless_replies`: a backend's (address, port,
/// protocol), in a `ServiceKey`'s shape → its service's id. A packet from
/// it that no `REPLIES` entry covers (its flow is another node's) is
/// rewritten to come from that service's VIP and port.
#[map]
pub static STATELESS_REPLIES: HashMap<ServiceKey, u32> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Interfaces XDP may send frames out of (`XDP_TX` or a redirect), by
/// ifindex: those xlb is attached to whose driver transmits XDP frames, and
/// such ports of attached bridges. The agent keeps it current; frames for
/// any other interface go to the kernel.
#[map]
pub static INTERFACES: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

/// The forwarding tables of attached bridges, for hosts behind a port in
/// `INTERFACES`: (bridge ifindex, MAC) → the port's ifindex
/// (`lb_common::bridge`). The agent copies it from the kernel's. Not
/// preallocated: read once a second per next hop, and empty on hosts
/// without bridges.
#[map]
pub static BRIDGE_PORTS: HashMap<BridgePortKey, u32> =
    HashMap::with_max_entries(MAX_BRIDGE_HOSTS, BPF_F_NO_PREALLOC);

/// Attached interfaces with VLAN devices on them, by ifindex (the value is
/// unused): a tagged frame handed to the kernel there keeps its tags.
#[map]
pub static VLAN_PARENTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ATTACHED, 0);

/// Interfaces XDP can answer a packet on (`XDP_TX` back out of the
/// interface it came in on): those with the driver's XDP transmit, and any
/// attached in generic mode. SYN cookies are answered only there.
#[map]
pub static ANSWER_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ATTACHED, 0);

/// The half-open budget's counts and the SYN cookies' (`lb_common::flood`),
/// shared by every CPU.
#[map]
pub static FLOOD_STATE: Array<u64> = Array::with_max_entries(FLOOD_STATE_LEN, 0);

/// When each source address may have its next SYN cookie (coarse ns,
/// `lb_common::flood::source_allows`), while cookies are sent.
#[map]
pub static SOURCES: LruHashMap<[u8; 16], u64> = LruHashMap::with_max_entries(MAX_SOURCES, 0);

/// Live flows and connect time per backend id (`lb_common::load`): every
/// CPU adds to them atomically (`crate::load`).
#[map]
pub static BACKEND_LOAD: Array<BackendLoad> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Flows per backend id that ended unseen (expired idle, or evicted), as
/// the agent counts them from the flow table; only the agent writes it.
#[map]
pub static BACKEND_GONE: Array<u64> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Each CPU's turn in each service's round-robin cycle, by service id.
#[map]
pub static ROUND_ROBIN: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Room to build a new flow's entries in, one per CPU: the verifier's stack
/// is too small for them beside the rest of the call chain.
#[repr(C)]
pub struct NewFlowScratch {
    pub reply_key: FlowKey,
    pub reply: Reply,
    pub flow: Flow,
    pub client_key: FlowKey,
    /// The TCP header a SYN cookie is computed over (`cookie::answer_syn`).
    pub syn_header: [u8; crate::cookie::TCP_HEADER],
    /// The next hop of a packet looked up for it alone
    /// (`walk::stateless_reply`).
    pub hop: NextHop,
    /// The search for a new flow's backend (`schedule::pick_usable`).
    pub search: crate::schedule::Search,
    /// Whether `snat::claim_port`'s search claimed a source port (then
    /// `reply_key`'s).
    pub port_claimed: bool,
    /// A new flow's backend as a `REPLY_SERVICES` key
    /// (`schedule::replies_by_flow`).
    pub backend_key: ServiceKey,
    /// Whether the new flow's replies find it by themselves (then it has no
    /// reply entry): kept here, not on `new_flow`'s stack.
    pub replies_by_flow: bool,
}

#[map]
pub static SCRATCH: PerCpuArray<NewFlowScratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU packet and byte counters, indexed by `Service::id`.
#[map]
static SERVICE_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per-CPU counters per backend id.
#[map]
static BACKEND_STATS: PerCpuArray<BackendCounters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU counters of what happened to packets, indexed by `GlobalCounter`.
#[map]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_COUNTERS, 0);

#[inline(always)]
pub fn service(key: &ServiceKey) -> Option<&'static Service> {
    // SAFETY: the value is only read, and a hash map value stays valid for the
    // rest of the program run even if userspace deletes it meanwhile (RCU).
    unsafe { SERVICES.get(key) }
}

#[inline(always)]
pub fn count_service(id: u32, bytes: usize) {
    if let Some(counters) = SERVICE_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, so nothing else writes it concurrently.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes as u64;
        }
    }
}

/// Updates backend `id`'s counters with `update`.
#[inline(always)]
pub fn count_backend(id: u32, update: impl FnOnce(&mut BackendCounters)) {
    if let Some(counters) = BACKEND_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, so nothing else writes it concurrently.
        update(unsafe { &mut *counters });
    }
}

#[inline(always)]
pub fn count_global(counter: GlobalCounter) {
    if let Some(value) = GLOBAL_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, so nothing else writes it concurrently.
        unsafe { *value += 1 };
    }
}

/// Ports local backends listen on, one bit per port (host byte order): the
/// tc egress program looks a packet up in `REPLIES` only when its source
/// port's bit is set, so the host's other traffic costs one array read.
#[map]
pub static LOCAL_PORTS: Array<u64> = Array::with_max_entries(LOCAL_PORT_WORDS, 0);

/// Sockets local clients opened to a service, by (socket cookie, backend):
/// the service address `getpeername` and `recvmsg` report instead.
#[map]
pub static SOCKETS: LruHashMap<SockKey, SockPeer> =
    LruHashMap::with_max_entries(MAX_LOCAL_SOCKETS, 0);

/// Whether some local backend listens on `port_be` (network byte order).
#[inline(always)]
pub fn is_local_port(port_be: u16) -> bool {
    let port = u16::from_be(port_be);
    LOCAL_PORTS
        .get(u32::from(port >> 6))
        .is_some_and(|word| word & (1 << (port & 63)) != 0)
}
