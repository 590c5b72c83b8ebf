//! The configured interfaces themselves: they exist and are up, their
//! offloads and MTU suit native XDP, and (on a running host) xlb is
//! attached to them.

use super::{Check, Finding, Setup, Severity, list};
use crate::{
    config::Mode,
    host::{Feature, HostFacts, Link, LinkKind, OperState, XdpMode, sysctl_key},
    xdp::ModeRequest,
};

/// `XDP_PACKET_HEADROOM`: room the kernel keeps before a frame for XDP.
const XDP_HEADROOM: u32 = 256;
/// `SKB_DATA_ALIGN(sizeof(struct skb_shared_info))` on 64-bit kernels: the
/// end of the page the kernel keeps for itself.
const SHARED_INFO: u32 = 320;
/// Ethernet header.
const ETH_HLEN: u32 = 14;

/// The largest MTU whose frames fit one page with XDP's headroom: what
/// veth allows with a native XDP program, and about what other drivers do.
pub fn native_xdp_mtu(page_size: u32) -> u32 {
    page_size.saturating_sub(XDP_HEADROOM + SHARED_INFO + ETH_HLEN)
}

pub(super) fn check(setup: &Setup, out: &mut Vec<Finding>) {
    let config = setup.config;
    if config.interfaces.is_empty() {
        out.push(Finding::new(
            Check::NoInterfaces,
            Severity::Warning,
            "interfaces",
            "no interface is configured, so the checks of what xlb would see are skipped",
            "set `interfaces = [\"eth0\", …]` in the file, or pass the same --iface to \
             `xlb check` as to `xlb run`",
        ));
    }
    let mode = config
        .agent
        .xdp_mode
        .parse::<ModeRequest>()
        .unwrap_or_default();
    for name in &config.interfaces {
        let Some(link) = setup.facts.link_named(name) else {
            out.push(Finding::new(
                Check::InterfaceMissing,
                Severity::Error,
                format!("interface {name}"),
                format!("there is no interface {name} in this network namespace: xlb run fails to attach"),
                format!(
                    "correct `interfaces`, create {name}, or run xlb in the namespace that holds \
                     it (`nsenter --net=/run/netns/<ns> xlb …`)"
                ),
            ));
            continue;
        };
        state(link, out);
        offloads(setup.facts, link, out);
        bridge_netfilter(setup, link, out);
        // Unknown features: assume native XDP is possible.
        let native = link.xdp_features.is_none_or(|f| f.native());
        match mode {
            ModeRequest::Generic => {}
            _ if !native => no_native(link, mode, out),
            _ => mtu(setup.facts, link, out),
        }
    }
}

/// An attached bridge, or the bridge of an attached port, on a host whose
/// bridged frames go through netfilter (`br_netfilter`): the frames xlb
/// sends past it skip those rules.
fn bridge_netfilter(setup: &Setup, link: &Link, out: &mut Vec<Finding>) {
    let on = setup.facts.sysctls.global.bridge_netfilter == Some(true);
    if !on || !setup.config.agent.xdp_past_bridges {
        return;
    }
    let bridge = if link.kind == LinkKind::Bridge {
        Some(link)
    } else {
        link.master
            .and_then(|m| setup.facts.link(m))
            .filter(|m| m.kind == LinkKind::Bridge)
    };
    let Some(bridge) = bridge else {
        return;
    };
    let name = &bridge.name;
    let subject = format!("interface {name}");
    // Several attached ports of one bridge make one finding.
    if out
        .iter()
        .any(|f| f.check == Check::BridgeNetfilterSkipped && f.subject == subject)
    {
        return;
    }
    out.push(Finding::new(
        Check::BridgeNetfilterSkipped,
        Severity::Warning,
        subject,
        format!(
            "bridged frames go through netfilter here (br_netfilter: \
             net.bridge.bridge-nf-call-iptables or -ip6tables is 1, as Docker and CNI set), but \
             the clients' frames xlb sends past {name} straight to a port that takes XDP frames \
             skip those rules and the FORWARD chain"
        ),
        "if rules there must see the clients' frames, set `xdp_past_bridges = false` under \
         [agent]; otherwise nothing to do",
    ));
}

fn state(link: &Link, out: &mut Vec<Finding>) {
    let name = &link.name;
    if !link.up {
        out.push(Finding::new(
            Check::InterfaceDown,
            Severity::Error,
            format!("interface {name}"),
            format!("{name} is down: it receives nothing, so xlb serves nothing through it"),
            format!("ip link set dev {name} up"),
        ));
    } else if matches!(link.oper, OperState::Down | OperState::LowerLayerDown) {
        let what = if link.kind == LinkKind::Veth {
            "its peer is down or gone"
        } else {
            "no carrier: the cable, the switch port or the device below it is down"
        };
        out.push(Finding::new(
            Check::NoCarrier,
            Severity::Warning,
            format!("interface {name}"),
            format!("{name} is up but cannot pass frames ({what})"),
            format!(
                "bring up what {name} connects to, then check `ip link show {name}` says LOWER_UP"
            ),
        ));
    }
}

fn offloads(facts: &HostFacts, link: &Link, out: &mut Vec<Finding>) {
    let Some(offloads) = link.offloads else {
        return;
    };
    let name = &link.name;
    for (check, feature, what, flag) in [
        (
            Check::Lro,
            offloads.lro,
            "LRO (large receive offload)",
            "lro",
        ),
        (
            Check::GroHw,
            offloads.gro_hw,
            "hardware GRO (rx-gro-hw)",
            "rx-gro-hw",
        ),
    ] {
        let Some(feature) = Feature::on(feature) else {
            continue;
        };
        let fix = if feature.fixed {
            format!(
                "the driver keeps {flag} on ({name} says [fixed]): set `xdp_mode = \"generic\"` \
                 under [agent], or use a NIC or driver that can turn it off"
            )
        } else {
            format!("ethtool -K {name} {flag} off")
        };
        out.push(Finding::new(
            check,
            Severity::Warning,
            format!("interface {name}"),
            format!(
                "{what} is on: the NIC merges frames before XDP runs; most drivers refuse native \
                 XDP while it is on (xdp_mode \"auto\" then falls back to slower generic mode) and \
                 otherwise XDP would see merged frames larger than the MTU"
            ),
            fix,
        ));
    }
    // Only VLAN devices need the tags; a macvlan or ipvlan takes frames by
    // address.
    let uppers: Vec<&str> = facts
        .uppers(link.index)
        .filter(|l| l.kind == LinkKind::Vlan)
        .map(|l| l.name.as_str())
        .collect();
    if Feature::on(offloads.rx_vlan).is_some() && !uppers.is_empty() {
        out.push(Finding::new(
            Check::RxVlanOffload,
            Severity::Info,
            format!("interface {name}"),
            format!(
                "tagged traffic is expected on {name} (VLAN devices {} sit on it), but the NIC \
                 strips VLAN tags before XDP runs: xlb sees those frames untagged and answers \
                 them untagged",
                list(&uppers)
            ),
            format!("ethtool -K {name} rxvlan off"),
        ));
    }
}

/// A driver without native XDP, while the configuration asks for it.
fn no_native(link: &Link, mode: ModeRequest, out: &mut Vec<Finding>) {
    let name = &link.name;
    let driver = link.driver.as_deref().unwrap_or(match link.kind {
        LinkKind::Device => "its driver",
        _ => "this kind of device",
    });
    let (severity, what) = if mode == ModeRequest::Native {
        (
            Severity::Error,
            "xlb run fails to attach with xdp_mode \"native\"",
        )
    } else {
        (Severity::Info, "xlb runs there in generic mode, slower")
    };
    out.push(Finding::new(
        Check::NoNativeXdp,
        severity,
        format!("interface {name}"),
        // A virtual device's driver is named after its kind: say it once.
        if driver == link.kind.to_string() {
            format!("{name} ({driver}) has no native XDP: {what}")
        } else {
            format!("{name} ({}, {driver}) has no native XDP: {what}", link.kind)
        },
        "set `xdp_mode = \"auto\"` (or \"generic\") under [agent], or attach to a device \
         whose driver has native XDP",
    ));
}

fn mtu(facts: &HostFacts, link: &Link, out: &mut Vec<Finding>) {
    let limit = native_xdp_mtu(facts.page_size);
    if link.mtu <= limit {
        return;
    }
    let name = &link.name;
    let veth = if link.kind == LinkKind::Veth {
        " (a veth refuses a native XDP program while its peer's MTU is larger)"
    } else {
        ""
    };
    out.push(Finding::new(
        Check::MtuTooLarge,
        Severity::Warning,
        format!("interface {name}"),
        format!(
            "MTU {} is above what native XDP takes in one buffer, about {limit} bytes here (a \
             {}-byte page less XDP's headroom and the kernel's own data){veth}: drivers refuse \
             native XDP at this MTU, and xdp_mode \"auto\" falls back to slower generic mode",
            link.mtu, facts.page_size
        ),
        format!(
            "ip link set dev {name} mtu {limit} (or lower, on the peer too), or set `xdp_mode = \
             \"generic\"` under [agent]"
        ),
    ));
}

/// Doctor's checks of a running host.
pub(super) fn check_running(setup: &Setup, agent_running: bool, out: &mut Vec<Finding>) {
    let nat = setup.config.services.iter().any(|s| s.mode == Mode::Nat);
    for link in setup.attached_links() {
        let name = &link.name;
        match link.xdp {
            None => out.push(Finding::new(
                Check::XdpNotAttached,
                if agent_running {
                    Severity::Error
                } else {
                    Severity::Info
                },
                format!("interface {name}"),
                if agent_running {
                    format!("the agent runs but no XDP program is attached to {name}: nothing arriving there is balanced")
                } else {
                    format!("no XDP program is attached to {name}: xlb is not running here")
                },
                if agent_running {
                    "restart the agent and read its log for why attaching failed".to_owned()
                } else {
                    "start it: xlb run -c <file>".to_owned()
                },
            )),
            Some(xdp) if xdp.mode == XdpMode::Generic => out.push(Finding::new(
                Check::XdpGeneric,
                Severity::Info,
                format!("interface {name}"),
                format!(
                    "XDP runs in generic mode on {name}: after the kernel has built an skb for \
                     each frame, several times slower than native mode"
                ),
                "read the agent's log for why native mode was refused (offloads, MTU, driver), \
                 fix that and restart the agent",
            )),
            Some(_) => {}
        }
        let accept_local = setup
            .facts
            .sysctls
            .interfaces
            .get(name)
            .and_then(|s| s.accept_local);
        if nat && link.xdp.is_some() && accept_local == Some(false) {
            out.push(Finding::new(
                Check::AcceptLocalOff,
                Severity::Warning,
                format!("interface {name}"),
                format!(
                    "accept_local is off on {name}: a nat packet xlb hands to the kernel comes \
                     from the SNAT address, one of this host's own, and the kernel drops it as \
                     a martian"
                ),
                format!(
                    "sysctl -w {}=1 (xlb run sets it when it attaches)",
                    sysctl_key("ipv4", name, "accept_local")
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, *};
    use crate::host::XdpAttachment;

    #[test]
    fn missing_down_and_carrierless_interfaces() {
        let mut config = two_nic_config();
        config.interfaces.push("eth9".into());
        let mut host = two_nic_host();
        link_mut(&mut host, "eth0").up = false;
        link_mut(&mut host, "eth1").oper = OperState::LowerLayerDown;
        let missing = found(&config, &host, Check::InterfaceMissing);
        assert_eq!(missing[0].severity, Severity::Error);
        assert!(missing[0].fix.contains("nsenter"), "{missing:?}");
        let down = found(&config, &host, Check::InterfaceDown);
        assert_eq!(down[0].fix, "ip link set dev eth0 up");
        assert_eq!(found(&config, &host, Check::NoCarrier).len(), 1);
        config.interfaces.clear();
        assert_eq!(found(&config, &host, Check::NoInterfaces).len(), 1);
    }

    #[test]
    fn lro_and_hardware_gro_are_named_with_the_ethtool_fix() {
        let config = two_nic_config();
        let mut host = two_nic_host();
        offloads_mut(&mut host, "eth0").lro = on(false);
        offloads_mut(&mut host, "eth1").gro_hw = on(true);
        let lro = found(&config, &host, Check::Lro);
        assert_eq!(lro[0].fix, "ethtool -K eth0 lro off");
        assert_eq!(lro[0].severity, Severity::Warning);
        let gro = found(&config, &host, Check::GroHw);
        assert!(gro[0].fix.contains("xdp_mode = \"generic\""), "{gro:?}");
    }

    #[test]
    fn frames_sent_past_a_bridge_that_netfilter_sees_are_named() {
        let mut config = two_nic_config();
        let mut host = two_nic_host();
        link_mut(&mut host, "eth1").kind = LinkKind::Bridge;
        assert!(found(&config, &host, Check::BridgeNetfilterSkipped).is_empty());
        host.sysctls.global.bridge_netfilter = Some(true);
        let skipped = found(&config, &host, Check::BridgeNetfilterSkipped);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].severity, Severity::Warning);
        assert_eq!(skipped[0].subject, "interface eth1");
        assert!(skipped[0].fix.contains("xdp_past_bridges = false"));
        // The bridge of an attached port.
        let mut above = two_nic_host();
        above.sysctls.global.bridge_netfilter = Some(true);
        above.links.push(link(7, "br0", LinkKind::Bridge));
        link_mut(&mut above, "eth0").master = Some(7);
        link_mut(&mut above, "eth1").master = Some(7);
        let skipped = found(&config, &above, Check::BridgeNetfilterSkipped);
        assert_eq!(
            skipped.len(),
            1,
            "one for the bridge of both ports: {skipped:?}"
        );
        assert_eq!(skipped[0].subject, "interface br0");
        config.agent.xdp_past_bridges = false;
        assert!(found(&config, &host, Check::BridgeNetfilterSkipped).is_empty());
    }

    #[test]
    fn vlan_stripping_matters_only_with_vlan_devices() {
        let config = two_nic_config();
        let mut host = two_nic_host();
        offloads_mut(&mut host, "eth0").rx_vlan = on(false);
        assert!(found(&config, &host, Check::RxVlanOffload).is_empty());
        let mut macvlan = link(5, "mvb", LinkKind::Macvlan);
        macvlan.parent = Some(2);
        host.links.push(macvlan);
        assert!(
            found(&config, &host, Check::RxVlanOffload).is_empty(),
            "a macvlan takes untagged frames"
        );
        let mut vlan = link(4, "eth0.100", LinkKind::Vlan);
        vlan.parent = Some(2);
        host.links.push(vlan);
        let info = found(&config, &host, Check::RxVlanOffload);
        assert_eq!(info[0].severity, Severity::Info);
        assert_eq!(info[0].fix, "ethtool -K eth0 rxvlan off");
    }

    #[test]
    fn an_mtu_above_a_page_is_too_large_for_native_xdp() {
        assert_eq!(native_xdp_mtu(4096), 3506);
        let mut config = two_nic_config();
        let mut host = two_nic_host();
        link_mut(&mut host, "eth1").mtu = 9000;
        let mtu = found(&config, &host, Check::MtuTooLarge);
        assert!(
            mtu[0].fix.starts_with("ip link set dev eth1 mtu 3506"),
            "{mtu:?}"
        );
        link_mut(&mut host, "eth1").mtu = 3506;
        assert!(found(&config, &host, Check::MtuTooLarge).is_empty());
        link_mut(&mut host, "eth1").mtu = 9000;
        config.agent.xdp_mode = "generic".into();
        assert!(found(&config, &host, Check::MtuTooLarge).is_empty());
    }

    #[test]
    fn a_driver_without_native_xdp() {
        use crate::netdev::XdpFeatures;
        let mut config = two_nic_config();
        let mut host = two_nic_host();
        let bridge = link_mut(&mut host, "eth1");
        (bridge.kind, bridge.mtu) = (LinkKind::Bridge, 9000);
        bridge.xdp_features = Some(XdpFeatures(0));
        let note = found(&config, &host, Check::NoNativeXdp);
        assert_eq!(note[0].severity, Severity::Info);
        assert!(
            note[0]
                .problem
                .contains("eth1 (bridge, this kind of device)"),
            "{note:?}"
        );
        // Generic mode anyway: the MTU does not matter.
        assert!(found(&config, &host, Check::MtuTooLarge).is_empty());
        config.agent.xdp_mode = "native".into();
        assert_eq!(
            found(&config, &host, Check::NoNativeXdp)[0].severity,
            Severity::Error
        );
        link_mut(&mut host, "eth1").xdp_features = Some(XdpFeatures(XdpFeatures::BASIC));
        assert!(found(&config, &host, Check::NoNativeXdp).is_empty());
    }

    #[test]
    fn running_host_attachments() {
        let config = two_nic_config();
        let mut host = two_nic_host();
        let running = |host: &HostFacts, agent| check_running_all(&config, host, agent);
        let missing = running(&host, true);
        assert!(
            missing
                .iter()
                .all(|f| f.check == Check::XdpNotAttached && f.severity == Severity::Error)
        );
        assert!(
            running(&host, false)
                .iter()
                .all(|f| f.severity == Severity::Info)
        );
        for name in ["eth0", "eth1"] {
            link_mut(&mut host, name).xdp = Some(XdpAttachment {
                mode: XdpMode::Native,
                prog_id: Some(7),
            });
        }
        assert!(running(&host, true).is_empty());
        link_mut(&mut host, "eth1").xdp.as_mut().unwrap().mode = XdpMode::Generic;
        sysctls_mut(&mut host, "eth0").accept_local = Some(false);
        let findings = running(&host, true);
        let checks: Vec<Check> = findings.iter().map(|f| f.check).collect();
        assert_eq!(checks, [Check::AcceptLocalOff, Check::XdpGeneric]);
        assert_eq!(
            findings[0].fix,
            "sysctl -w net.ipv4.conf.eth0.accept_local=1 (xlb run sets it when it attaches)"
        );
    }

    fn offloads_mut<'a>(host: &'a mut HostFacts, name: &str) -> &'a mut crate::host::Offloads {
        link_mut(host, name).offloads.as_mut().unwrap()
    }

    fn on(fixed: bool) -> Option<Feature> {
        Some(Feature {
            active: true,
            fixed,
        })
    }

    fn check_running_all(
        config: &crate::config::Config,
        host: &HostFacts,
        agent: bool,
    ) -> Vec<Finding> {
        super::super::check_running(config, host, agent)
    }
}
