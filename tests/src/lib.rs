//! Helpers shared by xlb's packet-level and namespace tests.

pub mod agent;
pub mod fixture;
pub mod flood;
pub mod frames;
pub mod keepalive;
pub mod load;
pub mod xdp;

/// Fails the calling test, with a clear message, unless it runs as root:
/// loading BPF programs and creating namespaces needs root, and these tests
/// must never pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads BPF programs / creates network namespaces and must run as root \
         (run `cargo xtask test` as root)"
    );
}
