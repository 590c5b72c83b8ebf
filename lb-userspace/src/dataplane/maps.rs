//! The data plane's maps: their names, typed handles whose errors name the
//! map, and the kernel memory they take.
//!
//! [`open`] and [`open_mut`] are the one place a map is looked up by name;
//! the accessors below give each map its key and value types once.

use std::{
    borrow::{Borrow, BorrowMut},
    fmt,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::anyhow;
use aya::{
    Ebpf, Pod,
    maps::{Array, DevMapHash, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
};
use lb_common::{
    Backend, BackendCounters, BackendLoad, Flow, FlowKey, Service, ServiceKey, TrafficCounters,
    bridge::BridgePortKey, flow::NextHop, service::ServiceSlot,
};

/// A map of the eBPF object that userspace reads or writes; all of them are
/// pinned with a pin directory. (`SCRATCH`, the program's per-CPU work
/// space, `AYA_LOGS`, its log ring, and `LOG_TURNS`, that ring's rate
/// limit, are neither.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapName {
    Services,
    Maglev,
    Backends,
    Flows,
    Replies,
    Interfaces,
    BridgePorts,
    VlanParents,
    ServiceStats,
    BackendStats,
    GlobalStats,
    LocalPorts,
    Sockets,
    AnswerIfaces,
    FloodState,
    BackendHops,
    AddressRoles,
    ServiceSlots,
    BackendLoad,
    BackendGone,
    RoundRobin,
    StatelessReplies,
    ReplyServices,
}

impl MapName {
    /// Every one, in the order of docs/datapath.md.
    pub const ALL: [Self; 23] = [
        Self::Services,
        Self::Maglev,
        Self::Backends,
        Self::Flows,
        Self::Replies,
        Self::Interfaces,
        Self::BridgePorts,
        Self::VlanParents,
        Self::ServiceStats,
        Self::BackendStats,
        Self::GlobalStats,
        Self::LocalPorts,
        Self::Sockets,
        Self::AnswerIfaces,
        Self::FloodState,
        Self::BackendHops,
        Self::AddressRoles,
        Self::ServiceSlots,
        Self::BackendLoad,
        Self::BackendGone,
        Self::RoundRobin,
        Self::StatelessReplies,
        Self::ReplyServices,
    ];

    /// Its name in the eBPF object (and its pin's file name).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Services => "SERVICES",
            Self::Maglev => "MAGLEV",
            Self::Backends => "BACKENDS",
            Self::Flows => "FLOWS",
            Self::Replies => "REPLIES",
            Self::Interfaces => "INTERFACES",
            Self::BridgePorts => "BRIDGE_PORTS",
            Self::VlanParents => "VLAN_PARENTS",
            Self::ServiceStats => "SERVICE_STATS",
            Self::BackendStats => "BACKEND_STATS",
            Self::GlobalStats => "GLOBAL_STATS",
            Self::LocalPorts => "LOCAL_PORTS",
            Self::Sockets => "SOCKETS",
            Self::AnswerIfaces => "ANSWER_IFACES",
            Self::FloodState => "FLOOD_STATE",
            Self::BackendHops => "BACKEND_HOPS",
            Self::AddressRoles => "ADDRESS_ROLES",
            Self::ServiceSlots => "SERVICE_SLOTS",
            Self::BackendLoad => "BACKEND_LOAD",
            Self::BackendGone => "BACKEND_GONE",
            Self::RoundRobin => "ROUND_ROBIN",
            Self::StatelessReplies => "STATELESS_REPLIES",
            Self::ReplyServices => "REPLY_SERVICES",
        }
    }
}

impl fmt::Display for MapName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed map whose errors say which map it is and what was being done:
/// "map SERVICES: inserting an entry: …".
pub(super) struct Named<M> {
    name: MapName,
    map: M,
}

impl<M> Named<M> {
    fn check<T, E>(&self, result: Result<T, E>, what: &str) -> anyhow::Result<T>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        result.map_err(|e| anyhow::Error::new(e).context(format!("map {}: {what}", self.name)))
    }

    /// A removal, where a key already absent is no error.
    fn check_removal(&self, result: Result<(), MapError>) -> anyhow::Result<()> {
        match result {
            Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
                Ok(())
            }
            other => self.check(other, "removing an entry"),
        }
    }
}

impl<T: Borrow<MapData>, K: Pod, V: Pod> Named<HashMap<T, K, V>> {
    /// The value under `key`, if any.
    pub fn get(&self, key: &K) -> anyhow::Result<Option<V>> {
        match self.map.get(key, 0) {
            Err(MapError::KeyNotFound) => Ok(None),
            other => self.check(other.map(Some), "reading an entry"),
        }
    }

    /// Every entry; entries removed while this runs are left out.
    pub fn entries(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.map.iter().filter_map(Result::ok)
    }
}

impl<T: BorrowMut<MapData>, K: Pod, V: Pod> Named<HashMap<T, K, V>> {
    pub fn insert(&mut self, key: K, value: V) -> anyhow::Result<()> {
        let result = self.map.insert(key, value, 0);
        self.check(result, "inserting an entry")
    }

    /// Removes `key`'s entry; an absent one is no error.
    pub fn remove(&mut self, key: &K) -> anyhow::Result<()> {
        let result = self.map.remove(key);
        self.check_removal(result)
    }
}

impl<T: Borrow<MapData>, V: Pod> Named<Array<T, V>> {
    pub fn get(&self, index: u32) -> anyhow::Result<V> {
        self.check(self.map.get(&index, 0), "reading an entry")
    }

    pub fn len(&self) -> u32 {
        self.map.len()
    }
}

impl<T: BorrowMut<MapData>, V: Pod> Named<Array<T, V>> {
    pub fn set(&mut self, index: u32, value: V) -> anyhow::Result<()> {
        let result = self.map.set(index, value, 0);
        self.check(result, "writing an entry")
    }
}

impl<T: Borrow<MapData>, V: Pod> Named<PerCpuArray<T, V>> {
    /// Entry `index` of every CPU.
    pub fn per_cpu(&self, index: u32) -> anyhow::Result<PerCpuValues<V>> {
        self.check(self.map.get(&index, 0), "reading an entry")
    }
}

impl<T: BorrowMut<MapData>> Named<DevMapHash<T>> {
    /// Lets XDP send out of interface `ifindex`.
    pub fn insert(&mut self, ifindex: u32) -> anyhow::Result<()> {
        let result = self.map.insert(ifindex, ifindex, None, 0);
        self.check(result, "inserting an entry")
    }

    pub fn remove(&mut self, ifindex: u32) -> anyhow::Result<()> {
        let result = self.map.remove(ifindex);
        self.check_removal(result)
    }
}

/// Map `name` of `ebpf` as a `T`.
fn open<'a, T>(ebpf: &'a Ebpf, name: MapName) -> anyhow::Result<Named<T>>
where
    T: TryFrom<&'a Map, Error = MapError>,
{
    let map = ebpf
        .map(name.as_str())
        .ok_or_else(|| anyhow!("map {name}: missing from the eBPF object"))?;
    let map = T::try_from(map).map_err(|e| anyhow::Error::new(e).context(format!("map {name}")))?;
    Ok(Named { name, map })
}

/// Map `name` of `ebpf` as a `T`, to write.
fn open_mut<'a, T>(ebpf: &'a mut Ebpf, name: MapName) -> anyhow::Result<Named<T>>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf
        .map_mut(name.as_str())
        .ok_or_else(|| anyhow!("map {name}: missing from the eBPF object"))?;
    let map = T::try_from(map).map_err(|e| anyhow::Error::new(e).context(format!("map {name}")))?;
    Ok(Named { name, map })
}

/// `SERVICES`: service key → service entry.
pub(super) fn services(
    ebpf: &Ebpf,
) -> anyhow::Result<Named<HashMap<&MapData, ServiceKey, Service>>> {
    open(ebpf, MapName::Services)
}

pub(super) fn services_mut(
    ebpf: &mut Ebpf,
) -> anyhow::Result<Named<HashMap<&mut MapData, ServiceKey, Service>>> {
    open_mut(ebpf, MapName::Services)
}

/// `STATELESS_REPLIES`: a backend's (address, port, protocol) → its
/// service's id.
pub(super) fn stateless_replies_mut(
    ebpf: &mut Ebpf,
) -> anyhow::Result<Named<HashMap<&mut MapData, ServiceKey, u32>>> {
    open_mut(ebpf, MapName::StatelessReplies)
}

/// `REPLY_SERVICES`: a backend's (address, port, protocol) → the key of
/// its `dnat` service whose flows to it keep no reply entry.
pub(super) fn reply_services(
    ebpf: &Ebpf,
) -> anyhow::Result<Named<HashMap<&MapData, ServiceKey, ServiceKey>>> {
    open(ebpf, MapName::ReplyServices)
}

pub(super) fn reply_services_mut(
    ebpf: &mut Ebpf,
) -> anyhow::Result<Named<HashMap<&mut MapData, ServiceKey, ServiceKey>>> {
    open_mut(ebpf, MapName::ReplyServices)
}

/// `SERVICE_SLOTS`: service id → its key and entry, for established flows.
pub(super) fn service_slots_mut(
    ebpf: &mut Ebpf,
) -> anyhow::Result<Named<Array<&mut MapData, ServiceSlot>>> {
    open_mut(ebpf, MapName::ServiceSlots)
}

/// `MAGLEV`: slot → backend id.
pub(super) fn maglev_mut(ebpf: &mut Ebpf) -> anyhow::Result<Named<Array<&mut MapData, u32>>> {
    open_mut(ebpf, MapName::Maglev)
}

/// `BACKENDS`: backend id → where it is.
pub(super) fn backends(ebpf: &Ebpf) -> anyhow::Result<Named<Array<&MapData, Backend>>> {
    open(ebpf, MapName::Backends)
}

pub(super) fn backends_mut(ebpf: &mut Ebpf) -> anyhow::Result<Named<Array<&mut MapData, Backend>>> {
    open_mut(ebpf, MapName::Backends)
}

/// `BACKEND_LOAD`: backend id → its live-flow counts and connect time.
pub(super) fn backend_load(ebpf: &Ebpf) -> anyhow::Result<Named<Array<&MapData, BackendLoad>>> {
    open(ebpf, MapName::BackendLoad)
}

/// `BACKEND_GONE`: backend id → flows that ended unseen, as the agent
/// counted them (a signed correction, two's complement).
pub(super) fn backend_gone_mut(ebpf: &mut Ebpf) -> anyhow::Result<Named<Array<&mut MapData, u64>>> {
    open_mut(ebpf, MapName::BackendGone)
}

/// `BACKEND_HOPS`: backend id → the next hop the data plane remembers.
pub(super) fn backend_hops_mut(
    ebpf: &mut Ebpf,
) -> anyhow::Result<Named<Array<&mut MapData, NextHop>>> {
    open_mut(ebpf, MapName::BackendHops)
}

/// `ADDRESS_ROLES`, to read.
pub(super) fn address_roles(ebpf: &Ebpf) -> anyhow::Result<Named<Array<&MapData, u64>>> {
    open(ebpf, MapName::AddressRoles)
}

/// `ADDRESS_ROLES`: the address filter, `ROLE_*` bits by address slot,
/// eight slots to an entry (`lb_common::filter::pack`).
pub(super) fn address_roles_mut(
    ebpf: &mut Ebpf,
) -> anyhow::Result<Named<Array<&mut MapData, u64>>> {
    open_mut(ebpf, MapName::AddressRoles)
}

/// `FLOWS`: client flow → its backend and state.
pub(super) fn flows(ebpf: &Ebpf) -> anyhow::Result<Named<HashMap<&MapData, FlowKey, Flow>>> {
    open(ebpf, MapName::Flows)
}

/// `INTERFACES`: interfaces XDP may send out of.
pub(super) fn interfaces_mut(ebpf: &mut Ebpf) -> anyhow::Result<Named<DevMapHash<&mut MapData>>> {
    open_mut(ebpf, MapName::Interfaces)
}

/// `BRIDGE_PORTS`, to read.
pub(super) fn bridge_ports(
    ebpf: &Ebpf,
) -> anyhow::Result<Named<HashMap<&MapData, BridgePortKey, u32>>> {
    open(ebpf, MapName::BridgePorts)
}

/// `BRIDGE_PORTS`: (attached bridge, host MAC) → the port XDP sends the
/// host's frames to.
pub(super) fn bridge_ports_mut(
    ebpf: &mut Ebpf,
) -> anyhow::Result<Named<HashMap<&mut MapData, BridgePortKey, u32>>> {
    open_mut(ebpf, MapName::BridgePorts)
}

/// `VLAN_PARENTS`: attached interfaces with VLAN devices (value unused).
pub(super) fn vlan_parents_mut(
    ebpf: &mut Ebpf,
) -> anyhow::Result<Named<HashMap<&mut MapData, u32, u32>>> {
    open_mut(ebpf, MapName::VlanParents)
}

/// `ANSWER_IFACES`: interfaces XDP can answer on (value unused).
pub(super) fn answer_ifaces_mut(
    ebpf: &mut Ebpf,
) -> anyhow::Result<Named<HashMap<&mut MapData, u32, u32>>> {
    open_mut(ebpf, MapName::AnswerIfaces)
}

/// `FLOOD_STATE`: the half-open budget's counts and the cookies'
/// (`lb_common::flood`).
pub(super) fn flood_state(ebpf: &Ebpf) -> anyhow::Result<Named<Array<&MapData, u64>>> {
    open(ebpf, MapName::FloodState)
}

pub(super) fn flood_state_mut(ebpf: &mut Ebpf) -> anyhow::Result<Named<Array<&mut MapData, u64>>> {
    open_mut(ebpf, MapName::FloodState)
}

/// `SERVICE_STATS`: per-CPU counters by service id.
pub(super) fn service_stats(
    ebpf: &Ebpf,
) -> anyhow::Result<Named<PerCpuArray<&MapData, TrafficCounters>>> {
    open(ebpf, MapName::ServiceStats)
}

/// `BACKEND_STATS`: per-CPU counters by backend id.
pub(super) fn backend_stats(
    ebpf: &Ebpf,
) -> anyhow::Result<Named<PerCpuArray<&MapData, BackendCounters>>> {
    open(ebpf, MapName::BackendStats)
}

/// `GLOBAL_STATS`: per-CPU counters by `GlobalCounter`.
pub(super) fn global_stats(ebpf: &Ebpf) -> anyhow::Result<Named<PerCpuArray<&MapData, u64>>> {
    open(ebpf, MapName::GlobalStats)
}

/// One map's size and the kernel memory charged for it.
#[derive(Clone, Debug)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    pub bytes: u64,
}

/// Kernel memory charged for each of `ebpf`'s maps (the `memlock` the
/// kernel reports), largest first.
pub(super) fn memory(ebpf: &Ebpf) -> anyhow::Result<Vec<MapMemory>> {
    let mut out = Vec::new();
    for (name, map) in ebpf.maps() {
        let data = match map {
            Map::Array(d)
            | Map::HashMap(d)
            | Map::LruHashMap(d)
            | Map::PerCpuArray(d)
            | Map::DevMapHash(d)
            | Map::RingBuf(d) => d,
            _ => anyhow::bail!("map {name}: a type map_memory does not know"),
        };
        let info = data.info()?;
        let fd = data.fd().as_fd().as_raw_fd();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        let bytes = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("map {name}: no memlock in its fdinfo"))?;
        out.push(MapMemory {
            name: name.to_owned(),
            max_entries: info.max_entries(),
            bytes,
        });
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.bytes));
    Ok(out)
}

/// `LOCAL_PORTS`: the bitmap of local backends' ports, 64 per entry.
pub(super) fn local_ports_mut(ebpf: &mut Ebpf) -> anyhow::Result<Named<Array<&mut MapData, u64>>> {
    open_mut(ebpf, MapName::LocalPorts)
}
