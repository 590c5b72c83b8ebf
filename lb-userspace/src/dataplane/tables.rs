//! Programming services and backends: service ids and slot ranges, backend
//! ids, `BACKENDS` entries, the service's table (what its scheduler reads:
//! the Maglev table, a round-robin cycle, or the list of usable backends)
//! built into the half of the service's range packets are not using, and
//! the `SERVICES` entry that switches packets to it.

use std::{
    collections::{HashMap, HashSet, VecDeque, hash_map::Entry},
    net::SocketAddr,
};

use anyhow::{Context as _, anyhow};
use aya::Ebpf;
use lb_common::{
    Backend, MAGLEV_SLOTS, MAX_BACKENDS, MAX_SERVICES, Service, ServiceKey,
    backend::{BACKEND_F_FAIL_AT_ONCE, BACKEND_F_FAILED, BACKEND_F_LOCAL, BACKEND_F_NO_NEW_FLOWS},
    filter::{
        self, ADDRESS_SLOTS, ROLE_BACKEND, ROLE_REPLY_SERVICE, ROLE_STATELESS, ROLE_VIP,
        address_slot,
    },
    flow::NextHop,
    load,
    maglev::{self, Candidate},
    service::{
        NO_FALLBACK, SCHED_LEAST_CONN, SCHED_LEAST_TIME, SCHED_MAGLEV, SCHED_RANDOM_TWO,
        SCHED_ROUND_ROBIN, SERVICE_F_DNAT, SERVICE_F_DSR, SERVICE_F_HASH_SOURCE,
        SERVICE_F_NEXT_ON_ERROR, SERVICE_F_NEXT_ON_TIMEOUT, SERVICE_F_SYN_PROXY,
        SERVICE_SCHED_SHIFT, ServiceSlot,
    },
};

use super::{mapped, maps};
use crate::{
    config::{HashPolicy, Mode, NextUpstream, Protocol, Scheduler},
    desired::{Desired, DesiredBackend, DesiredService, service_key},
    slots::{Range, SlotAllocator},
};

/// What userspace knows of the maps' services and backends.
#[derive(Debug)]
pub(super) struct Tables {
    pub(super) services: HashMap<String, ServiceState>,
    pub(super) backend_ids: IdPool,
    pub(super) slots: SlotAllocator,
    /// `LOCAL_PORTS` as last written; `None` before the first write.
    pub(super) local_ports: Option<Vec<u64>>,
    /// The address of every backend id handed out, as its `BACKENDS` entry
    /// holds it (flows may name a released id until it is reused); read
    /// from the map at the first write.
    pub(super) backend_addrs: Option<HashMap<u32, [u8; 16]>>,
    /// `ADDRESS_ROLES` as last written; `None` before the first write.
    pub(super) address_roles: Option<Vec<u8>>,
    /// `REPLY_SERVICES` as last written; `None` before the first write.
    pub(super) reply_services: Option<HashMap<ServiceKey, ServiceKey>>,
    /// Whether `SERVICE_SLOTS` of ids no service uses were cleared (once,
    /// at the first write: an earlier agent may have left some).
    pub(super) slots_cleared: bool,
}

/// A service as programmed into the maps.
#[derive(Clone, Debug)]
pub(super) struct ServiceState {
    pub(super) id: u32,
    /// Its key in `SERVICES`.
    pub(super) key: ServiceKey,
    /// Two tables' worth of slots; `active` says which half packets use.
    /// Adopted from an earlier agent, it may be the active half alone, or
    /// empty: the next write moves the table into a range of its own.
    pub(super) range: Range,
    pub(super) active: u32,
    /// What each half of the range holds (backend id per slot), as far as
    /// known: only changed slots are written. Not kept across restarts.
    pub(super) halves: [Vec<u32>; 2],
    /// Whether the active table is empty (no usable backend).
    pub(super) empty: bool,
    /// Backend ids by address.
    pub(super) backends: HashMap<SocketAddr, u32>,
}

impl ServiceState {
    /// A service not written yet, or adopted from an earlier agent.
    pub(super) fn new(id: u32, key: ServiceKey, range: Range, active: u32, empty: bool) -> Self {
        Self {
            id,
            key,
            range,
            active,
            halves: Default::default(),
            empty,
            backends: HashMap::new(),
        }
    }

    fn table(&self) -> &[u32] {
        if self.empty {
            &[]
        } else {
            &self.halves[self.active as usize]
        }
    }

    /// The first slot of `half` of the range.
    fn half_start(&self, half: u32) -> u32 {
        self.range.start + half * (self.range.len / 2)
    }
}

impl Tables {
    pub(super) fn new() -> Self {
        Self {
            services: HashMap::new(),
            backend_ids: IdPool::new(MAX_BACKENDS),
            slots: SlotAllocator::new(MAGLEV_SLOTS),
            local_ports: None,
            backend_addrs: None,
            address_roles: None,
            reply_services: None,
            slots_cleared: false,
        }
    }

    pub(super) fn service(&self, name: &str) -> anyhow::Result<&ServiceState> {
        self.services
            .get(name)
            .ok_or_else(|| anyhow!("no service named {name:?}"))
    }

    /// The id of `backend` in `service`.
    pub(super) fn backend_id(&self, service: &str, backend: SocketAddr) -> anyhow::Result<u32> {
        self.service(service)?
            .backends
            .get(&backend)
            .copied()
            .ok_or_else(|| anyhow!("service {service:?} has no backend {backend}"))
    }

    /// Makes the maps serve exactly `desired`'s services.
    pub(super) fn apply(&mut self, ebpf: &mut Ebpf, desired: &Desired) -> anyhow::Result<()> {
        self.load_backend_addrs(ebpf)?;
        self.load_address_roles(ebpf)?;
        self.load_reply_services(ebpf)?;
        // The address filter lets the new services' frames through before
        // their entries exist, and stops a removed service's only after.
        let mut before = self.address_roles.clone().expect("loaded above");
        let addrs = self.backend_addrs.as_ref().expect("loaded above");
        let backends = desired
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .map(|b| mapped(b.address.ip()))
            .chain(addrs.values().copied());
        let reply_services = self.reply_services.as_ref().expect("loaded above");
        let reply_backends = desired
            .services
            .iter()
            .filter(|s| s.mode == Mode::Dnat)
            .flat_map(|s| &s.backends)
            .map(|b| mapped(b.address.ip()))
            .chain(reply_services.keys().map(|key| key.addr));
        merge_roles(
            &mut before,
            &address_roles(desired, backends, reply_backends),
        );
        self.write_address_roles(ebpf, before)?;
        self.apply_services(ebpf, desired)?;
        self.clear_unused_slots(ebpf)?;
        let addrs = self.backend_addrs.as_ref().expect("loaded above");
        let reply_services = self.reply_services.as_ref().expect("written above");
        let after = address_roles(
            desired,
            addrs.values().copied(),
            reply_services.keys().map(|key| key.addr),
        );
        self.write_address_roles(ebpf, after)
    }

    fn apply_services(&mut self, ebpf: &mut Ebpf, desired: &Desired) -> anyhow::Result<()> {
        let wanted: HashSet<&str> = desired.services.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .services
            .keys()
            .filter(|name| !wanted.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove_service(ebpf, &name)?;
        }
        for service in &desired.services {
            self.apply_service(ebpf, service)
                .with_context(|| format!("service {:?}", service.name))?;
        }
        self.write_stateless_replies(ebpf, desired)?;
        self.write_reply_services(ebpf, desired)?;
        self.write_local_ports(ebpf, desired)
    }

    /// Reads `REPLY_SERVICES` back from the map, once: an earlier agent's
    /// entries name the flows it made without a reply entry.
    fn load_reply_services(&mut self, ebpf: &Ebpf) -> anyhow::Result<()> {
        if self.reply_services.is_none() {
            self.reply_services = Some(maps::reply_services(ebpf)?.entries().collect());
        }
        Ok(())
    }

    /// `REPLY_SERVICES`: each backend of a `dnat` service → the service's
    /// key, so that its flows keep no reply entry (their replies find the
    /// flow by that key). An entry stays while a `dnat` service has that key
    /// and the backend is still one of it or some backend id handed out
    /// still has its address: flows may name a removed backend's id until
    /// it is reused, and their replies need the entry. A backend (address,
    /// port, protocol) in two `dnat` services keeps the one it has, else
    /// goes to the one with the lowest id; the other's flows keep reply
    /// entries.
    fn write_reply_services(&mut self, ebpf: &mut Ebpf, desired: &Desired) -> anyhow::Result<()> {
        let mut dnat: Vec<(u32, &DesiredService)> = Vec::new();
        for service in desired.services.iter().filter(|s| s.mode == Mode::Dnat) {
            dnat.push((self.service(&service.name)?.id, service));
        }
        dnat.sort_by_key(|(id, _)| *id);
        let members: HashMap<ServiceKey, HashSet<ServiceKey>> = dnat
            .iter()
            .map(|(_, service)| {
                let proto = lb_common::IpProto::from(service.protocol) as u8;
                let backends = service
                    .backends
                    .iter()
                    .map(|b| service_key(b.address.ip(), b.address.port(), proto))
                    .collect();
                (service.key(), backends)
            })
            .collect();
        let handed_out: HashSet<[u8; 16]> = self
            .backend_addrs
            .as_ref()
            .expect("loaded in apply")
            .values()
            .copied()
            .collect();
        let present = self.reply_services.clone().expect("loaded in apply");
        let mut wanted: HashMap<ServiceKey, ServiceKey> = present
            .iter()
            .filter(|(backend, vip)| {
                members.get(*vip).is_some_and(|backends| {
                    backends.contains(*backend) || handed_out.contains(&backend.addr)
                })
            })
            .map(|(backend, vip)| (*backend, *vip))
            .collect();
        for (_, service) in &dnat {
            for backend in &members[&service.key()] {
                wanted.entry(*backend).or_insert(service.key());
            }
        }
        // On an error the map is part old, part new: with no record the next
        // write reads it back.
        self.reply_services = None;
        let mut map = maps::reply_services_mut(ebpf)?;
        for (key, owner) in &present {
            if wanted.get(key) != Some(owner) {
                map.remove(key)?;
            }
        }
        for (key, owner) in &wanted {
            if present.get(key) != Some(owner) {
                map.insert(*key, *owner)?;
            }
        }
        self.reply_services = Some(wanted);
        Ok(())
    }

    /// `STATELESS_REPLIES` for the services with `stateless_replies`: each
    /// backend's (address, port, protocol) → the service's id. Compared
    /// with what the map holds (an earlier agent's entries included).
    fn write_stateless_replies(&self, ebpf: &mut Ebpf, desired: &Desired) -> anyhow::Result<()> {
        let mut wanted = HashMap::new();
        for service in desired.services.iter().filter(|s| s.stateless_replies) {
            let id = self.service(&service.name)?.id;
            let proto = lb_common::IpProto::from(service.protocol) as u8;
            for backend in &service.backends {
                let ip = backend.address.ip();
                wanted.insert(service_key(ip, backend.address.port(), proto), id);
            }
        }
        let mut map = maps::stateless_replies_mut(ebpf)?;
        let present: Vec<(ServiceKey, u32)> = map.entries().collect();
        for (key, _) in &present {
            if !wanted.contains_key(key) {
                map.remove(key)?;
            }
        }
        for (key, id) in wanted {
            if !present.contains(&(key, id)) {
                map.insert(key, id)?;
            }
        }
        Ok(())
    }

    /// Clears every next hop remembered towards a backend, so that the next
    /// packet to each looks its route up again: after a change to the
    /// interfaces XDP may send out of, which the remembered ones predate.
    pub(super) fn forget_next_hops(&mut self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        let mut hops = maps::backend_hops_mut(ebpf)?;
        for id in 0..self.backend_ids.next {
            hops.set(id, NextHop::default())?;
        }
        Ok(())
    }

    /// Clears the `SERVICE_SLOTS` entries of ids no service uses, the first
    /// time only; later a service's slot is cleared when it goes.
    fn clear_unused_slots(&mut self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        if self.slots_cleared {
            return Ok(());
        }
        let used: HashSet<u32> = self.services.values().map(|s| s.id).collect();
        let mut slots = maps::service_slots_mut(ebpf)?;
        for id in (0..MAX_SERVICES).filter(|id| !used.contains(id)) {
            slots.set(id, ServiceSlot::default())?;
        }
        self.slots_cleared = true;
        Ok(())
    }

    /// Reads the address of every backend id handed out from `BACKENDS`,
    /// once: after a restart, flows may name ids this agent has not written.
    fn load_backend_addrs(&mut self, ebpf: &Ebpf) -> anyhow::Result<()> {
        if self.backend_addrs.is_some() {
            return Ok(());
        }
        let backends = maps::backends(ebpf)?;
        let mut addrs = HashMap::new();
        for id in 0..self.backend_ids.next {
            let entry = backends.get(id)?;
            if entry.addr != [0; 16] {
                addrs.insert(id, entry.addr);
            }
        }
        self.backend_addrs = Some(addrs);
        Ok(())
    }

    /// Reads the address filter back from its map, unless the last write
    /// left a record of it: over pinned maps, the first apply then keeps
    /// the earlier agent's roles until the services it removes are gone.
    fn load_address_roles(&mut self, ebpf: &Ebpf) -> anyhow::Result<()> {
        if self.address_roles.is_some() {
            return Ok(());
        }
        let map = maps::address_roles(ebpf)?;
        let words = (0..map.len())
            .map(|i| map.get(i))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        self.address_roles = Some(filter::unpack(&words));
        Ok(())
    }

    /// Makes `ADDRESS_ROLES` hold `roles` (a byte per slot), writing only
    /// the entries that changed since the last write (all of them the
    /// first time).
    fn write_address_roles(&mut self, ebpf: &mut Ebpf, roles: Vec<u8>) -> anyhow::Result<()> {
        let words = filter::pack(&roles);
        let old = self.address_roles.take().as_deref().map(filter::pack);
        let mut map = maps::address_roles_mut(ebpf)?;
        for (i, word) in words.iter().enumerate() {
            if old.as_ref().is_none_or(|old| old.get(i) != Some(word)) {
                // On an error the map is part old, part new: with no record
                // (`take` above) the next write rewrites every entry.
                map.set(i as u32, *word)?;
            }
        }
        self.address_roles = Some(roles);
        Ok(())
    }

    /// Makes `LOCAL_PORTS` hold the ports of `desired`'s local backends,
    /// writing only the words that changed since the last write.
    fn write_local_ports(&mut self, ebpf: &mut Ebpf, desired: &Desired) -> anyhow::Result<()> {
        let mut words = vec![0u64; lb_common::LOCAL_PORT_WORDS as usize];
        for backend in desired.services.iter().flat_map(|s| &s.backends) {
            if crate::local::is_local(backend.address.ip()) {
                let port = usize::from(backend.address.port());
                words[port / 64] |= 1 << (port % 64);
            }
        }
        let mut map = maps::local_ports_mut(ebpf)?;
        for (i, word) in words.iter().enumerate() {
            if self.local_ports.as_ref().is_none_or(|old| old[i] != *word) {
                map.set(i as u32, *word)?;
            }
        }
        self.local_ports = Some(words);
        Ok(())
    }

    /// The backend that the active table of `service` gives a flow hash.
    pub(super) fn lookup(&self, service: &str, hash: u32) -> anyhow::Result<Option<SocketAddr>> {
        let state = self.service(service)?;
        let table = state.table();
        if table.is_empty() {
            return Ok(None);
        }
        let id = table[hash as usize % table.len()];
        Ok(state
            .backends
            .iter()
            .find(|(_, b)| **b == id)
            .map(|(addr, _)| *addr))
    }

    fn apply_service(&mut self, ebpf: &mut Ebpf, service: &DesiredService) -> anyhow::Result<()> {
        let key = service.key();
        // A renamed key or a resized table needs a fresh entry or range.
        if let Some(old) = self.services.get(&service.name)
            && old.key != key
        {
            maps::services_mut(ebpf)?.remove(&old.key)?;
        }
        let needs_range = self
            .services
            .get(&service.name)
            .is_none_or(|old| old.range.len != 2 * service.table_size);
        if needs_range {
            let range = self.slots.allocate(2 * service.table_size).ok_or_else(|| {
                anyhow!(
                    "no room for two tables of {} slots ({} of {} slots in use); lower table_size",
                    service.table_size,
                    self.slots.used(),
                    MAGLEV_SLOTS
                )
            })?;
            match self.services.get_mut(&service.name) {
                Some(state) => {
                    // The service entry still points into the old range
                    // until the switch below; free it only after that.
                    let old = std::mem::replace(&mut state.range, range);
                    state.active = 1; // so the first write goes to half 0
                    state.halves = Default::default();
                    self.write_service(ebpf, &service.name, service)?;
                    self.slots.free(old);
                    return Ok(());
                }
                None => {
                    let id = self.free_service_id()?;
                    let state = ServiceState::new(id, key, range, 1, true);
                    self.services.insert(service.name.clone(), state);
                }
            }
        }
        self.write_service(ebpf, &service.name, service)
    }

    /// Writes backends and the new table into the inactive half, then
    /// switches the service entry to it.
    fn write_service(
        &mut self,
        ebpf: &mut Ebpf,
        name: &str,
        service: &DesiredService,
    ) -> anyhow::Result<()> {
        let mut state = self.services.remove(name).expect("service state exists");
        let result = self.write_service_state(ebpf, &mut state, service);
        self.services.insert(name.to_owned(), state);
        result
    }

    fn write_service_state(
        &mut self,
        ebpf: &mut Ebpf,
        state: &mut ServiceState,
        service: &DesiredService,
    ) -> anyhow::Result<()> {
        self.backend_ids.assign(state, service)?;
        let addrs = self.backend_addrs.get_or_insert_default();
        write_backends(ebpf, state, service, addrs)?;
        let table = match service.scheduler {
            Scheduler::Maglev | Scheduler::RandomTwo => build_table(state, service)?,
            Scheduler::RoundRobin => round_robin_table(state, service),
            Scheduler::LeastConn | Scheduler::LeastTime => usable_list(state, service),
        };
        let half = write_table(ebpf, state, &table)?;
        let entry = service_entry(state, service, &table, half);
        maps::service_slots_mut(ebpf)?.set(
            state.id,
            ServiceSlot {
                key: service.key(),
                _pad: 0,
                service: entry,
            },
        )?;
        maps::services_mut(ebpf)?.insert(service.key(), entry)?;
        state.key = service.key();
        state.active = half;
        state.empty = table.is_empty();
        if !table.is_empty() {
            state.halves[half as usize] = table;
        }
        Ok(())
    }

    fn remove_service(&mut self, ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
        let Some(state) = self.services.remove(name) else {
            return Ok(());
        };
        maps::services_mut(ebpf)?.remove(&state.key)?;
        maps::service_slots_mut(ebpf)?.set(state.id, ServiceSlot::default())?;
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
}

/// Writes the `BACKENDS` entry of every backend of `service`: its address
/// and whether it is failed (its flows move) or takes no new flows. An id
/// given to a new address forgets the next hop remembered for the old one.
fn write_backends(
    ebpf: &mut Ebpf,
    state: &ServiceState,
    service: &DesiredService,
    addrs: &mut HashMap<u32, [u8; 16]>,
) -> anyhow::Result<()> {
    for backend in &service.backends {
        let id = state.backends[&backend.address];
        let addr = mapped(backend.address.ip());
        if addrs.insert(id, addr) != Some(addr) {
            maps::backend_hops_mut(ebpf)?.set(id, NextHop::default())?;
        }
    }
    let mut backends = maps::backends_mut(ebpf)?;
    for backend in &service.backends {
        let id = state.backends[&backend.address];
        let mut flags = if backend.failed { BACKEND_F_FAILED } else { 0 };
        if backend.no_new_flows {
            flags |= BACKEND_F_NO_NEW_FLOWS;
        }
        if backend.fail_at_once {
            flags |= BACKEND_F_FAIL_AT_ONCE;
        }
        let mut entry = backend_entry(backend.address, flags);
        entry.weight = new_flow_weight(backend);
        entry.max_conns = backend.max_conns;
        backends.set(id, entry)?;
    }
    Ok(())
}

/// The service's Maglev table over its backends by weight (a failed one,
/// or one taking no new flows, gets no slot), as backend ids; empty if none
/// has a slot. The backends go in by address, not in the configuration's
/// order, so every node with the same backends and weights builds the same
/// table, whatever order they were listed or added in (a flow that ECMP
/// moves to another node keeps its backend).
fn build_table(state: &ServiceState, service: &DesiredService) -> anyhow::Result<Vec<u32>> {
    let mut order: Vec<(Vec<u8>, &DesiredBackend)> = service
        .backends
        .iter()
        .map(|b| (b.address.to_string().into_bytes(), b))
        .collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let candidates: Vec<Candidate<'_>> = order
        .iter()
        .map(|(identity, b)| Candidate {
            identity,
            weight: new_flow_weight(b),
        })
        .collect();
    let table = maglev::build_table(&candidates, service.table_size).map_err(|e| anyhow!("{e}"))?;
    Ok(table
        .map(|t| {
            t.iter()
                .map(|&i| state.backends[&order[i as usize].1.address])
                .collect()
        })
        .unwrap_or_default())
}

/// The weight a backend gets new flows by: none if failed or taken out.
fn new_flow_weight(backend: &DesiredBackend) -> u32 {
    if backend.failed || backend.no_new_flows {
        0
    } else {
        backend.weight
    }
}

/// One cycle of smooth weighted round robin over the service's backends
/// (`round_robin`), as backend ids, at most `table_size` long.
fn round_robin_table(state: &ServiceState, service: &DesiredService) -> Vec<u32> {
    let weights: Vec<u32> = service.backends.iter().map(new_flow_weight).collect();
    load::smooth_round_robin(&weights, service.table_size as usize)
        .into_iter()
        .map(|i| state.backends[&service.backends[i].address])
        .collect()
}

/// Each backend that takes new flows, once (`least_conn`, `least_time`:
/// two are drawn from it uniformly, and compared per unit of weight).
fn usable_list(state: &ServiceState, service: &DesiredService) -> Vec<u32> {
    service
        .backends
        .iter()
        .filter(|b| new_flow_weight(b) > 0)
        .map(|b| state.backends[&b.address])
        .collect()
}

/// Puts `table` into `MAGLEV`: an unchanged one stays in the active half; a
/// changed one goes into the other half, writing only the slots that differ
/// from what that half held before. Returns the half that holds it.
fn write_table(ebpf: &mut Ebpf, state: &ServiceState, table: &[u32]) -> anyhow::Result<u32> {
    let unchanged = !table.is_empty() && state.halves[state.active as usize] == table;
    if unchanged {
        return Ok(state.active);
    }
    let half = 1 - state.active;
    if !table.is_empty() {
        let start = state.half_start(half);
        let old = &state.halves[half as usize];
        let mut slots = maps::maglev_mut(ebpf)?;
        for (i, &id) in table.iter().enumerate() {
            if old.get(i) != Some(&id) {
                slots.set(start + i as u32, id)?;
            }
        }
    }
    Ok(half)
}

/// The `SERVICES` entry of `service` with `table` in `half` of its range.
fn service_entry(
    state: &ServiceState,
    service: &DesiredService,
    table: &[u32],
    half: u32,
) -> Service {
    let mode = match service.mode {
        Mode::Nat => 0,
        Mode::Dnat => SERVICE_F_DNAT,
        Mode::Dsr => SERVICE_F_DNAT | SERVICE_F_DSR,
    };
    let hash = match service.hash {
        HashPolicy::FiveTuple => 0,
        HashPolicy::SourceIp => SERVICE_F_HASH_SOURCE,
    };
    let next_upstream = service
        .next_upstream
        .iter()
        .map(|on| match on {
            NextUpstream::Error => SERVICE_F_NEXT_ON_ERROR,
            NextUpstream::Timeout => SERVICE_F_NEXT_ON_TIMEOUT,
        })
        .fold(0, |flags, flag| flags | flag);
    // A local backend's handshake leaves through the tc egress program,
    // which does not take part in the data plane's own handshakes.
    // Nor can a `dsr` service's: its backends answer the clients directly.
    let syn_proxy = if service.protocol == Protocol::Tcp
        && service.mode != Mode::Dsr
        && !service
            .backends
            .iter()
            .any(|b| crate::local::is_local(b.address.ip()))
    {
        SERVICE_F_SYN_PROXY
    } else {
        0
    };
    let scheduler = match service.scheduler {
        Scheduler::Maglev => SCHED_MAGLEV,
        Scheduler::RoundRobin => SCHED_ROUND_ROBIN,
        Scheduler::LeastConn => SCHED_LEAST_CONN,
        Scheduler::RandomTwo => SCHED_RANDOM_TWO,
        Scheduler::LeastTime => SCHED_LEAST_TIME,
    } << SERVICE_SCHED_SHIFT;
    let fallback = service
        .backends
        .iter()
        .find(|b| b.standby)
        .map_or(NO_FALLBACK, |b| state.backends[&b.address]);
    Service {
        id: state.id,
        flags: mode | hash | next_upstream | syn_proxy | scheduler,
        table_size: table.len() as u32,
        table_start: state.half_start(half),
        snat_addr: service.snat.map(mapped).unwrap_or([0; 16]),
        fallback,
        _pad: 0,
    }
}

/// The address filter for `desired`'s service addresses and `backends`:
/// `ROLE_*` bits by slot (`lb_common::filter`).
fn address_roles(
    desired: &Desired,
    backends: impl Iterator<Item = [u8; 16]>,
    reply_backends: impl Iterator<Item = [u8; 16]>,
) -> Vec<u8> {
    let mut roles = vec![0u8; ADDRESS_SLOTS as usize];
    for service in &desired.services {
        roles[address_slot(&service.key().addr) as usize] |= ROLE_VIP;
        if service.stateless_replies {
            for backend in &service.backends {
                roles[address_slot(&mapped(backend.address.ip())) as usize] |= ROLE_STATELESS;
            }
        }
    }
    for addr in backends {
        roles[address_slot(&addr) as usize] |= ROLE_BACKEND;
    }
    for addr in reply_backends {
        roles[address_slot(&addr) as usize] |= ROLE_REPLY_SERVICE;
    }
    roles
}

/// Adds `extra`'s roles to `roles` (empty: none yet).
fn merge_roles(roles: &mut Vec<u8>, extra: &[u8]) {
    roles.resize(extra.len(), 0);
    for (role, more) in roles.iter_mut().zip(extra) {
        *role |= more;
    }
}

fn backend_entry(address: SocketAddr, flags: u16) -> Backend {
    let local = if crate::local::is_local(address.ip()) {
        BACKEND_F_LOCAL
    } else {
        0
    };
    Backend {
        addr: mapped(address.ip()),
        port_be: address.port().to_be(),
        flags: flags | local,
        weight: 0,
        max_conns: 0,
    }
}

/// Backend ids handed out oldest-released first, so an id a live flow may
/// still name is not reused at once.
#[derive(Clone, Debug)]
pub(super) struct IdPool {
    /// The next id never handed out.
    pub(super) next: u32,
    limit: u32,
    /// Ids given back, oldest first.
    pub(super) released: VecDeque<u32>,
}

impl IdPool {
    pub(super) fn new(limit: u32) -> Self {
        Self::resume(limit, 0, VecDeque::new())
    }

    /// A pool that has handed out the ids below `next`, of which `released`
    /// came back.
    pub(super) fn resume(limit: u32, next: u32, released: VecDeque<u32>) -> Self {
        Self {
            next,
            limit,
            released,
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

    /// Gives `state` an id for every backend of `service`: existing ones
    /// keep theirs, new addresses get one, and those of removed backends
    /// come back to the pool.
    fn assign(&mut self, state: &mut ServiceState, service: &DesiredService) -> anyhow::Result<()> {
        let addresses: HashSet<SocketAddr> = service.backends.iter().map(|b| b.address).collect();
        for (addr, id) in state.backends.clone() {
            if !addresses.contains(&addr) {
                state.backends.remove(&addr);
                self.release(id);
            }
        }
        for backend in &service.backends {
            if let Entry::Vacant(slot) = state.backends.entry(backend.address) {
                let id = self
                    .take()
                    .ok_or_else(|| anyhow!("more than {MAX_BACKENDS} backends in all"))?;
                slot.insert(id);
            }
        }
        Ok(())
    }
}
