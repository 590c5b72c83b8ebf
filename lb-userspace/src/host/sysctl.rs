//! Forwarding and source-validation sysctls, from `/proc/sys/net` (which
//! belongs to the reading thread's network namespace).

use std::collections::BTreeMap;

use serde::Serialize;

/// The sysctls the checks read; `None` where the file is missing (IPv6
/// off, an interface gone meanwhile).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sysctls {
    #[serde(flatten)]
    pub global: GlobalSysctls,
    /// Per interface, by name.
    pub interfaces: BTreeMap<String, IfaceSysctls>,
}

/// The sysctls not of one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GlobalSysctls {
    /// `net.ipv4.ip_forward`.
    pub ipv4_forward: Option<bool>,
    /// `net.ipv6.conf.all.forwarding`.
    pub ipv6_forwarding: Option<bool>,
    /// `net.ipv4.conf.all.rp_filter`: the kernel uses the larger of it and
    /// the interface's value.
    pub rp_filter_all: Option<RpFilter>,
    /// `net.bridge.bridge-nf-call-iptables` or `-ip6tables` is 1: bridged
    /// frames go through the IP layer's netfilter hooks (`br_netfilter`,
    /// loaded by Docker and most CNI setups); `None` without the module.
    pub bridge_netfilter: Option<bool>,
}

/// One interface's sysctls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IfaceSysctls {
    /// `net.ipv4.conf.<if>.forwarding`: `bpf_fib_lookup` checks the
    /// receiving interface's.
    pub ipv4_forwarding: Option<bool>,
    /// `net.ipv6.conf.<if>.forwarding`.
    pub ipv6_forwarding: Option<bool>,
    /// `net.ipv4.conf.<if>.rp_filter`.
    pub rp_filter: Option<RpFilter>,
    /// `net.ipv4.conf.<if>.accept_local`: xlb sets it when attaching.
    pub accept_local: Option<bool>,
}

/// Reverse-path filtering of packets arriving on an interface. Ordered as
/// the kernel compares the values: the larger of `all` and the interface's
/// applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RpFilter {
    /// 0: no check.
    Off,
    /// 1: the route back to the source must leave by the arrival interface.
    Strict,
    /// 2: some route back to the source must exist.
    Loose,
}

impl RpFilter {
    fn from_value(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Off),
            1 => Some(Self::Strict),
            2 => Some(Self::Loose),
            _ => None,
        }
    }

    /// The sysctl value.
    pub fn value(self) -> u8 {
        self as u8
    }
}

impl Sysctls {
    /// Reads the global values and those of `interfaces`.
    pub fn read(interfaces: &[&str]) -> Self {
        Self {
            global: GlobalSysctls {
                ipv4_forward: flag("ipv4/ip_forward"),
                ipv6_forwarding: flag("ipv6/conf/all/forwarding"),
                rp_filter_all: number("ipv4/conf/all/rp_filter").and_then(RpFilter::from_value),
                bridge_netfilter: match (
                    flag("bridge/bridge-nf-call-iptables"),
                    flag("bridge/bridge-nf-call-ip6tables"),
                ) {
                    (None, None) => None,
                    (v4, v6) => Some(v4 == Some(true) || v6 == Some(true)),
                },
            },
            interfaces: interfaces
                .iter()
                .map(|name| {
                    let sysctls = IfaceSysctls {
                        ipv4_forwarding: flag(&format!("ipv4/conf/{name}/forwarding")),
                        ipv6_forwarding: flag(&format!("ipv6/conf/{name}/forwarding")),
                        rp_filter: number(&format!("ipv4/conf/{name}/rp_filter"))
                            .and_then(RpFilter::from_value),
                        accept_local: flag(&format!("ipv4/conf/{name}/accept_local")),
                    };
                    ((*name).to_owned(), sysctls)
                })
                .collect(),
        }
    }

    /// The reverse-path filter the kernel applies on `iface`: the larger of
    /// `all` and the interface's own.
    pub fn rp_filter(&self, iface: &str) -> Option<RpFilter> {
        let own = self.interfaces.get(iface).and_then(|s| s.rp_filter);
        own.max(self.global.rp_filter_all)
    }
}

/// `sysctl -w` name of an interface setting: a `.` in an interface name
/// (`eth0.100`) is written `/` so it is not read as a separator.
pub fn key(family: &str, iface: &str, setting: &str) -> String {
    format!("net.{family}.conf.{}.{setting}", iface.replace('.', "/"))
}

fn number(path: &str) -> Option<u8> {
    std::fs::read_to_string(format!("/proc/sys/net/{path}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn flag(path: &str) -> Option<bool> {
    number(path).map(|v| v != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_larger_rp_filter_applies() {
        let mut sysctls = Sysctls::default();
        sysctls.global.rp_filter_all = Some(RpFilter::Strict);
        sysctls.interfaces.insert(
            "eth0".into(),
            IfaceSysctls {
                rp_filter: Some(RpFilter::Off),
                ..IfaceSysctls::default()
            },
        );
        assert_eq!(sysctls.rp_filter("eth0"), Some(RpFilter::Strict));
        sysctls.interfaces.get_mut("eth0").unwrap().rp_filter = Some(RpFilter::Loose);
        assert_eq!(sysctls.rp_filter("eth0"), Some(RpFilter::Loose));
        assert_eq!(
            key("ipv4", "eth0.100", "rp_filter"),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
    }
}
