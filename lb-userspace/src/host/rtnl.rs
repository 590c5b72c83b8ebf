//! Links, addresses and routes over an rtnetlink socket, turned into the
//! typed facts of [`super`] at once.

use std::net::IpAddr;

use anyhow::{Context as _, bail};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_MULTIPART, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{
        BridgePortState, InfoBridge, InfoBridgePort, InfoData, InfoIpVlan, InfoKind, InfoMacVlan,
        InfoPortData, IpVlanFlags, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp,
        MacVlanMode, State, XdpAttached,
    },
    neighbour::{
        NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{
    Address, BridgeHost, BridgePort, BridgeView, Link, LinkKind, OperState, Route, RouteKind,
    Siblings, XdpAttachment, XdpMode,
};

/// An rtnetlink socket in the calling thread's network namespace.
pub(crate) struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    pub(crate) fn open() -> anyhow::Result<Self> {
        Self::open_with(false)
    }

    /// A socket whose dumps the kernel filters by what the request names
    /// (table, protocol) instead of sending every route.
    pub(crate) fn open_filtered() -> anyhow::Result<Self> {
        Self::open_with(true)
    }

    fn open_with(strict: bool) -> anyhow::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        if strict {
            socket.set_netlink_get_strict_chk(true)?;
        }
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Every interface.
    pub(super) fn links(&mut self) -> anyhow::Result<Vec<Link>> {
        let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
        let mut links = Vec::new();
        for answer in self.request(request, NLM_F_DUMP)? {
            if let RouteNetlinkMessage::NewLink(message) = answer {
                links.push(link(message));
            }
        }
        Ok(links)
    }

    /// Every address of every interface.
    pub(super) fn addresses(&mut self) -> anyhow::Result<Vec<Address>> {
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let mut addresses = Vec::new();
        for answer in self.request(request, NLM_F_DUMP)? {
            if let RouteNetlinkMessage::NewAddress(message) = answer {
                addresses.extend(address(&message));
            }
        }
        Ok(addresses)
    }

    /// Bridge `bridge` and its ports; `None` if no bridge has that index.
    pub(super) fn bridge_view(&mut self, bridge: u32) -> anyhow::Result<Option<BridgeView>> {
        let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
        let mut view: Option<BridgeView> = None;
        let mut ports = Vec::new();
        for answer in self.request(request, NLM_F_DUMP)? {
            let RouteNetlinkMessage::NewLink(message) = answer else {
                continue;
            };
            if message.header.index == bridge {
                view = bridge_of(&message);
            } else if let Some(port) = port_of(&message, bridge) {
                ports.push(port);
            }
        }
        Ok(view.map(|view| BridgeView { ports, ..view }))
    }

    /// The hosts bridge `bridge`'s forwarding table places behind one of
    /// its ports (`bridge fdb show br …`, without the bridge's and its
    /// ports' own addresses). A VLAN-aware bridge's entries, which carry a
    /// VLAN, are left out, as are locked ones (802.1X).
    pub(super) fn bridge_hosts(&mut self, bridge: u32) -> anyhow::Result<Vec<BridgeHost>> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Bridge;
        let mut hosts = Vec::new();
        for answer in self.request(RouteNetlinkMessage::GetNeighbour(request), NLM_F_DUMP)? {
            if let RouteNetlinkMessage::NewNeighbour(message) = answer
                && let Some(host) = bridge_host(&message, bridge)
            {
                hosts.push(host);
            }
        }
        Ok(hosts)
    }

    /// The route the kernel would send a packet to `to` by (`ip route get`).
    pub(super) fn route_to(&mut self, to: IpAddr) -> std::io::Result<Route> {
        let mut message = RouteMessage::default();
        message.header.address_family = match to {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        message.header.destination_prefix_length = if to.is_ipv4() { 32 } else { 128 };
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(to)));
        let answers = self
            .request(RouteNetlinkMessage::GetRoute(message), 0)
            .map_err(io_error)?;
        answers
            .into_iter()
            .find_map(|answer| match answer {
                RouteNetlinkMessage::NewRoute(message) => Some(route(&message)),
                _ => None,
            })
            .ok_or_else(|| std::io::Error::other("no route in the kernel's answer"))
    }

    /// The destinations of the host routes (/32, /128) of `protocol` in
    /// `table`, both address families.
    pub(crate) fn host_routes(&mut self, table: u32, protocol: u8) -> anyhow::Result<Vec<IpAddr>> {
        // On a socket from `open_filtered` the kernel sends only the table's
        // routes of `protocol`; the answers are checked here all the same.
        let mut filter = RouteMessage::default();
        filter.header.table = u8::try_from(table).unwrap_or(0);
        filter.header.protocol = RouteProtocol::from(protocol);
        filter.attributes.push(RouteAttribute::Table(table));
        let request = RouteNetlinkMessage::GetRoute(filter);
        let mut found = Vec::new();
        for answer in self.request(request, NLM_F_DUMP)? {
            let RouteNetlinkMessage::NewRoute(message) = answer else {
                continue;
            };
            if u8::from(message.header.protocol) != protocol || route_table(&message) != table {
                continue;
            }
            let to = message.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
                RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                _ => None,
            });
            if let Some(to) = to
                && message.header.destination_prefix_length == host_prefix(to)
            {
                found.push(to);
            }
        }
        Ok(found)
    }

    /// Adds a blackhole host route to `to` in `table` with `protocol`;
    /// `replace`s a route already there, or else leaves it (`EEXIST`).
    pub(crate) fn add_blackhole(
        &mut self,
        to: IpAddr,
        table: u32,
        protocol: u8,
        replace: bool,
    ) -> std::io::Result<()> {
        let mut message = host_route(to, table, protocol);
        message.header.kind = RouteType::BlackHole;
        let flags = NLM_F_ACK | NLM_F_CREATE | if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        self.request(RouteNetlinkMessage::NewRoute(message), flags)
            .map(drop)
            .map_err(io_error)
    }

    /// Deletes the host route to `to` of `protocol` in `table`.
    pub(crate) fn delete_route(
        &mut self,
        to: IpAddr,
        table: u32,
        protocol: u8,
    ) -> std::io::Result<()> {
        let message = host_route(to, table, protocol);
        self.request(RouteNetlinkMessage::DelRoute(message), NLM_F_ACK)
            .map(drop)
            .map_err(io_error)
    }

    /// Sends `message` and collects the answers until the kernel is done.
    /// A kernel error comes back as the `std::io::Error` of its errno.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> anyhow::Result<Vec<RouteNetlinkMessage>> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut answers = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .context("parsing the kernel's answer")?;
                let length = message.header.length as usize;
                if length == 0 {
                    bail!("empty netlink message");
                }
                offset += length.next_multiple_of(4);
                if message.header.sequence_number != self.sequence {
                    continue;
                }
                let multipart = message.header.flags & NLM_F_MULTIPART != 0;
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(error) => match error.code {
                        Some(code) => {
                            return Err(std::io::Error::from_raw_os_error(-code.get()).into());
                        }
                        None => return Ok(answers),
                    },
                    NetlinkPayload::InnerMessage(inner) => {
                        answers.push(inner);
                        if !multipart {
                            return Ok(answers);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The bridge `message` describes, without its ports; `None` if it is no
/// bridge.
fn bridge_of(message: &LinkMessage) -> Option<BridgeView> {
    let infos = message.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    })?;
    let mut is_bridge = false;
    let mut vlan_filtering = false;
    for info in infos {
        match info {
            LinkInfo::Kind(InfoKind::Bridge) => is_bridge = true,
            LinkInfo::Data(InfoData::Bridge(data)) => {
                vlan_filtering = data
                    .iter()
                    .any(|d| matches!(d, InfoBridge::VlanFiltering(true)));
            }
            _ => {}
        }
    }
    is_bridge.then_some(BridgeView {
        vlan_filtering,
        ports: Vec::new(),
    })
}

/// The port of bridge `bridge` that `message` describes, if it is one.
fn port_of(message: &LinkMessage, bridge: u32) -> Option<BridgePort> {
    let mut port = BridgePort {
        index: message.header.index,
        name: String::new(),
        oper: OperState::Unknown,
        forwarding: false,
    };
    let mut master = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => port.name = name.clone(),
            LinkAttribute::Controller(index) => master = Some(*index),
            LinkAttribute::OperState(state) => port.oper = oper_state(*state),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::PortData(InfoPortData::BridgePort(data)) = info {
                        port.forwarding = data.iter().any(|d| {
                            matches!(d, InfoBridgePort::State(BridgePortState::Forwarding))
                        });
                    }
                }
            }
            _ => {}
        }
    }
    if master != Some(bridge) {
        return None;
    }
    Some(port)
}

/// The host an entry of bridge `bridge`'s forwarding table places behind
/// a port, if it is one.
fn bridge_host(message: &NeighbourMessage, bridge: u32) -> Option<BridgeHost> {
    let header = &message.header;
    // A permanent entry is an address of the bridge or of a port itself;
    // one of the port's own table (`self`) is not the bridge's.
    if header.ifindex == bridge
        || header.state == NeighbourState::Permanent
        || header.flags.contains(NeighbourFlags::Own)
    {
        return None;
    }
    let mut master = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Controller(index) => master = Some(*index),
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(&bytes[..]).ok()
            }
            NeighbourAttribute::Vlan(_) => return None,
            NeighbourAttribute::ExtFlags(flags) if flags.contains(NeighbourExtFlags::Locked) => {
                return None;
            }
            _ => {}
        }
    }
    if master != Some(bridge) {
        return None;
    }
    Some(BridgeHost {
        mac: mac?,
        port: header.ifindex,
    })
}

fn link(message: LinkMessage) -> Link {
    let header = &message.header;
    let mut link = Link {
        index: header.index,
        name: String::new(),
        kind: if header.flags.contains(LinkFlags::Loopback) {
            LinkKind::Loopback
        } else {
            LinkKind::Device
        },
        driver: None,
        up: header.flags.contains(LinkFlags::Up),
        oper: OperState::Unknown,
        mtu: 0,
        master: None,
        parent: None,
        siblings: Siblings::Apart,
        xdp: None,
        offloads: None,
        xdp_features: None,
    };
    let mut link_netns = false;
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Controller(master) => link.master = Some(master),
            LinkAttribute::Link(parent) => link.parent = Some(parent),
            LinkAttribute::LinkNetNsId(_) => link_netns = true,
            LinkAttribute::OperState(state) => link.oper = oper_state(state),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = link_kind(kind),
                        LinkInfo::Data(data) => link.siblings = siblings(&data),
                        _ => {}
                    }
                }
            }
            LinkAttribute::Xdp(xdp) => link.xdp = xdp_attachment(&xdp),
            _ => {}
        }
    }
    // A parent in another namespace (a veth's peer) is no device of ours.
    if link_netns || !link.kind.sits_on_parent() {
        link.parent = None;
    }
    link
}

fn link_kind(kind: InfoKind) -> LinkKind {
    match kind {
        InfoKind::Veth => LinkKind::Veth,
        InfoKind::Bridge => LinkKind::Bridge,
        InfoKind::Bond => LinkKind::Bond,
        InfoKind::Vlan => LinkKind::Vlan,
        InfoKind::MacVlan => LinkKind::Macvlan,
        InfoKind::IpVlan => LinkKind::Ipvlan,
        other => LinkKind::Other(other.to_string()),
    }
}

/// How a macvlan or ipvlan with these settings takes frames from its
/// siblings ([`Link::siblings`]). The kernel's own default mode for a
/// macvlan is `vepa`; Docker's is `bridge`.
fn siblings(data: &InfoData) -> Siblings {
    match data {
        InfoData::MacVlan(infos)
            if infos
                .iter()
                .any(|info| matches!(info, InfoMacVlan::Mode(MacVlanMode::Bridge))) =>
        {
            Siblings::ThroughParentStack
        }
        InfoData::IpVlan(infos)
            if !infos.iter().any(|info| {
                matches!(info, InfoIpVlan::Flags(flags)
                    if flags.intersects(IpVlanFlags::Private | IpVlanFlags::Vepa))
            }) =>
        {
            Siblings::Direct
        }
        _ => Siblings::Apart,
    }
}

fn oper_state(state: State) -> OperState {
    match state {
        State::Up => OperState::Up,
        State::Down | State::NotPresent => OperState::Down,
        State::LowerLayerDown => OperState::LowerLayerDown,
        State::Dormant | State::Testing => OperState::Dormant,
        _ => OperState::Unknown,
    }
}

fn xdp_attachment(attributes: &[LinkXdp]) -> Option<XdpAttachment> {
    let mode = attributes.iter().find_map(|a| match a {
        LinkXdp::Attached(XdpAttached::Driver) => Some(XdpMode::Native),
        LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(XdpMode::Generic),
        LinkXdp::Attached(XdpAttached::Hardware) => Some(XdpMode::Offloaded),
        LinkXdp::Attached(XdpAttached::Multiple) => Some(XdpMode::Multiple),
        _ => None,
    })?;
    let prog_id = attributes.iter().find_map(|a| match a {
        LinkXdp::ProgId(id) => Some(*id),
        _ => None,
    });
    Some(XdpAttachment { mode, prog_id })
}

fn address(message: &AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on a
    // point-to-point link, and the only one IPv6 sends.
    let ip = message
        .attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        })
        .or_else(|| {
            message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })?;
    Some(Address {
        index: message.header.index,
        ip,
        prefix_len: message.header.prefix_len,
    })
}

/// A host route to `to` in `table` by `protocol`, without a type.
fn host_route(to: IpAddr, table: u32, protocol: u8) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = match to {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.destination_prefix_length = host_prefix(to);
    message.header.table = u8::try_from(table).unwrap_or(0);
    message.header.protocol = RouteProtocol::from(protocol);
    message.header.scope = RouteScope::Universe;
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(to)));
    message.attributes.push(RouteAttribute::Table(table));
    message
}

fn host_prefix(to: IpAddr) -> u8 {
    if to.is_ipv4() { 32 } else { 128 }
}

/// The route's table: its `RTA_TABLE`, or the header's for tables below 256.
fn route_table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

fn io_error(e: anyhow::Error) -> std::io::Error {
    match e.downcast::<std::io::Error>() {
        Ok(io) => io,
        Err(other) => std::io::Error::other(format!("{other:#}")),
    }
}

fn route(message: &RouteMessage) -> Route {
    let ip = |address: &RouteAddress| match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let mut route = Route {
        kind: match message.header.kind {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::Local => RouteKind::Local,
            _ => RouteKind::Other,
        },
        oif: None,
        gateway: None,
        prefsrc: None,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Oif(oif) => route.oif = Some(*oif),
            RouteAttribute::Gateway(gateway) => route.gateway = ip(gateway),
            RouteAttribute::PrefSource(source) => route.prefsrc = ip(source),
            _ => {}
        }
    }
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: u32 = 2;
    const PORT: u32 = 4;
    const MAC: [u8; 6] = [2, 0, 10, 10, 2, 10];

    /// An entry as `bridge fdb show` dumps a learned one: `02:00:0a:0a:02:0a
    /// dev b0 master brb`.
    fn learned() -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = PORT;
        message.header.state = NeighbourState::Reachable;
        message.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(MAC.to_vec()),
            NeighbourAttribute::Controller(BRIDGE),
        ];
        message
    }

    #[test]
    fn a_learned_or_static_entry_of_the_bridge_is_a_host_behind_its_port() {
        let host = BridgeHost {
            mac: MAC,
            port: PORT,
        };
        assert_eq!(bridge_host(&learned(), BRIDGE), Some(host));
        let mut stale = learned();
        stale.header.state = NeighbourState::Stale;
        assert_eq!(bridge_host(&stale, BRIDGE), Some(host));
        let mut fixed = learned();
        fixed.header.state = NeighbourState::Noarp;
        assert_eq!(bridge_host(&fixed, BRIDGE), Some(host));
    }

    #[test]
    fn own_addresses_other_bridges_vlans_and_locked_entries_are_no_hosts() {
        let mut own = learned();
        own.header.state = NeighbourState::Permanent;
        let mut on_the_bridge = learned();
        on_the_bridge.header.ifindex = BRIDGE;
        let mut port_table = learned();
        port_table.header.flags = NeighbourFlags::Own;
        let mut vlan = learned();
        vlan.attributes.push(NeighbourAttribute::Vlan(100));
        let mut locked = learned();
        locked
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Locked));
        let mut no_master = learned();
        no_master.attributes.pop();
        for (what, entry) in [
            ("a port's own address", own),
            ("the bridge's own entry", on_the_bridge),
            ("the port's own table", port_table),
            ("a VLAN-aware entry", vlan),
            ("a locked entry", locked),
            ("an entry of no bridge", no_master),
        ] {
            assert_eq!(bridge_host(&entry, BRIDGE), None, "{what}");
        }
        assert_eq!(bridge_host(&learned(), BRIDGE + 1), None, "another bridge");
    }

    fn port_message(state: BridgePortState) -> LinkMessage {
        let mut message = LinkMessage::default();
        message.header.index = PORT;
        message.attributes = vec![
            LinkAttribute::IfName("b0".into()),
            LinkAttribute::Controller(BRIDGE),
            LinkAttribute::OperState(State::Up),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::PortKind(netlink_packet_route::link::InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::State(state)])),
            ]),
        ];
        message
    }

    #[test]
    fn a_port_says_whether_it_forwards() {
        let port = port_of(&port_message(BridgePortState::Forwarding), BRIDGE).unwrap();
        assert_eq!(
            port,
            BridgePort {
                index: PORT,
                name: "b0".into(),
                oper: OperState::Up,
                forwarding: true,
            }
        );
        let blocked = port_of(&port_message(BridgePortState::Blocking), BRIDGE).unwrap();
        assert!(!blocked.forwarding);
        assert_eq!(port_of(&port_message(BridgePortState::Forwarding), 9), None);
    }

    #[test]
    fn macvlans_and_ipvlans_say_how_siblings_reach_them() {
        let upper = |kind: InfoKind, data: InfoData| {
            let mut message = LinkMessage::default();
            message.header.index = PORT;
            message.attributes = vec![
                LinkAttribute::IfName("mvb".into()),
                LinkAttribute::Link(BRIDGE),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind), LinkInfo::Data(data)]),
            ];
            link(message)
        };
        let macvlan = |mode| {
            upper(
                InfoKind::MacVlan,
                InfoData::MacVlan(vec![InfoMacVlan::Mode(mode)]),
            )
        };
        let bridge_mode = macvlan(MacVlanMode::Bridge);
        assert_eq!(bridge_mode.kind, LinkKind::Macvlan);
        assert_eq!(bridge_mode.parent, Some(BRIDGE));
        assert_eq!(bridge_mode.siblings, Siblings::ThroughParentStack);
        for mode in [
            MacVlanMode::Vepa,
            MacVlanMode::Private,
            MacVlanMode::Passthrough,
            MacVlanMode::Source,
        ] {
            assert_eq!(
                macvlan(mode).siblings,
                Siblings::Apart,
                "macvlan mode {mode:?}"
            );
        }
        let ipvlan = |flags| {
            upper(
                InfoKind::IpVlan,
                InfoData::IpVlan(vec![InfoIpVlan::Flags(flags)]),
            )
        };
        assert_eq!(ipvlan(IpVlanFlags::empty()).siblings, Siblings::Direct);
        assert_eq!(ipvlan(IpVlanFlags::Private).siblings, Siblings::Apart);
        assert_eq!(ipvlan(IpVlanFlags::Vepa).siblings, Siblings::Apart);
        let vlan = upper(InfoKind::Vlan, InfoData::Vlan(Vec::new()));
        assert_eq!(vlan.siblings, Siblings::Apart, "a VLAN device");
    }

    #[test]
    fn a_bridge_says_whether_it_filters_vlans() {
        let mut message = LinkMessage::default();
        message.header.index = BRIDGE;
        message.attributes = vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)])),
        ])];
        assert_eq!(bridge_of(&message).map(|b| b.vlan_filtering), Some(true));
        message.attributes = vec![LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Veth,
        )])];
        assert_eq!(bridge_of(&message), None);
    }
}
