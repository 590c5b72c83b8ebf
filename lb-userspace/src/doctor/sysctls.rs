//! Forwarding and reverse-path filtering: what the kernel does with the
//! frames xlb hands it (a next hop not resolved yet, a way out XDP cannot
//! send by) and whether `bpf_fib_lookup` routes at all.
//!
//! The kernel checks a forwarded packet's source in `fib_validate_source`,
//! on the interface it arrived on: with `rp_filter` 1 (strict) the route
//! back to the source must leave by that interface, with 2 (loose) some
//! route back must exist; the larger of `all` and the interface's value
//! applies.

use std::collections::BTreeSet;

use super::{Check, Finding, Setup, Severity};
use crate::{
    config::{Mode, ServiceConfig},
    host::{Link, RpFilter, sysctl_key},
};

pub(super) fn check(setup: &Setup, out: &mut Vec<Finding>) {
    let services = &setup.config.services;
    if services.iter().any(|s| s.vip.is_ipv4()) {
        forwarding(setup, Family::V4, out);
    }
    if services.iter().any(|s| s.vip.is_ipv6()) {
        forwarding(setup, Family::V6, out);
    }
    for service in services.iter().filter(|s| s.vip.is_ipv4()) {
        if service.mode == Mode::Nat {
            rp_filter_snat(setup, service, out);
        }
        rp_filter_replies(setup, service, out);
    }
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

fn forwarding(setup: &Setup, family: Family, out: &mut Vec<Finding>) {
    let sysctls = &setup.facts.sysctls;
    let (global, global_key, proc_family, name) = match family {
        Family::V4 => (
            sysctls.global.ipv4_forward,
            "net.ipv4.ip_forward",
            "ipv4",
            "IPv4",
        ),
        Family::V6 => (
            sysctls.global.ipv6_forwarding,
            "net.ipv6.conf.all.forwarding",
            "ipv6",
            "IPv6",
        ),
    };
    let problem = |scope: &str| {
        format!(
            "{name} forwarding is off{scope}: bpf_fib_lookup answers \"forwarding disabled\" for \
             every frame xlb rewrites, so xlb hands each one to the kernel, which does not \
             forward it either: no flow reaches a backend, no reply a client"
        )
    };
    if global == Some(false) {
        out.push(Finding::new(
            Check::ForwardingOff,
            Severity::Error,
            global_key,
            problem(""),
            format!("sysctl -w {global_key}=1 (and set it in /etc/sysctl.d/ to keep it)"),
        ));
        return;
    }
    for link in setup.attached_links() {
        let own = sysctls
            .interfaces
            .get(&link.name)
            .and_then(|s| match family {
                Family::V4 => s.ipv4_forwarding,
                Family::V6 => s.ipv6_forwarding,
            });
        if own == Some(false) {
            let key = sysctl_key(proc_family, &link.name, "forwarding");
            out.push(Finding::new(
                Check::ForwardingOff,
                Severity::Error,
                key.clone(),
                problem(&format!(" on {}", link.name)),
                format!("sysctl -w {key}=1"),
            ));
        }
    }
}

/// Client packets arriving on one attached interface, rewritten to come
/// from a SNAT address of another.
fn rp_filter_snat(setup: &Setup, service: &ServiceConfig, out: &mut Vec<Finding>) {
    let Some((holder, _)) = service.snat.and_then(|snat| setup.facts.holder_of(snat)) else {
        return;
    };
    if !setup.attached(holder.index) {
        return;
    }
    let snat = service.snat.expect("holder found");
    for link in setup.attached_links().filter(|l| l.index != holder.index) {
        if setup.facts.sysctls.rp_filter(&link.name) != Some(RpFilter::Strict) {
            continue;
        }
        let (name, from) = (&link.name, &holder.name);
        out.push(Finding::new(
            Check::RpFilterDropsSnat,
            Severity::Error,
            format!("interface {name}, service {}", service.name),
            format!(
                "rp_filter is 1 (strict) on {name}: client packets arriving there are rewritten \
                 to come from {snat}, an address of {from}; for each one xlb hands to the kernel \
                 (its next hop not resolved yet, or its way out one XDP cannot send by), \
                 fib_validate_source finds the route back to {snat} is {from}'s local route, \
                 not one out of {name}, and the kernel drops the packet (IPReversePathFilter in \
                 `nstat -az`)"
            ),
            rp_fix(setup, link),
        ));
    }
}

/// Backends' replies, rewritten to come from the VIP, arriving on the
/// interface facing the backends.
fn rp_filter_replies(setup: &Setup, service: &ServiceConfig, out: &mut Vec<Finding>) {
    let vip = service.vip;
    let facing: BTreeSet<u32> = service
        .backends
        .iter()
        .filter_map(|b| setup.egress(b.address.ip()))
        .filter(|l| setup.covered(l.index))
        .map(|l| l.index)
        .collect();
    let vip_route = setup.facts.route(vip);
    for link in facing.iter().filter_map(|&i| setup.facts.link(i)) {
        let Some(rp) = setup
            .facts
            .sysctls
            .rp_filter(&link.name)
            .filter(|&r| r != RpFilter::Off)
        else {
            continue;
        };
        let name = &link.name;
        let handed = format!(
            "backends' replies arrive on {name} and, rewritten, come from the VIP {vip}; for \
             each one xlb hands to the kernel (the way to the client not resolved yet, or one \
             XDP cannot send by), fib_validate_source checks the route back to {vip} (rp_filter \
             is {} on {name})",
            rp.value()
        );
        match vip_route {
            Some(Err(error)) => {
                let fix = if rp == RpFilter::Strict {
                    format!(
                        "give the VIP a route toward the clients (ip route add {vip}/32 via \
                         <client-side gateway>), and make rp_filter loose: {}",
                        rp_fix(setup, link)
                    )
                } else {
                    format!(
                        "give the VIP a route: put it on lo (ip addr add {vip}/32 dev lo) or \
                         route it toward the clients (ip route add {vip}/32 via <client-side \
                         gateway>)"
                    )
                };
                out.push(Finding::new(
                    Check::VipUnroutable,
                    Severity::Warning,
                    format!("service {}, vip {vip}", service.name),
                    format!(
                        "{handed}: the kernel has no route to {vip} ({error}), so it drops them"
                    ),
                    fix,
                ));
            }
            Some(Ok(route)) if rp == RpFilter::Strict && route.oif != Some(link.index) => {
                let by = route
                    .oif
                    .map_or("no interface".to_owned(), |oif| setup.facts.link_name(oif));
                out.push(Finding::new(
                    Check::RpFilterDropsReplies,
                    Severity::Warning,
                    format!("interface {name}, service {}", service.name),
                    format!(
                        "{handed}: the route to {vip} leaves by {by}, not {name}, so strict \
                         rp_filter drops them"
                    ),
                    rp_fix(setup, link),
                ))
            }
            _ => {}
        }
    }
}

/// Loose reverse-path filtering on `link`, which wins over a strict `all`.
fn rp_fix(setup: &Setup, link: &Link) -> String {
    let key = sysctl_key("ipv4", &link.name, "rp_filter");
    let all_off = setup
        .facts
        .sysctls
        .global
        .rp_filter_all
        .is_none_or(|r| r == RpFilter::Off);
    if all_off {
        format!("sysctl -w {key}=2 (or 0)")
    } else {
        format!(
            "sysctl -w {key}=2 (the kernel applies the larger of it and \
             net.ipv4.conf.all.rp_filter, so 0 is not enough)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, *};

    #[test]
    fn forwarding_off_globally_or_on_an_interface() {
        let config = two_nic_config();
        let mut host = two_nic_host();
        host.sysctls.global.ipv4_forward = Some(false);
        let off = found(&config, &host, Check::ForwardingOff);
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].severity, Severity::Error);
        assert!(off[0].fix.starts_with("sysctl -w net.ipv4.ip_forward=1"));
        host.sysctls.global.ipv4_forward = Some(true);
        sysctls_mut(&mut host, "eth1").ipv4_forwarding = Some(false);
        let off = found(&config, &host, Check::ForwardingOff);
        assert_eq!(off[0].fix, "sysctl -w net.ipv4.conf.eth1.forwarding=1");
        // IPv6 forwarding matters to IPv6 services only.
        host.sysctls.global.ipv6_forwarding = Some(false);
        assert_eq!(found(&config, &host, Check::ForwardingOff).len(), 1);
    }

    #[test]
    fn strict_rp_filter_on_the_client_side_drops_snat_packets() {
        let config = two_nic_config();
        let mut host = two_nic_host();
        sysctls_mut(&mut host, "eth0").rp_filter = Some(RpFilter::Strict);
        let drops = found(&config, &host, Check::RpFilterDropsSnat);
        assert_eq!(drops.len(), 1, "{drops:?}");
        assert_eq!(drops[0].severity, Severity::Error);
        assert_eq!(
            drops[0].fix,
            "sysctl -w net.ipv4.conf.eth0.rp_filter=2 (or 0)"
        );
        // Strict on the SNAT address's own interface is no problem for
        // client packets; `all` strict is, and then 0 is not enough.
        sysctls_mut(&mut host, "eth0").rp_filter = Some(RpFilter::Off);
        host.sysctls.global.rp_filter_all = Some(RpFilter::Strict);
        let drops = found(&config, &host, Check::RpFilterDropsSnat);
        assert!(drops[0].fix.contains("0 is not enough"), "{drops:?}");
        // A one-armed host: SNAT on the only interface.
        let mut one_armed = config.clone();
        one_armed.interfaces = vec!["eth1".into()];
        assert!(found(&one_armed, &host, Check::RpFilterDropsSnat).is_empty());
    }

    #[test]
    fn replies_need_a_route_back_to_the_vip() {
        let config = two_nic_config();
        let mut host = two_nic_host();
        no_route(&mut host, VIP);
        let unroutable = found(&config, &host, Check::VipUnroutable);
        assert_eq!(unroutable[0].severity, Severity::Warning);
        assert!(unroutable[0].fix.contains("dev lo"), "{unroutable:?}");
        // Strict on the backends' side: the VIP's route leaves by eth0.
        let host = {
            let mut host = two_nic_host();
            sysctls_mut(&mut host, "eth1").rp_filter = Some(RpFilter::Strict);
            host
        };
        let drops = found(&config, &host, Check::RpFilterDropsReplies);
        assert!(drops[0].problem.contains("leaves by eth0"), "{drops:?}");
        // rp_filter off: nothing to say.
        let mut host = two_nic_host();
        no_route(&mut host, VIP);
        sysctls_mut(&mut host, "eth1").rp_filter = Some(RpFilter::Off);
        assert!(found(&config, &host, Check::VipUnroutable).is_empty());
    }
}
