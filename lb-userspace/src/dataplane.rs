//! The loaded XDP data plane: its program, its maps, and their contents.
//!
//! [`Dataplane::apply`] makes the maps match a configuration: services get
//! ids and a range of Maglev slots, backends get ids that stay theirs while
//! they exist (flows refer to them), and every table change is written to
//! the half of the service's range that packets are not using before the
//! service entry is pointed at it.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap as BpfHashMap, Map, MapData, PerCpuArray},
    programs::{Xdp, xdp::XdpLinkId},
};
use lb_common::{
    Backend, BackendCounters, GlobalCounter, MAGLEV_SLOTS, MAX_BACKENDS, MAX_SERVICES, Service,
    ServiceKey, TrafficCounters,
    backend::BACKEND_F_FAILED,
    flow::FlowTimeouts,
    maglev::{self, Candidate},
    service::{SERVICE_F_DNAT, SERVICE_F_HASH_SOURCE, ipv4_mapped},
};

use crate::{
    config::{Config, HashPolicy, Mode, ServiceConfig},
    slots::{Range, SlotAllocator},
    xdp::{self, AttachedMode, ModeRequest},
};

/// Name of the main XDP program in the eBPF object.
pub const PROGRAM: &str = "xlb";

/// Sizes chosen when loading the data plane.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Entries of the flow table (`FLOWS`) and of `REPLIES`.
    pub flow_capacity: u32,
    /// Idle timeouts of flows.
    pub timeouts: FlowTimeouts,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            flow_capacity: lb_common::DEFAULT_FLOW_CAPACITY,
            timeouts: FlowTimeouts::DEFAULT,
        }
    }
}

/// The xlb eBPF object, loaded into the kernel, and what userspace knows
/// about its maps' contents.
pub struct Dataplane {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId, AttachedMode)>,
    services: HashMap<String, ServiceState>,
    backend_ids: IdPool,
    slots: SlotAllocator,
}

/// A service as programmed into the maps.
struct ServiceState {
    id: u32,
    key: ServiceKey,
    config: ServiceConfig,
    /// Two tables' worth of slots; `active` says which half packets use.
    range: Range,
    active: u32,
    /// Backend id per slot of the active table; empty with no usable backend.
    table: Vec<u32>,
    /// Backend ids by address.
    backends: HashMap<SocketAddr, u32>,
    /// Backends taken out by health checks or the operator.
    failed: HashSet<SocketAddr>,
}

impl Dataplane {
    /// Loads the embedded eBPF object and verifies the XDP program.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_with(LoadOptions::default())
    }

    /// Like [`load`](Self::load), with explicit map sizes.
    pub fn load_with(options: LoadOptions) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("FLOWS", options.flow_capacity)
            .map_max_entries("REPLIES", options.flow_capacity)
            .override_global("FLOW_TIMEOUTS", &options.timeouts, true)
            .load(crate::ebpf_object())
            .context("loading the xlb eBPF object")?;
        xdp_program(&mut ebpf)?
            .load()
            .context("loading the xlb XDP program (verifier)")?;
        Ok(Self {
            ebpf,
            links: Vec::new(),
            services: HashMap::new(),
            backend_ids: IdPool::new(MAX_BACKENDS),
            slots: SlotAllocator::new(MAGLEV_SLOTS),
        })
    }

    /// The XDP program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_program(&mut self.ebpf)
    }

    /// Attaches the program to `iface`; returns the mode it got.
    pub fn attach(&mut self, iface: &str, request: ModeRequest) -> anyhow::Result<AttachedMode> {
        let ifindex = ifindex(iface)?;
        accept_local(iface)?;
        let (link, mode) = xdp::attach(xdp_program(&mut self.ebpf)?, iface, request)?;
        let mut interfaces: DevMapHash<&mut MapData> = self.map_mut("INTERFACES")?;
        interfaces
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding {iface} to the redirect map"))?;
        tracing::info!(iface, %mode, "XDP program attached");
        self.links.push((iface.to_owned(), link, mode));
        Ok(mode)
    }

    /// Interfaces the program is attached to, with their modes.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachedMode)> {
        self.links
            .iter()
            .map(|(iface, _, mode)| (iface.as_str(), *mode))
    }

    /// Makes the maps serve exactly `config`'s services. Existing flows keep
    /// their backends; only new flows see changed tables.
    pub fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        let wanted: HashSet<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .services
            .keys()
            .filter(|name| !wanted.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove_service(&name)?;
        }
        for service in &config.services {
            self.apply_service(service)
                .with_context(|| format!("service {:?}", service.name))?;
        }
        Ok(())
    }

    /// Marks a backend failed (its flows are scheduled again, it gets no new
    /// ones) or usable again.
    pub fn set_failed(
        &mut self,
        service: &str,
        backend: SocketAddr,
        failed: bool,
    ) -> anyhow::Result<()> {
        let state = self.service_state_mut(service)?;
        if !state.backends.contains_key(&backend) {
            bail!("service {service:?} has no backend {backend}");
        }
        let changed = if failed {
            state.failed.insert(backend)
        } else {
            state.failed.remove(&backend)
        };
        if changed {
            let config = state.config.clone();
            self.apply_service(&config)?;
        }
        Ok(())
    }

    /// The backend that the active table of `service` gives a flow hash.
    pub fn lookup(&self, service: &str, hash: u32) -> anyhow::Result<Option<SocketAddr>> {
        let state = self.service_state(service)?;
        if state.table.is_empty() {
            return Ok(None);
        }
        let id = state.table[(hash % state.config.table_size) as usize];
        Ok(state
            .backends
            .iter()
            .find(|(_, b)| **b == id)
            .map(|(addr, _)| *addr))
    }

    /// Packets and bytes of `service`, summed over CPUs.
    pub fn service_counters(&self, service: &str) -> anyhow::Result<TrafficCounters> {
        let id = self.service_state(service)?.id;
        let array: PerCpuArray<&MapData, TrafficCounters> = self.map("SERVICE_STATS")?;
        let mut total = TrafficCounters::default();
        for cpu in array.get(&id, 0)?.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// Counters of one backend of `service`, summed over CPUs.
    pub fn backend_counters(
        &self,
        service: &str,
        backend: SocketAddr,
    ) -> anyhow::Result<BackendCounters> {
        let state = self.service_state(service)?;
        let id = *state
            .backends
            .get(&backend)
            .ok_or_else(|| anyhow!("service {service:?} has no backend {backend}"))?;
        let array: PerCpuArray<&MapData, BackendCounters> = self.map("BACKEND_STATS")?;
        let mut total = BackendCounters::default();
        for cpu in array.get(&id, 0)?.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// Every global counter with its value, summed over CPUs.
    pub fn global_counters(&self) -> anyhow::Result<Vec<(GlobalCounter, u64)>> {
        let array: PerCpuArray<&MapData, u64> = self.map("GLOBAL_STATS")?;
        GlobalCounter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu = array.get(&(counter as u32), 0)?;
                Ok((counter, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// One global counter, summed over CPUs.
    pub fn global_counter(&self, counter: GlobalCounter) -> anyhow::Result<u64> {
        let array: PerCpuArray<&MapData, u64> = self.map("GLOBAL_STATS")?;
        Ok(array.get(&(counter as u32), 0)?.iter().sum())
    }

    /// Kernel memory charged for each of the data plane's maps (the
    /// `memlock` the kernel reports), largest first.
    pub fn map_memory(&self) -> anyhow::Result<Vec<MapMemory>> {
        let mut out = Vec::new();
        for (name, map) in self.ebpf.maps() {
            let data = match map {
                Map::Array(d)
                | Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::PerCpuArray(d)
                | Map::DevMapHash(d) => d,
                _ => bail!("map {name} has a type map_memory does not know"),
            };
            let info = data.info()?;
            let fd = data.fd().as_fd().as_raw_fd();
            let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
            let bytes = fdinfo
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| anyhow!("no memlock for map {name}"))?;
            out.push(MapMemory {
                name: name.to_owned(),
                max_entries: info.max_entries(),
                bytes,
            });
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.bytes));
        Ok(out)
    }

    fn apply_service(&mut self, config: &ServiceConfig) -> anyhow::Result<()> {
        let key = config.key();
        // A renamed key or a resized table needs a fresh entry or range.
        if let Some(old_key) = self.services.get(&config.name).map(|old| old.key)
            && old_key != key
        {
            let mut services: BpfHashMap<&mut MapData, ServiceKey, Service> =
                self.map_mut("SERVICES")?;
            services
                .remove(&old_key)
                .context("removing the old service address")?;
        }
        let needs_range = self
            .services
            .get(&config.name)
            .is_none_or(|old| old.config.table_size != config.table_size);
        if needs_range {
            let range = self.slots.allocate(2 * config.table_size).ok_or_else(|| {
                anyhow!(
                    "no room for two tables of {} slots ({} of {} slots in use); lower table_size",
                    config.table_size,
                    self.slots.used(),
                    MAGLEV_SLOTS
                )
            })?;
            match self.services.get_mut(&config.name) {
                Some(state) => {
                    // The service entry still points into the old range
                    // until the switch below; free it only after that.
                    let old = std::mem::replace(&mut state.range, range);
                    state.active = 1; // so the first write goes to half 0
                    self.write_service(&config.name, config)?;
                    self.slots.free(old);
                    return Ok(());
                }
                None => {
                    let id = self.free_service_id()?;
                    self.services.insert(
                        config.name.clone(),
                        ServiceState {
                            id,
                            key,
                            config: config.clone(),
                            range,
                            active: 1,
                            table: Vec::new(),
                            backends: HashMap::new(),
                            failed: HashSet::new(),
                        },
                    );
                }
            }
        }
        self.write_service(&config.name, config)
    }

    /// Writes backends and the new table into the inactive half, then
    /// switches the service entry to it.
    fn write_service(&mut self, name: &str, config: &ServiceConfig) -> anyhow::Result<()> {
        let mut state = self.services.remove(name).expect("service state exists");
        let result = self.write_service_state(&mut state, config);
        self.services.insert(name.to_owned(), state);
        result
    }

    fn write_service_state(
        &mut self,
        state: &mut ServiceState,
        config: &ServiceConfig,
    ) -> anyhow::Result<()> {
        // Backend ids: keep existing ones, allocate for new addresses, and
        // release those of removed backends.
        let addresses: HashSet<SocketAddr> = config.backends.iter().map(|b| b.address).collect();
        for (addr, id) in state.backends.clone() {
            if !addresses.contains(&addr) {
                state.backends.remove(&addr);
                state.failed.remove(&addr);
                self.backend_ids.release(id);
            }
        }
        for backend in &config.backends {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                state.backends.entry(backend.address)
            {
                let id = self
                    .backend_ids
                    .take()
                    .ok_or_else(|| anyhow!("more than {MAX_BACKENDS} backends in all"))?;
                slot.insert(id);
            }
        }
        {
            let mut backends: Array<&mut MapData, Backend> = self.map_mut("BACKENDS")?;
            for backend in &config.backends {
                let id = state.backends[&backend.address];
                let flags = if state.failed.contains(&backend.address) {
                    BACKEND_F_FAILED
                } else {
                    0
                };
                backends.set(id, backend_entry(backend.address, flags), 0)?;
            }
        }

        // The table, built over usable backends only.
        let identities: Vec<Vec<u8>> = config
            .backends
            .iter()
            .map(|b| b.address.to_string().into_bytes())
            .collect();
        let candidates: Vec<Candidate<'_>> = config
            .backends
            .iter()
            .zip(&identities)
            .map(|(b, identity)| Candidate {
                identity,
                weight: if state.failed.contains(&b.address) {
                    0
                } else {
                    b.weight
                },
            })
            .collect();
        let table =
            maglev::build_table(&candidates, config.table_size).map_err(|e| anyhow!("{e}"))?;
        let table: Vec<u32> = table
            .map(|t| {
                t.iter()
                    .map(|&i| state.backends[&config.backends[i as usize].address])
                    .collect()
            })
            .unwrap_or_default();

        let half = 1 - state.active;
        let start = state.range.start + half * config.table_size;
        if !table.is_empty() {
            let mut slots: Array<&mut MapData, u32> = self.map_mut("MAGLEV")?;
            for (i, &id) in table.iter().enumerate() {
                slots.set(start + i as u32, id, 0)?;
            }
        }
        let entry = Service {
            id: state.id,
            flags: match config.mode {
                Mode::Nat => 0,
                Mode::Dnat => SERVICE_F_DNAT,
            } | match config.hash {
                HashPolicy::FiveTuple => 0,
                HashPolicy::SourceIp => SERVICE_F_HASH_SOURCE,
            },
            table_size: if table.is_empty() {
                0
            } else {
                config.table_size
            },
            table_start: start,
            snat_addr: config.snat.map(mapped).unwrap_or([0; 16]),
        };
        let mut services: BpfHashMap<&mut MapData, ServiceKey, Service> =
            self.map_mut("SERVICES")?;
        services
            .insert(config.key(), entry, 0)
            .context("updating the service entry")?;

        state.active = half;
        state.table = table;
        state.key = config.key();
        state.config = config.clone();
        Ok(())
    }

    fn remove_service(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(state) = self.services.remove(name) else {
            return Ok(());
        };
        let mut services: BpfHashMap<&mut MapData, ServiceKey, Service> =
            self.map_mut("SERVICES")?;
        services.remove(&state.key).context("removing a service")?;
        self.slots.free(state.range);
        for id in state.backends.values() {
            self.backend_ids.release(*id);
        }
        Ok(())
    }

    fn free_service_id(&self) -> anyhow::Result<u32> {
        let used: HashSet<u32> = self.services.values().map(|s| s.id).collect();
        (0..MAX_SERVICES)
            .find(|id| !used.contains(id))
            .ok_or_else(|| anyhow!("more than {MAX_SERVICES} services"))
    }

    fn service_state(&self, name: &str) -> anyhow::Result<&ServiceState> {
        self.services
            .get(name)
            .ok_or_else(|| anyhow!("no service named {name:?}"))
    }

    fn service_state_mut(&mut self, name: &str) -> anyhow::Result<&mut ServiceState> {
        self.services
            .get_mut(name)
            .ok_or_else(|| anyhow!("no service named {name:?}"))
    }

    fn map<'a, T>(&'a self, name: &str) -> anyhow::Result<T>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
        Ok(T::try_from(map)?)
    }

    fn map_mut<'a, T>(&'a mut self, name: &str) -> anyhow::Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
        Ok(T::try_from(map)?)
    }
}

/// One map's size and the kernel memory charged for it.
#[derive(Clone, Debug)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    pub bytes: u64,
}

/// Backend ids handed out oldest-released first, so an id a live flow may
/// still name is not reused at once.
struct IdPool {
    next: u32,
    limit: u32,
    released: VecDeque<u32>,
}

impl IdPool {
    fn new(limit: u32) -> Self {
        Self {
            next: 0,
            limit,
            released: VecDeque::new(),
        }
    }

    fn take(&mut self) -> Option<u32> {
        if self.next < self.limit {
            self.next += 1;
            return Some(self.next - 1);
        }
        self.released.pop_front()
    }

    fn release(&mut self, id: u32) {
        self.released.push_back(id);
    }
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn backend_entry(address: SocketAddr, flags: u16) -> Backend {
    Backend {
        addr: mapped(address.ip()),
        port_be: address.port().to_be(),
        flags,
        _pad: 0,
    }
}

/// Lets the kernel forward packets whose source is one of its own
/// addresses: what a `nat` packet is when xlb hands it over to have the next
/// hop's address resolved.
fn accept_local(iface: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    std::fs::write(&path, "1").with_context(|| format!("setting {path}"))
}

fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface named {iface}");
    }
    Ok(index)
}

fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing from the eBPF object"))?
        .try_into()?)
}
