//! The xlb agent as a library: configuration, loading and attaching the XDP
//! data plane, and reading its counters. The `xlb` binary is a thin CLI on
//! top; tests and the lab use the library directly.

mod accept;
pub mod agent;
pub mod announce;
pub mod checks;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod desired;
pub mod diagnose;
pub mod doctor;
pub mod egress;
pub mod handoff;
pub mod health;
pub mod host;
pub mod import_nginx;
pub mod local;
mod lock;
pub mod metrics;
pub mod netdev;
pub mod protocol;
mod reply_watch;
mod slots;
pub mod xdp;

/// The compiled `lb-ebpf` object, built by `build.rs` and embedded here.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}
