//! Backends as the data plane sees them.

use crate::impl_pod;

/// Flows to this backend are scheduled again, and it gets no new ones: it
/// is down (the operator's `down`) or fails its active health checks.
pub const BACKEND_F_FAILED: u16 = 1 << 0;
/// The data plane sets [`BACKEND_F_NO_NEW_FLOWS`] itself when the backend
/// refuses a handshake (a RST to a client's SYN): its `max_fails` is 1, so
/// the agent would take it out at its next tick anyway; new flows stop
/// going to it at once. A SYN sent again does not: any client can send one.
pub const BACKEND_F_FAIL_AT_ONCE: u16 = 1 << 1;
/// The backend listens on this host (127.0.0.1, ::1 or one of the host's
/// own addresses): a client's packet is handed to the kernel's local
/// delivery after the rewrite, with the client's address kept (whatever the
/// service's mode), and the reply is rewritten back by the tc egress
/// program `xlb_egress`.
pub const BACKEND_F_LOCAL: u16 = 1 << 2;
/// Taken out passively (nginx `max_fails` within `fail_timeout`): new
/// flows avoid it, established flows keep going to it, as nginx's passive
/// checks stop new requests only.
pub const BACKEND_F_NO_NEW_FLOWS: u16 = 1 << 3;

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
    /// Its share of new flows as the agent decided it (configured weight
    /// times the agent's scale, after drain, backup and slow start): the
    /// load-aware methods compare live flows per unit of it.
    pub weight: u32,
    /// Most live flows it may have ([`crate::load::live_flows`]); 0: no
    /// limit.
    pub max_conns: u32,
}

impl Backend {
    #[inline(always)]
    pub const fn is_failed(&self) -> bool {
        self.flags & BACKEND_F_FAILED != 0
    }

    /// Whether a new flow may go to it: neither failed nor taken out
    /// passively ([`BACKEND_F_NO_NEW_FLOWS`]).
    #[inline(always)]
    pub const fn takes_new_flows(&self) -> bool {
        self.flags & (BACKEND_F_FAILED | BACKEND_F_NO_NEW_FLOWS) == 0
    }

    /// Whether the backend listens on this host ([`BACKEND_F_LOCAL`]).
    #[inline(always)]
    pub const fn is_local(&self) -> bool {
        self.flags & BACKEND_F_LOCAL != 0
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
    /// Connections (and unconnected UDP sockets) that clients on the load
    /// balancer's host opened to the backend through the socket programs:
    /// they have no packets here, so they are not `new_flows`. Left out of
    /// the control API's reports while 0, and read as 0 when absent, so
    /// reports stay as they were for hosts without such clients.
    #[cfg_attr(feature = "user", serde(default, skip_serializing_if = "is_zero"))]
    pub host_connects: u64,
}

#[cfg(feature = "user")]
fn is_zero(n: &u64) -> bool {
    *n == 0
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
        self.host_connects += o.host_connects;
    }
}

impl_pod!(Backend, BackendCounters);
