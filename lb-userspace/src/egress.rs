//! How frames leave by each interface xlb is attached to: sent by XDP
//! itself, or handed to the kernel to forward.
//!
//! XDP only sends a frame out of an interface (`XDP_TX` or a redirect) when
//! the kernel says the driver transmits XDP frames there; otherwise the
//! kernel would drop it after the program returned, silently. Every other
//! frame goes to the kernel, with the MAC addresses it arrived with.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    host,
    netdev::{self, XdpFeatures},
};

/// The way frames leave by an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressPath {
    /// XDP sends them (`XDP_TX`, or a redirect from another interface).
    Xdp,
    /// The driver has no XDP transmit (a bridge, a veth whose peer runs no
    /// XDP program, a VLAN device): the kernel forwards them.
    Kernel,
}

impl fmt::Display for EgressPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Xdp => "xdp",
            Self::Kernel => "kernel",
        })
    }
}

/// What the kernel says about an interface's way out, as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Egress {
    pub path: EgressPath,
    /// The driver's XDP features.
    pub features: XdpFeatures,
    /// VLAN devices on the interface: tagged frames handed to the kernel
    /// keep their tags only if there are any.
    pub vlan_devices: Vec<String>,
}

impl Egress {
    /// Reads it for interface `iface` (index `ifindex`) in this thread's
    /// network namespace. A kernel that cannot tell (older than 6.3) gets
    /// the kernel path: slower, never lost.
    pub fn probe(iface: &str, ifindex: u32) -> Self {
        let features = netdev::xdp_features(ifindex).unwrap_or_else(|e| {
            tracing::warn!(
                iface,
                "cannot read XDP features ({e:#}); forwarding through the kernel"
            );
            XdpFeatures::default()
        });
        let vlan_devices = host::vlan_devices_on(ifindex).unwrap_or_else(|e| {
            tracing::warn!(iface, "cannot list VLAN devices: {e:#}");
            Vec::new()
        });
        Self {
            path: path_for(features),
            features,
            vlan_devices,
        }
    }

    /// Why frames take this path, for logs and `xlb status`.
    pub fn reason(&self) -> &'static str {
        match self.path {
            EgressPath::Xdp => "the driver transmits XDP frames",
            EgressPath::Kernel => {
                "the driver does not transmit XDP frames (a bridge, macvlan or VXLAN device, \
                 or a veth whose peer runs neither an XDP program nor GRO)"
            }
        }
    }
}

/// The path the driver's XDP features allow.
pub fn path_for(features: XdpFeatures) -> EgressPath {
    if features.transmits() {
        EgressPath::Xdp
    } else {
        EgressPath::Kernel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_xdp_transmit_makes_the_xdp_path() {
        assert_eq!(path_for(XdpFeatures(0)), EgressPath::Kernel);
        // A veth whose peer runs no XDP program: native XDP, no transmit.
        let veth_alone = XdpFeatures(XdpFeatures::BASIC | XdpFeatures::REDIRECT);
        assert_eq!(path_for(veth_alone), EgressPath::Kernel);
        let transmits = XdpFeatures(veth_alone.0 | XdpFeatures::NDO_XMIT);
        assert_eq!(path_for(transmits), EgressPath::Xdp);
    }
}
