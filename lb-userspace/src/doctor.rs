//! Checks of a configuration against the host it runs on, as pure
//! functions over [`HostFacts`]: each names a misconfiguration that would
//! make xlb serve nothing (or less than it should) and the fix. docs/agent.md
//! lists them all.

mod interfaces;
pub mod kernel;
mod replies;
mod routing;
mod sysctls;

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

pub use replies::{REPLY_GRACE, REPLY_WINDOW, Sample, replies_bypass};

use crate::{
    config::Config,
    host::{HostFacts, Link, Query, Siblings, XdpMode},
    xdp::ModeRequest,
};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing is lost.
    Info,
    /// Some traffic is lost or slowed, or will be under some conditions.
    Warning,
    /// The service cannot work as configured.
    Error,
}

/// Which check found something; `xlb check` prints it as `error[<name>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    KernelTooOld,
    NoInterfaces,
    InterfaceMissing,
    InterfaceDown,
    NoCarrier,
    BackendUnreachable,
    BackendLocal,
    RepliesNotAttached,
    SnatMissing,
    SnatWrongInterface,
    SnatShared,
    DnatReturnPath,
    DsrNotOnLink,
    ForwardingOff,
    RpFilterDropsSnat,
    RpFilterDropsReplies,
    VipUnroutable,
    Lro,
    GroHw,
    RxVlanOffload,
    MtuTooLarge,
    NoNativeXdp,
    XdpNotAttached,
    XdpGeneric,
    BridgeNetfilterSkipped,
    AcceptLocalOff,
    RepliesBypass,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

/// The name serde gives a unit variant, so text and JSON say the same.
fn serde_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One problem found, what it does, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub check: Check,
    pub severity: Severity,
    /// What it is about: an interface, a service, a backend, a sysctl.
    pub subject: String,
    /// What is wrong and what happens to traffic because of it.
    pub problem: String,
    /// What to do, as concretely as the facts allow.
    pub fix: String,
}

impl Finding {
    fn new(
        check: Check,
        severity: Severity,
        subject: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            check,
            severity,
            subject: subject.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}[{}] {}: {}",
            self.severity, self.check, self.subject, self.problem
        )?;
        write!(f, "  fix: {}", self.fix)
    }
}

/// What the checks of `config` need read beyond every host's basics: the
/// attached interfaces' drivers and offloads, and the routes to backends
/// and VIPs.
pub fn query(config: &Config) -> Query {
    let mut routes = Vec::new();
    for service in &config.services {
        routes.push(service.vip);
        routes.extend(service.backends.iter().map(|b| b.address.ip()));
    }
    Query {
        interfaces: config.interfaces.clone(),
        routes,
        with_xdp: false,
    }
}

/// Every check of `config` against a host with `facts`, most severe first.
pub fn check(config: &Config, facts: &HostFacts) -> Vec<Finding> {
    let setup = Setup { config, facts };
    let mut findings = Vec::new();
    kernel::check(&setup, &mut findings);
    interfaces::check(&setup, &mut findings);
    routing::check(&setup, &mut findings);
    sysctls::check(&setup, &mut findings);
    sort(&mut findings);
    findings
}

/// Checks of a running host (for `xlb doctor`): whether xlb is attached
/// where `config` says and how. `agent_running` says whether an agent
/// answered for this configuration.
pub fn check_running(config: &Config, facts: &HostFacts, agent_running: bool) -> Vec<Finding> {
    let setup = Setup { config, facts };
    let mut findings = Vec::new();
    interfaces::check_running(&setup, agent_running, &mut findings);
    sort(&mut findings);
    findings
}

/// Most severe first; the checks' own order within a severity.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
}

/// A configuration and the host it is checked against, with what several
/// checks derive from both.
struct Setup<'a> {
    config: &'a Config,
    facts: &'a HostFacts,
}

impl Setup<'_> {
    /// Whether xlb attaches to interface `index`.
    fn attached(&self, index: u32) -> bool {
        self.facts
            .link(index)
            .is_some_and(|l| self.config.interfaces.contains(&l.name))
    }

    /// The configured interfaces that exist.
    fn attached_links(&self) -> impl Iterator<Item = &Link> {
        self.config
            .interfaces
            .iter()
            .filter_map(|name| self.facts.link_named(name))
    }

    /// Whether XDP sees the frames that arrive for interface `index`: it is
    /// attached there, or at every device they pass first (all ports of a
    /// bridge or bond, the NIC a VLAN sits on). A macvlan or ipvlan also
    /// takes frames from its siblings (containers on other macvlans of the
    /// same NIC): a macvlan in bridge mode hands them to its parent's
    /// kernel receive path, where only generic XDP runs; an ipvlan takes
    /// them directly.
    fn covered(&self, index: u32) -> bool {
        if self.attached(index) {
            return true;
        }
        let siblings = self.facts.link(index).map(|l| (l.siblings, l.parent));
        match siblings {
            Some((Siblings::Direct, _)) => return false,
            Some((Siblings::ThroughParentStack, Some(parent))) if !self.generic_at(parent) => {
                return false;
            }
            _ => {}
        }
        let lowers = self.facts.lowers(index);
        !lowers.is_empty() && lowers.iter().all(|l| self.covered(l.index))
    }

    /// Whether xlb's program at interface `index` runs (or will run) in
    /// generic mode: asked for; in `auto` mode where the driver has no
    /// native XDP; or where the running agent fell back to it.
    fn generic_at(&self, index: u32) -> bool {
        let Some(link) = self.facts.link(index) else {
            return false;
        };
        let mode = self.config.agent.xdp_mode.parse::<ModeRequest>().ok();
        self.attached(index)
            && (mode == Some(ModeRequest::Generic)
                || (mode == Some(ModeRequest::Auto)
                    && link.xdp_features.is_some_and(|f| !f.native()))
                || link
                    .xdp
                    .as_ref()
                    .is_some_and(|x| x.mode == XdpMode::Generic))
    }

    /// The interface a unicast route to `ip` leaves by, if there is one.
    fn egress(&self, ip: IpAddr) -> Option<&Link> {
        let route = self.facts.route(ip)?.as_ref().ok()?;
        self.facts.link(route.oif?)
    }
}

/// This host's address that a backend at `backend` should send clients'
/// traffic to: one on the interface facing it, on the backend's (or its
/// gateway's) subnet, not a SNAT address of `config`; the kernel's
/// preferred source when none is better.
pub fn lb_address(config: &Config, facts: &HostFacts, backend: IpAddr) -> Option<IpAddr> {
    let route = facts.route(backend)?.as_ref().ok()?;
    let snats: Vec<IpAddr> = config.services.iter().filter_map(|s| s.snat).collect();
    let next_hop = route.gateway.unwrap_or(backend);
    facts
        .addresses
        .iter()
        .filter(|a| Some(a.index) == route.oif && same_subnet(a.ip, next_hop, a.prefix_len))
        .map(|a| a.ip)
        .filter(|ip| !snats.contains(ip))
        .min_by_key(|ip| Some(*ip) != route.prefsrc)
        .or(route.prefsrc)
}

/// `ip addr add` syntax for `ip` on the interface `link`: the prefix length
/// of an address of `link` whose subnet holds `ip`, else a host route's.
fn cidr_on(facts: &HostFacts, ip: IpAddr, link: Option<&Link>) -> String {
    let host = if ip.is_ipv4() { 32 } else { 128 };
    let len = link
        .and_then(|link| {
            facts
                .addresses
                .iter()
                .filter(|a| a.index == link.index)
                .find(|a| same_subnet(a.ip, ip, a.prefix_len))
                .map(|a| a.prefix_len)
        })
        .unwrap_or(host);
    format!("{ip}/{len}")
}

/// Whether `a` and `b` share their first `len` bits.
fn same_subnet(a: IpAddr, b: IpAddr, len: u8) -> bool {
    let bits = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => (u128::from(v4.to_bits()) << 96, 32),
        IpAddr::V6(v6) => (v6.to_bits(), 128),
    };
    let ((a, a_width), (b, b_width)) = (bits(a), bits(b));
    if a_width != b_width || u32::from(len) > a_width {
        return false;
    }
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    a & mask == b & mask
}

/// Quoted, comma-separated names for a finding's text.
fn list<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    #[test]
    fn subnets_and_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_subnet(ip("10.0.2.1"), ip("10.0.2.100"), 24));
        assert!(!same_subnet(ip("10.0.2.1"), ip("10.0.3.100"), 24));
        assert!(!same_subnet(ip("10.0.2.1"), ip("fd00::1"), 0));
        assert!(same_subnet(ip("fd00::1"), ip("fd00::2:1"), 64));
        let host = two_nic_host();
        let eth1 = host.link_named("eth1");
        assert_eq!(cidr_on(&host, ip("10.0.2.100"), eth1), "10.0.2.100/24");
        assert_eq!(cidr_on(&host, ip("10.9.9.9"), eth1), "10.9.9.9/32");
    }

    #[test]
    fn a_correct_two_nic_host_has_no_error_or_warning() {
        let findings = check(&two_nic_config(), &two_nic_host());
        assert!(
            findings.iter().all(|f| f.severity == Severity::Info),
            "{findings:#?}"
        );
    }

    #[test]
    fn findings_print_with_their_check_and_fix() {
        let finding = Finding::new(
            Check::SnatMissing,
            Severity::Error,
            "service web",
            "gone",
            "add it",
        );
        assert_eq!(
            finding.to_string(),
            "error[snat-missing] service web: gone\n  fix: add it"
        );
    }
}
