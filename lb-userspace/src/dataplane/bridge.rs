//! Frames to hosts behind a bridge, sent by XDP straight to the port the
//! host is behind (`lb_common::bridge`): which ports of each bridge xlb is
//! attached to, or to some of whose ports it is, take XDP frames, and the
//! bridge's forwarding table for them, kept in `INTERFACES` and
//! `BRIDGE_PORTS`. An attached port takes them where its own way out
//! allows (`attach.rs` puts it in `INTERFACES`): a host NIC enslaved to a
//! bridge that holds the host's addresses, say, answers the hosts behind it
//! by `XDP_TX`.
//!
//! A port takes XDP frames while it is up, in the STP forwarding state,
//! and the kernel says its driver transmits them (a NIC with XDP transmit,
//! a veth whose peer runs an XDP program or GRO). A VLAN-aware bridge's
//! ports take none: the tag a frame leaves with is the bridge's to choose.
//! Read at each attachment of a bridge and with every interface's way out
//! ([`crate::agent::EGRESS_REFRESH`]); until then, a port that stopped
//! taking XDP frames drops those sent to it, as an attached veth whose peer
//! lost its XDP program does.

use std::collections::{BTreeMap, BTreeSet};

use aya::Ebpf;
use lb_common::{MAX_BRIDGE_HOSTS, MAX_INTERFACES, bridge::BridgePortKey};

use super::{attach::Attachment, maps};
use crate::{
    egress::{self, EgressPath},
    host::{self, OperState},
    netdev,
};

/// Ports in `INTERFACES`: ifindex → (its bridge's ifindex, its name).
type Ports = BTreeMap<u32, (u32, String)>;
/// `BRIDGE_PORTS`' entries.
type Hosts = BTreeMap<BridgePortKey, u32>;

/// What `INTERFACES` and `BRIDGE_PORTS` hold for the attached bridges.
#[derive(Debug)]
pub(super) struct BridgePorts {
    /// Whether frames are sent past bridges at all (`[agent]
    /// xdp_past_bridges`); if not, the maps are kept empty.
    enabled: bool,
    /// The bridges attached, or some of whose ports are, by ifindex.
    bridges: BTreeSet<u32>,
    /// Ports in `INTERFACES`, as written.
    ports: Ports,
    /// `BRIDGE_PORTS`, as written.
    hosts: Hosts,
    /// Whether what an earlier agent (or a failed write) left in the maps
    /// was read back.
    loaded: bool,
    /// A map is full: logged once until it is not.
    full: bool,
}

impl BridgePorts {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            bridges: BTreeSet::new(),
            ports: Ports::new(),
            hosts: Hosts::new(),
            loaded: false,
            full: false,
        }
    }

    /// Notes that interface `ifindex` was attached; returns whether it is a
    /// bridge or a bridge's port.
    pub(super) fn attached(&mut self, ifindex: u32) -> anyhow::Result<bool> {
        let bridge = host::bridge_of(ifindex)?;
        if let Some(bridge) = bridge {
            self.bridges.insert(bridge);
        }
        Ok(bridge.is_some())
    }

    /// Reads the ports and forwarding tables of the attached bridges again
    /// and updates the maps; sets each bridge's [`Attachment::xdp_ports`].
    /// Returns whether `BRIDGE_PORTS` or the ports changed (remembered next
    /// hops may name a port no longer there).
    pub(super) fn refresh(
        &mut self,
        ebpf: &mut Ebpf,
        attachments: &mut [&mut Attachment],
    ) -> anyhow::Result<bool> {
        if !self.loaded {
            self.load(ebpf, attachments)?;
        }
        if self.bridges.is_empty() && self.ports.is_empty() && self.hosts.is_empty() {
            return Ok(false);
        }
        let attached: BTreeSet<u32> = attachments.iter().map(|a| a.ifindex).collect();
        let (ports, hosts) = if self.enabled {
            self.wanted(&attached)?
        } else {
            Default::default()
        };
        let changed = ports != self.ports || hosts != self.hosts;
        if let Err(e) = self.write(ebpf, &attached, ports, hosts) {
            // What was written is unknown: read it back next time.
            self.loaded = false;
            return Err(e);
        }
        for attachment in attachments.iter_mut() {
            let mut names: Vec<String> = self
                .ports
                .values()
                .filter(|(bridge, _)| *bridge == attachment.ifindex)
                .map(|(_, name)| name.clone())
                .collect();
            names.sort();
            if names != attachment.xdp_ports {
                log_ports(&attachment.iface, &names);
            }
            attachment.xdp_ports = names;
        }
        Ok(changed)
    }

    /// Reads back what the maps hold from an earlier agent: `BRIDGE_PORTS`,
    /// and the ports its entries name (other interfaces in `INTERFACES`
    /// belong to their attachments), so that what this agent does not want
    /// is taken out.
    fn load(&mut self, ebpf: &Ebpf, attachments: &[&mut Attachment]) -> anyhow::Result<()> {
        self.hosts = maps::bridge_ports(ebpf)?.entries().collect();
        self.ports.clear();
        for (key, &port) in &self.hosts {
            if attachments.iter().all(|a| a.ifindex != port) {
                self.ports.insert(port, (key.bridge, String::new()));
            }
        }
        self.loaded = true;
        Ok(())
    }

    /// The ports of the bridges that take XDP frames (attached interfaces
    /// aside: their way out is their own), and the hosts behind them and
    /// behind attached ports; each within what its map holds.
    fn wanted(&mut self, attached: &BTreeSet<u32>) -> anyhow::Result<(Ports, Hosts)> {
        let mut ports = Ports::new();
        let mut hosts = Hosts::new();
        let room = (MAX_INTERFACES as usize).saturating_sub(attached.len());
        let mut full = false;
        for &bridge in &self.bridges {
            let Some(view) = host::bridge_view(bridge)? else {
                continue;
            };
            if view.vlan_filtering {
                continue;
            }
            for port in view.ports {
                let takes_xdp = port.oper == OperState::Up
                    && port.forwarding
                    && !attached.contains(&port.index)
                    && netdev::xdp_features(port.index)
                        .is_ok_and(|f| egress::path_for(f) == EgressPath::Xdp);
                if !takes_xdp {
                    continue;
                }
                if ports.len() == room {
                    full = true;
                    break;
                }
                ports.insert(port.index, (bridge, port.name));
            }
            for host in host::bridge_hosts(bridge)? {
                if !ports.contains_key(&host.port) && !attached.contains(&host.port) {
                    continue;
                }
                if hosts.len() == MAX_BRIDGE_HOSTS as usize {
                    full = true;
                    break;
                }
                hosts.insert(BridgePortKey::new(bridge, host.mac), host.port);
            }
        }
        if full && !self.full {
            tracing::warn!(
                ports = room,
                hosts = MAX_BRIDGE_HOSTS,
                "more bridge ports or hosts behind them than xlb's maps hold; the kernel \
                 forwards frames to the others"
            );
        }
        self.full = full;
        Ok((ports, hosts))
    }

    /// Makes the maps hold `ports` and `hosts`: every wanted port is
    /// (re)inserted in `INTERFACES` before the hosts that name it, ports no
    /// longer wanted go after them, and an attached interface is never
    /// taken out (its entry is its attachment's).
    fn write(
        &mut self,
        ebpf: &mut Ebpf,
        attached: &BTreeSet<u32>,
        ports: Ports,
        hosts: Hosts,
    ) -> anyhow::Result<()> {
        {
            let mut interfaces = maps::interfaces_mut(ebpf)?;
            for &port in ports.keys() {
                interfaces.insert(port)?;
            }
        }
        {
            let mut map = maps::bridge_ports_mut(ebpf)?;
            for key in self.hosts.keys().filter(|k| !hosts.contains_key(k)) {
                map.remove(key)?;
            }
            for (key, &port) in &hosts {
                if self.hosts.get(key) != Some(&port) {
                    map.insert(*key, port)?;
                }
            }
        }
        self.hosts = hosts;
        let mut interfaces = maps::interfaces_mut(ebpf)?;
        for &port in self.ports.keys() {
            if !ports.contains_key(&port) && !attached.contains(&port) {
                interfaces.remove(port)?;
            }
        }
        self.ports = ports;
        Ok(())
    }
}

fn log_ports(bridge: &str, ports: &[String]) {
    if ports.is_empty() {
        tracing::info!(
            iface = bridge,
            "no port of the bridge takes XDP frames (or xdp_past_bridges is off): the kernel \
             forwards frames into it"
        );
    } else {
        tracing::info!(
            iface = bridge,
            ports = %ports.join(","),
            "frames to hosts behind these ports of the bridge go straight to the port by XDP"
        );
    }
}
