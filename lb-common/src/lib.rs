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

pub mod checksum;
pub mod counters;
pub mod hash;
#[cfg(any(feature = "std", test))]
pub mod maglev;
pub mod service;

pub use counters::{GlobalCounter, TrafficCounters};
pub use service::{IpProto, Service, ServiceKey};

/// Most services the data plane holds; sizes `SERVICES` and `SERVICE_STATS`.
pub const MAX_SERVICES: u32 = 1024;

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
