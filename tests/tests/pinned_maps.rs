//! Pinned maps left by another build of the agent: a map is reused only if
//! its type, key size, value size and entries are this object's; any other
//! is replaced and named, the flow table whole, and with `BACKENDS` (its
//! flows name backends by id there). The flow table's entries may differ
//! from the asked capacity: it is kept.

use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapInfo, PerCpuArray};
use lb_common::{
    Flow, FlowKey, GlobalCounter, MAX_BACKENDS, Service, ServiceKey,
    counters::GLOBAL_COUNTERS,
    filter,
    flow::{FLOW_ESTABLISHED, FLOW_SIZE_WITHOUT_CLIENT_HOP, NextHop},
};
use serde_json::Value;
use xlb::{
    config::Config,
    dataplane::{Dataplane, DataplaneState, LoadOptions, MapName},
    desired::Desired,
};
use xlb_tests::require_root;

/// A pin directory of its own on bpffs, emptied and removed when dropped.
struct PinDir(PathBuf);

impl PinDir {
    fn new(test: &str) -> Self {
        require_root();
        xlb::xdp::ensure_bpffs().unwrap();
        let dir = Path::new(xlb::xdp::BPF_FS)
            .join("xlb-test")
            .join(format!("{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn pin(&self, map: MapName) -> PathBuf {
        self.0.join(map.as_str())
    }

    fn options(&self, flow_capacity: u32) -> LoadOptions {
        LoadOptions {
            flow_capacity,
            pin_dir: Some(self.0.clone()),
            ..LoadOptions::default()
        }
    }

    /// The pinned map's kernel id and entries.
    fn pinned(&self, map: MapName) -> (u32, u32) {
        let info = MapInfo::from_pin(self.pin(map)).unwrap();
        (info.id(), info.max_entries())
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
        let _ = self.0.parent().map(std::fs::remove_dir);
    }
}

#[test]
fn a_pinned_map_of_another_size_is_replaced_and_named() {
    let dir = PinDir::new("size");
    // GLOBAL_STATS as an agent with one counter fewer pinned it, and a map
    // this object no longer has.
    PerCpuArray::<MapData, u64>::create(GLOBAL_COUNTERS - 1, 0)
        .unwrap()
        .pin(dir.pin(MapName::GlobalStats))
        .unwrap();
    Array::<MapData, u32>::create(4, 0)
        .unwrap()
        .pin(dir.0.join("OLD_MAP"))
        .unwrap();

    let dp = Dataplane::load_with(dir.options(4096)).unwrap();
    let pins = dp.pins();
    assert!(pins.reused.is_empty(), "{:?}", pins.reused);
    let [replaced] = pins.replaced.as_slice() else {
        panic!("{:?}", pins.replaced);
    };
    let text = replaced.to_string();
    assert_eq!(replaced.map, MapName::GlobalStats);
    assert!(
        text.contains(&format!("{} entries", GLOBAL_COUNTERS - 1))
            && text.contains(&format!("{GLOBAL_COUNTERS} entries"))
            && text.contains("counters"),
        "{text}"
    );
    assert_eq!(dir.pinned(MapName::GlobalStats).1, GLOBAL_COUNTERS);
    assert!(!dir.0.join("OLD_MAP").exists());
    let counters = dp.global_counters().unwrap();
    assert_eq!(counters.len(), GlobalCounter::ALL.len());
    dp.shut_down().unwrap();
    assert!(!dir.0.exists(), "pins left after shut_down");
}

/// Replaces the pinned `BACKENDS` with one of 8-byte values, as another
/// build of the agent might have pinned it.
fn pin_backends_of_another_value_size(dir: &PinDir) {
    std::fs::remove_file(dir.pin(MapName::Backends)).unwrap();
    Array::<MapData, u64>::create(MAX_BACKENDS, 0)
        .unwrap()
        .pin(dir.pin(MapName::Backends))
        .unwrap();
}

#[test]
fn the_flow_table_keeps_its_size_and_goes_whole_with_backends() {
    let dir = PinDir::new("flows");
    drop(Dataplane::load_with(dir.options(4096)).unwrap());
    let flows = dir.pinned(MapName::Flows);
    let services = dir.pinned(MapName::Services);

    // Asked for a larger flow table: the pinned one stays, with its flows.
    let dp = Dataplane::load_with(dir.options(8192)).unwrap();
    assert_eq!(dp.pins().replaced.len(), 0, "{:?}", dp.pins().replaced);
    assert_eq!(dp.pins().reused, MapName::ALL);
    assert_eq!(dp.pins().flow_capacity_kept, Some(4096));
    assert_eq!(dir.pinned(MapName::Flows), flows);
    assert_eq!(dir.pinned(MapName::Replies).1, 4096);
    drop(dp);

    // BACKENDS of another value size: replaced, and the flow table with it.
    pin_backends_of_another_value_size(&dir);
    let dp = Dataplane::load_with(dir.options(8192)).unwrap();
    let mut replaced: Vec<MapName> = dp.pins().replaced.iter().map(|r| r.map).collect();
    replaced.sort_by_key(|m| m.as_str());
    assert_eq!(
        replaced,
        [MapName::Backends, MapName::Flows, MapName::Replies]
    );
    let flows_lost = dp.pins().replaced.iter().find(|r| r.map == MapName::Flows);
    assert!(
        flows_lost.is_some_and(|r| r.why.contains("BACKENDS") && r.lost.contains("open flow")),
        "{flows_lost:?}"
    );
    assert_eq!(dp.pins().flow_capacity_kept, None);
    let now = dir.pinned(MapName::Flows);
    assert!(now.0 != flows.0 && now.1 == 8192, "{now:?}");
    assert_eq!(dir.pinned(MapName::Services), services);
    dp.shut_down().unwrap();
}

/// Per service in a state: its id, its backends' ids by address, and the
/// first slot of its active table (none if it is empty).
fn ids_in_use(state: &DataplaneState) -> Vec<(String, u64, Value, Option<u64>)> {
    let json = serde_json::to_value(state).unwrap();
    let mut out: Vec<_> = json["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let (start, len) = (&s["range"]["start"], &s["range"]["len"]);
            let half = len.as_u64().unwrap() / 2;
            let active = start.as_u64().unwrap() + s["active"].as_u64().unwrap() * half;
            let active = (s["empty"] == false).then_some(active);
            let name = s["name"].as_str().unwrap().to_owned();
            (
                name,
                s["id"].as_u64().unwrap(),
                s["backends"].clone(),
                active,
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn ids_in_use_are_told_from_the_pinned_maps_when_the_state_file_is_stale() {
    let dir = PinDir::new("derive");
    let mut config = Config::parse(include_str!("../fixtures/packet.toml")).unwrap();
    // Services get their ids in the order of the file.
    let empty_id = config
        .services
        .iter()
        .position(|s| s.name == "empty")
        .unwrap();
    let mut dp = Dataplane::load_with(dir.options(4096)).unwrap();
    dp.apply(&Desired::from(&config)).unwrap();
    let stale = dp.export_state();
    // Some tables move to the second half of their range.
    let pair = config
        .services
        .iter_mut()
        .find(|s| s.name == "pair")
        .unwrap();
    pair.backends[0].weight = 3;
    dp.apply(&Desired::from(&config)).unwrap();
    let mut before = ids_in_use(&dp.export_state());
    drop(dp);

    // The agent was killed before it saved the state, and "dns" left the
    // configuration meanwhile.
    config.services.retain(|s| s.name != "dns");
    before.retain(|s| s.0 != "dns");
    let mut dp = Dataplane::load_with(dir.options(4096)).unwrap();
    let desired = Desired::from(&config);
    let adoption = dp.adopt(Ok(stale), &desired).unwrap();
    // (An empty table's entry moves to the other half at every write.)
    let problem = adoption.state_problem.map(|p| p.to_string());
    let expected = format!(
        "the state file does not match the pinned maps: service \"empty\": SERVICES has \
         id {empty_id}, a table of 0 slots at"
    );
    assert!(
        problem.as_ref().is_some_and(|p| p.starts_with(&expected)),
        "{problem:?}"
    );
    let (services, backends) = (
        config.services.len(),
        config
            .services
            .iter()
            .map(|s| s.backends.len())
            .sum::<usize>(),
    );
    let found = format!(
        "({services} of {services} services, {backends} of {backends} backends found in them)"
    );
    assert!(adoption.summary.contains(&found), "{}", adoption.summary);
    let [note] = adoption.notes.as_slice() else {
        panic!("{:?}", adoption.notes);
    };
    assert!(note.contains("10.0.0.100:53 (protocol 17) is not in the configuration"));
    assert_eq!(ids_in_use(&dp.export_state()), before);

    // The next change writes every table into the half packets do not use.
    dp.apply(&desired).unwrap();
    assert!(dp.lookup("pair", 7).unwrap().is_some());
    dp.shut_down().unwrap();
}

/// The address filter's roles of `ip` in the pinned `ADDRESS_ROLES`.
fn roles_of(dir: &PinDir, ip: &str) -> u8 {
    let addr = match ip.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    let map = MapData::from_pin(dir.pin(MapName::AddressRoles)).unwrap();
    let words: Array<MapData, u64> = Array::try_from(aya::maps::Map::Array(map)).unwrap();
    let slot = filter::address_slot(&addr);
    filter::roles_in(words.get(&filter::word_of(slot), 0).unwrap(), slot)
}

#[test]
fn an_address_filter_of_the_one_byte_layout_is_replaced_and_refilled() {
    let dir = PinDir::new("filter-layout");
    // ADDRESS_ROLES as agents before the packed filter pinned it.
    Array::<MapData, u8>::create(4096, 0)
        .unwrap()
        .pin(dir.pin(MapName::AddressRoles))
        .unwrap();
    let mut dp = Dataplane::load_with(dir.options(4096)).unwrap();
    let [replaced] = dp.pins().replaced.as_slice() else {
        panic!("{:?}", dp.pins().replaced);
    };
    assert_eq!(replaced.map, MapName::AddressRoles);
    assert!(replaced.lost.contains("nothing"), "{replaced}");
    let config = Config::parse(include_str!("../fixtures/packet.toml")).unwrap();
    dp.apply(&Desired::from(&config)).unwrap();
    assert_ne!(roles_of(&dir, "10.0.0.101") & filter::ROLE_VIP, 0);
    dp.shut_down().unwrap();
}

/// A restarted agent's first change keeps the running services' frames
/// coming through the address filter until their entries are gone, as any
/// change does: it starts from the filter the earlier agent left, read back
/// from the pinned map. Seen when that change fails half-way: a service it
/// was to move to another address keeps its old entry in `SERVICES`, so
/// the old address must stay in the filter, or the service goes unserved
/// until the next change that succeeds.
#[test]
fn a_restarted_agents_failed_first_change_keeps_the_filter_of_the_running_services() {
    let dir = PinDir::new("filter-adopt");
    let config = Config::parse(include_str!("../fixtures/packet.toml")).unwrap();
    let mut dp = Dataplane::load_with(dir.options(4096)).unwrap();
    dp.apply(&Desired::from(&config)).unwrap();
    let state = dp.export_state();
    drop(dp);
    assert_ne!(roles_of(&dir, "10.0.0.108") & filter::ROLE_VIP, 0);

    // The new configuration adds two services whose tables do not fit in
    // the slots all services share, and then moves "plain" from 10.0.0.108
    // to 10.0.0.118: the change fails before it reaches "plain".
    let mut next = config.clone();
    let at = next
        .services
        .iter()
        .position(|s| s.name == "plain")
        .unwrap();
    let mut plain = next.services.remove(at);
    for (name, vip) in [("huge1", "10.0.0.120"), ("huge2", "10.0.0.121")] {
        let mut huge = plain.clone();
        huge.name = name.to_owned();
        huge.vip = vip.parse().unwrap();
        huge.table_size = 1_000_003;
        next.services.push(huge);
    }
    plain.vip = "10.0.0.118".parse().unwrap();
    next.services.push(plain);
    let mut dp = Dataplane::load_with(dir.options(4096)).unwrap();
    dp.adopt(Ok(state), &Desired::from(&config)).unwrap();
    let failed = format!("{:#}", dp.apply(&Desired::from(&next)).unwrap_err());
    assert!(failed.contains("no room"), "{failed}");
    let services = MapData::from_pin(dir.pin(MapName::Services)).unwrap();
    let services: aya::maps::HashMap<MapData, ServiceKey, Service> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(services)).unwrap();
    let old_key = ServiceKey::v6(
        std::net::Ipv4Addr::new(10, 0, 0, 108)
            .to_ipv6_mapped()
            .octets(),
        80u16.to_be(),
        6,
    );
    assert!(
        services.get(&old_key, 0).is_ok(),
        "\"plain\" left 10.0.0.108"
    );
    assert_ne!(
        roles_of(&dir, "10.0.0.108") & filter::ROLE_VIP,
        0,
        "\"plain\" is still at 10.0.0.108 in SERVICES: its address must stay in the filter"
    );

    // Without the services that do not fit, the change goes through.
    next.services.retain(|s| !s.name.starts_with("huge"));
    dp.apply(&Desired::from(&next)).unwrap();
    assert_eq!(roles_of(&dir, "10.0.0.108") & filter::ROLE_VIP, 0);
    assert_ne!(roles_of(&dir, "10.0.0.118") & filter::ROLE_VIP, 0);
    dp.shut_down().unwrap();
}

/// Pins a `FLOWS` of the layout before the flow's next hop towards its
/// client (32-byte values), of `capacity` entries, holding `flows`.
fn pin_flows_before_the_client_hop(dir: &PinDir, capacity: u32, flows: &[(FlowKey, Flow)]) {
    let _ = std::fs::remove_file(dir.pin(MapName::Flows));
    let old = MapData::create(
        aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32,
            size_of::<FlowKey>() as u32,
            FLOW_SIZE_WITHOUT_CLIENT_HOP as u32,
            capacity,
            0,
        ),
        "FLOWS",
        None,
    )
    .unwrap();
    old.pin(dir.pin(MapName::Flows)).unwrap();
    let mut old: aya::maps::HashMap<MapData, FlowKey, [u8; FLOW_SIZE_WITHOUT_CLIENT_HOP]> =
        aya::maps::HashMap::try_from(Map::LruHashMap(old)).unwrap();
    for (key, flow) in flows {
        let mut bytes = [0u8; FLOW_SIZE_WITHOUT_CLIENT_HOP];
        // SAFETY: `Flow` is `repr(C)` with no padding and at least this
        // many bytes; its leading ones are the old layout.
        bytes.copy_from_slice(unsafe {
            std::slice::from_raw_parts(
                (flow as *const Flow).cast::<u8>(),
                FLOW_SIZE_WITHOUT_CLIENT_HOP,
            )
        });
        old.insert(key, bytes, 0).unwrap();
    }
    drop(old);
}

/// An agent upgraded over a `FLOWS` of the layout before the flow's next
/// hop towards its client carries every flow over, the new field empty, so
/// an upgrade keeps its connections; `REPLIES` is reused, and the table's
/// size is kept.
#[test]
fn flows_of_the_layout_before_the_client_hop_are_carried_over() {
    const CAPACITY: u32 = 8192;
    let dir = PinDir::new("flows-layout");
    drop(Dataplane::load_with(dir.options(CAPACITY)).unwrap());
    let (replies_id, _) = dir.pinned(MapName::Replies);
    std::fs::remove_file(dir.pin(MapName::Flows)).unwrap();

    let flows: Vec<(FlowKey, Flow)> = (0..3u8)
        .map(|i| {
            let key = FlowKey::reverse_of(
                &std::net::Ipv4Addr::new(10, 0, 0, 100 + i)
                    .to_ipv6_mapped()
                    .octets(),
                8080u16.to_be(),
                &std::net::Ipv4Addr::new(10, 9, 0, 1)
                    .to_ipv6_mapped()
                    .octets(),
                (40000 + u16::from(i)).to_be(),
                6,
            );
            let flow = Flow {
                backend: u32::from(i) + 1,
                snat_port_be: (50000 + u16::from(i)).to_be(),
                state: FLOW_ESTABLISHED,
                flags: 1 << i,
                seq_delta: 7,
                client_isn: 8,
                last_seen_ns: 123_456_789,
                service: 2,
                syn_sent_us: 9,
                client_hop: NextHop::default(),
            };
            (key, flow)
        })
        .collect();
    pin_flows_before_the_client_hop(&dir, CAPACITY, &flows);

    // Asked for another size: the pinned one's is kept.
    let dp = Dataplane::load_with(dir.options(4096)).unwrap();
    assert_eq!(dp.pins().flows_carried, Some(flows.len()));
    assert!(dp.pins().replaced.is_empty(), "{:?}", dp.pins().replaced);
    assert!(dp.pins().reused(MapName::Replies));
    assert_eq!(dp.pins().flow_capacity_kept, Some(CAPACITY));
    assert_eq!(dir.pinned(MapName::Replies), (replies_id, CAPACITY));
    let (_, entries) = dir.pinned(MapName::Flows);
    assert_eq!(entries, CAPACITY);
    let carried = MapData::from_pin(dir.pin(MapName::Flows)).unwrap();
    let carried: aya::maps::HashMap<MapData, FlowKey, Flow> =
        aya::maps::HashMap::try_from(Map::LruHashMap(carried)).unwrap();
    let mut got: Vec<(FlowKey, Flow)> = carried.iter().map(Result::unwrap).collect();
    got.sort_by_key(|(_, flow)| flow.backend);
    assert_eq!(got, flows);
    drop(dp);

    // With BACKENDS replaced too (its ids are what flows name), the flows
    // are not carried: the flow table is replaced whole.
    pin_flows_before_the_client_hop(&dir, CAPACITY, &flows);
    pin_backends_of_another_value_size(&dir);
    let dp = Dataplane::load_with(dir.options(4096)).unwrap();
    assert_eq!(dp.pins().flows_carried, None);
    let mut replaced: Vec<MapName> = dp.pins().replaced.iter().map(|r| r.map).collect();
    replaced.sort_by_key(|m| m.as_str());
    assert_eq!(
        replaced,
        [MapName::Backends, MapName::Flows, MapName::Replies]
    );
    let carried = MapData::from_pin(dir.pin(MapName::Flows)).unwrap();
    let carried: aya::maps::HashMap<MapData, FlowKey, Flow> =
        aya::maps::HashMap::try_from(Map::LruHashMap(carried)).unwrap();
    assert_eq!(carried.keys().count(), 0);
    drop(dp);
}

/// The pinned `REPLY_SERVICES` entry of the backend `addr` (IPv4 TCP).
fn reply_service_of(dir: &PinDir, addr: &str) -> Option<ServiceKey> {
    let addr: std::net::SocketAddrV4 = addr.parse().unwrap();
    let map = MapData::from_pin(dir.pin(MapName::ReplyServices)).unwrap();
    let map: aya::maps::HashMap<MapData, ServiceKey, ServiceKey> =
        aya::maps::HashMap::try_from(Map::HashMap(map)).unwrap();
    let key = ServiceKey::v4(addr.ip().octets(), addr.port().to_be(), 6);
    map.get(&key, 0).ok()
}

/// A backend removed from its `dnat` service keeps its `REPLY_SERVICES`
/// entry while its id is not reused (its flows' replies need it), over a
/// restart too: the new agent reads the entries back and keeps them; the
/// entry goes with its service.
#[test]
fn a_removed_backends_reply_service_outlives_a_restart_and_goes_with_its_service() {
    let dir = PinDir::new("reply-services");
    let mut config = Config::parse(include_str!("../fixtures/packet.toml")).unwrap();
    let mut dp = Dataplane::load_with(dir.options(4096)).unwrap();
    dp.apply(&Desired::from(&config)).unwrap();
    let sticky = ServiceKey::v4([10, 0, 0, 106], 80u16.to_be(), 6);
    assert_eq!(reply_service_of(&dir, "10.1.0.10:8000"), Some(sticky));
    // "web" (nat) has 10.1.0.10:8000 too: no entry of its own.
    let service = config
        .services
        .iter_mut()
        .find(|s| s.name == "sticky")
        .unwrap();
    let removed: std::net::SocketAddr = "10.1.0.10:8000".parse().unwrap();
    service.backends.retain(|b| b.address != removed);
    dp.apply(&Desired::from(&config)).unwrap();
    assert_eq!(reply_service_of(&dir, "10.1.0.10:8000"), Some(sticky));
    let state = dp.export_state();
    drop(dp);

    let mut dp = Dataplane::load_with(dir.options(4096)).unwrap();
    dp.adopt(Ok(state), &Desired::from(&config)).unwrap();
    dp.apply(&Desired::from(&config)).unwrap();
    assert_eq!(reply_service_of(&dir, "10.1.0.10:8000"), Some(sticky));
    assert_ne!(roles_of(&dir, "10.1.0.10") & filter::ROLE_REPLY_SERVICE, 0);

    config.services.retain(|s| s.name != "sticky");
    dp.apply(&Desired::from(&config)).unwrap();
    assert_eq!(reply_service_of(&dir, "10.1.0.10:8000"), None);
    assert_eq!(reply_service_of(&dir, "10.1.0.11:8000"), None);
    dp.shut_down().unwrap();
}
