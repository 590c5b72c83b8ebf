//! A correct two-NIC host and its configuration, for the checks' tests to
//! break one thing at a time.

use std::net::IpAddr;

use crate::{
    config::Config,
    host::{
        Address, Feature, GlobalSysctls, HostFacts, IfaceSysctls, Link, LinkKind, Offloads,
        OperState, Route, RouteKind, RouteLookup, RpFilter, Siblings, Sysctls,
    },
};

/// Clients on `eth0` (192.0.2.1/24, default route via 192.0.2.254); the
/// backends 10.0.2.10 and 10.0.2.11 on `eth1` (10.0.2.1/24), which also
/// holds the SNAT address 10.0.2.100. Forwarding on, rp_filter loose.
pub fn two_nic_host() -> HostFacts {
    let mut facts = HostFacts {
        links: vec![
            link(1, "lo", LinkKind::Loopback),
            link(2, "eth0", LinkKind::Device),
            link(3, "eth1", LinkKind::Device),
        ],
        addresses: vec![
            address(1, "127.0.0.1", 8),
            address(2, "192.0.2.1", 24),
            address(3, "10.0.2.1", 24),
            address(3, "10.0.2.100", 24),
        ],
        routes: Vec::new(),
        sysctls: Sysctls {
            global: GlobalSysctls {
                ipv4_forward: Some(true),
                ipv6_forwarding: Some(true),
                rp_filter_all: Some(RpFilter::Off),
                bridge_netfilter: None,
            },
            interfaces: Default::default(),
        },
        page_size: 4096,
        kernel_release: "6.12.9-amd64".into(),
    };
    for name in ["lo", "eth0", "eth1"] {
        facts.sysctls.interfaces.insert(
            name.into(),
            IfaceSysctls {
                ipv4_forwarding: Some(true),
                ipv6_forwarding: Some(true),
                rp_filter: Some(RpFilter::Loose),
                accept_local: Some(true),
            },
        );
    }
    for backend in ["10.0.2.10", "10.0.2.11"] {
        set_route(&mut facts, backend, on_link(3, "10.0.2.1"));
    }
    let mut to_clients = on_link(2, "192.0.2.1");
    to_clients.gateway = Some(ip("192.0.2.254"));
    set_route(&mut facts, VIP, to_clients);
    facts
}

/// The VIP of [`two_nic_config`].
pub const VIP: &str = "198.51.100.1";

/// A `nat` service on both NICs of [`two_nic_host`], with an active check.
pub fn two_nic_config() -> Config {
    Config::parse(&format!(
        r#"
        interfaces = ["eth0", "eth1"]
        [[service]]
        name = "web"
        vip = "{VIP}"
        port = 80
        snat = "10.0.2.100"
        [service.health_check]
        type = "tcp"
        [[service.backend]]
        address = "10.0.2.10:8000"
        [[service.backend]]
        address = "10.0.2.11:8000"
        "#
    ))
    .unwrap()
}

/// The same service in `dnat` mode.
pub fn dnat_config() -> Config {
    in_mode(crate::config::Mode::Dnat)
}

/// The same service in `dsr` mode.
pub fn dsr_config() -> Config {
    in_mode(crate::config::Mode::Dsr)
}

/// [`two_nic_config`]'s service in `mode`, which takes no SNAT address.
fn in_mode(mode: crate::config::Mode) -> Config {
    let mut config = two_nic_config();
    config.services[0].mode = mode;
    config.services[0].snat = None;
    config
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An interface that is up, 1500 bytes, no offloads on.
pub fn link(index: u32, name: &str, kind: LinkKind) -> Link {
    let off = Some(Feature::default());
    Link {
        index,
        name: name.into(),
        kind,
        driver: None,
        up: true,
        oper: OperState::Up,
        mtu: 1500,
        master: None,
        parent: None,
        siblings: Siblings::Apart,
        xdp: None,
        offloads: Some(Offloads {
            lro: off,
            gro_hw: off,
            rx_vlan: off,
        }),
        xdp_features: None,
    }
}

pub fn address(index: u32, ip_text: &str, prefix_len: u8) -> Address {
    Address {
        index,
        ip: ip(ip_text),
        prefix_len,
    }
}

/// A route out of interface `oif` with source `prefsrc`, no gateway.
pub fn on_link(oif: u32, prefsrc: &str) -> Route {
    Route {
        kind: RouteKind::Unicast,
        oif: Some(oif),
        gateway: None,
        prefsrc: Some(ip(prefsrc)),
    }
}

/// Makes `route` the answer for `to`.
pub fn set_route(facts: &mut HostFacts, to: &str, route: Route) {
    set_lookup(facts, to, Ok(route));
}

/// Makes `to` unreachable.
pub fn no_route(facts: &mut HostFacts, to: &str) {
    set_lookup(facts, to, Err("Network is unreachable".into()));
}

fn set_lookup(facts: &mut HostFacts, to: &str, route: Result<Route, String>) {
    facts.routes.retain(|r| r.to != ip(to));
    facts.routes.push(RouteLookup { to: ip(to), route });
}

/// The interface named `name`, to change.
pub fn link_mut<'a>(facts: &'a mut HostFacts, name: &str) -> &'a mut Link {
    facts.links.iter_mut().find(|l| l.name == name).unwrap()
}

/// The sysctls of interface `name`, to change.
pub fn sysctls_mut<'a>(facts: &'a mut HostFacts, name: &str) -> &'a mut IfaceSysctls {
    facts.sysctls.interfaces.get_mut(name).unwrap()
}

/// The findings of `check` among all of `config` on `facts`.
pub fn found(config: &Config, facts: &HostFacts, check: super::Check) -> Vec<super::Finding> {
    super::check(config, facts)
        .into_iter()
        .filter(|f| f.check == check)
        .collect()
}

/// The one finding of `check` among all of `config` on `facts`, checked to
/// be an error.
pub fn one_error(config: &Config, facts: &HostFacts, check: super::Check) -> super::Finding {
    let mut findings = found(config, facts, check);
    assert_eq!(findings.len(), 1, "{findings:?}");
    let finding = findings.remove(0);
    assert_eq!(finding.severity, super::Severity::Error);
    finding
}
