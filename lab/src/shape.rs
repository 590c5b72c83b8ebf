//! The host shapes a lab can give the load balancer. What each shape is made
//! of (bridges, veths, addresses) is in [`crate::wiring`].

use std::{fmt, str::FromStr};

use anyhow::anyhow;

use crate::topology::{LB_BACKEND_IFACE, LB_BRIDGE, LB_IFACE, LB_MACVLAN, LB_VXLAN};

/// How the load-balancer host is wired to the client and the backends.
/// Addresses are the same in every shape; only the interfaces carrying them
/// differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Shape {
    /// One NIC, `eth0`, on one segment (bridge `br0` in the switch
    /// namespace) with the client and the backends; it carries both subnets.
    #[default]
    OneArmed,
    /// A router with two NICs: `eth0` on the client segment (`br0`), `eth1`
    /// on a separate backend segment (`br1`, also in the switch namespace).
    TwoArmed,
    /// `eth0` on the client segment; the backends on ports of a Linux bridge
    /// `brb` inside the load balancer's namespace, which holds the backend
    /// subnet's addresses.
    Bridge,
    /// One-armed, but the client's TCP and UDP frames carry an 802.1Q tag
    /// (VLAN [`crate::topology::VLAN_ID`]) on the wire.
    Vlan,
    /// One-armed, but the lb's `eth0` is the only port of a Linux bridge
    /// `brh` in its namespace, which holds all its addresses: a host whose
    /// NIC is enslaved to a bridge (a Proxmox or libvirt host). xlb attaches
    /// to `eth0`.
    HostBridge,
    /// One NIC, `eth0`; the backends are containers on macvlans of it
    /// (bridge mode), each in its namespace, as Docker's macvlan network
    /// makes them. The lb reaches them through its own macvlan `mvb`
    /// (bridge mode), which holds the backend subnet's addresses: their
    /// frames to it never cross `eth0`'s driver. xlb attaches to `eth0`
    /// and `mvb`.
    Macvlan,
    /// One NIC, `eth0`; the backends are on a segment reached through a
    /// VXLAN tunnel over it (an overlay network): the lb's `vxlan0` holds
    /// the backend subnet's addresses, the tunnel's far end is the switch
    /// (10.10.1.3), whose `vx0` is a port of the backends' bridge `br1`.
    /// xlb attaches to `eth0` and `vxlan0`.
    Vxlan,
    /// One NIC, `eth0`, and no backend namespace: the backends are app
    /// instances on the load balancer's own host, in its namespace, on
    /// 127.0.0.1 (and the host's other addresses), ports 8000 + i, as in
    /// nginx's tutorial.
    Local,
}

impl Shape {
    /// Every shape, in the order the docs list them.
    pub const ALL: [Shape; 8] = [
        Shape::OneArmed,
        Shape::TwoArmed,
        Shape::Bridge,
        Shape::HostBridge,
        Shape::Macvlan,
        Shape::Vxlan,
        Shape::Vlan,
        Shape::Local,
    ];

    /// The shape's name on the command line: `one-armed`, `two-armed`,
    /// `bridge`, `host-bridge`, `macvlan`, `vxlan`, `vlan`, `local`.
    pub fn name(self) -> &'static str {
        match self {
            Shape::OneArmed => "one-armed",
            Shape::TwoArmed => "two-armed",
            Shape::Bridge => "bridge",
            Shape::HostBridge => "host-bridge",
            Shape::Macvlan => "macvlan",
            Shape::Vxlan => "vxlan",
            Shape::Vlan => "vlan",
            Shape::Local => "local",
        }
    }

    /// The load balancer's interfaces xlb attaches to, client side first.
    pub fn lb_interfaces(self) -> &'static [&'static str] {
        match self {
            Shape::OneArmed | Shape::HostBridge | Shape::Vlan | Shape::Local => &[LB_IFACE],
            Shape::TwoArmed => &[LB_IFACE, LB_BACKEND_IFACE],
            Shape::Bridge => &[LB_IFACE, LB_BRIDGE],
            Shape::Macvlan => &[LB_IFACE, LB_MACVLAN],
            Shape::Vxlan => &[LB_IFACE, LB_VXLAN],
        }
    }
}

impl Shape {
    /// Whether the backends run on the load balancer's host itself.
    pub fn local_backends(self) -> bool {
        self == Shape::Local
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Shape {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Shape::ALL
            .into_iter()
            .find(|shape| shape.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Shape::ALL.iter().map(|s| s.name()).collect();
                anyhow!(
                    "unknown lab shape {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for shape in Shape::ALL {
            assert_eq!(shape.name().parse::<Shape>().unwrap(), shape);
        }
        assert_eq!(Shape::default(), Shape::OneArmed);
        assert!("triangle".parse::<Shape>().is_err());
        assert_eq!(Shape::Bridge.lb_interfaces(), ["eth0", "brb"]);
        assert_eq!("local".parse::<Shape>().unwrap(), Shape::Local);
        assert_eq!(Shape::Macvlan.lb_interfaces(), ["eth0", "mvb"]);
    }
}
