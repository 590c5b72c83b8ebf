//! Types and pure logic shared by the xlb data plane (`lb-ebpf`) and the
//! userspace agent (`xlb`).
//!
//! Everything that crosses the kernel/user boundary through a BPF map is
//! `#[repr(C)]`, `Copy`, and laid out without implicit padding, so both sides
//! agree on every byte. Fields in network byte order say so in their name
//! (`_be`) or doc comment.

#![cfg_attr(not(any(feature = "std", test)), no_std)]

#[cfg(any(feature = "std", test))]
extern crate alloc;

pub mod backend;
pub mod bridge;
pub mod checksum;
pub mod counters;
pub mod filter;
pub mod flood;
pub mod flow;
pub mod hash;
pub mod load;
pub mod log_limit;
#[cfg(any(feature = "std", test))]
pub mod maglev;
pub mod service;
pub mod sock;

pub use backend::{Backend, BackendCounters};
pub use counters::{GlobalCounter, TrafficCounters};
pub use flow::{Flow, FlowKey, Reply};
pub use load::BackendLoad;
pub use service::{IpProto, Service, ServiceKey};
pub use sock::{SockKey, SockPeer};

/// Most services the data plane holds; sizes `SERVICES` and `SERVICE_STATS`.
pub const MAX_SERVICES: u32 = 1024;
/// Most backends over all services; sizes `BACKENDS` and `BACKEND_STATS`.
pub const MAX_BACKENDS: u32 = 16_384;
/// Slots shared by every service's two Maglev tables (`MAGLEV_SLOTS`): two
/// default-size tables take 131 074; 10 000 backends need two tables of
/// about a million.
pub const MAGLEV_SLOTS: u32 = 1 << 21;
/// Most interfaces one agent attaches to; sizes `VLAN_PARENTS` and
/// `ANSWER_IFACES`.
pub const MAX_ATTACHED: u32 = 64;
/// Most interfaces XDP sends frames out of: those one agent attaches to,
/// and the ports of attached bridges ([`bridge`]); sizes `INTERFACES`.
pub const MAX_INTERFACES: u32 = 1024;
/// Most hosts behind attached bridges whose frames XDP sends straight to
/// their bridge port; sizes `BRIDGE_PORTS`. Hosts past it are reached
/// through the kernel.
pub const MAX_BRIDGE_HOSTS: u32 = 8192;
/// Entries of `SOCKETS`: connections (and unconnected UDP peers) that local
/// clients opened to a service, by socket cookie and backend, so that
/// `getpeername` and `recvmsg` show the service's address.
pub const MAX_LOCAL_SOCKETS: u32 = 1 << 13;
/// 64-bit words of `LOCAL_PORTS`, the bitmap of local backends' ports the
/// tc egress program checks before any map lookup: one bit per port.
pub const LOCAL_PORT_WORDS: u32 = 65536 / 64;
/// Default capacity of the flow table (`FLOWS`) and of `REPLIES`; the agent
/// may load the maps larger or smaller.
pub const DEFAULT_FLOW_CAPACITY: u32 = 1 << 18;

/// Implements `aya::Pod` for map keys and values when built for userspace.
macro_rules! impl_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: `$ty` is `#[repr(C)]`, `Copy`, and has no implicit padding.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use impl_pod;
