//! Frames to hosts behind an attached bridge, sent by XDP straight to the
//! port the host is behind (`lb_common::bridge`): which ports of each
//! attached bridge take XDP frames, and the bridge's forwarding table for
//! them, kept in `INTERFACES` and `BRIDGE_PORTS`.
//!
//! A port takes XDP frames where the kernel says its driver transmits them
//! (a NIC with XDP transmit, a veth whose peer runs an XDP program or GRO).
//! Read again with every interface's way out ([`crate::agent::EGRESS_REFRESH`]):
//! a host that moves to another port, or a port that stops taking XDP
//! frames, is followed within that time and the next hops' lifetime.

use std::collections::{BTreeMap, BTreeSet};

use aya::Ebpf;
use lb_common::{MAX_BRIDGE_HOSTS, bridge::BridgePortKey};

use super::{attach::Attachment, maps};
use crate::{
    egress::{self, EgressPath},
    host::{self, Link, LinkKind},
    netdev,
};

/// What `INTERFACES` and `BRIDGE_PORTS` hold for the attached bridges.
#[derive(Debug, Default)]
pub(super) struct BridgePorts {
    /// Ports in `INTERFACES`: ifindex → (its bridge's ifindex, its name).
    ports: BTreeMap<u32, (u32, String)>,
    /// `BRIDGE_PORTS` as written.
    hosts: BTreeMap<BridgePortKey, u32>,
    /// Whether what an earlier agent left in the pinned maps was read.
    loaded: bool,
}

impl BridgePorts {
    /// Reads the ports and forwarding tables of the bridges among
    /// `attachments` again and updates the maps where they changed; sets
    /// each bridge's [`Attachment::xdp_ports`]. Returns whether anything
    /// changed (remembered next hops may name a port no longer there).
    pub(super) fn refresh(
        &mut self,
        ebpf: &mut Ebpf,
        attachments: &mut [&mut Attachment],
    ) -> anyhow::Result<bool> {
        if !self.loaded {
            self.load(ebpf, attachments)?;
        }
        let links = host::links()?;
        let bridges: BTreeSet<u32> = attachments
            .iter()
            .filter(|a| {
                links
                    .iter()
                    .any(|l| l.index == a.ifindex && l.kind == LinkKind::Bridge)
            })
            .map(|a| a.ifindex)
            .collect();
        let (ports, hosts) = if bridges.is_empty() {
            Default::default()
        } else {
            let attached: BTreeSet<u32> = attachments.iter().map(|a| a.ifindex).collect();
            wanted(links, &bridges, &attached)?
        };
        let changed = ports != self.ports || hosts != self.hosts;
        if changed {
            self.write(ebpf, ports, hosts)?;
        }
        for attachment in attachments.iter_mut() {
            let names: Vec<String> = self
                .ports
                .values()
                .filter(|(bridge, _)| *bridge == attachment.ifindex)
                .map(|(_, name)| name.clone())
                .collect();
            if names != attachment.xdp_ports && bridges.contains(&attachment.ifindex) {
                log_ports(&attachment.iface, &names);
            }
            attachment.xdp_ports = names;
        }
        Ok(changed)
    }

    /// Reads back what an earlier agent left in the pinned maps, so that a
    /// host or port it wrote and this one does not want is taken out:
    /// `BRIDGE_PORTS`, and the ports its entries name (other interfaces in
    /// `INTERFACES` belong to their attachments).
    fn load(&mut self, ebpf: &Ebpf, attachments: &[&mut Attachment]) -> anyhow::Result<()> {
        self.hosts = maps::bridge_ports(ebpf)?.entries().collect();
        for (key, &port) in &self.hosts {
            if attachments.iter().all(|a| a.ifindex != port) {
                self.ports.insert(port, (key.bridge, String::new()));
            }
        }
        self.loaded = true;
        Ok(())
    }

    /// Makes the maps hold `ports` and `hosts`: ports come into
    /// `INTERFACES` before the hosts that name them, and go after.
    fn write(
        &mut self,
        ebpf: &mut Ebpf,
        ports: BTreeMap<u32, (u32, String)>,
        hosts: BTreeMap<BridgePortKey, u32>,
    ) -> anyhow::Result<()> {
        {
            let mut interfaces = maps::interfaces_mut(ebpf)?;
            for &port in ports.keys().filter(|p| !self.ports.contains_key(p)) {
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
        for &port in self.ports.keys().filter(|p| !ports.contains_key(p)) {
            interfaces.remove(port)?;
        }
        self.ports = ports;
        Ok(())
    }
}

/// The ports of `bridges` (among `links`) that are up and take XDP
/// frames, attached interfaces aside (their way out is their own), and the
/// hosts behind them, up to [`MAX_BRIDGE_HOSTS`]. A kernel that cannot tell
/// a port's XDP features (older than 6.3) gets none: the kernel forwards.
#[allow(clippy::type_complexity)]
fn wanted(
    links: Vec<Link>,
    bridges: &BTreeSet<u32>,
    attached: &BTreeSet<u32>,
) -> anyhow::Result<(BTreeMap<u32, (u32, String)>, BTreeMap<BridgePortKey, u32>)> {
    let mut ports = BTreeMap::new();
    for link in links {
        let Some(bridge) = link.master.filter(|m| bridges.contains(m)) else {
            continue;
        };
        if attached.contains(&link.index) || !link.up {
            continue;
        }
        let transmits = netdev::xdp_features(link.index)
            .is_ok_and(|features| egress::path_for(features) == EgressPath::Xdp);
        if transmits {
            ports.insert(link.index, (bridge, link.name));
        }
    }
    let mut hosts = BTreeMap::new();
    for &bridge in bridges {
        for host in host::bridge_hosts(bridge)? {
            if !ports.contains_key(&host.port) {
                continue;
            }
            if hosts.len() == MAX_BRIDGE_HOSTS as usize {
                tracing::warn!(
                    max = MAX_BRIDGE_HOSTS,
                    "more hosts behind the attached bridges than BRIDGE_PORTS holds; the \
                     kernel forwards frames to the others"
                );
                return Ok((ports, hosts));
            }
            hosts.insert(BridgePortKey::new(bridge, host.mac), host.port);
        }
    }
    Ok((ports, hosts))
}

fn log_ports(bridge: &str, ports: &[String]) {
    if ports.is_empty() {
        tracing::info!(
            iface = bridge,
            "no port of the bridge takes XDP frames: the kernel forwards frames into it"
        );
    } else {
        tracing::info!(
            iface = bridge,
            ports = %ports.join(","),
            "frames to hosts behind these ports of the bridge go straight to the port by XDP"
        );
    }
}
