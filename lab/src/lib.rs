//! A network-namespace lab for xlb: a client, a load-balancer host and N
//! backends (`xlb-lab-httpd`, HTTP and UDP on ports 8000+i), with IPv4 and
//! IPv6 everywhere, wired in one of several [`Shape`]s. The default,
//! one-armed, joins them all on one bridge:
//!
//! ```text
//!  P-client eth0 ─ client ┐
//!  P-lb     eth0 ─ lb     ├─ br0 (in P-sw)
//!  P-b<i>   eth0 ─ b<i>   ┘
//! ```
//!
//! The lb forwards between the client subnet (10.10.1.0/24, fd10:1::/64)
//! and the backend subnet (10.10.2.0/24, fd10:2::/64); the client routes the
//! VIP networks through it. See [`shape`] and [`wiring`] for the shapes,
//! [`topology`] for every name and address, [`Lab`] to build one,
//! [`client`] to send traffic and [`netns`] to run code inside a namespace.
//! [`cluster`] builds several load-balancer nodes behind a router doing ECMP
//! over the BGP announcements of each (BIRD).

pub mod client;
pub mod cluster;
pub mod lab;
pub mod netns;
pub mod procs;
pub mod shape;
pub mod status;
pub mod topology;
pub mod vlan;
pub mod wiring;
pub mod xdp;

pub use cluster::{Cluster, ClusterSpec};
pub use lab::{Lab, LabSpec};
pub use shape::Shape;
pub use status::{BackendStatus, LabStatus, NsStatus};
pub use topology::{Backend, Role, Topology};
pub use xdp::XdpMode;
