//! Backends as the data plane sees them.

use crate::impl_pod;

/// Flows to this backend are scheduled again: it failed a health check.
pub const BACKEND_F_FAILED: u16 = 1 << 0;
/// The data plane sets [`BACKEND_F_FAILED`] itself at the backend's first
/// failed connection attempt (a refused handshake, or, with `next_upstream`
/// `timeout`, a SYN sent again): its `max_fails` is 1, so the agent would
/// take it out at its next tick anyway; new flows stop going to it at once.
pub const BACKEND_F_FAIL_AT_ONCE: u16 = 1 << 1;

/// Entry of the `BACKENDS` array, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Address, network byte order, IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Port, network byte order.
    pub port_be: u16,
    /// `BACKEND_F_*` flags.
    pub flags: u16,
    pub _pad: u32,
}

impl Backend {
    #[inline(always)]
    pub const fn is_failed(&self) -> bool {
        self.flags & BACKEND_F_FAILED != 0
    }
}

/// Per-backend counters, per CPU, in `BACKEND_STATS`; summed over CPUs in
/// the agent's reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct BackendCounters {
    /// Packets and bytes forwarded to the backend.
    pub packets: u64,
    pub bytes: u64,
    /// Flows scheduled to the backend.
    pub new_flows: u64,
    /// SYNs that arrived again for a flow whose earlier SYN got no SYN-ACK
    /// from this backend: the client gave up waiting and retried.
    pub syn_retries: u64,
    /// RSTs from the backend before the handshake completed (refused).
    pub handshake_rsts: u64,
    /// Packets and bytes of the backend's replies.
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl BackendCounters {
    /// Adds another CPU's counts to this one.
    pub fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.syn_retries += o.syn_retries;
        self.handshake_rsts += o.handshake_rsts;
        self.reply_packets += o.reply_packets;
        self.reply_bytes += o.reply_bytes;
    }
}

impl_pod!(Backend, BackendCounters);
