//! The loaded XDP data plane: its program, its maps, and their contents.
//!
//! [`Dataplane::apply`] makes the maps match a desired state
//! ([`crate::desired`]): services get ids and a range of Maglev slots, backends get ids that stay theirs while
//! they exist (flows refer to them), and every table change is written to
//! the half of the service's range that packets are not using before the
//! service entry is pointed at it.
//!
//! Its jobs, a module each: loading the object and reusing or replacing
//! pinned maps (`load`), attaching and taking over attachments
//! (`attach`), programming services and backends (`tables`), what a
//! restarted agent carries on with (`state`), reading the flow table
//! (`flows`) and the counters (`counters`); `maps` opens the maps.

mod attach;
mod bridge;
mod counters;
mod flows;
mod load;
mod maps;
mod state;
mod tables;

use std::net::{IpAddr, SocketAddr};

use aya::{
    Ebpf,
    programs::{Xdp, xdp::XdpLinkId},
};
use lb_common::{
    BackendCounters, BackendLoad, GlobalCounter, TrafficCounters,
    flood::{self, FLOOD_COOKIES_VALID, FLOOD_EXPIRED, FLOOD_OPENED, FLOOD_SETTLED},
    service::ipv4_mapped,
};

use self::tables::Tables;
pub use self::{
    attach::Attachment,
    flows::FlowInfo,
    load::{LoadOptions, PROGRAM, Pins, Replaced},
    maps::{MapMemory, MapName},
    state::{Adoption, DataplaneState, STATE_VERSION, UnusableState},
};
use crate::{
    desired::Desired,
    local::RouteLocalnet,
    xdp::{AttachedMode, ModeRequest},
};

/// The xlb eBPF object, loaded into the kernel, and what userspace knows
/// about its maps' contents.
pub struct Dataplane {
    ebpf: Ebpf,
    options: LoadOptions,
    pins: Pins,
    links: Vec<(XdpLinkId, Attachment)>,
    /// Egress and socket program attachments.
    held: Vec<attach::Held>,
    /// `route_localnet` as it was before attaching.
    localnet: RouteLocalnet,
    tables: Tables,
    /// Ports of attached bridges XDP sends frames to.
    bridges: bridge::BridgePorts,
}

impl Dataplane {
    /// Loads the embedded eBPF object and verifies the XDP program.
    pub fn load() -> anyhow::Result<Self> {
        Self::load_with(LoadOptions::default())
    }

    /// Like `load`(Self::load), with explicit map sizes. With a pin
    /// directory, pinned maps that fit this object are reused and the others
    /// replaced (see [`Dataplane::pins`]).
    pub fn load_with(mut options: LoadOptions) -> anyhow::Result<Self> {
        let (ebpf, pins) = load::load(&mut options)?;
        let localnet = RouteLocalnet::new(options.sysctl_record.clone());
        let bridges = bridge::BridgePorts::new(options.past_bridges);
        Ok(Self {
            ebpf,
            options,
            pins,
            links: Vec::new(),
            held: Vec::new(),
            localnet,
            tables: Tables::new(),
            bridges,
        })
    }

    /// What loading found in the pin directory: maps reused, maps replaced.
    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// The XDP program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> anyhow::Result<&mut Xdp> {
        load::xdp_program(&mut self.ebpf)
    }

    /// The tc egress program that rewrites local backends' replies.
    pub fn egress_program(&mut self) -> anyhow::Result<&mut aya::programs::SchedClassifier> {
        load::egress_program(&mut self.ebpf)
    }

    /// Attaches the program to `iface`; returns the mode it got. With a pin
    /// directory, the attachment is pinned there too, and an attachment an
    /// earlier agent pinned is taken over in place: the kernel swaps the
    /// program without a moment unattached.
    pub fn attach(&mut self, iface: &str, request: ModeRequest) -> anyhow::Result<AttachedMode> {
        let pin_dir = self.options.pin_dir.as_deref();
        let (link, attachment) = attach::attach(&mut self.ebpf, pin_dir, iface, request)?;
        let (mode, ifindex) = (attachment.mode, attachment.ifindex);
        self.links.push((link, attachment));
        self.localnet.enable(iface)?;
        let egress = attach::attach_egress(&mut self.ebpf, pin_dir, iface)?;
        self.held.push(egress);
        match self.bridges.attached(ifindex) {
            Ok(true) => {
                self.refresh_bridges();
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(iface, "cannot tell whether it is a bridge: {e:#}"),
        }
        // Next hops remembered before may name this interface as one XDP
        // cannot send out of.
        self.tables.forget_next_hops(&mut self.ebpf)?;
        Ok(mode)
    }

    /// Attaches the socket programs that balance connections opened on
    /// this host, in this network namespace, to a service (see
    /// `lb-ebpf/src/sock.rs`): to the root cgroup, pinned like the XDP
    /// attachments.
    pub fn attach_sockets(&mut self) -> anyhow::Result<()> {
        let pin_dir = self.options.pin_dir.as_deref();
        let held = attach::attach_sockets(&mut self.ebpf, pin_dir)?;
        self.held.extend(held);
        tracing::info!("socket programs attached: clients on this host are balanced");
        Ok(())
    }

    /// Reads every attached interface's way out again (a veth peer may have
    /// gained or lost its XDP program, VLAN devices may have come or gone)
    /// and updates the maps where it changed.
    pub fn refresh_egress(&mut self) -> anyhow::Result<()> {
        let changed = attach::refresh_egress(&mut self.ebpf, &mut self.links)?;
        if self.refresh_bridges() || changed {
            self.tables.forget_next_hops(&mut self.ebpf)?;
        }
        Ok(())
    }

    /// Reads the attached bridges' ports and forwarding tables again
    /// (`bridge.rs`); returns whether the maps changed. A failure is
    /// logged: frames to hosts behind a bridge keep the ways they had.
    fn refresh_bridges(&mut self) -> bool {
        let mut attachments: Vec<&mut Attachment> = self.links.iter_mut().map(|(_, a)| a).collect();
        self.bridges
            .refresh(&mut self.ebpf, &mut attachments)
            .unwrap_or_else(|e| {
                tracing::warn!("reading the attached bridges' ports: {e:#}");
                false
            })
    }

    /// Interfaces the program is attached to.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.links.iter().map(|(_, attachment)| attachment)
    }

    /// Starts reading the program's log records (`aya-log`: rare events
    /// such as a flow dropped for want of a source port) into `logger`. The
    /// caller flushes the returned reader when its fd is readable.
    pub fn kernel_logger<T: log::Log>(
        &mut self,
        logger: T,
    ) -> anyhow::Result<aya_log::EbpfLogger<T>> {
        use anyhow::Context as _;
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
        let links = std::mem::take(&mut self.links);
        attach::release(std::mem::take(&mut self.held))?;
        self.localnet.restore()?;
        if let Some(dir) = &self.options.pin_dir {
            attach::unpin(dir, &links)?;
            load::remove_map_pins(dir);
        }
        attach::detach(&mut self.ebpf, links)
    }

    /// Ids and ranges in use, for a later agent to carry on with the
    /// pinned maps.
    pub fn export_state(&self) -> DataplaneState {
        DataplaneState::export(&self.tables)
    }

    /// Carries on with the maps an earlier agent pinned: with the ids and
    /// ranges of `saved` (its state file, as read) if they match the pinned
    /// maps, else with ids re-derived from those maps and the services and
    /// backends of `desired` (their weights and failures do not matter
    /// here). Call right after loading with the same pin directory, before
    /// [`apply`](Self::apply). Says what was kept and what was not.
    pub fn adopt(
        &mut self,
        saved: Result<DataplaneState, UnusableState>,
        desired: &Desired,
    ) -> anyhow::Result<Adoption> {
        let (tables, adoption) = state::adopt(&mut self.ebpf, &self.pins, saved, desired)?;
        self.tables = tables;
        Ok(adoption)
    }

    /// Makes the maps serve exactly `desired`'s services: its failed
    /// backends' flows are scheduled again, the other backends share new
    /// flows by weight. Existing flows of usable backends keep them; only
    /// new flows see changed tables.
    pub fn apply(&mut self, desired: &Desired) -> anyhow::Result<()> {
        self.tables.apply(&mut self.ebpf, desired)
    }

    /// The backend that the active table of `service` gives a flow hash.
    pub fn lookup(&self, service: &str, hash: u32) -> anyhow::Result<Option<SocketAddr>> {
        self.tables.lookup(service, hash)
    }

    /// Live flows per (service, backend), all services in one pass over the
    /// flow table: entries that have not passed their idle timeout, began
    /// with a SYN (or are UDP) and have seen no FIN or RST.
    pub fn live_flows(
        &self,
    ) -> anyhow::Result<std::collections::HashMap<(String, SocketAddr), u64>> {
        flows::live(&self.ebpf, &self.tables, &self.options.timeouts)
    }

    /// Recounts every backend's live flows from the flow table for the
    /// load-aware schedulers and `max_conns`, which the data plane counts
    /// itself but for flows that expire or are evicted unseen
    /// ([`flows::recount_live`]). Returns the live flows per backend id.
    pub fn recount_live_flows(&mut self) -> anyhow::Result<std::collections::HashMap<u32, u64>> {
        flows::recount_live(&mut self.ebpf, &self.tables, &self.options.timeouts)
    }

    /// What the data plane counts of one backend of `service`: live flows
    /// and connect time (`lb_common::load`).
    pub fn backend_load(&self, service: &str, backend: SocketAddr) -> anyhow::Result<BackendLoad> {
        let id = self.tables.backend_id(service, backend)?;
        maps::backend_load(&self.ebpf)?.get(id)
    }

    /// Flow-table entries of `service` (at most `limit`): client, backend,
    /// state and idle time; expired ones left out.
    pub fn flows(&self, service: &str, limit: usize) -> anyhow::Result<Vec<FlowInfo>> {
        flows::of_service(
            &self.ebpf,
            &self.tables,
            &self.options.timeouts,
            service,
            limit,
        )
    }

    /// Packets and bytes of `service`, summed over CPUs.
    pub fn service_counters(&self, service: &str) -> anyhow::Result<TrafficCounters> {
        counters::service(&self.ebpf, self.tables.service(service)?.id)
    }

    /// Counters of one backend of `service`, summed over CPUs.
    pub fn backend_counters(
        &self,
        service: &str,
        backend: SocketAddr,
    ) -> anyhow::Result<BackendCounters> {
        counters::backend(&self.ebpf, self.tables.backend_id(service, backend)?)
    }

    /// Every global counter with its value, summed over CPUs.
    pub fn global_counters(&self) -> anyhow::Result<Vec<(GlobalCounter, u64)>> {
        counters::global_all(&self.ebpf)
    }

    /// One global counter, summed over CPUs.
    pub fn global_counter(&self, counter: GlobalCounter) -> anyhow::Result<u64> {
        counters::global(&self.ebpf, counter)
    }

    /// The half-open budget's counts and the cookies' (`lb_common::flood`).
    pub fn flood_counts(&self) -> anyhow::Result<FloodCounts> {
        let state = maps::flood_state(&self.ebpf)?;
        let opened = state.get(FLOOD_OPENED)?;
        let settled = state.get(FLOOD_SETTLED)?;
        let expired = state.get(FLOOD_EXPIRED)?;
        Ok(FloodCounts {
            half_open: flood::outstanding(opened, settled, expired),
            half_open_limit: self.options.flood.half_open_limit,
            handshakes: opened,
            cookies_validated: state.get(FLOOD_COOKIES_VALID)?,
        })
    }

    /// Reckons the share of outstanding handshakes that expired unanswered
    /// over `elapsed` ([`flood::decay`] with the handshake timeout): the
    /// data plane cannot see their entries go. Call once a tick.
    pub fn expire_half_open(&mut self, elapsed: std::time::Duration) -> anyhow::Result<()> {
        let timeout_ns = self.options.timeouts.syn_ns;
        let mut state = maps::flood_state_mut(&mut self.ebpf)?;
        let opened = state.get(FLOOD_OPENED)?;
        let settled = state.get(FLOOD_SETTLED)?;
        let expired = state.get(FLOOD_EXPIRED)?;
        let live = flood::outstanding(opened, settled, expired);
        let gone = flood::decay(live, elapsed.as_nanos() as u64, timeout_ns);
        if gone > 0 {
            state.set(FLOOD_EXPIRED, expired.wrapping_add(gone))?;
        }
        Ok(())
    }

    /// Kernel memory charged for each of the data plane's maps (the
    /// `memlock` the kernel reports), largest first.
    pub fn map_memory(&self) -> anyhow::Result<Vec<MapMemory>> {
        maps::memory(&self.ebpf)
    }
}

/// What the data plane counts of SYN floods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodCounts {
    /// Handshakes outstanding, as the half-open budget reckons them.
    pub half_open: u64,
    /// Past it, SYNs get cookies.
    pub half_open_limit: u64,
    /// Handshakes opened by clients' SYNs, ever.
    pub handshakes: u64,
    /// Clients that answered a SYN cookie correctly, ever.
    pub cookies_validated: u64,
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
