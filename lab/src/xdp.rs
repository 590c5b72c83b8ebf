//! The pass-through XDP program on the load balancer's switch port: bpffs,
//! attaching, and reading which XDP mode an interface runs.

use std::{fmt, path::Path};

use anyhow::Context as _;

use crate::netns;

/// XDP attachment of an interface, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// No XDP program.
    None,
    /// Native (driver) mode.
    Native,
    /// Generic (skb) mode.
    Generic,
    /// Offloaded to the NIC.
    Offload,
    /// Several programs in different modes.
    Multi,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Offload => "offload",
            Self::Multi => "multi",
        })
    }
}

/// Attaches the pass-through XDP program in native mode to `iface` in
/// namespace `ns`, pinning its link at `pin` (bpffs is mounted and the pin's
/// directory created if needed). Returns the mode the kernel reports.
pub fn attach_pass(ns: &str, iface: &str, pin: &Path) -> anyhow::Result<XdpMode> {
    xlb::xdp::ensure_bpffs()?;
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    netns::run_in(ns, || xlb::xdp::attach_pass(iface, pin))?
        .with_context(|| format!("attaching the pass-through XDP program to {iface} in {ns}"))?;
    mode(ns, iface)
}

/// The XDP mode of `iface` in namespace `ns` (from `ip link show`).
pub fn mode(ns: &str, iface: &str) -> anyhow::Result<XdpMode> {
    let out = netns::run(&mut netns::ip_in(ns, ["link", "show", "dev", iface]))?;
    Ok(parse_mode(&out))
}

/// Reads the mode from `ip link show` output such as
/// `… mtu 1500 xdp qdisc …` or `… mtu 1500 xdpgeneric qdisc …`.
fn parse_mode(ip_link: &str) -> XdpMode {
    for word in ip_link.split_whitespace() {
        match word.split('/').next().unwrap_or_default() {
            "xdp" => return XdpMode::Native,
            "xdpgeneric" => return XdpMode::Generic,
            "xdpoffload" => return XdpMode::Offload,
            "xdpmulti" => return XdpMode::Multi,
            _ => {}
        }
    }
    XdpMode::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_link_output() {
        let native = "7: lb@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdp qdisc noqueue";
        assert_eq!(parse_mode(native), XdpMode::Native);
        let generic =
            "7: lb@if6: <BROADCAST,UP> mtu 1500 xdpgeneric qdisc noqueue\n    prog/xdp id 12";
        assert_eq!(parse_mode(generic), XdpMode::Generic);
        assert_eq!(
            parse_mode("7: lb@if6: <UP> mtu 1500 qdisc noqueue"),
            XdpMode::None
        );
    }
}
