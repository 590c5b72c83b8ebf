//! The desired state: what the data plane should serve at one moment. It is
//! the one model between the agent and the data plane.
//!
//! The agent keeps two configurations a user can see: the file as read, and
//! the runtime one (the file plus the operator's changes to services and
//! backends, `xlb config dump`). Beside them it keeps each backend's runtime
//! state, the operator's wish and its health ([`crate::health`]). From
//! these it builds a [`Desired`] at every evaluation and hands it to
//! [`Dataplane::apply`](crate::dataplane::Dataplane::apply) when it differs
//! from the last one applied: file → runtime → desired → maps. The data
//! plane programs what it is given and knows nothing of health, drains,
//! backups or slow start.
//!
//! Tests and benchmarks that drive the data plane without an agent take a
//! configuration as it is: [`Desired::from`] a [`Config`].

use std::net::{IpAddr, SocketAddr};

use lb_common::{IpProto, ServiceKey};

use crate::config::{
    BackendConfig, Config, HashPolicy, Mode, NextUpstream, Protocol, Scheduler, ServiceConfig,
};

/// Desired weights are configured weights scaled by this, so slow start
/// can ramp even a weight of 1 smoothly. (Maglev tables depend on the
/// weights' ratios only: scaling changes none.)
pub const WEIGHT_SCALE: u32 = 100;

/// Every service the data plane should serve, in the order they get their
/// ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: Vec<DesiredService>,
}

/// One service as the data plane serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    /// Its name, which keeps its id and table while it exists.
    pub name: String,
    /// Its key in `SERVICES`: VIP, port and protocol.
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    /// Source address towards the backends in `nat` mode.
    pub snat: Option<IpAddr>,
    pub hash: HashPolicy,
    /// When a new connection goes to another backend instead of failing.
    pub next_upstream: Vec<NextUpstream>,
    /// What picks a new flow's backend.
    pub scheduler: Scheduler,
    /// Slots of its Maglev table (a prime).
    pub table_size: u32,
    /// Backends' packets no flow covers are rewritten to come from the VIP.
    pub stateless_replies: bool,
    pub backends: Vec<DesiredBackend>,
}

/// One backend as the data plane serves it: what the agent decided from
/// its configuration, the operator's wish and its health.
///
/// Room to grow: what else the agent decides for a backend belongs here,
/// beside `weight` and `failed`, so that the data plane only ever learns
/// what it programs: whether the backend is local (preferred while one is
/// usable), its limits (connections, rate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DesiredBackend {
    pub address: SocketAddr,
    /// Its share of new flows: its configured weight times
    /// [`WEIGHT_SCALE`] after drain, backup and slow start; 0 takes no new
    /// flows.
    pub weight: u32,
    /// Out: its flows move to others and it gets no new ones, whatever its
    /// weight (down, or failing its active checks).
    pub failed: bool,
    /// Taken out passively (`max_fails` failed attempts within
    /// `fail_timeout`): no new flows, whatever its weight, while its
    /// established flows keep going to it, as in nginx.
    pub no_new_flows: bool,
    /// The data plane takes it out of new flows itself when it refuses a
    /// handshake (its `max_fails` is 1), without waiting for the agent.
    pub fail_at_once: bool,
    /// Most live flows it may have; 0: no limit.
    pub max_conns: u32,
    /// A usable backup while primaries take the new flows: the data plane
    /// sends a new flow to it when it has taken out every pick itself
    /// (primaries refusing) before the agent's next table.
    pub standby: bool,
}

impl Desired {
    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&DesiredService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The backend at `address` of the service named `service`.
    pub fn backend(&self, service: &str, address: SocketAddr) -> Option<&DesiredBackend> {
        self.service(service)?
            .backends
            .iter()
            .find(|b| b.address == address)
    }

    /// Like [`service`](Self::service), to change it.
    pub fn service_mut(&mut self, name: &str) -> Option<&mut DesiredService> {
        self.services.iter_mut().find(|s| s.name == name)
    }

    /// Like [`backend`](Self::backend), to change it.
    pub fn backend_mut(
        &mut self,
        service: &str,
        address: SocketAddr,
    ) -> Option<&mut DesiredBackend> {
        self.service_mut(service)?
            .backends
            .iter_mut()
            .find(|b| b.address == address)
    }
}

/// Every service and backend of a configuration as configured: weights
/// scaled by [`WEIGHT_SCALE`], backends with `down = true` failed, and no
/// health, backup rule or slow start (the agent's business:
/// [`crate::health::evaluate`]).
impl From<&Config> for Desired {
    fn from(config: &Config) -> Self {
        let services = config
            .services
            .iter()
            .map(|service| {
                let backends = service.backends.iter().map(as_configured).collect();
                DesiredService::new(service, backends)
            })
            .collect();
        Self { services }
    }
}

/// A backend as its configuration has it.
fn as_configured(backend: &BackendConfig) -> DesiredBackend {
    DesiredBackend {
        address: backend.address,
        weight: if backend.down {
            0
        } else {
            backend.weight.saturating_mul(WEIGHT_SCALE)
        },
        failed: backend.down,
        no_new_flows: false,
        fail_at_once: backend.max_fails == 1,
        max_conns: backend.max_conns,
        standby: false,
    }
}

impl DesiredService {
    /// The service `config` describes, with `backends` decided for it.
    pub fn new(config: &ServiceConfig, backends: Vec<DesiredBackend>) -> Self {
        Self {
            name: config.name.clone(),
            vip: config.vip,
            port: config.port,
            protocol: config.protocol,
            mode: config.mode,
            snat: config.snat,
            hash: config.hash,
            next_upstream: config.next_upstream.clone(),
            scheduler: config.scheduler,
            table_size: config.table_size,
            stateless_replies: config.stateless_replies,
            backends,
        }
    }

    /// The data plane's key for this service.
    pub fn key(&self) -> ServiceKey {
        service_key(self.vip, self.port, IpProto::from(self.protocol) as u8)
    }
}

/// The `SERVICES` key of `vip`, `port` and the IP protocol number `proto`.
pub(crate) fn service_key(vip: IpAddr, port: u16, proto: u8) -> ServiceKey {
    match vip {
        IpAddr::V4(v4) => ServiceKey::v4(v4.octets(), port.to_be(), proto),
        IpAddr::V6(v6) => ServiceKey::v6(v6.octets(), port.to_be(), proto),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_as_configured() {
        let config = Config::parse(
            r#"
            [[service]]
            name = "web"
            vip = "10.0.0.1"
            port = 80
            mode = "dnat"
            hash = "source-ip"
            table_size = 101
            [[service.backend]]
            address = "10.0.1.10:80"
            weight = 3
            [[service.backend]]
            address = "10.0.1.11:80"
            down = true
            [[service.backend]]
            address = "10.0.1.12:80"
            backup = true
            "#,
        )
        .unwrap();
        let desired = Desired::from(&config);
        let web = desired.service("web").unwrap();
        assert_eq!(web.key(), config.services[0].key());
        assert_eq!(
            (web.mode, web.hash, web.table_size, web.scheduler),
            (Mode::Dnat, HashPolicy::SourceIp, 101, Scheduler::Maglev)
        );
        let weights: Vec<(u32, bool)> = web.backends.iter().map(|b| (b.weight, b.failed)).collect();
        assert_eq!(weights, [(300, false), (0, true), (100, false)]);
        let b1 = "10.0.1.11:80".parse().unwrap();
        assert_eq!(desired.backend("web", b1).unwrap().address, b1);
        assert!(
            desired
                .backend("web", "10.0.1.99:80".parse().unwrap())
                .is_none()
        );
    }
}
