//! Facts about the host's network, read in the calling thread's network
//! namespace: interfaces, addresses, the routes the kernel picks, sysctls
//! and NIC offloads. `xlb check`, `xlb doctor` and `xlb run` judge them with
//! the pure checks in [`crate::doctor`].
//!
//! Links, addresses and routes come from rtnetlink, sysctls from
//! `/proc/sys/net` (both per network namespace, unlike `/sys/class/net`
//! under `nsenter --net`), offloads and drivers from `ethtool`.

mod ethtool;
mod rtnl;
pub(crate) use rtnl::Rtnl;
mod sysctl;

use std::net::IpAddr;

use anyhow::Context as _;
use serde::{Serialize, Serializer};

use crate::netdev::{self, XdpFeatures};

pub use ethtool::{Feature, Offloads};
pub use sysctl::{GlobalSysctls, IfaceSysctls, RpFilter, Sysctls, key as sysctl_key};

/// Everything the checks know about the host.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HostFacts {
    /// Every interface of the network namespace.
    pub links: Vec<Link>,
    /// Every IP address configured on an interface.
    pub addresses: Vec<Address>,
    /// The kernel's route to each address asked about (`ip route get`).
    pub routes: Vec<RouteLookup>,
    /// Forwarding, reverse-path filter and `accept_local` settings.
    pub sysctls: Sysctls,
    /// Size of a memory page: bounds the frames native XDP takes.
    pub page_size: u32,
    /// The running kernel's release (`uname -r`); empty if unknown.
    pub kernel_release: String,
}

/// One network interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: LinkKind,
    /// The driver `ethtool -i` names; only read for the interfaces asked
    /// about, and absent where ethtool cannot tell.
    pub driver: Option<String>,
    /// Administratively up (`ip link set … up`).
    pub up: bool,
    /// Operational state: whether frames can flow.
    pub oper: OperState,
    pub mtu: u32,
    /// Index of the bridge or bond this interface is a port of.
    pub master: Option<u32>,
    /// Index of the device a VLAN, macvlan or ipvlan interface sits on
    /// (in this namespace).
    pub parent: Option<u32>,
    /// How frames from the other macvlans or ipvlans of its parent
    /// (containers on them, say) reach it.
    #[serde(skip_serializing_if = "Siblings::is_apart")]
    pub siblings: Siblings,
    /// The XDP program attached to it, if any.
    pub xdp: Option<XdpAttachment>,
    /// LRO, hardware GRO and VLAN stripping, where ethtool could tell (only
    /// read for the interfaces asked about).
    pub offloads: Option<Offloads>,
    /// The driver's XDP features (generic netlink `netdev`, Linux 6.3+;
    /// only read for the interfaces asked about).
    #[serde(serialize_with = "display")]
    pub xdp_features: Option<XdpFeatures>,
}

/// How a macvlan or ipvlan takes frames from the other devices on its
/// parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Siblings {
    /// Only through the parent's driver, like frames from the wire: not
    /// at all, or back from the switch (a macvlan in `vepa`, `private`,
    /// `passthru` or `source` mode, an ipvlan in `private` or `vepa`
    /// mode), or no such device.
    #[default]
    Apart,
    /// Handed to the parent's kernel receive path, which passes them on by
    /// MAC address (a macvlan in `bridge` mode, Docker's default): generic
    /// XDP on the parent sees them, native XDP does not.
    ThroughParentStack,
    /// Delivered to it directly (an ipvlan in its default mode): no XDP on
    /// the parent sees them.
    Direct,
}

impl Siblings {
    pub fn is_apart(&self) -> bool {
        *self == Self::Apart
    }
}

/// What kind of device an interface is (`ip -d link`'s kind).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// No kind: a device with a driver of its own (a NIC, virtio, …).
    Device,
    Loopback,
    Veth,
    Bridge,
    Bond,
    Vlan,
    Macvlan,
    Ipvlan,
    /// Any other kind, by the kernel's name for it.
    Other(String),
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Device => "device",
            Self::Loopback => "loopback",
            Self::Veth => "veth",
            Self::Bridge => "bridge",
            Self::Bond => "bond",
            Self::Vlan => "vlan",
            Self::Macvlan => "macvlan",
            Self::Ipvlan => "ipvlan",
            Self::Other(kind) => kind,
        })
    }
}

impl LinkKind {
    /// Kinds that receive their frames through the device they sit on
    /// ([`Link::parent`]): XDP there sees them first.
    pub fn sits_on_parent(&self) -> bool {
        matches!(self, Self::Vlan | Self::Macvlan | Self::Ipvlan)
    }
}

/// RFC 2863 operational state, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperState {
    Up,
    Down,
    /// The device is up but what it depends on is not (a veth whose peer is
    /// down, a VLAN on a down NIC).
    LowerLayerDown,
    Dormant,
    /// Drivers that do not track it (loopback, bridges without ports…).
    Unknown,
}

/// An XDP program attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct XdpAttachment {
    pub mode: XdpMode,
    /// The program's id (`bpftool prog show id N`).
    pub prog_id: Option<u32>,
}

/// How an XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (`xdp` in `ip link`).
    Native,
    /// After the kernel built an skb (`xdpgeneric`).
    Generic,
    /// On the NIC itself.
    Offloaded,
    /// Several programs in several modes.
    Multiple,
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Offloaded => "offloaded",
            Self::Multiple => "multiple",
        })
    }
}

/// An address configured on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Address {
    /// Index of the interface holding it.
    pub index: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
}

/// The kernel's answer to `ip route get <to>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteLookup {
    pub to: IpAddr,
    /// The route, or why there is none (the kernel's error).
    pub route: Result<Route, String>,
}

/// A route the kernel would use to reach an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    pub kind: RouteKind,
    /// Index of the interface packets leave by.
    pub oif: Option<u32>,
    /// Next hop, when the address is not on-link.
    pub gateway: Option<IpAddr>,
    /// Source address the host's own packets to it get.
    pub prefsrc: Option<IpAddr>,
}

/// What kind of route answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// Forwarded out of an interface (directly or through a gateway).
    Unicast,
    /// An address of this host: delivered locally, over `lo`.
    Local,
    /// Broadcast, multicast, …: not a way to a backend.
    Other,
}

/// What to read beyond the namespace's links, addresses and sysctls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Interfaces whose driver and offloads to read (one `ethtool` run
    /// each).
    pub interfaces: Vec<String>,
    /// Addresses to look the route up for.
    pub routes: Vec<IpAddr>,
    /// Read drivers and offloads of every interface an XDP program is
    /// attached to as well.
    pub with_xdp: bool,
}

impl HostFacts {
    /// Reads the facts of the calling thread's network namespace.
    pub fn gather(query: &Query) -> anyhow::Result<Self> {
        let mut rtnl = rtnl::Rtnl::open().context("opening an rtnetlink socket")?;
        let mut links = rtnl.links().context("listing interfaces")?;
        let wanted =
            |l: &Link| query.interfaces.contains(&l.name) || (query.with_xdp && l.xdp.is_some());
        for link in links.iter_mut().filter(|l| wanted(l)) {
            link.driver = ethtool::driver(&link.name);
            link.offloads = ethtool::offloads(&link.name);
            link.xdp_features = netdev::xdp_features(link.index).ok();
        }
        let addresses = rtnl.addresses().context("listing addresses")?;
        let mut routes = Vec::new();
        for &to in &query.routes {
            if routes.iter().any(|r: &RouteLookup| r.to == to) {
                continue;
            }
            let route = rtnl.route_to(to).map_err(|e| kernel_error(&e));
            routes.push(RouteLookup { to, route });
        }
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        Ok(Self {
            sysctls: Sysctls::read(&names),
            links,
            addresses,
            routes,
            page_size: page_size(),
            kernel_release: kernel_release(),
        })
    }

    /// The interface named `name`.
    pub fn link_named(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The interface with index `index`.
    pub fn link(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    /// Name of interface `index`, or the index itself if it is unknown.
    pub fn link_name(&self, index: u32) -> String {
        self.link(index)
            .map_or_else(|| format!("ifindex {index}"), |l| l.name.clone())
    }

    /// Where frames for interface `index` arrive before it sees them: the
    /// ports of a bridge or bond, the device a VLAN sits on.
    pub fn lowers(&self, index: u32) -> Vec<&Link> {
        let mut lowers: Vec<&Link> = self
            .links
            .iter()
            .filter(|l| l.master == Some(index))
            .collect();
        if let Some(link) = self.link(index)
            && link.kind.sits_on_parent()
            && let Some(parent) = link.parent.and_then(|p| self.link(p))
        {
            lowers.push(parent);
        }
        lowers
    }

    /// Interfaces configured on top of `index` (VLAN, macvlan, ipvlan).
    pub fn uppers(&self, index: u32) -> impl Iterator<Item = &Link> {
        self.links
            .iter()
            .filter(move |l| l.kind.sits_on_parent() && l.parent == Some(index))
    }

    /// The interface holding address `ip`, if any does.
    pub fn holder_of(&self, ip: IpAddr) -> Option<(&Link, &Address)> {
        let address = self.addresses.iter().find(|a| a.ip == ip)?;
        Some((self.link(address.index)?, address))
    }

    /// The route lookup for `to`, if it was asked for.
    pub fn route(&self, to: IpAddr) -> Option<&Result<Route, String>> {
        self.routes.iter().find(|r| r.to == to).map(|r| &r.route)
    }
}

/// A host behind a port of a bridge, from the bridge's forwarding table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BridgeHost {
    pub mac: [u8; 6],
    /// Ifindex of the port it is behind.
    pub port: u32,
}

/// A bridge and its ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeView {
    /// VLAN-aware (`vlan_filtering 1`): which ports a frame may leave by,
    /// and with which tag, depends on its VLAN.
    pub vlan_filtering: bool,
    pub ports: Vec<BridgePort>,
}

/// A port of a bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgePort {
    pub index: u32,
    pub name: String,
    pub oper: OperState,
    /// In the STP forwarding state (always, without STP, while up).
    pub forwarding: bool,
}

/// Bridge `bridge` and its ports, in the calling thread's network
/// namespace; `None` if no bridge has that index.
pub fn bridge_view(bridge: u32) -> anyhow::Result<Option<BridgeView>> {
    let mut rtnl = rtnl::Rtnl::open().context("opening an rtnetlink socket")?;
    rtnl.bridge_view(bridge)
        .context("listing the bridge's ports")
}

/// The bridge interface `index` is, or is a port of, if any, in the
/// calling thread's network namespace.
pub fn bridge_of(index: u32) -> anyhow::Result<Option<u32>> {
    let mut rtnl = rtnl::Rtnl::open().context("opening an rtnetlink socket")?;
    let links = rtnl.links().context("listing interfaces")?;
    let is_bridge = |i: u32| {
        links
            .iter()
            .any(|l| l.index == i && l.kind == LinkKind::Bridge)
    };
    if is_bridge(index) {
        return Ok(Some(index));
    }
    let master = links
        .iter()
        .find(|l| l.index == index)
        .and_then(|l| l.master);
    Ok(master.filter(|&m| is_bridge(m)))
}

/// The hosts behind the ports of bridge `bridge`, in the calling thread's
/// network namespace.
pub fn bridge_hosts(bridge: u32) -> anyhow::Result<Vec<BridgeHost>> {
    let mut rtnl = rtnl::Rtnl::open().context("opening an rtnetlink socket")?;
    rtnl.bridge_hosts(bridge)
        .context("reading the bridge's forwarding table")
}

/// Names of the VLAN devices sitting on interface `index`, in the calling
/// thread's network namespace (netlink, so it holds under `nsenter --net`,
/// where `/sys/class/net` shows another namespace).
pub fn vlan_devices_on(index: u32) -> anyhow::Result<Vec<String>> {
    let mut rtnl = rtnl::Rtnl::open().context("opening an rtnetlink socket")?;
    let mut names: Vec<String> = rtnl
        .links()
        .context("listing interfaces")?
        .into_iter()
        .filter(|l| l.kind == LinkKind::Vlan && l.parent == Some(index))
        .map(|l| l.name)
        .collect();
    names.sort();
    Ok(names)
}

/// The kernel's error text without its errno ("Network is unreachable").
fn kernel_error(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.split_once(" (os error") {
        Some((message, _)) => message.to_owned(),
        None => text,
    }
}

/// Serializes an optional value by its `Display` text.
fn display<T: std::fmt::Display, S: Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

/// The system's memory page size.
fn page_size() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).unwrap_or(4096)
}

/// The running kernel's release, as `uname -r` prints it (`6.8.0-45-generic`);
/// empty if `uname` fails.
pub fn kernel_release() -> String {
    // SAFETY: all zeroes is a valid `utsname`, and `uname` only writes into
    // the one it is given.
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `names` is a valid, writable `utsname`.
    if unsafe { libc::uname(&mut names) } != 0 {
        return String::new();
    }
    // SAFETY: `uname` wrote a NUL-terminated string into `release`.
    unsafe { std::ffi::CStr::from_ptr(names.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The major and minor version of a kernel release (`6.8.0-45-generic` →
/// `(6, 8)`), if it starts with them.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let digits = minor
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(minor.len());
    Some((major, minor[..digits].parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kernel_versions_as_distributions_write_them() {
        for (release, version) in [
            ("6.18.0", Some((6, 18))),
            ("6.8.0-45-generic", Some((6, 8))),
            ("6.1.0-18-amd64", Some((6, 1))),
            ("6.12.9+bpo-amd64", Some((6, 12))),
            ("5.15.0-105-generic", Some((5, 15))),
            ("6.6", Some((6, 6))),
            ("6.10rc1", Some((6, 10))),
            ("", None),
            ("6", None),
            ("linux", None),
        ] {
            assert_eq!(kernel_version(release), version, "{release:?}");
        }
        assert!(kernel_version(&kernel_release()).is_some(), "this host's");
    }

    #[test]
    fn reads_this_namespace() {
        let facts = HostFacts::gather(&Query {
            interfaces: vec!["lo".into()],
            routes: vec!["127.0.0.1".parse().unwrap()],
            with_xdp: false,
        })
        .unwrap();
        let lo = facts.link_named("lo").expect("lo");
        assert_eq!((lo.index, &lo.kind), (1, &LinkKind::Loopback));
        assert!(facts.page_size >= 4096);
        let route = facts.route("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(route.as_ref().unwrap().kind, RouteKind::Local);
        assert_eq!(route.as_ref().unwrap().oif, Some(1));
    }
}
