//! Names and addresses of a lab: everything derives from a name prefix, a
//! backend count and a [`Shape`], so several labs can coexist and nothing
//! repeats literals.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{bail, ensure};

use crate::shape::Shape;

/// Prefix used by `cargo xtask lab up` when none is given.
pub const DEFAULT_PREFIX: &str = "xlb";
/// Backend count used when none is given (like four app instances).
pub const DEFAULT_BACKENDS: usize = 4;
/// Most backends a lab can have (keeps addresses clear of [`SNAT_V4`]).
pub const MAX_BACKENDS: usize = 64;
/// Every lab prefix starts with this, so [`crate::Lab::down_all`] finds them.
pub const PREFIX_ROOT: &str = "xlb";

/// Name of the host-side veth in every host namespace (client, lb, backends).
pub const HOST_IFACE: &str = "eth0";
/// The load balancer's client-facing interface (in the one-armed and VLAN
/// shapes its only one, facing the backends too).
pub const LB_IFACE: &str = HOST_IFACE;
/// The load balancer's backend-facing NIC in the two-armed shape.
pub const LB_BACKEND_IFACE: &str = "eth1";
/// The bridge in the load balancer's namespace whose ports lead to the
/// backends, in the bridge shape.
pub const LB_BRIDGE: &str = "brb";
/// The bridge in the load balancer's namespace whose only port is its
/// `eth0` and which holds its addresses, in the host-bridge shape.
pub const LB_HOST_BRIDGE: &str = "brh";
/// The load balancer's own macvlan (bridge mode) on `eth0`, through which it
/// reaches the backends' macvlans, in the macvlan shape.
pub const LB_MACVLAN: &str = "mvb";
/// The load balancer's VXLAN device toward the backends' segment, in the
/// vxlan shape.
pub const LB_VXLAN: &str = "vxlan0";
/// The switch's VXLAN device, a port of [`BACKEND_BRIDGE`], in the vxlan
/// shape.
pub const SWITCH_VXLAN: &str = "vx0";
/// VXLAN network id of the backends' segment, in the vxlan shape.
pub const VXLAN_ID: u32 = 42;
/// The switch's own address on the client segment (on [`BRIDGE`]): the far
/// end of the backends' VXLAN tunnel, in the vxlan shape.
pub const SWITCH_VTEP_V4: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 3);
/// MTU of the backends' NICs where their frames cross a VXLAN tunnel (1500
/// less its 50 bytes of headers).
pub const VXLAN_MTU: u32 = 1450;
/// Bridge in the switch namespace joining the client and the lb's `eth0`
/// (and, in the one-armed and VLAN shapes, the backends).
pub const BRIDGE: &str = "br0";
/// Bridge in the switch namespace joining the lb's `eth1` and the backends,
/// in the two-armed shape.
pub const BACKEND_BRIDGE: &str = "br1";
/// Switch-side veth peer of the lb's `eth1` (two-armed shape).
pub const LB_BACKEND_PORT: &str = "lb1";
/// VLAN the client's TCP and UDP frames carry in the VLAN shape (the
/// `lab_vlan` program in `lb-ebpf` pushes it).
pub const VLAN_ID: u16 = 100;

/// Prefix length of the client and backend IPv4 subnets.
pub const PREFIX_LEN_V4: u8 = 24;
/// Prefix length of the client and backend IPv6 subnets.
pub const PREFIX_LEN_V6: u8 = 64;

/// Client address (IPv4).
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
/// Client address (IPv6).
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd10, 1, 0, 0, 0, 0, 0, 2);
/// Load balancer address on the client subnet; the client's gateway (IPv4).
pub const LB_CLIENT_SIDE_V4: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
/// Load balancer address on the client subnet; the client's gateway (IPv6).
pub const LB_CLIENT_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd10, 1, 0, 0, 0, 0, 0, 1);
/// Load balancer address on the backend subnet; the backends' gateway (IPv4).
pub const LB_BACKEND_SIDE_V4: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 1);
/// Load balancer address on the backend subnet; the backends' gateway (IPv6).
pub const LB_BACKEND_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd10, 2, 0, 0, 0, 0, 0, 1);
/// Source address the load balancer uses towards backends in SNAT mode (IPv4).
pub const SNAT_V4: Ipv4Addr = Ipv4Addr::new(10, 10, 2, 100);
/// Source address the load balancer uses towards backends in SNAT mode (IPv6).
pub const SNAT_V6: Ipv6Addr = Ipv6Addr::new(0xfd10, 2, 0, 0, 0, 0, 0, 0x100);
/// Virtual IP served by the load balancer; on no interface (IPv4).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 10, 100, 1);
/// Virtual IP served by the load balancer; on no interface (IPv6).
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0x100, 0, 0, 0, 0, 0, 1);
/// Network the client routes via the load balancer to reach VIPs (IPv4).
pub const VIP_NET_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 10, 100, 0), 24);
/// Network the client routes via the load balancer to reach VIPs (IPv6).
pub const VIP_NET_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd10, 0x100, 0, 0, 0, 0, 0, 0), 64);

/// Port of backend 0; backend `i` listens on `BACKEND_BASE_PORT + i`.
pub const BACKEND_BASE_PORT: u16 = 8000;

/// MAC address of the client's `eth0`.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x0a, 0x01, 0x02];
/// MAC address of the load balancer's `eth0` (in the one-armed and VLAN
/// shapes both client- and backend-facing).
pub const LB_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x0a, 0x01, 0x01];
/// MAC address of the load balancer's backend-facing `eth1` or `brb`.
pub const LB_BACKEND_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x0a, 0x02, 0x01];

/// Directory holding per-lab run state (backend logs and pid files).
pub const RUN_ROOT: &str = "/run/xlb-lab";
/// bpffs directory holding per-lab pinned XDP links.
pub const PIN_ROOT: &str = "/sys/fs/bpf/xlb-lab";

/// Name of backend `i` (`b0`, `b1`, …): its namespace suffix, switch port
/// name and the name its server answers with.
pub fn backend_name(i: usize) -> String {
    format!("b{i}")
}

/// IPv4 address of backend `i`: `10.10.2.(10+i)`.
pub fn backend_v4(i: usize) -> Ipv4Addr {
    assert!(i < MAX_BACKENDS, "backend index {i} out of range");
    Ipv4Addr::new(10, 10, 2, 10 + i as u8)
}

/// IPv6 address of backend `i`: `fd10:2::` followed by `10+i` written in
/// decimal digits (`fd10:2::10`, `fd10:2::11`, …, read as hex by IPv6).
pub fn backend_v6(i: usize) -> Ipv6Addr {
    assert!(i < MAX_BACKENDS, "backend index {i} out of range");
    let last = u16::from_str_radix(&(10 + i).to_string(), 16).expect("decimal digits are hex");
    Ipv6Addr::new(0xfd10, 2, 0, 0, 0, 0, 0, last)
}

/// Port backend `i` listens on (TCP and UDP): `8000+i`.
pub fn backend_port(i: usize) -> u16 {
    BACKEND_BASE_PORT + i as u16
}

/// MAC address of backend `i`'s `eth0`.
pub fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0x00, 0x0a, 0x0a, 0x02, 10 + i as u8]
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Every test's namespaces start with this (labs, packet fixtures, host
/// checks), so [`crate::Lab::down_tests`] finds what an interrupted run left.
pub const TEST_PREFIX_ROOT: &str = "xlbt-";

/// A fresh prefix for a test lab, `xlbt-<pid>-<n>`, unique within this host.
pub fn test_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "xlbt-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One backend: identity, namespace, addresses and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Index `i` in `0..backends`.
    pub index: usize,
    /// `b<i>`; also the name its server answers with.
    pub name: String,
    /// Network namespace it runs in (`<prefix>-b<i>`).
    pub ns: String,
    /// IPv4 address.
    pub v4: Ipv4Addr,
    /// IPv6 address.
    pub v6: Ipv6Addr,
    /// TCP (HTTP) and UDP port.
    pub port: u16,
    /// MAC address of its `eth0`.
    pub mac: [u8; 6],
}

impl Backend {
    /// `v4:port`.
    pub fn addr_v4(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.v4), self.port)
    }

    /// `[v6]:port`.
    pub fn addr_v6(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.v6), self.port)
    }

    /// Its address (and port) in the family of `ip`.
    pub fn addr_like(&self, ip: IpAddr) -> SocketAddr {
        if ip.is_ipv4() {
            self.addr_v4()
        } else {
            self.addr_v6()
        }
    }
}

/// Role of a namespace in a lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds the bridge joining everything.
    Switch,
    /// Sends traffic to VIPs and backends.
    Client,
    /// The load-balancer host (runs xlb on `eth0`).
    Lb,
    /// Backend `i`.
    Backend(usize),
}

/// Names and addresses of a lab with a given prefix, backend count and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    backends: usize,
    shape: Shape,
}

impl Topology {
    /// A one-armed lab; see [`Topology::with_shape`].
    pub fn new(prefix: &str, backends: usize) -> anyhow::Result<Self> {
        Self::with_shape(prefix, backends, Shape::OneArmed)
    }

    /// Checks the prefix (must start with [`PREFIX_ROOT`], only
    /// `[A-Za-z0-9_.-]`, at most 40 bytes) and the backend count (1 to
    /// [`MAX_BACKENDS`]).
    pub fn with_shape(prefix: &str, backends: usize, shape: Shape) -> anyhow::Result<Self> {
        ensure!(
            prefix.starts_with(PREFIX_ROOT),
            "lab prefix {prefix:?} must start with {PREFIX_ROOT:?} (so `down_all` can find it)"
        );
        ensure!(
            prefix.len() <= 40
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
            "lab prefix {prefix:?} must be at most 40 characters of [A-Za-z0-9_.-]"
        );
        if backends == 0 || backends > MAX_BACKENDS {
            bail!("a lab needs 1 to {MAX_BACKENDS} backends, not {backends}");
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            backends,
            shape,
        })
    }

    /// How the load balancer is wired.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The load balancer's interfaces xlb attaches to, client side first.
    pub fn lb_interfaces(&self) -> Vec<String> {
        self.shape
            .lb_interfaces()
            .iter()
            .map(|&i| i.to_owned())
            .collect()
    }

    /// Namespace and bridge the backends' veth peers are ports of: `br0` or
    /// `br1` in the switch namespace, or `brb` in the lb's; `None` where the
    /// backends have no veth (on macvlans, or on the lb host itself).
    pub fn backend_segment(&self) -> Option<(String, &'static str)> {
        match self.shape {
            Shape::OneArmed | Shape::HostBridge | Shape::Vlan => Some((self.switch_ns(), BRIDGE)),
            Shape::TwoArmed | Shape::Vxlan => Some((self.switch_ns(), BACKEND_BRIDGE)),
            Shape::Bridge => Some((self.lb_ns(), LB_BRIDGE)),
            Shape::Macvlan | Shape::Local => None,
        }
    }

    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of backends.
    pub fn backend_count(&self) -> usize {
        self.backends
    }

    /// Namespace name of a role: `<prefix>-sw`, `-client`, `-lb`, `-b<i>`.
    pub fn ns(&self, role: Role) -> String {
        ns_name(&self.prefix, role)
    }

    /// The switch namespace (`<prefix>-sw`), holding bridge [`BRIDGE`] (and
    /// [`BACKEND_BRIDGE`] in the two-armed shape).
    pub fn switch_ns(&self) -> String {
        self.ns(Role::Switch)
    }

    /// The client namespace (`<prefix>-client`).
    pub fn client_ns(&self) -> String {
        self.ns(Role::Client)
    }

    /// The load-balancer namespace (`<prefix>-lb`).
    pub fn lb_ns(&self) -> String {
        self.ns(Role::Lb)
    }

    /// All roles, switch first, then client, lb and backends (which have
    /// no namespace of their own in the local shape).
    pub fn roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Switch, Role::Client, Role::Lb];
        if !self.shape.local_backends() {
            roles.extend((0..self.backends).map(Role::Backend));
        }
        roles
    }

    /// All namespace names, in [`Topology::roles`] order.
    pub fn namespaces(&self) -> Vec<String> {
        self.roles().into_iter().map(|r| self.ns(r)).collect()
    }

    /// Backend `i`; in the local shape, [`local_backend`] `i`.
    pub fn backend(&self, i: usize) -> Backend {
        assert!(i < self.backends, "backend {i} of {}", self.backends);
        if self.shape.local_backends() {
            return local_backend(&self.prefix, i);
        }
        Backend {
            index: i,
            name: backend_name(i),
            ns: self.ns(Role::Backend(i)),
            v4: backend_v4(i),
            v6: backend_v6(i),
            port: backend_port(i),
            mac: backend_mac(i),
        }
    }

    /// All backends, by index.
    pub fn backends(&self) -> Vec<Backend> {
        (0..self.backends).map(|i| self.backend(i)).collect()
    }

    /// Per-lab run directory: `/run/xlb-lab/<prefix>` (backend logs, pids).
    pub fn run_dir(&self) -> PathBuf {
        run_dir(&self.prefix)
    }

    /// Per-lab bpffs pin directory: `/sys/fs/bpf/xlb-lab/<prefix>`.
    pub fn pin_dir(&self) -> PathBuf {
        pin_dir(&self.prefix)
    }
}

/// App instance `i` on the load balancer's own host (the local shape's
/// backends, and those tests start in other shapes): `l<i>` in the lb
/// namespace, on 127.0.0.1 and ::1, port 8000 + `i`.
pub fn local_backend(prefix: &str, i: usize) -> Backend {
    Backend {
        index: i,
        name: format!("l{i}"),
        ns: ns_name(prefix, Role::Lb),
        v4: Ipv4Addr::LOCALHOST,
        v6: Ipv6Addr::LOCALHOST,
        port: backend_port(i),
        mac: [0; 6],
    }
}

/// Namespace name of `role` in the lab with `prefix`.
pub fn ns_name(prefix: &str, role: Role) -> String {
    match role {
        Role::Switch => format!("{prefix}-sw"),
        Role::Client => format!("{prefix}-client"),
        Role::Lb => format!("{prefix}-lb"),
        Role::Backend(i) => format!("{prefix}-{}", backend_name(i)),
    }
}

/// The role `ns` plays in the lab with `prefix`, if it belongs to it.
pub fn role_of(prefix: &str, ns: &str) -> Option<Role> {
    let rest = ns.strip_prefix(prefix)?.strip_prefix('-')?;
    match rest {
        "sw" => Some(Role::Switch),
        "client" => Some(Role::Client),
        "lb" => Some(Role::Lb),
        _ => {
            let digits = rest.strip_prefix('b')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok().map(Role::Backend)
        }
    }
}

/// Name of the bridge-side veth peer of a role's `eth0` (a port of the
/// backend segment's bridge for backends, see [`Topology::backend_segment`]).
pub fn switch_port(role: Role) -> String {
    match role {
        Role::Switch => BRIDGE.to_owned(),
        Role::Client => "client".to_owned(),
        Role::Lb => "lb".to_owned(),
        Role::Backend(i) => backend_name(i),
    }
}

/// `/run/xlb-lab/<prefix>`.
pub fn run_dir(prefix: &str) -> PathBuf {
    PathBuf::from(RUN_ROOT).join(prefix)
}

/// `/run/xlb-lab/<prefix>/shape`: the shape the lab was brought up with.
pub fn shape_path(prefix: &str) -> PathBuf {
    run_dir(prefix).join("shape")
}

/// `/sys/fs/bpf/xlb-lab/<prefix>`.
pub fn pin_dir(prefix: &str) -> PathBuf {
    PathBuf::from(PIN_ROOT).join(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_render_as_documented() {
        assert_eq!(backend_v4(0).to_string(), "10.10.2.10");
        assert_eq!(backend_v4(3).to_string(), "10.10.2.13");
        assert_eq!(backend_v6(0).to_string(), "fd10:2::10");
        assert_eq!(backend_v6(1).to_string(), "fd10:2::11");
        assert_eq!(backend_v6(10).to_string(), "fd10:2::20");
        assert_eq!(SNAT_V6.to_string(), "fd10:2::100");
        assert_eq!(VIP_V6.to_string(), "fd10:100::1");
        assert_eq!(backend_port(3), 8003);
        assert_eq!(fmt_mac(LB_MAC), "02:00:0a:0a:01:01");
    }

    #[test]
    fn names_round_trip() {
        let t = Topology::new("xlbt-1-2", 3).unwrap();
        for role in t.roles() {
            assert_eq!(role_of("xlbt-1-2", &t.ns(role)), Some(role));
        }
        assert_eq!(role_of("xlb", "xlb-b0-sw"), None);
        assert_eq!(role_of("xlb", "xlbt-1-2-sw"), None);
        assert_eq!(t.backend(2).addr_v6().to_string(), "[fd10:2::12]:8002");
        assert!(Topology::new("lab", 1).is_err());
        assert!(Topology::new("xlb x", 1).is_err());
        assert!(Topology::new("xlb", 0).is_err());
        let t = Topology::with_shape("xlbt-1-2", 3, Shape::Bridge).unwrap();
        assert_eq!(
            t.backend_segment(),
            Some(("xlbt-1-2-lb".to_owned(), LB_BRIDGE))
        );
        assert_eq!(t.lb_interfaces(), ["eth0", "brb"]);
    }
}
