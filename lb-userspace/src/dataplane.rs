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
    path::PathBuf,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap as BpfHashMap, Map, MapData, PerCpuArray},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{
    Backend, BackendCounters, Flow, FlowKey, GlobalCounter, MAGLEV_SLOTS, MAX_BACKENDS,
    MAX_SERVICES, Service, ServiceKey, TrafficCounters,
    backend::BACKEND_F_FAILED,
    flow::{FLOW_CLOSING, FLOW_MIDSTREAM, FlowTimeouts},
    maglev::{self, Candidate},
    service::{SERVICE_F_DNAT, SERVICE_F_HASH_SOURCE, ipv4_mapped},
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{BackendConfig, Config, HashPolicy, Mode, ServiceConfig},
    egress::{Egress, EgressPath},
    slots::{Range, SlotAllocator},
    xdp::{self, AttachedMode, ModeRequest},
};

/// Name of the main XDP program in the eBPF object.
pub const PROGRAM: &str = "xlb";

/// Sizes chosen when loading the data plane.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of the flow table (`FLOWS`) and of `REPLIES`.
    pub flow_capacity: u32,
    /// Idle timeouts of flows.
    pub timeouts: FlowTimeouts,
    /// bpffs directory to pin every map in (and to reuse pinned maps from,
    /// so a restarted agent keeps flows and counters); `None` keeps the maps
    /// private to this process.
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            flow_capacity: lb_common::DEFAULT_FLOW_CAPACITY,
            timeouts: FlowTimeouts::DEFAULT,
            pin_dir: None,
        }
    }
}

/// Every map of the eBPF object.
pub const MAPS: &[&str] = &[
    "SERVICES",
    "MAGLEV",
    "BACKENDS",
    "FLOWS",
    "REPLIES",
    "INTERFACES",
    "VLAN_PARENTS",
    "SERVICE_STATS",
    "BACKEND_STATS",
    "GLOBAL_STATS",
];

/// The xlb eBPF object, loaded into the kernel, and what userspace knows
/// about its maps' contents.
pub struct Dataplane {
    ebpf: Ebpf,
    options: LoadOptions,
    links: Vec<(XdpLinkId, Attachment)>,
    services: HashMap<String, ServiceState>,
    backend_ids: IdPool,
    slots: SlotAllocator,
}

/// An interface the program is attached to.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachedMode,
    /// How frames leave by it, as last read from the kernel.
    pub egress: Egress,
}

/// A service as programmed into the maps.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ServiceState {
    id: u32,
    config: ServiceConfig,
    /// Two tables' worth of slots; `active` says which half packets use.
    range: Range,
    active: u32,
    /// What each half of the range holds (backend id per slot), as far as
    /// known: only changed slots are written. Not kept across restarts.
    #[serde(skip)]
    halves: [Vec<u32>; 2],
    /// Whether the active table is empty (no usable backend).
    empty: bool,
    /// Backend ids by address.
    backends: HashMap<SocketAddr, u32>,
    /// Backends taken out with [`Dataplane::set_failed`].
    failed: HashSet<SocketAddr>,
}

impl ServiceState {
    fn key(&self) -> ServiceKey {
        self.config.key()
    }

    fn table(&self) -> &[u32] {
        if self.empty {
            &[]
        } else {
            &self.halves[self.active as usize]
        }
    }
}

/// What a restarted agent needs to carry on with pinned maps: which ids and
/// slot ranges the maps' contents use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataplaneState {
    services: HashMap<String, ServiceState>,
    backend_ids: IdPool,
}

impl Dataplane {
    /// Loads the embedded eBPF object and verifies the XDP program.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_with(LoadOptions::default())
    }

    /// Like [`load`](Self::load), with explicit map sizes.
    pub fn load_with(options: LoadOptions) -> anyhow::Result<Self> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("FLOWS", options.flow_capacity)
            .map_max_entries("REPLIES", options.flow_capacity)
            .override_global("FLOW_TIMEOUTS", &options.timeouts, true);
        let pins: Vec<(&str, PathBuf)> = match &options.pin_dir {
            Some(dir) => {
                if dir.starts_with(xdp::BPF_FS) {
                    xdp::ensure_bpffs()?;
                }
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {} (is bpffs mounted?)", dir.display()))?;
                MAPS.iter().map(|name| (*name, dir.join(name))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(crate::ebpf_object())
            .context("loading the xlb eBPF object")?;
        xdp_program(&mut ebpf)?
            .load()
            .context("loading the xlb XDP program (verifier)")?;
        Ok(Self {
            ebpf,
            options,
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

    /// Attaches the program to `iface`; returns the mode it got. With a pin
    /// directory, the attachment is pinned there too, and an attachment an
    /// earlier agent pinned is taken over in place: the kernel swaps the
    /// program without a moment unattached.
    pub fn attach(&mut self, iface: &str, request: ModeRequest) -> anyhow::Result<AttachedMode> {
        let ifindex = ifindex(iface)?;
        accept_local(iface)?;
        let program = xdp_program(&mut self.ebpf)?;
        let (link, mode) = match self.options.pin_dir.as_deref().map(|d| link_pin(d, iface)) {
            Some(pin) if pin.exists() => {
                let pinned = PinnedLink::from_pin(&pin)
                    .with_context(|| format!("opening the pinned attachment {}", pin.display()))?;
                let link = XdpLink::try_from(FdLink::from(pinned))?;
                let id = program
                    .attach_to_link(link)
                    .with_context(|| format!("taking over the XDP attachment on {iface}"))?;
                tracing::info!(iface, "took over the running XDP attachment");
                (id, xdp::attached_mode(iface)?)
            }
            Some(pin) => {
                let (id, mode) = xdp::attach(program, iface, request)?;
                let link: FdLink = program
                    .take_link(id)?
                    .try_into()
                    .context("the attachment is not a bpf_link; cannot pin it")?;
                let pinned = link
                    .pin(&pin)
                    .with_context(|| format!("pinning {}", pin.display()))?;
                let id = program.attach_to_link(XdpLink::try_from(FdLink::from(pinned))?)?;
                (id, mode)
            }
            None => xdp::attach(program, iface, request)?,
        };
        let egress = Egress::probe(iface, ifindex);
        self.program_egress(ifindex, &egress)
            .with_context(|| format!("programming the way out of {iface}"))?;
        tracing::info!(
            iface,
            %mode,
            path = %egress.path,
            xdp_features = %egress.features,
            "XDP program attached; frames leave by it through {}: {}",
            egress.path,
            egress.reason()
        );
        let attachment = Attachment {
            iface: iface.to_owned(),
            ifindex,
            mode,
            egress,
        };
        self.links.push((link, attachment));
        Ok(mode)
    }

    /// Reads every attached interface's way out again (a veth peer may have
    /// gained or lost its XDP program, VLAN devices may have come or gone)
    /// and updates the maps where it changed.
    pub fn refresh_egress(&mut self) -> anyhow::Result<()> {
        for i in 0..self.links.len() {
            let (iface, ifindex) = (self.links[i].1.iface.clone(), self.links[i].1.ifindex);
            let egress = Egress::probe(&iface, ifindex);
            if egress == self.links[i].1.egress {
                continue;
            }
            self.program_egress(ifindex, &egress)
                .with_context(|| format!("programming the way out of {iface}"))?;
            tracing::info!(
                iface,
                path = %egress.path,
                xdp_features = %egress.features,
                vlan_devices = ?egress.vlan_devices,
                "way out changed; frames leave through {}: {}",
                egress.path,
                egress.reason()
            );
            self.links[i].1.egress = egress;
        }
        Ok(())
    }

    /// Makes `INTERFACES` and `VLAN_PARENTS` say what `egress` says of
    /// interface `ifindex`.
    fn program_egress(&mut self, ifindex: u32, egress: &Egress) -> anyhow::Result<()> {
        let mut interfaces: DevMapHash<&mut MapData> = self.map_mut("INTERFACES")?;
        match egress.path {
            EgressPath::Xdp => interfaces
                .insert(ifindex, ifindex, None, 0)
                .context("adding to INTERFACES")?,
            EgressPath::Kernel => {
                remove_if_present(interfaces.remove(ifindex)).context("removing from INTERFACES")?
            }
        }
        let mut parents: BpfHashMap<&mut MapData, u32, u32> = self.map_mut("VLAN_PARENTS")?;
        if egress.vlan_devices.is_empty() {
            remove_if_present(parents.remove(&ifindex)).context("removing from VLAN_PARENTS")?;
        } else {
            parents
                .insert(ifindex, 1, 0)
                .context("adding to VLAN_PARENTS")?;
        }
        Ok(())
    }

    /// Starts reading the program's log records (`aya-log`: rare events
    /// such as a flow dropped for want of a source port) into `logger`. The
    /// caller flushes the returned reader when its fd is readable.
    pub fn kernel_logger<T: log::Log>(
        &mut self,
        logger: T,
    ) -> anyhow::Result<aya_log::EbpfLogger<T>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger)
            .context("reading the data plane's log")
    }

    /// The loaded object, for tests and benchmarks that reach into maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Detaches from every interface and removes every pin: the data plane
    /// stops. Without this, pinned attachments keep forwarding after the
    /// process ends.
    pub fn shut_down(mut self) -> anyhow::Result<()> {
        if let Some(dir) = self.options.pin_dir.clone() {
            for (_, attachment) in &self.links {
                let pin = link_pin(&dir, &attachment.iface);
                if pin.exists() {
                    std::fs::remove_file(&pin)
                        .with_context(|| format!("removing {}", pin.display()))?;
                }
            }
            for name in MAPS {
                let _ = std::fs::remove_file(dir.join(name));
            }
            let _ = std::fs::remove_dir(&dir);
        }
        let program = xdp_program(&mut self.ebpf)?;
        for (link, attachment) in std::mem::take(&mut self.links) {
            program
                .detach(link)
                .with_context(|| format!("detaching from {}", attachment.iface))?;
        }
        Ok(())
    }

    /// Ids and ranges in use, for a later agent to carry on with the
    /// pinned maps.
    pub fn export_state(&self) -> DataplaneState {
        DataplaneState {
            services: self.services.clone(),
            backend_ids: self.backend_ids.clone(),
        }
    }

    /// Adopts the ids and ranges an earlier agent recorded; call right after
    /// loading with the same pin directory, before [`apply`](Self::apply).
    pub fn import_state(&mut self, state: DataplaneState) {
        for service in state.services.values() {
            self.slots.reserve(service.range);
        }
        self.services = state.services;
        self.backend_ids = state.backend_ids;
    }

    /// Live flows per (service, backend), all services in one pass over the
    /// flow table: entries that have not passed their idle timeout, began
    /// with a SYN (or are UDP) and have seen no FIN or RST.
    pub fn live_flows(&self) -> anyhow::Result<HashMap<(String, SocketAddr), u64>> {
        let owners = self.flow_owners();
        let mut counts = HashMap::new();
        self.for_each_current_flow(|key, flow, _| {
            if !matches!(flow.state, FLOW_CLOSING | FLOW_MIDSTREAM)
                && let Some((service, addr)) = owners.get(&(*key.service_key(), flow.backend))
            {
                *counts.entry(((*service).to_owned(), *addr)).or_insert(0) += 1;
            }
            true
        })?;
        Ok(counts)
    }

    /// Flow-table entries of `service` (at most `limit`): client, backend,
    /// state and idle time; expired ones left out.
    pub fn flows(&self, service: &str, limit: usize) -> anyhow::Result<Vec<FlowInfo>> {
        let wanted = self.service_state(service)?.key();
        let owners = self.flow_owners();
        let mut out = Vec::new();
        self.for_each_current_flow(|key, flow, now| {
            if *key.service_key() == wanted {
                out.push(FlowInfo {
                    client: SocketAddr::new(unmapped(key.src), u16::from_be(key.src_port_be)),
                    backend: owners.get(&(wanted, flow.backend)).map(|(_, addr)| *addr),
                    state: match flow.state {
                        lb_common::flow::FLOW_SYN_SENT => "syn-sent",
                        FLOW_CLOSING => "closing",
                        FLOW_MIDSTREAM => "midstream",
                        _ => "established",
                    },
                    idle_seconds: now.saturating_sub(flow.last_seen_ns) as f64 / 1e9,
                });
            }
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Which service and backend a flow entry's (service key, backend id)
    /// names.
    fn flow_owners(&self) -> HashMap<(ServiceKey, u32), (&str, SocketAddr)> {
        self.services
            .iter()
            .flat_map(|(name, state)| {
                let key = state.key();
                state
                    .backends
                    .iter()
                    .map(move |(addr, id)| ((key, *id), (name.as_str(), *addr)))
            })
            .collect()
    }

    /// Calls `f` with every flow-table entry not past its idle timeout, and
    /// the time it judged that at, until `f` returns false.
    fn for_each_current_flow(
        &self,
        mut f: impl FnMut(&FlowKey, &Flow, u64) -> bool,
    ) -> anyhow::Result<()> {
        let flows: BpfHashMap<&MapData, FlowKey, Flow> = self.map("FLOWS")?;
        let now = coarse_monotonic_ns();
        for (key, flow) in flows.iter().filter_map(Result::ok) {
            if !flow.is_expired(key.proto, now, &self.options.timeouts) && !f(&key, &flow, now) {
                break;
            }
        }
        Ok(())
    }

    /// Interfaces the program is attached to.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.links.iter().map(|(_, attachment)| attachment)
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
        let table = state.table();
        if table.is_empty() {
            return Ok(None);
        }
        let id = table[(hash % state.config.table_size) as usize];
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
                | Map::DevMapHash(d)
                | Map::RingBuf(d) => d,
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
        if let Some(old_key) = self.services.get(&config.name).map(ServiceState::key)
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
                    state.halves = Default::default();
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
                            config: config.clone(),
                            range,
                            active: 1,
                            halves: Default::default(),
                            empty: true,
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
                let flags = if is_failed(state, backend) {
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
                weight: if is_failed(state, b) { 0 } else { b.weight },
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

        // An unchanged table stays where it is; a changed one goes into the
        // other half, writing only the slots that differ from what that half
        // held before.
        let unchanged = !table.is_empty() && state.halves[state.active as usize] == table;
        let half = if unchanged {
            state.active
        } else {
            1 - state.active
        };
        let start = state.range.start + half * config.table_size;
        if !table.is_empty() && !unchanged {
            let old = &state.halves[half as usize];
            let mut slots: Array<&mut MapData, u32> = self.map_mut("MAGLEV")?;
            for (i, &id) in table.iter().enumerate() {
                if old.get(i) != Some(&id) {
                    slots.set(start + i as u32, id, 0)?;
                }
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
        state.empty = table.is_empty();
        if !table.is_empty() {
            state.halves[half as usize] = table;
        }
        state.config = config.clone();
        Ok(())
    }

    fn remove_service(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(state) = self.services.remove(name) else {
            return Ok(());
        };
        let mut services: BpfHashMap<&mut MapData, ServiceKey, Service> =
            self.map_mut("SERVICES")?;
        services
            .remove(&state.key())
            .context("removing a service")?;
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

/// One flow-table entry, as `xlb flows` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FlowInfo {
    pub client: SocketAddr,
    /// `None` if the backend has left the service.
    pub backend: Option<SocketAddr>,
    pub state: &'static str,
    pub idle_seconds: f64,
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
#[derive(Clone, Debug, Serialize, Deserialize)]
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

/// Whether `backend` is to be marked failed in the data plane.
fn is_failed(state: &ServiceState, backend: &BackendConfig) -> bool {
    backend.down || state.failed.contains(&backend.address)
}

/// Where the attachment to `iface` is pinned.
fn link_pin(dir: &std::path::Path, iface: &str) -> PathBuf {
    dir.join(format!("link-{iface}"))
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock the data plane stamps
/// flows with (`bpf_ktime_get_coarse_ns`).
fn coarse_monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn unmapped(addr: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
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

/// A map removal where a missing key is no error.
fn remove_if_present(result: Result<(), aya::maps::MapError>) -> anyhow::Result<()> {
    use aya::maps::MapError;
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => Ok(other?),
    }
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
