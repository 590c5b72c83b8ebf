//! Frames to hosts behind a Linux bridge xlb is attached to, sent by XDP
//! straight to the bridge port the host is behind.
//!
//! A bridge has no XDP transmit, so a frame routed out of it would go to
//! the kernel to forward: a socket buffer built, the IP layer, the bridge's
//! netfilter hooks and its forwarding table, for every packet. Its ports
//! often can take XDP frames (a NIC whose driver transmits them, a veth
//! whose peer runs NAPI). The agent copies the bridge's forwarding table
//! into `BRIDGE_PORTS` for those ports, and puts the ports in
//! `INTERFACES`; the route lookup's answer (the bridge, the host's MAC) then
//! names the port to redirect to.

/// Key of `BRIDGE_PORTS`: a MAC address the bridge `bridge` has learned (or
/// was told) is behind one of its ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BridgePortKey {
    /// The bridge's ifindex.
    pub bridge: u32,
    /// The host's MAC address.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl BridgePortKey {
    #[inline(always)]
    pub const fn new(bridge: u32, mac: [u8; 6]) -> Self {
        Self {
            bridge,
            mac,
            _pad: [0; 2],
        }
    }
}

crate::impl_pod!(BridgePortKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<BridgePortKey>(), 12);
        assert_eq!(core::mem::align_of::<BridgePortKey>(), 4);
    }
}
