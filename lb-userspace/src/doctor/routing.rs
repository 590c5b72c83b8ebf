//! The way to each backend and back: the kernel has a route to it, its
//! replies arrive where xlb is attached, the SNAT address sits on the
//! interface facing the backends, and dnat backends answer through this
//! host.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use super::{Check, Finding, Setup, Severity, cidr_on, lb_address as lb_address_of, list};
use crate::{
    config::{Mode, ServiceConfig},
    host::{Link, LinkKind, Route, RouteKind, Siblings},
};

pub(super) fn check(setup: &Setup, out: &mut Vec<Finding>) {
    for service in &setup.config.services {
        let routes = backend_routes(setup, service, out);
        not_attached(setup, service, &routes, out);
        match service.mode {
            Mode::Nat => snat(setup, service, &routes, out),
            Mode::Dnat => dnat_return_path(setup, service, &routes, out),
            Mode::Dsr => dsr_on_link(setup, service, &routes, out),
        }
    }
}

/// A backend on this host: served (see docs/topologies.md), which is worth
/// knowing; `::1` only to clients on this host.
fn local_backend(address: SocketAddr, subject: String) -> Finding {
    let ip = address.ip();
    if ip.is_ipv6() && ip.is_loopback() {
        return Finding::new(
            Check::BackendLocal,
            Severity::Warning,
            subject,
            format!(
                "{ip} is this host's IPv6 loopback: clients on this host reach it (the socket \
                 programs connect them to it), but the kernel drops packets to ::1 that arrive \
                 on any other interface than `lo` (IPv6 has no route_localnet), so clients \
                 elsewhere are never answered"
            ),
            "have the backend listen on [::] or on one of this host's IPv6 addresses, and \
             write that address as the backend's",
        );
    }
    let localnet = if ip.is_loopback() {
        " (127.0.0.0/8 needs route_localnet on the attached interfaces, which xlb run sets \
         and restores)"
    } else {
        ""
    };
    Finding::new(
        Check::BackendLocal,
        Severity::Info,
        subject,
        format!(
            "{ip} is an address of this host: xlb hands clients' packets to the kernel's local \
             delivery{localnet}, its tc egress program rewrites the replies back to the VIP, \
             and clients on this host are connected to it by its socket programs; the backend \
             sees the client's address whatever the service's mode"
        ),
        "nothing to do",
    )
}

/// The unicast routes to a service's backends; the others are findings.
fn backend_routes<'a>(
    setup: &'a Setup,
    service: &ServiceConfig,
    out: &mut Vec<Finding>,
) -> Vec<(SocketAddr, &'a Route)> {
    let mut routes = Vec::new();
    for backend in &service.backends {
        let address = backend.address;
        let subject = format!("service {}, backend {address}", service.name);
        match setup.facts.route(address.ip()) {
            None => {}
            Some(Ok(route)) if route.kind == RouteKind::Unicast => routes.push((address, route)),
            Some(Ok(route)) if route.kind == RouteKind::Local => {
                out.push(local_backend(address, subject));
            }
            Some(route) => out.push(Finding::new(
                Check::BackendUnreachable,
                Severity::Error,
                subject,
                format!(
                    "the kernel has no unicast route to {} ({}): neither XDP's route lookup nor \
                     the kernel can forward a flow to it",
                    address.ip(),
                    route
                        .as_ref()
                        .err()
                        .map_or("not a unicast route", String::as_str)
                ),
                format!(
                    "add an address of {}'s subnet to the interface facing it, or a route: ip \
                     route add {} via <gateway> dev <interface>",
                    address.ip(),
                    address.ip()
                ),
            )),
        }
    }
    routes
}

/// The backends whose route leaves by an interface `pick` selects, by that
/// interface.
fn by_egress(
    routes: &[(SocketAddr, &Route)],
    pick: impl Fn(u32) -> bool,
) -> BTreeMap<u32, Vec<SocketAddr>> {
    let mut by_iface: BTreeMap<u32, Vec<SocketAddr>> = BTreeMap::new();
    for (address, route) in routes {
        if let Some(oif) = route.oif.filter(|&oif| pick(oif)) {
            by_iface.entry(oif).or_default().push(*address);
        }
    }
    by_iface
}

/// Backends whose route leaves by an interface xlb does not see.
fn not_attached(
    setup: &Setup,
    service: &ServiceConfig,
    routes: &[(SocketAddr, &Route)],
    out: &mut Vec<Finding>,
) {
    for (oif, backends) in by_egress(routes, |oif| !setup.covered(oif)) {
        let name = setup.facts.link_name(oif);
        let consequence = match service.mode {
            Mode::Nat => {
                "they are never rewritten back to the VIP (the kernel answers them with a reset, \
                 as packets to its own SNAT address)"
            }
            Mode::Dnat => {
                "the kernel forwards them to clients still from the backend's own address, which \
                 clients drop"
            }
            Mode::Dsr => {
                "XDP cannot send frames out of it, and the kernel would route them by the VIP: \
                 they are dropped (drop_dsr_no_path)"
            }
        };
        let ports: Vec<&str> = setup
            .facts
            .lowers(oif)
            .into_iter()
            .filter(|l| !setup.covered(l.index))
            .map(|l| l.name.as_str())
            .collect();
        let link = setup.facts.link(oif);
        let alternative = match link.map(|l| &l.kind) {
            Some(LinkKind::Bridge | LinkKind::Bond) if !ports.is_empty() => {
                format!(" (or all of its ports not yet in it: {})", list(&ports))
            }
            _ => String::new(),
        };
        // Attached to the parent, xlb misses only the siblings' frames.
        let parent = link
            .filter(|l| !l.siblings.is_apart())
            .and_then(|l| l.parent)
            .filter(|&p| setup.attached(p))
            .and_then(|p| Some((link?, setup.facts.link_name(p))));
        let siblings = parent.as_ref().map_or_else(String::new, |(l, parent)| {
            format!(
                " (from hosts on other {}s of {parent}, without crossing {parent}'s driver)",
                l.kind
            )
        });
        let alternative = match parent {
            Some((l, _)) if l.siblings == Siblings::ThroughParentStack => {
                format!("{alternative}, or set `xdp_mode = \"generic\"`")
            }
            _ => alternative,
        };
        out.push(Finding::new(
            Check::RepliesNotAttached,
            Severity::Error,
            format!("service {}", service.name),
            format!(
                "the route to backend(s) {} leaves by {name}, which xlb is not attached to: \
                 their replies come back on {name}{siblings}, where no XDP program sees them, so \
                 {consequence}",
                list(&backends)
            ),
            format!("add \"{name}\" to `interfaces`{alternative}"),
        ));
    }
}

/// The SNAT address must be on the interface facing the backends, and used
/// for nothing else.
fn snat(
    setup: &Setup,
    service: &ServiceConfig,
    routes: &[(SocketAddr, &Route)],
    out: &mut Vec<Finding>,
) {
    let Some(snat) = service.snat else {
        return;
    };
    let subject = format!("service {}, snat {snat}", service.name);
    let facing: BTreeSet<u32> = routes.iter().filter_map(|(_, r)| r.oif).collect();
    let facing_link = |oif: u32| setup.facts.link(oif);
    match setup.facts.holder_of(snat) {
        None => {
            let first = facing.first().and_then(|&oif| facing_link(oif));
            let dev = first.map_or("<interface facing the backends>", |l| l.name.as_str());
            out.push(Finding::new(
                Check::SnatMissing,
                Severity::Error,
                subject.clone(),
                format!(
                    "{snat} is configured on no interface: backends send their replies to it, \
                     nothing answers their ARP or neighbour solicitations for it, and no reply \
                     ever arrives"
                ),
                format!(
                    "ip addr add {} dev {dev} (and use it for nothing else)",
                    cidr_on(setup.facts, snat, first)
                ),
            ));
        }
        Some((holder, address)) => {
            for link in facing.iter().filter_map(|&oif| facing_link(oif)) {
                if link.index != holder.index {
                    out.push(wrong_interface(
                        setup,
                        &subject,
                        snat,
                        holder,
                        address.prefix_len,
                        link,
                    ));
                }
            }
        }
    }
    let shared: Vec<SocketAddr> = routes
        .iter()
        .filter(|(_, r)| r.prefsrc == Some(snat))
        .map(|(a, _)| *a)
        .collect();
    if !shared.is_empty() {
        out.push(Finding::new(
            Check::SnatShared,
            Severity::Warning,
            subject,
            format!(
                "{snat} is also the source the kernel gives this host's own connections to {} \
                 (xlb's health checks included): when one of them picks a port a flow holds, its \
                 replies go to a client instead",
                list(&shared)
            ),
            "set `snat` to an address used for nothing else, added after the interface's main \
             address (ip addr add <address>/<len> dev <interface>)",
        ));
    }
}

fn wrong_interface(
    setup: &Setup,
    subject: &str,
    snat: IpAddr,
    holder: &Link,
    prefix_len: u8,
    facing: &Link,
) -> Finding {
    let (from, to) = (&holder.name, &facing.name);
    Finding::new(
        Check::SnatWrongInterface,
        Severity::Error,
        subject,
        format!(
            "{snat} is on {from}, but backends are reached through {to}: their ARP or neighbour \
             solicitations for it arrive on {to}, where IPv6 answers only for {to}'s own \
             addresses (and IPv4 only while arp_ignore is 0), and rewritten packets from an \
             address of another interface are what rp_filter drops"
        ),
        format!(
            "ip addr del {snat}/{prefix_len} dev {from} && ip addr add {} dev {to}",
            cidr_on(setup.facts, snat, Some(facing))
        ),
    )
}

/// What the load balancer can check of a dnat service's way back: the
/// backends are reached through it; the rest is on the backends.
fn dnat_return_path(
    setup: &Setup,
    service: &ServiceConfig,
    routes: &[(SocketAddr, &Route)],
    out: &mut Vec<Finding>,
) {
    let mut on_link = Vec::new();
    let mut gateways: BTreeMap<IpAddr, Vec<SocketAddr>> = BTreeMap::new();
    let mut lb_address = None;
    for (address, route) in routes {
        if !route.oif.is_some_and(|oif| setup.covered(oif)) {
            continue; // named by `not_attached`
        }
        lb_address = lb_address.or_else(|| lb_address_of(setup.config, setup.facts, address.ip()));
        match route.gateway {
            None => on_link.push(*address),
            Some(gateway) => gateways.entry(gateway).or_default().push(*address),
        }
    }
    let lb = lb_address.map_or("this host's address on that side".to_owned(), |a| {
        a.to_string()
    });
    let mut fix = Vec::new();
    if !on_link.is_empty() {
        fix.push(format!(
            "on {}: ip route replace default via {lb}",
            list(&on_link)
        ));
    }
    for (gateway, backends) in &gateways {
        fix.push(format!(
            "{gateway} (the router in front of {}) must send clients' traffic back through {lb}",
            list(backends)
        ));
    }
    if fix.is_empty() {
        return;
    }
    out.push(Finding::new(
        Check::DnatReturnPath,
        Severity::Info,
        format!("service {}", service.name),
        "in dnat mode backends see clients' own addresses and answer them directly: their \
         route to clients (usually their default route) must point at this host, or replies \
         bypass xlb and clients drop them; the load balancer cannot see a backend's routes \
         (`xlb status` warns when a healthy backend's replies never come back)",
        fix.join("; "),
    ))
}

/// `dsr` backends reached through a gateway: the frame, still addressed to
/// the VIP, would go to the gateway, which routes it by the VIP.
fn dsr_on_link(
    setup: &Setup,
    service: &ServiceConfig,
    routes: &[(SocketAddr, &Route)],
    out: &mut Vec<Finding>,
) {
    let behind: Vec<SocketAddr> = routes
        .iter()
        .filter(|(_, route)| route.oif.is_some_and(|oif| setup.covered(oif)))
        .filter(|(_, route)| route.gateway.is_some())
        .map(|(address, _)| *address)
        .collect();
    dsr_behind_bridge(setup, service, routes, out);
    if behind.is_empty() {
        return;
    }
    out.push(Finding::new(
        Check::DsrNotOnLink,
        Severity::Error,
        format!("service {}", service.name),
        format!(
            "{} reached through a gateway: mode dsr changes only the frame's MAC addresses, so \
             the frame, still addressed to the VIP, would reach the gateway instead",
            list(&behind)
        ),
        "put the backends on a link of an attached interface (same subnet, no gateway), or \
         use mode dnat or nat",
    ))
}

/// `dsr` backends whose route leaves by a bridge on this host: XDP has no
/// way to transmit into a bridge device (a redirect to one is dropped), and
/// the kernel would route the frame by the VIP, so the data plane drops
/// them.
fn dsr_behind_bridge(
    setup: &Setup,
    service: &ServiceConfig,
    routes: &[(SocketAddr, &Route)],
    out: &mut Vec<Finding>,
) {
    let is_bridge = |oif| {
        setup
            .facts
            .link(oif)
            .is_some_and(|l| l.kind == LinkKind::Bridge)
    };
    for (bridge, backends) in by_egress(routes, is_bridge) {
        out.push(Finding::new(
            Check::DsrNotOnLink,
            Severity::Error,
            format!("service {}", service.name),
            format!(
                "{} reached through bridge {}: XDP sends frames past a bridge only to ports \
                 that take XDP frames, for hosts the bridge has learned; the kernel would route \
                 any other by the VIP, so mode dsr drops them (drop_dsr_no_path)",
                list(&backends),
                setup.facts.link_name(bridge)
            ),
            "use mode dnat or nat for backends behind a bridge on this host (the kernel \
             forwards those through the bridge), or reach them by an interface that is not \
             a bridge",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, *};
    use crate::host::{HostFacts, XdpAttachment, XdpMode};

    #[test]
    fn dsr_backends_must_be_on_a_link_not_behind_a_gateway() {
        let config = dsr_config();
        let mut host = two_nic_host();
        assert!(found(&config, &host, Check::DsrNotOnLink).is_empty());
        let mut behind = on_link(3, "10.0.2.1");
        behind.gateway = Some(ip("10.0.2.254"));
        set_route(&mut host, "10.0.2.11", behind);
        let finding = one_error(&config, &host, Check::DsrNotOnLink);
        assert!(
            finding
                .problem
                .starts_with("10.0.2.11:8000 reached through a gateway")
        );
    }

    #[test]
    fn dsr_backends_behind_a_bridge_on_this_host_are_an_error() {
        let mut config = dsr_config();
        let mut host = two_nic_host();
        // eth1 becomes a bridge whose one port, vb0, xlb is attached to: the
        // bridge is covered, but XDP cannot send into it.
        link_mut(&mut host, "eth1").kind = LinkKind::Bridge;
        let mut port = link(5, "vb0", LinkKind::Veth);
        port.master = Some(3);
        host.links.push(port);
        config.interfaces = vec!["eth0".into(), "vb0".into()];
        assert!(found(&config, &host, Check::RepliesNotAttached).is_empty());
        let finding = one_error(&config, &host, Check::DsrNotOnLink);
        assert!(
            finding
                .problem
                .starts_with("10.0.2.10:8000, 10.0.2.11:8000 reached through bridge eth1"),
            "{}",
            finding.problem
        );
        // The same backends in nat mode are forwarded by the kernel.
        config.services[0].mode = Mode::Nat;
        config.services[0].snat = two_nic_config().services[0].snat;
        assert!(found(&config, &host, Check::DsrNotOnLink).is_empty());
    }

    #[test]
    fn backends_routed_by_an_interface_xlb_is_not_on() {
        let mut config = two_nic_config();
        config.interfaces = vec!["eth0".into()];
        let host = two_nic_host();
        let finding = one_error(&config, &host, Check::RepliesNotAttached);
        assert!(finding.problem.contains("10.0.2.10:8000, 10.0.2.11:8000"));
        assert_eq!(finding.fix, "add \"eth1\" to `interfaces`");
    }

    #[test]
    fn a_bridge_is_covered_by_all_its_ports() {
        let mut host = two_nic_host();
        // eth1 becomes a bridge with two ports, vb0 and vb1.
        link_mut(&mut host, "eth1").kind = LinkKind::Bridge;
        for (index, name) in [(5, "vb0"), (6, "vb1")] {
            let mut port = link(index, name, LinkKind::Veth);
            port.master = Some(3);
            host.links.push(port);
        }
        let mut config = two_nic_config();
        config.interfaces = vec!["eth0".into(), "vb0".into()];
        let findings = found(&config, &host, Check::RepliesNotAttached);
        assert_eq!(
            findings[0].fix,
            "add \"eth1\" to `interfaces` (or all of its ports not yet in it: vb1)"
        );
        config.interfaces.push("vb1".into());
        assert!(found(&config, &host, Check::RepliesNotAttached).is_empty());
        // A VLAN device is covered by the NIC it sits on.
        let mut vlan = link(7, "eth0.5", LinkKind::Vlan);
        vlan.parent = Some(2);
        host.links.push(vlan);
        set_route(&mut host, "10.0.2.11", on_link(7, "10.0.2.1"));
        assert!(found(&config, &host, Check::RepliesNotAttached).is_empty());
    }

    #[test]
    fn a_macvlan_in_bridge_mode_is_covered_by_itself_or_generic_xdp_on_its_parent() {
        // The backends are containers on macvlans of eth0, reached through
        // the host's own macvlan mvb (bridge mode): their replies to mvb
        // enter eth0's kernel receive path, never its driver.
        let mut host = two_nic_host();
        let mut shim = link(5, "mvb", LinkKind::Macvlan);
        shim.parent = Some(2);
        shim.siblings = Siblings::ThroughParentStack;
        host.links.push(shim);
        for backend in ["10.0.2.10", "10.0.2.11"] {
            set_route(&mut host, backend, on_link(5, "10.0.2.1"));
        }
        let mut config = two_nic_config();
        config.interfaces = vec!["eth0".into()];
        let finding = one_error(&config, &host, Check::RepliesNotAttached);
        assert!(
            finding.problem.contains(
                "come back on mvb (from hosts on other macvlans of eth0, without crossing eth0's \
                 driver)"
            ),
            "{}",
            finding.problem
        );
        assert_eq!(
            finding.fix,
            "add \"mvb\" to `interfaces`, or set `xdp_mode = \"generic\"`"
        );
        config.interfaces.push("mvb".into());
        assert!(found(&config, &host, Check::RepliesNotAttached).is_empty());
        // Generic XDP on eth0 sees them: asked for, or fallen back to.
        config.interfaces = vec!["eth0".into()];
        config.agent.xdp_mode = "generic".into();
        assert!(found(&config, &host, Check::RepliesNotAttached).is_empty());
        config.agent.xdp_mode = "auto".into();
        link_mut(&mut host, "eth0").xdp = Some(XdpAttachment {
            mode: XdpMode::Generic,
            prog_id: None,
        });
        assert!(found(&config, &host, Check::RepliesNotAttached).is_empty());
        // A NIC without native XDP runs xlb in generic mode under `auto`.
        link_mut(&mut host, "eth0").xdp = None;
        link_mut(&mut host, "eth0").xdp_features = Some(crate::netdev::XdpFeatures::default());
        assert!(found(&config, &host, Check::RepliesNotAttached).is_empty());
        link_mut(&mut host, "eth0").xdp_features = None;
        // In vepa mode they come back through eth0's driver.
        link_mut(&mut host, "mvb").siblings = Siblings::Apart;
        assert!(found(&config, &host, Check::RepliesNotAttached).is_empty());
        // An ipvlan takes them directly: only xlb on it sees them.
        link_mut(&mut host, "mvb").siblings = Siblings::Direct;
        config.agent.xdp_mode = "generic".into();
        assert_eq!(found(&config, &host, Check::RepliesNotAttached).len(), 1);
    }

    #[test]
    fn local_and_unreachable_backends() {
        let config = two_nic_config();
        let mut host = two_nic_host();
        let mut local = on_link(1, "10.0.2.10");
        local.kind = RouteKind::Local;
        set_route(&mut host, "10.0.2.10", local);
        no_route(&mut host, "10.0.2.11");
        let local = found(&config, &host, Check::BackendLocal);
        assert_eq!(local[0].subject, "service web, backend 10.0.2.10:8000");
        let unreachable = found(&config, &host, Check::BackendUnreachable);
        assert!(unreachable[0].problem.contains("Network is unreachable"));
    }

    #[test]
    fn the_snat_address_must_be_on_the_backends_interface() {
        let config = two_nic_config();
        let mut host = two_nic_host();
        host.addresses.retain(|a| a.ip != ip("10.0.2.100"));
        let missing = found(&config, &host, Check::SnatMissing);
        assert_eq!(missing[0].severity, Severity::Error);
        assert_eq!(
            missing[0].fix,
            "ip addr add 10.0.2.100/24 dev eth1 (and use it for nothing else)"
        );
        host.addresses.push(address(2, "10.0.2.100", 32));
        let wrong = found(&config, &host, Check::SnatWrongInterface);
        assert_eq!(
            wrong[0].fix,
            "ip addr del 10.0.2.100/32 dev eth0 && ip addr add 10.0.2.100/24 dev eth1"
        );
        assert!(found(&config, &host, Check::SnatMissing).is_empty());
    }

    #[test]
    fn a_snat_address_the_host_uses_itself_is_a_warning() {
        let config = two_nic_config();
        let mut host = two_nic_host();
        set_route(&mut host, "10.0.2.10", on_link(3, "10.0.2.100"));
        let shared = found(&config, &host, Check::SnatShared);
        assert_eq!(shared[0].severity, Severity::Warning);
        assert!(shared[0].problem.contains("10.0.2.10:8000"), "{shared:?}");
    }

    #[test]
    fn dnat_names_the_address_backends_must_route_through() {
        let config = dnat_config();
        let mut host: HostFacts = two_nic_host();
        let mut behind = on_link(3, "10.0.2.1");
        behind.gateway = Some(ip("10.0.2.254"));
        set_route(&mut host, "10.0.2.11", behind);
        let note = found(&config, &host, Check::DnatReturnPath);
        assert_eq!(note[0].severity, Severity::Info);
        assert_eq!(
            note[0].fix,
            "on 10.0.2.10:8000: ip route replace default via 10.0.2.1; 10.0.2.254 (the router \
             in front of 10.0.2.11:8000) must send clients' traffic back through 10.0.2.1"
        );
        assert!(found(&config, &host, Check::SnatMissing).is_empty());
    }

    #[test]
    fn the_address_backends_route_through_is_no_snat_address() {
        let mut config = dnat_config();
        let mut host = two_nic_host();
        // The kernel prefers the SNAT address as the source (IPv6 does so).
        set_route(&mut host, "10.0.2.10", on_link(3, "10.0.2.100"));
        let lb = |config: &crate::config::Config| {
            super::super::lb_address(config, &host, ip("10.0.2.10"))
        };
        assert_eq!(lb(&config), Some(ip("10.0.2.100")));
        let mut nat = two_nic_config().services.remove(0);
        nat.name = "other".into();
        config.services.push(nat);
        assert_eq!(lb(&config), Some(ip("10.0.2.1")));
    }
}
