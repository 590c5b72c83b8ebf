//! Loading the eBPF object, and the pin directory a restarted agent carries
//! on from: which pinned maps are reused and which no longer fit this
//! object and are replaced.
//!
//! aya reuses a pinned map of the right name whatever its layout, so an
//! agent upgraded over a pin directory whose maps changed would keep the
//! old map and fail on it later. Before loading, every pinned map's type,
//! key size, value size and entries are compared with this object's; one
//! that differs is unpinned, and the loader creates and pins a fresh one.
//!
//! The flow table's capacity is the exception: `FLOWS` and `REPLIES` pinned
//! with another number of entries than `[flows] table_size` asks are kept as
//! they are, since their flows are worth more than the new size, which
//! applies at the next start after a stop (SIGTERM removes the pins).
//!
//! A `FLOWS` of the layout before [`Flow::client_hop`] is carried over: its
//! entries are copied into the fresh table, the new field empty, once the
//! programs are verified, so that an upgrade keeps its flows.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, MapInfo, MapType},
    programs::{CgroupSockAddr, SchedClassifier, Xdp},
};
use aya_obj::generated::bpf_map_type;
use lb_common::{
    Flow, FlowKey,
    flood::FloodConfig,
    flow::{FLOW_SIZE_WITHOUT_CLIENT_HOP, FlowTimeouts},
};

use super::maps::MapName;
use crate::xdp;

/// Name of the main XDP program in the eBPF object.
pub const PROGRAM: &str = "xlb";
/// Name of the tc egress program that rewrites local backends' replies.
pub const EGRESS_PROGRAM: &str = "xlb_egress";
/// The cgroup socket programs that balance clients on this host.
pub const SOCKET_PROGRAMS: [&str; 8] = [
    "xlb_connect4",
    "xlb_connect6",
    "xlb_sendmsg4",
    "xlb_sendmsg6",
    "xlb_getpeername4",
    "xlb_getpeername6",
    "xlb_recvmsg4",
    "xlb_recvmsg6",
];

/// Sizes chosen when loading the data plane.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of the flow table (`FLOWS`) and of `REPLIES`; pinned ones
    /// keep their own (see the module's documentation).
    pub flow_capacity: u32,
    /// Idle timeouts of flows.
    pub timeouts: FlowTimeouts,
    /// The half-open budget and when SYNs get cookies.
    pub flood: FloodConfig,
    /// bpffs directory to pin every map in (and to reuse pinned maps from,
    /// so a restarted agent keeps flows and counters); `None` keeps the maps
    /// private to this process.
    pub pin_dir: Option<PathBuf>,
    /// File recording the `route_localnet` values the agent changed, so
    /// that they are restored even after the agent was killed and
    /// restarted; `None` keeps them in memory only.
    pub sysctl_record: Option<PathBuf>,
    /// Send frames for hosts behind an attached bridge straight to their
    /// port by XDP where it takes XDP frames (`[agent]
    /// xdp_past_bridges`; `bridge.rs`).
    pub past_bridges: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            flow_capacity: lb_common::DEFAULT_FLOW_CAPACITY,
            timeouts: FlowTimeouts::DEFAULT,
            flood: FloodConfig::DEFAULT,
            pin_dir: None,
            sysctl_record: None,
            past_bridges: true,
        }
    }
}

/// What loading found in the pin directory.
#[derive(Clone, Debug, Default)]
pub struct Pins {
    /// Pinned maps reused as they were: their contents carry on.
    pub reused: Vec<MapName>,
    /// Pinned maps that did not fit this object, replaced by fresh ones.
    pub replaced: Vec<Replaced>,
    /// The pinned flow table's entries where they differ from
    /// `flow_capacity`: kept.
    pub flow_capacity_kept: Option<u32>,
    /// Flows copied over from a pinned `FLOWS` of the layout before
    /// [`Flow::client_hop`].
    pub flows_carried: Option<usize>,
}

impl Pins {
    /// Whether `map`'s pinned contents carry on.
    pub fn reused(&self, map: MapName) -> bool {
        self.reused.contains(&map)
    }
}

/// A pinned map replaced by a fresh one.
#[derive(Clone, Debug)]
pub struct Replaced {
    pub map: MapName,
    /// How it differed.
    pub why: String,
    /// What its contents were, now gone.
    pub lost: &'static str,
}

impl fmt::Display for Replaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pinned map {} replaced with a fresh one ({}); lost: {}",
            self.map, self.why, self.lost
        )
    }
}

/// What a map's contents are worth when it is replaced.
fn loss(map: MapName) -> &'static str {
    match map {
        MapName::Services | MapName::Maglev | MapName::ServiceSlots => {
            "nothing (refilled from the configuration before the attachment is taken over)"
        }
        MapName::Backends => "nothing itself (refilled from the configuration)",
        MapName::Flows | MapName::Replies => {
            "every open flow: connections through xlb are scheduled again and may be reset"
        }
        MapName::Interfaces
        | MapName::BridgePorts
        | MapName::VlanParents
        | MapName::AnswerIfaces => "nothing (refilled when attaching)",
        MapName::FloodState => "the half-open count and cookie counts (the budget starts afresh)",
        MapName::ServiceStats => "the per-service counters (back to 0)",
        MapName::BackendStats => "the per-backend counters (back to 0)",
        MapName::GlobalStats => "the data-path counters of `xlb stats` (back to 0)",
        MapName::LocalPorts | MapName::AddressRoles | MapName::StatelessReplies => {
            "nothing (refilled from the configuration)"
        }
        MapName::ReplyServices => {
            "the replies of flows to backends since removed from their `dnat` service (the \
             configured ones are refilled from the configuration)"
        }
        MapName::BackendHops => "nothing (next hops are looked up again)",
        MapName::BackendLoad => {
            "the live-flow counts (recounted from the flow table within seconds) and connect \
             times (measured again by the next handshakes) of the load-aware schedulers"
        }
        MapName::BackendGone => "nothing (recounted from the flow table)",
        MapName::RoundRobin => "each CPU's place in its round-robin cycles",
        MapName::Sockets => {
            "which service local clients' open sockets asked for: getpeername shows the backend"
        }
    }
}

/// The kernel's description of a map, as far as its users depend on it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Layout {
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// Loads the embedded eBPF object (reusing and replacing pins as the
/// module's documentation says) and verifies the XDP program. The flow
/// capacity in `options` becomes the pinned one where that is kept.
pub(super) fn load(options: &mut LoadOptions) -> anyhow::Result<(Ebpf, Pins)> {
    let mut pins = Pins::default();
    let mut old_flows = None;
    if let Some(dir) = &options.pin_dir {
        if dir.starts_with(xdp::BPF_FS) {
            xdp::ensure_bpffs()?;
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} (is bpffs mounted?)", dir.display()))?;
        (pins, old_flows) = prepare_pins(dir, options.flow_capacity)?;
        if let Some(kept) = pins.flow_capacity_kept {
            options.flow_capacity = kept;
        }
    }
    // The socket programs act only in this namespace; 0 (unknown) in none.
    let netns_cookie = crate::local::netns_cookie().unwrap_or_else(|e| {
        tracing::warn!("local clients will not be balanced: {e:#}");
        0
    });
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(MapName::Flows.as_str(), options.flow_capacity)
        .map_max_entries(MapName::Replies.as_str(), options.flow_capacity)
        .override_global("FLOW_TIMEOUTS", &options.timeouts, true)
        .override_global("FLOOD", &options.flood, true)
        .override_global("NETNS_COOKIE", &netns_cookie, true);
    if let Some(dir) = &options.pin_dir {
        for map in MapName::ALL {
            loader.map_pin_path(map.as_str(), map_pin(dir, map));
        }
    }
    let mut ebpf = loader
        .load(crate::ebpf_object())
        .context("loading the xlb eBPF object")?;
    retry_interrupted(|| Ok(xdp_program(&mut ebpf)?.load()?))
        .context("loading the xlb XDP program (verifier)")?;
    retry_interrupted(|| Ok(egress_program(&mut ebpf)?.load()?))
        .context("loading the xlb tc egress program (verifier)")?;
    for name in SOCKET_PROGRAMS {
        retry_interrupted(|| Ok(socket_program(&mut ebpf, name)?.load()?))
            .with_context(|| format!("loading the socket program {name} (verifier)"))?;
    }
    if let Some(old) = old_flows {
        // At worst the flows are lost, as when the table is replaced: the
        // agent starts all the same.
        match carry_flows(&mut ebpf, old) {
            Ok(carried) => {
                tracing::info!(
                    "carried {carried} flows over from a pinned FLOWS of the layout before the \
                     flow's next hop towards its client"
                );
                pins.flows_carried = Some(carried);
            }
            Err(e) => tracing::warn!(
                "could not carry the pinned flows over into the new FLOWS ({e:#}): those not \
                 carried are scheduled again"
            ),
        }
    }
    Ok((ebpf, pins))
}

/// Copies every entry of `old`, a `FLOWS` of the layout before
/// [`Flow::client_hop`], into this object's `FLOWS`, the new field empty
/// (looked up at the flow's next reply). Returns how many flows the new
/// table holds.
///
/// The program being replaced still runs until the takeover: what it
/// changes after the copy (flows it opens, closes or moves) is not carried.
/// It may also remove an entry while the walk is on it (an end, or an
/// eviction for room); the kernel then goes on from the table's first entry
/// again. The walk therefore stops after as many steps as the table's
/// capacity: a flow it misses is scheduled again, as every flow was before
/// flows were carried over.
fn carry_flows(ebpf: &mut Ebpf, old: MapData) -> anyhow::Result<usize> {
    let steps = old.info()?.max_entries() as usize;
    let old: aya::maps::HashMap<MapData, FlowKey, [u8; FLOW_SIZE_WITHOUT_CLIENT_HOP]> =
        aya::maps::HashMap::try_from(Map::LruHashMap(old))?;
    let new = ebpf
        .map_mut(MapName::Flows.as_str())
        .ok_or_else(|| anyhow!("map FLOWS missing from the eBPF object"))?;
    let mut new: aya::maps::HashMap<&mut MapData, FlowKey, Flow> =
        aya::maps::HashMap::try_from(new)?;
    for entry in old.iter().take(steps) {
        let Ok((key, bytes)) = entry else { break };
        new.insert(key, flow_without_client_hop(&bytes), 0)?;
    }
    // Nothing else writes the new table yet: no program using it is
    // attached.
    Ok(new.keys().filter(Result::is_ok).count())
}

/// A flow as agents before [`Flow::client_hop`] stored it.
fn flow_without_client_hop(bytes: &[u8; FLOW_SIZE_WITHOUT_CLIENT_HOP]) -> Flow {
    let mut flow = Flow::default();
    // SAFETY: `Flow` is `repr(C)`, its first `FLOW_SIZE_WITHOUT_CLIENT_HOP`
    // bytes are the old layout's fields at the same offsets (checked by a
    // test in lb-common), and every byte pattern is valid for them
    // (integers only).
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&raw mut flow).cast::<u8>(),
            FLOW_SIZE_WITHOUT_CLIENT_HOP,
        );
    }
    flow
}

/// Whether the pinned `have` is `FLOWS` as agents before
/// [`Flow::client_hop`] made it, where this agent's is `want`; the entries
/// may differ.
fn is_flows_before_client_hop(have: Layout, want: Layout) -> bool {
    have.value_size as usize == FLOW_SIZE_WITHOUT_CLIENT_HOP
        && want.value_size as usize == size_of::<Flow>()
        && Layout {
            value_size: want.value_size,
            max_entries: want.max_entries,
            ..have
        } == want
}

/// Runs `load` again while the kernel answers `EAGAIN`: a signal arrived
/// during a long verification (the XDP program's takes seconds on a busy
/// host), as libbpf retries too. Any other outcome is returned.
fn retry_interrupted(mut load: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        let result = load();
        let interrupted = result.as_ref().is_err_and(|e| {
            matches!(
                e.downcast_ref::<aya::programs::ProgramError>(),
                Some(aya::programs::ProgramError::LoadError { io_error, .. })
                    if io_error.raw_os_error() == Some(libc::EAGAIN)
            )
        });
        if !interrupted || attempt == ATTEMPTS {
            return result;
        }
        tracing::warn!(
            attempt,
            "program verification interrupted (EAGAIN); loading again"
        );
        attempt += 1;
    }
}

/// Where `map` is pinned in `dir`.
fn map_pin(dir: &Path, map: MapName) -> PathBuf {
    dir.join(map.as_str())
}

/// Compares every map pinned in `dir` with this object's and unpins those
/// that differ (the flow table's entries aside), with the flow table if
/// `BACKENDS` goes: flows name their backend by its id there. Logs each.
/// Returns a `FLOWS` of the layout before [`Flow::client_hop`], unpinned,
/// for [`carry_flows`].
fn prepare_pins(dir: &Path, flow_capacity: u32) -> anyhow::Result<(Pins, Option<MapData>)> {
    remove_foreign_pins(dir);
    let wanted = object_layouts(flow_capacity)?;
    let mut pins = Pins::default();
    let mut pinned = Vec::new();
    let mut differ = HashMap::new();
    let mut flows_before_client_hop = false;
    for map in MapName::ALL {
        let path = map_pin(dir, map);
        if !path.exists() {
            continue;
        }
        pinned.push(map);
        let want = wanted[&map];
        let have = match MapInfo::from_pin(&path).and_then(|info| layout(&info)) {
            Ok(have) => have,
            Err(e) => {
                differ.insert(map, format!("unreadable: {e}"));
                continue;
            }
        };
        let flow_table = matches!(map, MapName::Flows | MapName::Replies);
        if map == MapName::Flows && is_flows_before_client_hop(have, want) {
            if have.max_entries != want.max_entries {
                pins.flow_capacity_kept.get_or_insert(have.max_entries);
            }
            flows_before_client_hop = true;
            continue;
        }
        if flow_table && have.max_entries != want.max_entries {
            let same_otherwise = Layout {
                max_entries: want.max_entries,
                ..have
            } == want;
            if same_otherwise {
                pins.flow_capacity_kept.get_or_insert(have.max_entries);
                continue;
            }
        }
        if have != want {
            differ.insert(map, format!("pinned: {have}; this agent's: {want}"));
        }
    }
    if differ.contains_key(&MapName::Backends) {
        for map in [MapName::Flows, MapName::Replies] {
            differ
                .entry(map)
                .or_insert_with(|| "replaced with BACKENDS, whose ids its flows name".to_owned());
        }
    }
    if differ.contains_key(&MapName::Flows) || differ.contains_key(&MapName::Replies) {
        // A flow and its reply entry go together.
        for map in [MapName::Flows, MapName::Replies] {
            differ
                .entry(map)
                .or_insert_with(|| "replaced with the other half of the flow table".to_owned());
        }
        pins.flow_capacity_kept = None;
    }
    let mut old_flows = None;
    if flows_before_client_hop && !differ.contains_key(&MapName::Flows) {
        let path = map_pin(dir, MapName::Flows);
        // Open before unpinning: the open map outlives its pin.
        old_flows = Some(MapData::from_pin(&path).context("opening the pinned FLOWS")?);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        pinned.retain(|&map| map != MapName::Flows);
    }
    for map in pinned {
        let Some(why) = differ.remove(&map) else {
            pins.reused.push(map);
            continue;
        };
        let path = map_pin(dir, map);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        let replaced = Replaced {
            map,
            why,
            lost: loss(map),
        };
        tracing::warn!("{replaced}");
        pins.replaced.push(replaced);
    }
    if let Some(kept) = pins.flow_capacity_kept {
        tracing::info!(
            "the pinned flow table has {kept} entries, [flows] table_size asks {flow_capacity}: \
             kept with {kept}, so that its flows live on; the new size applies when the agent \
             starts after a stop"
        );
    }
    Ok((pins, old_flows))
}

/// Removes pins in `dir` that are neither a map of this object nor an
/// attachment (`link-*`): maps an older object had, which nothing uses.
fn remove_foreign_pins(dir: &Path) {
    let ours: BTreeSet<&str> = MapName::ALL.iter().map(|m| m.as_str()).collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if ours.contains(name.as_ref()) || name.starts_with("link-") {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => tracing::warn!("removed pin {name}: not a map of this agent's data plane"),
            Err(e) => tracing::warn!("cannot remove pin {name}, not a map of this agent: {e}"),
        }
    }
}

/// The layout of every map as loading this object creates it: its
/// definition, with the flow table at `flow_capacity` entries and the value
/// size aya gives device maps on this kernel.
fn object_layouts(flow_capacity: u32) -> anyhow::Result<HashMap<MapName, Layout>> {
    let object =
        aya_obj::Object::parse(crate::ebpf_object()).context("parsing the xlb eBPF object")?;
    MapName::ALL
        .into_iter()
        .map(|map| {
            let def = object
                .maps
                .get(map.as_str())
                .ok_or_else(|| anyhow!("map {map}: missing from the eBPF object"))?;
            let map_type = bpf_map_type::try_from(def.map_type())
                .ok()
                .and_then(|t| MapType::try_from(t).ok())
                .ok_or_else(|| anyhow!("map {map}: unknown type {}", def.map_type()))?;
            let value_size = match map_type {
                MapType::DevMap | MapType::DevMapHash if aya::features().devmap_prog_id() => 8,
                MapType::DevMap | MapType::DevMapHash => 4,
                _ => def.value_size(),
            };
            let max_entries = match map {
                MapName::Flows | MapName::Replies => flow_capacity,
                _ => def.max_entries(),
            };
            let layout = Layout {
                map_type,
                key_size: def.key_size(),
                value_size,
                max_entries,
            };
            Ok((map, layout))
        })
        .collect()
}

fn layout(info: &MapInfo) -> Result<Layout, aya::maps::MapError> {
    Ok(Layout {
        map_type: info.map_type()?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

/// Removes the map pins in `dir`, and `dir` if nothing else is left in it.
pub(super) fn remove_map_pins(dir: &Path) {
    for map in MapName::ALL {
        let _ = std::fs::remove_file(map_pin(dir, map));
    }
    let _ = std::fs::remove_dir(dir);
}

pub(super) fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing from the eBPF object"))?
        .try_into()?)
}

pub(super) fn egress_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    Ok(ebpf
        .program_mut(EGRESS_PROGRAM)
        .ok_or_else(|| anyhow!("program {EGRESS_PROGRAM} missing from the eBPF object"))?
        .try_into()?)
}

pub(super) fn socket_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut CgroupSockAddr> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()?)
}
