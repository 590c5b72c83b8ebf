//! Packet fixtures, in the style of Katran's tester: each case is an input
//! frame, the expected XDP action and the byte-exact expected output frame,
//! run through the loaded program with `BPF_PROG_TEST_RUN` inside a private
//! namespace (see `xlb_tests::fixture`). Expected frames are built from
//! scratch by `etherparse`, so their checksums check ours independently.
//!
//! One module per feature; the services they run against are
//! `tests/fixtures/packet.toml`, loaded by [`harness`].

mod harness;

mod dnat;
mod dsr;
mod failover;
mod flows_lifetime;
mod forwarding;
mod fuzz;
mod hashing;
mod health_signals;
mod ipv6;
mod local;
mod malformed;
mod nat;
mod next_upstream;
mod not_for_a_service;
mod schedulers;
mod snat_ports;
mod syn_cookies;
mod ttl;
mod udp;
mod vlan_and_options;
