//! What a lab is made of, per [`Shape`]: the bridges, veth pairs, addresses
//! and routes [`crate::Lab::up`] creates, and where it attaches pass-through
//! XDP programs and the VLAN tagger. Pure data derived from a [`Topology`].

use std::net::IpAddr;

use crate::{
    shape::Shape,
    topology::{self, Role, Topology},
};

/// An interface in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// Namespace name.
    pub ns: String,
    /// Interface name.
    pub name: String,
}

impl Iface {
    /// Interface `name` in namespace `ns`.
    pub fn new(ns: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            ns: ns.into(),
            name: name.into(),
        }
    }
}

/// A Linux bridge to create (STP off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bridge {
    /// The bridge device.
    pub dev: Iface,
    /// Its MAC address, when it holds addresses (the lb's `brb`).
    pub mac: Option<[u8; 6]>,
}

/// A veth pair: `port` is enslaved to the bridge `bridge` of its namespace;
/// `host` is a host's interface, with MAC address `mac`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Veth {
    /// Bridge-side end.
    pub port: Iface,
    /// Bridge `port` joins (in `port.ns`).
    pub bridge: &'static str,
    /// Host-side end.
    pub host: Iface,
    /// MAC address of `host`.
    pub mac: [u8; 6],
}

/// A macvlan in bridge mode on `parent`, created in the parent's namespace
/// and moved to `dev`'s, where it is named `dev.name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Macvlan {
    /// The device it sits on.
    pub parent: Iface,
    /// The macvlan, where it ends up.
    pub dev: Iface,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// A VXLAN device over `underlay` whose tunnel's far end is `remote`, made a
/// port of bridge `master` (in its namespace) if given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vxlan {
    /// The device.
    pub dev: Iface,
    /// The interface its tunnel's packets leave by (same namespace).
    pub underlay: &'static str,
    /// The tunnel's far end.
    pub remote: IpAddr,
    /// Its MAC address, where it holds addresses (the lb's).
    pub mac: Option<[u8; 6]>,
    /// The bridge it joins (the switch's backend segment).
    pub master: Option<&'static str>,
}

/// Everything a lab of some shape is made of, in creation order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Bridges, created first.
    pub bridges: Vec<Bridge>,
    /// Veth pairs.
    pub veths: Vec<Veth>,
    /// Macvlans, created after the veths: the lb's and the backends' NICs
    /// in the macvlan shape.
    pub macvlans: Vec<Macvlan>,
    /// VXLAN devices, created after the macvlans: both ends of the
    /// backends' tunnel in the vxlan shape.
    pub vxlans: Vec<Vxlan>,
    /// Interfaces whose MTU is set (the backends' NICs behind a tunnel).
    pub mtu: Vec<(Iface, u32)>,
    /// Addresses (with prefix length) to add, by interface.
    pub addresses: Vec<(Iface, Vec<(IpAddr, u8)>)>,
    /// Routes as (namespace, destination, gateway).
    pub routes: Vec<(String, String, IpAddr)>,
    /// Ports that get the pass-through XDP program in native mode: the
    /// bridge-side peers of the lb's veth NICs.
    pub xdp_pass: Vec<Iface>,
    /// Devices transmitting toward the lb's `eth0` that must put VLAN tags
    /// into the frame (`ethtool -K … txvlan off`) so XDP sees them.
    pub txvlan_off: Vec<Iface>,
    /// Where the VLAN tagger runs (egress), in the VLAN shape.
    pub tagger: Option<Iface>,
    /// Host-side interfaces enslaved to a bridge of their own namespace
    /// once created: the lb's `eth0` to `brh`, in the host-bridge shape.
    pub enslaved: Vec<(Iface, &'static str)>,
    /// Backend NICs that get GRO (`ethtool -K … gro on`), in the bridge
    /// shape: a veth receiving with GRO runs NAPI, so its peer, the lb's
    /// bridge port, takes XDP frames and xlb sends to it past the bridge.
    pub gro_on: Vec<Iface>,
}

/// The plan of the lab `topo` describes.
pub fn plan(topo: &Topology) -> Plan {
    use topology::*;
    let shape = topo.shape();
    let (sw, lb) = (topo.switch_ns(), topo.lb_ns());
    let (v4, v6) = (PREFIX_LEN_V4, PREFIX_LEN_V6);

    let mut bridges = vec![Bridge {
        dev: Iface::new(&sw, BRIDGE),
        mac: None,
    }];
    match shape {
        Shape::TwoArmed | Shape::Vxlan => bridges.push(Bridge {
            dev: Iface::new(&sw, BACKEND_BRIDGE),
            mac: None,
        }),
        Shape::Bridge => bridges.push(Bridge {
            dev: Iface::new(&lb, LB_BRIDGE),
            mac: Some(LB_BACKEND_MAC),
        }),
        Shape::HostBridge => bridges.push(Bridge {
            dev: Iface::new(&lb, LB_HOST_BRIDGE),
            mac: Some(LB_MAC),
        }),
        Shape::OneArmed | Shape::Macvlan | Shape::Vlan | Shape::Local => {}
    }

    let host_veth = |role: Role, mac| Veth {
        port: Iface::new(&sw, switch_port(role)),
        bridge: BRIDGE,
        host: Iface::new(topo.ns(role), HOST_IFACE),
        mac,
    };
    let mut veths = vec![
        host_veth(Role::Client, CLIENT_MAC),
        host_veth(Role::Lb, LB_MAC),
    ];
    if shape == Shape::TwoArmed {
        veths.push(Veth {
            port: Iface::new(&sw, LB_BACKEND_PORT),
            bridge: BACKEND_BRIDGE,
            host: Iface::new(&lb, LB_BACKEND_IFACE),
            mac: LB_BACKEND_MAC,
        });
    }
    // Local backends run in the lb's namespace: no NIC, no address.
    let remote = if shape.local_backends() {
        Vec::new()
    } else {
        topo.backends()
    };
    if let Some((segment_ns, segment_bridge)) = topo.backend_segment() {
        veths.extend(remote.iter().cloned().map(|b| Veth {
            port: Iface::new(&segment_ns, switch_port(Role::Backend(b.index))),
            bridge: segment_bridge,
            host: Iface::new(b.ns, HOST_IFACE),
            mac: b.mac,
        }));
    }
    let mut macvlans = Vec::new();
    if shape == Shape::Macvlan {
        let parent = Iface::new(&lb, LB_IFACE);
        macvlans.push(Macvlan {
            parent: parent.clone(),
            dev: Iface::new(&lb, LB_MACVLAN),
            mac: LB_BACKEND_MAC,
        });
        macvlans.extend(remote.iter().cloned().map(|b| Macvlan {
            parent: parent.clone(),
            dev: Iface::new(b.ns, HOST_IFACE),
            mac: b.mac,
        }));
    }

    let lb_backend_side = match shape {
        Shape::OneArmed | Shape::Vlan | Shape::Local => LB_IFACE,
        Shape::TwoArmed => LB_BACKEND_IFACE,
        Shape::Bridge => LB_BRIDGE,
        Shape::HostBridge => LB_HOST_BRIDGE,
        Shape::Macvlan => LB_MACVLAN,
        Shape::Vxlan => LB_VXLAN,
    };
    let lb_client_side = match shape {
        Shape::HostBridge => LB_HOST_BRIDGE,
        _ => LB_IFACE,
    };
    let mut addresses = vec![
        (
            Iface::new(topo.client_ns(), HOST_IFACE),
            vec![(CLIENT_V4.into(), v4), (CLIENT_V6.into(), v6)],
        ),
        (
            Iface::new(&lb, lb_client_side),
            vec![
                (LB_CLIENT_SIDE_V4.into(), v4),
                (LB_CLIENT_SIDE_V6.into(), v6),
            ],
        ),
        (
            Iface::new(&lb, lb_backend_side),
            vec![
                (LB_BACKEND_SIDE_V4.into(), v4),
                (SNAT_V4.into(), v4),
                (LB_BACKEND_SIDE_V6.into(), v6),
                (SNAT_V6.into(), v6),
            ],
        ),
    ];
    let mut vxlans = Vec::new();
    let mut mtu = Vec::new();
    if shape == Shape::Vxlan {
        // The switch is the tunnel's far end: it needs an address on the
        // client segment.
        addresses.push((Iface::new(&sw, BRIDGE), vec![(SWITCH_VTEP_V4.into(), v4)]));
        vxlans.push(Vxlan {
            dev: Iface::new(&sw, SWITCH_VXLAN),
            underlay: BRIDGE,
            remote: LB_CLIENT_SIDE_V4.into(),
            mac: None,
            master: Some(BACKEND_BRIDGE),
        });
        vxlans.push(Vxlan {
            dev: Iface::new(&lb, LB_VXLAN),
            underlay: LB_IFACE,
            remote: SWITCH_VTEP_V4.into(),
            mac: Some(LB_BACKEND_MAC),
            master: None,
        });
        mtu.extend(
            remote
                .iter()
                .map(|b| (Iface::new(b.ns.clone(), HOST_IFACE), VXLAN_MTU)),
        );
    }
    addresses.extend(remote.into_iter().map(|b| {
        (
            Iface::new(b.ns, HOST_IFACE),
            vec![(b.v4.into(), v4), (b.v6.into(), v6)],
        )
    }));

    let routes = topo
        .roles()
        .into_iter()
        .flat_map(|role| {
            let ns = topo.ns(role);
            routes_of(role)
                .into_iter()
                .map(move |(dest, via)| (ns.clone(), dest, via))
        })
        .collect();

    Plan {
        bridges,
        veths,
        macvlans,
        vxlans,
        mtu,
        addresses,
        routes,
        xdp_pass: pass_ports(topo.prefix(), shape),
        txvlan_off: match shape {
            Shape::Vlan => vec![
                Iface::new(topo.client_ns(), HOST_IFACE),
                Iface::new(&sw, switch_port(Role::Lb)),
            ],
            _ => Vec::new(),
        },
        tagger: tagger_port(topo.prefix(), shape),
        enslaved: match shape {
            Shape::HostBridge => vec![(Iface::new(&lb, LB_IFACE), LB_HOST_BRIDGE)],
            _ => Vec::new(),
        },
        gro_on: match shape {
            Shape::Bridge => topo
                .backends()
                .into_iter()
                .map(|b| Iface::new(b.ns, HOST_IFACE))
                .collect(),
            _ => Vec::new(),
        },
    }
}

/// The ports of the lab with `prefix` and `shape` that get the
/// pass-through XDP program: the switch-side peer of every lb NIC.
pub fn pass_ports(prefix: &str, shape: Shape) -> Vec<Iface> {
    let sw = topology::ns_name(prefix, Role::Switch);
    let mut ports = vec![Iface::new(&sw, topology::switch_port(Role::Lb))];
    if shape == Shape::TwoArmed {
        ports.push(Iface::new(&sw, topology::LB_BACKEND_PORT));
    }
    ports
}

/// Where the VLAN tagger of the lab with `prefix` runs: the client's `eth0`
/// in the VLAN shape, nowhere otherwise.
pub fn tagger_port(prefix: &str, shape: Shape) -> Option<Iface> {
    (shape == Shape::Vlan).then(|| {
        Iface::new(
            topology::ns_name(prefix, Role::Client),
            topology::HOST_IFACE,
        )
    })
}

/// Routes of `role` as (destination, gateway); the same in every shape.
fn routes_of(role: Role) -> Vec<(String, IpAddr)> {
    use topology::*;
    match role {
        Role::Client => vec![
            ("default".into(), LB_CLIENT_SIDE_V4.into()),
            ("default".into(), LB_CLIENT_SIDE_V6.into()),
            (
                format!("{}/{}", VIP_NET_V4.0, VIP_NET_V4.1),
                LB_CLIENT_SIDE_V4.into(),
            ),
            (
                format!("{}/{}", VIP_NET_V6.0, VIP_NET_V6.1),
                LB_CLIENT_SIDE_V6.into(),
            ),
        ],
        Role::Backend(_) => vec![
            ("default".into(), LB_BACKEND_SIDE_V4.into()),
            ("default".into(), LB_BACKEND_SIDE_V6.into()),
        ],
        Role::Lb | Role::Switch => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(shape: Shape) -> Plan {
        plan(&Topology::with_shape("xlbt-1-2", 2, shape).unwrap())
    }

    fn addressed(plan: &Plan, ip: IpAddr) -> Iface {
        plan.addresses
            .iter()
            .find(|(_, addrs)| addrs.iter().any(|&(a, _)| a == ip))
            .map(|(iface, _)| iface.clone())
            .expect("address planned")
    }

    /// The subnets sit where xlb attaches, or on the bridge whose port it
    /// attaches to.
    #[test]
    fn every_shape_puts_the_backend_subnet_where_xlb_attaches() {
        for shape in Shape::ALL {
            let plan = plan_of(shape);
            let snat = addressed(&plan, topology::SNAT_V6.into());
            assert_eq!(snat.ns, "xlbt-1-2-lb", "{shape}");
            let client_side = addressed(&plan, topology::LB_CLIENT_SIDE_V4.into());
            if shape == Shape::HostBridge {
                // Every address on the bridge; xlb on its one port.
                assert_eq!(snat.name, topology::LB_HOST_BRIDGE);
                assert_eq!(client_side.name, topology::LB_HOST_BRIDGE);
            } else {
                assert!(
                    shape.lb_interfaces().contains(&snat.name.as_str()),
                    "{shape}: SNAT on {}",
                    snat.name
                );
                assert_eq!(client_side.name, topology::LB_IFACE, "{shape}");
            }
            // The client's 4, each backend's 2 (none in the local shape).
            let routes = if shape.local_backends() { 4 } else { 8 };
            assert_eq!(plan.routes.len(), routes, "{shape}");
        }
    }

    #[test]
    fn local_backends_get_no_namespace_veth_or_address() {
        let local = plan_of(Shape::Local);
        assert_eq!(local.veths.len(), 2, "client and lb only");
        assert_eq!(local.addresses.len(), 3, "client, lb's eth0 twice");
        let t = Topology::with_shape("xlbt-1-2", 2, Shape::Local).unwrap();
        assert_eq!(t.namespaces().len(), 3);
        let b1 = t.backend(1);
        assert_eq!(
            (b1.ns.as_str(), b1.v4, b1.port),
            ("xlbt-1-2-lb", std::net::Ipv4Addr::LOCALHOST, 8001)
        );
    }

    #[test]
    fn macvlan_backends_sit_on_the_lbs_nic_beside_its_own_macvlan() {
        let plan = plan_of(Shape::Macvlan);
        assert_eq!(plan.veths.len(), 2, "client and lb only");
        let lb_nic = Iface::new("xlbt-1-2-lb", "eth0");
        assert!(plan.macvlans.iter().all(|m| m.parent == lb_nic));
        let devs: Vec<&Iface> = plan.macvlans.iter().map(|m| &m.dev).collect();
        assert_eq!(
            devs,
            [
                &Iface::new("xlbt-1-2-lb", topology::LB_MACVLAN),
                &Iface::new("xlbt-1-2-b0", "eth0"),
                &Iface::new("xlbt-1-2-b1", "eth0"),
            ]
        );
        assert_eq!(plan.macvlans[0].mac, topology::LB_BACKEND_MAC);
        assert_eq!(plan.macvlans[2].mac, topology::backend_mac(1));
    }

    #[test]
    fn vxlan_backends_are_reached_through_a_tunnel_to_the_switch() {
        let plan = plan_of(Shape::Vxlan);
        let ends: Vec<(&str, &str, IpAddr, Option<&str>)> = plan
            .vxlans
            .iter()
            .map(|v| (v.dev.name.as_str(), v.underlay, v.remote, v.master))
            .collect();
        assert_eq!(
            ends,
            [
                (
                    topology::SWITCH_VXLAN,
                    topology::BRIDGE,
                    topology::LB_CLIENT_SIDE_V4.into(),
                    Some(topology::BACKEND_BRIDGE)
                ),
                (
                    topology::LB_VXLAN,
                    topology::LB_IFACE,
                    topology::SWITCH_VTEP_V4.into(),
                    None
                ),
            ]
        );
        assert_eq!(
            addressed(&plan, topology::SWITCH_VTEP_V4.into()),
            Iface::new("xlbt-1-2-sw", topology::BRIDGE)
        );
        assert_eq!(
            plan.mtu,
            [
                (Iface::new("xlbt-1-2-b0", "eth0"), topology::VXLAN_MTU),
                (Iface::new("xlbt-1-2-b1", "eth0"), topology::VXLAN_MTU),
            ]
        );
        assert_eq!(plan.veths[2].bridge, topology::BACKEND_BRIDGE);
    }

    #[test]
    fn backends_join_their_shapes_segment() {
        let two_armed = plan_of(Shape::TwoArmed);
        let b1 = two_armed.veths.last().unwrap();
        assert_eq!(
            (b1.port.ns.as_str(), b1.bridge, b1.port.name.as_str()),
            ("xlbt-1-2-sw", topology::BACKEND_BRIDGE, "b1")
        );
        assert_eq!(two_armed.xdp_pass.len(), 2);
        let bridge = plan_of(Shape::Bridge);
        let b0 = &bridge.veths[2];
        assert_eq!(
            (b0.port.ns.as_str(), b0.bridge),
            ("xlbt-1-2-lb", topology::LB_BRIDGE)
        );
        assert_eq!(bridge.bridges[1].mac, Some(topology::LB_BACKEND_MAC));
        assert_eq!(bridge.gro_on[0], Iface::new("xlbt-1-2-b0", "eth0"));
        let host_bridge = plan_of(Shape::HostBridge);
        assert_eq!(
            host_bridge.enslaved,
            [(Iface::new("xlbt-1-2-lb", "eth0"), topology::LB_HOST_BRIDGE)]
        );
        assert!(
            host_bridge
                .addresses
                .iter()
                .filter(|(iface, _)| iface.ns == "xlbt-1-2-lb")
                .all(|(iface, _)| iface.name == topology::LB_HOST_BRIDGE)
        );
        assert!(two_armed.gro_on.is_empty());
        let vlan = plan_of(Shape::Vlan);
        assert_eq!(vlan.tagger, Some(Iface::new("xlbt-1-2-client", "eth0")));
        assert_eq!(vlan.txvlan_off.len(), 2);
        assert_eq!(plan_of(Shape::OneArmed).tagger, None);
    }
}
