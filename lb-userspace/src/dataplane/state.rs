//! What a restarted agent carries on with: the ids and slot ranges the
//! pinned maps' contents use.
//!
//! The agent writes a [`DataplaneState`] beside its pins after every change
//! to the maps, and reads it when it starts over pinned maps. The file has a
//! version number and types of its own (not the configuration's), read
//! tolerantly. A file that cannot be used (none, garbled, another version,
//! or not what the pinned maps hold) is no reason to drop the maps: the ids
//! are then re-derived from the pinned maps and the configuration
//! (`derive`), and the attachment is taken over all the same.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::Context as _;
use aya::Ebpf;
use lb_common::{Backend, MAGLEV_SLOTS, MAX_BACKENDS, Service, ServiceKey};
use serde::{Deserialize, Serialize};

use super::{
    load::Pins,
    maps::{self, MapName},
    tables::{IdPool, ServiceState, Tables},
    unmapped,
};
use crate::{
    desired::{Desired, service_key},
    slots::{Range, SlotAllocator},
};

/// The version of the state file this agent writes and reads.
pub const STATE_VERSION: u32 = 2;

/// The ids and slot ranges the maps' contents use, as the state file holds
/// them (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataplaneState {
    version: u32,
    services: Vec<SavedService>,
    /// The next backend id never handed out.
    next_backend_id: u32,
    /// Backend ids given back, oldest first.
    released_backend_ids: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedService {
    name: String,
    /// Its key in `SERVICES`: VIP, port and IP protocol number.
    vip: IpAddr,
    port: u16,
    protocol: u8,
    id: u32,
    /// Its two tables' slots in `MAGLEV`, and the half packets use.
    range: Range,
    active: u32,
    /// Whether the active table is empty (no usable backend).
    empty: bool,
    backends: Vec<SavedBackend>,
}

/// A backend's id. (Files written before the desired state also hold
/// `failed`, always false for an agent's backends: ignored, as any field
/// this agent does not know.)
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedBackend {
    address: SocketAddr,
    id: u32,
}

/// Why a state file cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnusableState(pub String);

impl fmt::Display for UnusableState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnusableState {}

impl DataplaneState {
    /// Reads the state file at `path`; the error says why it cannot be used.
    pub fn read(path: &Path) -> Result<Self, UnusableState> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(UnusableState("there is no state file".to_owned()))
            }
            Err(e) => Err(UnusableState(format!("cannot read the state file: {e}"))),
        }
    }

    fn parse(bytes: &[u8]) -> Result<Self, UnusableState> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| UnusableState(format!("the state file is not JSON: {e}")))?;
        let version = match value.get("version") {
            Some(v) => v.as_u64().ok_or_else(|| {
                UnusableState(format!("the state file's version is {v}, not a number"))
            })?,
            // What agents wrote before the file had a version.
            None if value.get("services").is_some() => 1,
            None => return Err(UnusableState("the state file has no version".to_owned())),
        };
        if version != u64::from(STATE_VERSION) {
            let whose = match version {
                1 => "written before state files had a version",
                v if v < u64::from(STATE_VERSION) => "written by an older agent",
                _ => "written by a newer agent",
            };
            return Err(UnusableState(format!(
                "state file version {version}, this agent reads {STATE_VERSION}: {whose}"
            )));
        }
        serde_json::from_value(value).map_err(|e| {
            UnusableState(format!(
                "state file version {STATE_VERSION} that does not parse: {e}"
            ))
        })
    }

    /// Writes it to `path`, through a temporary file beside it, so that a
    /// reader never sees half of it.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// The state of `tables`.
    pub(super) fn export(tables: &Tables) -> Self {
        let mut services: Vec<SavedService> = tables
            .services
            .iter()
            .map(|(name, state)| {
                let mut backends: Vec<SavedBackend> = state
                    .backends
                    .iter()
                    .map(|(&address, &id)| SavedBackend { address, id })
                    .collect();
                backends.sort_by_key(|b| b.id);
                SavedService {
                    name: name.clone(),
                    vip: unmapped(state.key.addr),
                    port: u16::from_be(state.key.port_be),
                    protocol: state.key.proto,
                    id: state.id,
                    range: state.range,
                    active: state.active,
                    empty: state.empty,
                    backends,
                }
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            version: STATE_VERSION,
            services,
            next_backend_id: tables.backend_ids.next,
            released_backend_ids: tables.backend_ids.released.iter().copied().collect(),
        }
    }

    /// Why this state does not describe the pinned maps (those `pins` says
    /// were reused), if it does not.
    fn mismatch(&self, ebpf: &Ebpf, pins: &Pins) -> anyhow::Result<Option<String>> {
        if self.next_backend_id > MAX_BACKENDS
            || self
                .released_backend_ids
                .iter()
                .any(|&id| id >= self.next_backend_id)
        {
            return Ok(Some(format!(
                "backend ids beyond the {MAX_BACKENDS} of BACKENDS"
            )));
        }
        let services = pins
            .reused(MapName::Services)
            .then(|| maps::services(ebpf))
            .transpose()?;
        let backends = pins
            .reused(MapName::Backends)
            .then(|| maps::backends(ebpf))
            .transpose()?;
        let mut slots = SlotAllocator::new(MAGLEV_SLOTS);
        for s in &self.services {
            let name = &s.name;
            if s.range.len % 2 != 0 || s.active > 1 || !slots.is_free(s.range) {
                return Ok(Some(format!(
                    "service {name:?}: slots {}+{} are no range of its own in MAGLEV",
                    s.range.start, s.range.len
                )));
            }
            slots.reserve(s.range);
            let half = s.range.len / 2;
            let expected = (
                s.id,
                if s.empty { 0 } else { half },
                s.range.start + s.active * half,
            );
            if let Some(map) = &services {
                match map.get(&s.key())? {
                    None => return Ok(Some(format!("service {name:?}: not in SERVICES"))),
                    Some(e) if (e.id, e.table_size, e.table_start) != expected => {
                        return Ok(Some(format!(
                            "service {name:?}: SERVICES has id {}, a table of {} slots at {}; \
                             the state file says id {}, {} slots at {}",
                            e.id, e.table_size, e.table_start, expected.0, expected.1, expected.2
                        )));
                    }
                    Some(_) => {}
                }
            }
            for b in &s.backends {
                if b.id >= MAX_BACKENDS {
                    return Ok(Some(format!(
                        "backend {} of {name:?}: id {}",
                        b.address, b.id
                    )));
                }
                if let Some(map) = &backends {
                    let held = address_of(&map.get(b.id)?);
                    if held != Some(b.address) {
                        let held = held.map_or("nothing".to_owned(), |a| a.to_string());
                        return Ok(Some(format!(
                            "backend {} of {name:?}: its id {} holds {held} in BACKENDS",
                            b.address, b.id
                        )));
                    }
                }
            }
        }
        Ok(None)
    }

    fn into_tables(self) -> Tables {
        let mut tables = Tables::new();
        for s in self.services {
            tables.slots.reserve(s.range);
            let mut state = ServiceState::new(s.id, s.key(), s.range, s.active, s.empty);
            for b in s.backends {
                state.backends.insert(b.address, b.id);
            }
            tables.services.insert(s.name, state);
        }
        tables.backend_ids = IdPool::resume(
            MAX_BACKENDS,
            self.next_backend_id,
            self.released_backend_ids.into(),
        );
        tables
    }
}

impl SavedService {
    fn key(&self) -> ServiceKey {
        service_key(self.vip, self.port, self.protocol)
    }
}

/// A `BACKENDS` entry's address; `None` for an entry never written.
fn address_of(entry: &Backend) -> Option<SocketAddr> {
    (entry.addr != [0; 16] || entry.port_be != 0)
        .then(|| SocketAddr::new(unmapped(entry.addr), u16::from_be(entry.port_be)))
}

/// How a restarted agent carries on with the pinned maps, for its log.
#[derive(Clone, Debug)]
pub struct Adoption {
    /// Why the state file was not used, if it was not.
    pub state_problem: Option<UnusableState>,
    /// Where the ids came from and what became of the flow table.
    pub summary: String,
    /// Anything else changed on the way, a line each.
    pub notes: Vec<String>,
}

/// The tables to carry on with over the maps `pins` describes: those of
/// `saved` if it matches the pinned maps, else re-derived from them and
/// `desired`; pinned services `desired` no longer has are removed.
pub(super) fn adopt(
    ebpf: &mut Ebpf,
    pins: &Pins,
    saved: Result<DataplaneState, UnusableState>,
    desired: &Desired,
) -> anyhow::Result<(Tables, Adoption)> {
    let flow_table = if pins.reused(MapName::Flows) && pins.reused(MapName::Replies) {
        "pinned flow table kept"
    } else if pins.flows_carried.is_some() && pins.reused(MapName::Replies) {
        "pinned flow table carried over into the new layout"
    } else if pins
        .replaced
        .iter()
        .any(|r| matches!(r.map, MapName::Flows | MapName::Replies))
    {
        "flow table lost: FLOWS and REPLIES replaced"
    } else {
        "no pinned flow table"
    };
    let problem = match saved {
        Ok(state) => match state.mismatch(ebpf, pins)? {
            None => {
                let adoption = Adoption {
                    state_problem: None,
                    summary: format!("ids and table ranges from the state file; {flow_table}"),
                    notes: Vec::new(),
                };
                return Ok((state.into_tables(), adoption));
            }
            Some(why) => UnusableState(format!(
                "the state file does not match the pinned maps: {why}"
            )),
        },
        Err(problem) => problem,
    };
    let pinned_services: Vec<(ServiceKey, Service)> = if pins.reused(MapName::Services) {
        maps::services(ebpf)?.entries().collect()
    } else {
        Vec::new()
    };
    let pinned_backends = if pins.reused(MapName::Backends) {
        backends_held(ebpf)?
    } else {
        BTreeMap::new()
    };
    let derived = derive(&pinned_services, &pinned_backends, desired);
    let mut services = maps::services_mut(ebpf)?;
    for key in &derived.orphans {
        services.remove(key)?;
    }
    let backends: usize = desired.services.iter().map(|s| s.backends.len()).sum();
    let summary = format!(
        "service and backend ids re-derived from the pinned maps and the configuration \
         ({} of {} services, {} of {backends} backends found in them); {flow_table}",
        derived.services_found,
        desired.services.len(),
        derived.backends_found,
    );
    let adoption = Adoption {
        state_problem: Some(problem),
        summary,
        notes: derived.notes,
    };
    Ok((derived.tables, adoption))
}

/// The address each written `BACKENDS` entry holds, by id.
fn backends_held(ebpf: &Ebpf) -> anyhow::Result<BTreeMap<u32, SocketAddr>> {
    let map = maps::backends(ebpf)?;
    let mut held = BTreeMap::new();
    for id in 0..map.len() {
        if let Some(address) = address_of(&map.get(id)?) {
            held.insert(id, address);
        }
    }
    Ok(held)
}

/// Ids and ranges told from the pinned maps.
#[derive(Debug)]
struct Derived {
    tables: Tables,
    /// `SERVICES` keys of no configured service.
    orphans: Vec<ServiceKey>,
    notes: Vec<String>,
    services_found: usize,
    backends_found: usize,
}

/// The ids and ranges the pinned maps use for the services of `desired`,
/// given `SERVICES`' entries and what `BACKENDS` holds by id:
///
/// - a configured service found in `SERVICES` by its key keeps its id; its
///   range is told from where its live table lies (the range starting or
///   ending with it, whichever holds no other table); where that cannot be
///   told, the live table's slots stay reserved and the next write moves
///   the table to a range of its own;
/// - each of its backends keeps the id whose `BACKENDS` entry holds its
///   address (the lowest unclaimed one if several do: the flows of each of
///   them go to that address anyway); one not found gets a new id;
/// - every other id below the highest one in use is released, so it is
///   reused last.
fn derive(
    pinned_services: &[(ServiceKey, Service)],
    pinned_backends: &BTreeMap<u32, SocketAddr>,
    desired: &Desired,
) -> Derived {
    let configured: HashSet<ServiceKey> = desired.services.iter().map(|s| s.key()).collect();
    let by_key: HashMap<ServiceKey, Service> = pinned_services.iter().copied().collect();
    let live: Vec<Range> = pinned_services
        .iter()
        .filter(|(key, entry)| configured.contains(key) && entry.table_size > 0)
        .map(|(_, entry)| live_table(entry))
        .collect();
    let mut derived = Derived {
        tables: Tables::new(),
        orphans: Vec::new(),
        notes: Vec::new(),
        services_found: 0,
        backends_found: 0,
    };
    // Ids by the address their entry holds, lowest first.
    let mut ids_of: HashMap<SocketAddr, VecDeque<u32>> = HashMap::new();
    for (&id, &address) in pinned_backends {
        ids_of.entry(address).or_default().push_back(id);
    }
    let mut claimed = HashSet::new();
    for service in &desired.services {
        let name = &service.name;
        let Some(entry) = by_key.get(&service.key()) else {
            continue;
        };
        derived.services_found += 1;
        let slots = &mut derived.tables.slots;
        let (range, active) = if entry.table_size == 0 {
            (Range { start: 0, len: 0 }, 0)
        } else {
            let own = live_table(entry);
            match place(slots, own, &live) {
                Some(placed) => placed,
                None if slots.is_free(own) => {
                    derived.notes.push(format!(
                        "service {name:?}: the range around its table cannot be told; \
                         the table moves to a new one"
                    ));
                    (own, 0)
                }
                None => {
                    derived.notes.push(format!(
                        "service {name:?}: its table overlaps another's in MAGLEV; written afresh"
                    ));
                    (Range { start: 0, len: 0 }, 0)
                }
            }
        };
        if range.len > 0 {
            slots.reserve(range);
        }
        let mut state = ServiceState::new(
            entry.id,
            service.key(),
            range,
            active,
            entry.table_size == 0,
        );
        for backend in &service.backends {
            let found = ids_of
                .get_mut(&backend.address)
                .and_then(VecDeque::pop_front);
            if let Some(id) = found {
                claimed.insert(id);
                state.backends.insert(backend.address, id);
                derived.backends_found += 1;
            }
        }
        derived.tables.services.insert(name.clone(), state);
    }
    for (key, _) in pinned_services {
        if !configured.contains(key) {
            derived.orphans.push(*key);
            let vip = SocketAddr::new(unmapped(key.addr), u16::from_be(key.port_be));
            derived.notes.push(format!(
                "the pinned service {vip} (protocol {}) is not in the configuration: removed",
                key.proto
            ));
        }
    }
    let next = pinned_backends.keys().next_back().map_or(0, |id| id + 1);
    let released = (0..next).filter(|id| !claimed.contains(id)).collect();
    derived.tables.backend_ids = IdPool::resume(MAX_BACKENDS, next, released);
    derived
}

/// The slots of a `SERVICES` entry's active table.
fn live_table(entry: &Service) -> Range {
    Range {
        start: entry.table_start,
        len: entry.table_size,
    }
}

/// The range of a service whose active table is `own`, and the half `own`
/// is: the one starting with it or the one ending with it, whichever is
/// free in `slots` and holds none of the `live` tables but its own.
fn place(slots: &SlotAllocator, own: Range, live: &[Range]) -> Option<(Range, u32)> {
    let n = own.len;
    [(Some(own.start), 0), (own.start.checked_sub(n), 1)]
        .into_iter()
        .find_map(|(start, active)| {
            let range = Range {
                start: start?,
                len: n.checked_mul(2)?,
            };
            let alone = live.iter().all(|l| *l == own || !l.overlaps(&range));
            (slots.is_free(range) && alone).then_some((range, active))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(text: &str) -> Desired {
        Desired::from(&crate::config::Config::parse(text).unwrap())
    }

    const TWO_SERVICES: &str = r#"
        [[service]]
        name = "a"
        vip = "10.0.0.1"
        port = 80
        snat = "10.0.1.1"
        table_size = 101
        [[service.backend]]
        address = "10.0.2.1:80"
        [[service.backend]]
        address = "10.0.2.2:80"

        [[service]]
        name = "b"
        vip = "10.0.0.2"
        port = 80
        snat = "10.0.1.1"
        table_size = 101
        [[service.backend]]
        address = "10.0.2.1:80"
    "#;

    fn entry(id: u32, table_start: u32, table_size: u32) -> Service {
        Service {
            id,
            flags: 0,
            table_size,
            table_start,
            snat_addr: [0; 16],
            ..Service::default()
        }
    }

    #[test]
    fn other_versions_and_garbage_say_why() {
        let why = |text: &str| DataplaneState::parse(text.as_bytes()).unwrap_err().0;
        assert!(why("{ garbled").starts_with("the state file is not JSON"));
        assert_eq!(
            why(r#"{"services": {}, "backend_ids": {"next": 0}}"#),
            "state file version 1, this agent reads 2: written before state files had a version"
        );
        assert_eq!(
            why(r#"{"version": 3, "whatever": []}"#),
            "state file version 3, this agent reads 2: written by a newer agent"
        );
        assert!(why(r#"{"version": "two"}"#).contains("not a number"));
        assert!(why("[]").contains("no version"));
        assert!(
            why(r#"{"version": 2, "services": 7}"#)
                .starts_with("state file version 2 that does not parse")
        );
    }

    #[test]
    fn a_written_state_reads_back_and_tolerates_fields_it_does_not_know() {
        let desired = desired(TWO_SERVICES);
        let pinned = [
            (desired.services[0].key(), entry(4, 202, 101)),
            (desired.services[1].key(), entry(5, 0, 101)),
        ];
        let backends = BTreeMap::from([(0, "10.0.2.1:80".parse().unwrap())]);
        let tables = derive(&pinned, &backends, &desired).tables;
        let state = DataplaneState::export(&tables);
        let mut json: serde_json::Value = serde_json::to_value(&state).unwrap();
        json["added_by_a_later_agent"] = serde_json::json!(true);
        json["services"][0]["also_new"] = serde_json::json!({"x": 1});
        let back = DataplaneState::parse(json.to_string().as_bytes()).unwrap();
        let back = DataplaneState::export(&back.into_tables());
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&state).unwrap()
        );
        assert_eq!(back.services[0].vip, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(back.services[0].key(), desired.services[0].key());
    }

    #[test]
    fn ids_and_ranges_are_rederived_from_the_maps() {
        let desired = desired(TWO_SERVICES);
        let orphan = ServiceKey::v4([10, 0, 0, 9], 80u16.to_be(), 6);
        // a: live table in the second half of [0, 202); b: in the first
        // half of [202, 404). The orphan's table sits at 404.
        let pinned = [
            (desired.services[0].key(), entry(3, 101, 101)),
            (desired.services[1].key(), entry(7, 202, 101)),
            (orphan, entry(1, 404, 101)),
        ];
        // Backend 10.0.2.1:80 holds ids 2 (service a) and 5 (service b);
        // id 4 is stale; 10.0.2.2:80 is not there.
        let backends = BTreeMap::from([
            (2, "10.0.2.1:80".parse().unwrap()),
            (4, "10.0.9.9:80".parse().unwrap()),
            (5, "10.0.2.1:80".parse().unwrap()),
        ]);
        let derived = derive(&pinned, &backends, &desired);
        let a = &derived.tables.services["a"];
        assert_eq!(
            (a.id, a.range, a.active),
            (3, Range { start: 0, len: 202 }, 1)
        );
        assert_eq!(a.backends.len(), 1);
        assert_eq!(a.backends[&"10.0.2.1:80".parse().unwrap()], 2);
        let b = &derived.tables.services["b"];
        assert_eq!(
            (b.id, b.range, b.active),
            (
                7,
                Range {
                    start: 202,
                    len: 202
                },
                0
            )
        );
        assert_eq!(b.backends[&"10.0.2.1:80".parse().unwrap()], 5);
        assert_eq!(derived.orphans, [orphan]);
        assert_eq!((derived.services_found, derived.backends_found), (2, 2));
        let ids = &derived.tables.backend_ids;
        assert_eq!(ids.next, 6);
        assert_eq!(ids.released, [0, 1, 3, 4]);
    }

    #[test]
    fn a_table_whose_range_cannot_be_told_keeps_its_slots_until_it_moves() {
        let desired = desired(TWO_SERVICES);
        // a's live table starts at 0 and b's right after it: a's range
        // can only be [0, 202), which holds b's table.
        let pinned = [
            (desired.services[0].key(), entry(0, 0, 101)),
            (desired.services[1].key(), entry(1, 101, 101)),
        ];
        let derived = derive(&pinned, &BTreeMap::new(), &desired);
        let a = &derived.tables.services["a"];
        assert_eq!(a.range, Range { start: 0, len: 101 });
        let b = &derived.tables.services["b"];
        assert_eq!(
            (b.range, b.active),
            (
                Range {
                    start: 101,
                    len: 202
                },
                0
            )
        );
        assert_eq!(derived.notes.len(), 1, "{:?}", derived.notes);
        assert!(derived.tables.backend_ids.released.is_empty());
    }
}
