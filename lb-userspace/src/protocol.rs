//! The control API's types: every request a client sends the agent on the
//! control socket, every answer, and the reports they carry (`status`,
//! `stats`, flows, the running configuration, the changes made). The agent
//! builds them, the CLI prints them, metrics render them and tests read
//! `xlb status --json` into them, so a field renamed on one side fails to
//! parse on the other instead of reading as a default.
//!
//! On the wire a connection carries one request line and one answer line of
//! JSON ([`crate::control`] moves them), each with the protocol [`VERSION`]:
//!
//! ```text
//! {"version":1,"request":"server-drain","service":"web","address":"10.0.2.10:80"}
//! {"version":1,"ok":{"change":{"change":"admin","service":"web","address":"10.0.2.10:80","admin":"drain"}}}
//! {"version":1,"error":"no service named \"nosuch\""}
//! ```
//!
//! The version rule: the agent serves requests of its own version only and
//! the CLI reads answers of its own version only; anything else is refused
//! with an error naming both versions (a client from before versions gets
//! it in the shape it reads, `{"error": …}`). `version` as a top-level
//! number of each line is the one thing every version keeps. Any change to
//! how these types serialize, the configuration's included, bumps
//! [`VERSION`]; the test `the_wire_format_is_pinned_to_the_version` fails
//! until it does.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use anyhow::anyhow;
use lb_common::{BackendCounters, GlobalCounter};
use serde::{Deserialize, Serialize};

use crate::{
    config::{BackendConfig, Config, Mode, Protocol, Scheduler},
    doctor::Finding,
    egress::EgressPath,
    health::Admin,
    xdp::AttachedMode,
};

/// The control protocol's version; see the module's version rule.
pub const VERSION: u32 = 1;

/// What a client asks the agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    /// Services and backends with state, health, live flows and rates:
    /// a [`Status`].
    Status,
    /// Data-plane counters: [`Stats`].
    Stats,
    /// Everything in Prometheus text format.
    Metrics,
    /// Flow-table entries of a service: [`Flow`]s.
    Flows { service: String, limit: usize },
    /// Re-read the configuration file and apply it.
    Reload,
    /// The running configuration, runtime changes included: a [`Config`].
    ConfigDump,
    /// Add a backend to a service.
    ServerAdd {
        service: String,
        backend: BackendConfig,
    },
    /// Remove a backend from a service now.
    ServerRemove {
        service: String,
        address: SocketAddr,
    },
    /// Stop new flows to a backend; existing ones continue.
    ServerDrain {
        service: String,
        address: SocketAddr,
    },
    /// Undo a drain.
    ServerUndrain {
        service: String,
        address: SocketAddr,
    },
    /// Change a backend's weight.
    ServerSetWeight {
        service: String,
        address: SocketAddr,
        weight: u32,
    },
    /// Put a backend back in service.
    ServerUp {
        service: String,
        address: SocketAddr,
    },
    /// Take a backend out of service (its flows move).
    ServerDown {
        service: String,
        address: SocketAddr,
    },
    /// Withdraw every VIP from the router (`[announce]`); the flows that
    /// still arrive are served.
    NodeDrain,
    /// Announce the VIPs again.
    NodeUndrain,
}

/// The agent's answer to a request, or why it refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Ok(Answer),
    Error(String),
}

/// What the agent answers, by request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// To [`Request::Status`].
    Status(Status),
    /// To [`Request::Stats`].
    Stats(Stats),
    /// To [`Request::Metrics`]: Prometheus text.
    Metrics(String),
    /// To [`Request::Flows`].
    Flows(Vec<Flow>),
    /// To [`Request::ConfigDump`]: drained backends at weight 0.
    Config(Box<Config>),
    /// To [`Request::Reload`] and the `server-*` requests.
    Change(Change),
}

impl Answer {
    /// The answer's name on the wire, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Stats(_) => "stats",
            Self::Metrics(_) => "metrics",
            Self::Flows(_) => "flows",
            Self::Config(_) => "config",
            Self::Change(_) => "change",
        }
    }
}

/// A type one kind of [`Answer`] carries.
pub trait FromAnswer: Sized {
    /// The payload, or the answer back if it is of another kind.
    fn from_answer(answer: Answer) -> Result<Self, Answer>;
}

macro_rules! from_answer {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl FromAnswer for $ty {
            fn from_answer(answer: Answer) -> Result<Self, Answer> {
                match answer {
                    Answer::$variant(payload) => Ok(payload),
                    other => Err(other),
                }
            }
        }
    )*};
}

from_answer!(
    Status(Status),
    Stats(Stats),
    Metrics(String),
    Flows(Vec<Flow>),
    Change(Change),
);

impl FromAnswer for Config {
    fn from_answer(answer: Answer) -> Result<Self, Answer> {
        match answer {
            Answer::Config(config) => Ok(*config),
            other => Err(other),
        }
    }
}

/// `xlb status`: every service with its backends, and the interfaces the
/// data plane is attached to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    pub attachments: Vec<AttachmentStatus>,
    /// The VIPs' announcement, with `[announce]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceStatus>,
}

/// What the agent announces to the router ([`Status::announce`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AnnounceStatus {
    /// The routing table its routes are in.
    pub table: u32,
    /// `xlb node drain` in force.
    pub drained: bool,
    /// Every VIP of a service, and whether its route is there.
    pub vips: Vec<AnnouncedVip>,
    /// Why the routes could not be written, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One VIP in [`AnnounceStatus`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AnnouncedVip {
    pub vip: IpAddr,
    pub announced: bool,
}

impl Status {
    /// Backend `address` of service `service`.
    pub fn backend(&self, service: &str, address: SocketAddr) -> anyhow::Result<&BackendStatus> {
        self.services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| anyhow!("no service named {service:?}"))?
            .backends
            .iter()
            .find(|b| b.address == address)
            .ok_or_else(|| anyhow!("service {service:?} has no backend {address}"))
    }
}

/// One service in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    /// How new flows pick their backend; left out when `maglev`.
    #[serde(default, skip_serializing_if = "is_maglev")]
    pub scheduler: Scheduler,
    /// The running backends, runtime changes included.
    pub backends: Vec<BackendStatus>,
    /// Backends of the file removed at runtime.
    pub removed_at_runtime: Vec<SocketAddr>,
}

/// One backend in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub address: SocketAddr,
    /// The weight configured (runtime changes included).
    pub weight: u32,
    /// Most live flows it may have (nginx `max_conns`); left out when 0,
    /// no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_conns: u32,
    /// Its connect time (SYN to SYN-ACK) as the data plane measures it,
    /// smoothed, in milliseconds; left out before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    /// The weight in the Maglev table after health, drain, backup and slow
    /// start.
    pub effective_weight: f64,
    pub backup: bool,
    /// What the operator asked.
    pub admin: Admin,
    pub state: ServingState,
    pub health: Health,
    /// Flow-table entries not past their idle timeout, begun with a SYN (or
    /// UDP), without FIN or RST.
    pub live_flows: u64,
    /// What the data plane counted for it, summed over CPUs.
    pub counters: BackendCounters,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
    /// A runtime warning (`replies-bypass`), if one stands.
    #[serde(deserialize_with = "Option::deserialize")]
    pub warning: Option<Finding>,
    /// How it differs from the file, if it does.
    #[serde(deserialize_with = "Option::deserialize")]
    pub runtime_change: Option<RuntimeChange>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_maglev(scheduler: &Scheduler) -> bool {
    *scheduler == Scheduler::Maglev
}

/// What a backend is doing, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServingState {
    /// Takes new flows.
    Active,
    /// A backup standing by while a primary is usable.
    Standby,
    /// Takes no new flows; existing ones continue.
    Draining,
    /// Taken out by the operator (or `down = true`).
    Down,
    /// Taken out by failing health checks (its flows move) or by failed
    /// attempts (`max_fails`: no new flows, its established ones go on;
    /// `health` says which).
    Unhealthy,
    /// Usable, but at its `max_conns`: takes no new flows until one ends.
    Full,
    /// Takes no new flows for another reason (weight 0, slow start at 0).
    Idle,
}

impl fmt::Display for ServingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Active => "active",
            Self::Full => "full",
            Self::Standby => "standby",
            Self::Draining => "draining",
            Self::Down => "down",
            Self::Unhealthy => "unhealthy",
            Self::Idle => "idle",
        })
    }
}

/// A backend's health as checks see it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    /// `max_fails` failed attempts within `fail_timeout` took it out of
    /// new flows.
    FailedAttempts {
        out_for_seconds: f64,
    },
    /// Its active checks fail; the last one's error.
    FailingChecks {
        #[serde(deserialize_with = "Option::deserialize")]
        last_error: Option<String>,
    },
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Healthy => f.write_str("healthy"),
            Self::FailedAttempts { out_for_seconds } => {
                write!(f, "failed attempts: out for {out_for_seconds:.0}s more")
            }
            Self::FailingChecks { last_error } => write!(
                f,
                "failing checks: {}",
                last_error.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// How a running backend differs from the configuration file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RuntimeChange {
    /// Not in the file.
    Added,
    /// Another weight than the file's.
    Weight { in_file: u32 },
    /// Taken down or put up against the file's `down`.
    Down { in_file: bool },
    /// Draining.
    Draining,
}

impl fmt::Display for RuntimeChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Added => f.write_str("added at runtime"),
            Self::Weight { in_file } => write!(f, "weight {in_file} in the file"),
            Self::Down { in_file } => write!(f, "down = {in_file} in the file"),
            Self::Draining => f.write_str("draining"),
        }
    }
}

/// An interface the data plane is attached to, in [`Status`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachmentStatus {
    pub interface: String,
    pub mode: AttachedMode,
    /// How frames xlb sends out of it leave.
    pub path: EgressPath,
    /// Why they leave that way.
    pub path_reason: String,
    /// The driver's XDP features (`basic,redirect,ndo-xmit`, or `none`).
    pub xdp_features: String,
    /// VLAN devices on it.
    pub vlan_devices: Vec<String>,
    /// A bridge's ports XDP sends frames to the hosts behind (the others'
    /// go through the kernel); absent for other interfaces and from agents
    /// before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xdp_ports: Vec<String>,
}

/// `xlb stats`: the data plane's counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Packets by what the data plane did with them, by
    /// [`GlobalCounter::label`].
    pub global: BTreeMap<String, u64>,
    /// By service name.
    pub services: BTreeMap<String, ServiceStats>,
    /// What the data plane counts of SYN floods. Absent from an agent that
    /// does not report it, and then read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodStats>,
}

/// SYN-flood pressure in [`Stats`] (docs/reliability.md). Cookies sent are
/// the `forward_syn_cookie` counter.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FloodStats {
    /// Handshakes outstanding (SYN seen, no ACK from the client yet), as
    /// the half-open budget reckons them.
    pub half_open: u64,
    /// The budget: past it, SYNs get cookies (or, with cookies off, open
    /// flows all the same).
    pub half_open_limit: u64,
    /// Handshakes opened by clients' SYNs, ever.
    pub handshakes: u64,
    /// Clients that answered a SYN cookie correctly, ever.
    pub cookies_validated: u64,
}

impl Stats {
    /// One global counter; `None` if the agent did not report it.
    pub fn counter(&self, counter: GlobalCounter) -> Option<u64> {
        self.global.get(counter.label()).copied()
    }
}

/// One service's counters in [`Stats`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
    /// By backend address.
    pub backends: BTreeMap<SocketAddr, BackendCounters>,
}

/// One flow-table entry, as `xlb flows` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Flow {
    pub client: SocketAddr,
    /// `None` if the backend has left the service.
    #[serde(deserialize_with = "Option::deserialize")]
    pub backend: Option<SocketAddr>,
    pub state: FlowState,
    pub idle_seconds: f64,
}

/// Where a flow is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowState {
    /// A SYN went to the backend; no SYN-ACK seen yet.
    SynSent,
    Established,
    /// Picked up mid-connection (no SYN seen): not a live flow.
    Midstream,
    /// A FIN or RST was seen.
    Closing,
    /// The backend refused the handshake (RST) and `next_upstream` `error`
    /// kept it from the client: the client's next SYN goes to another
    /// backend.
    Refused,
}

impl FlowState {
    const ALL: [Self; 5] = [
        Self::SynSent,
        Self::Established,
        Self::Midstream,
        Self::Closing,
        Self::Refused,
    ];

    fn word(self) -> &'static str {
        match self {
            Self::SynSent => "syn-sent",
            Self::Established => "established",
            Self::Midstream => "midstream",
            Self::Closing => "closing",
            Self::Refused => "refused",
        }
    }
}

impl fmt::Display for FlowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.word())
    }
}

impl FromStr for FlowState {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|state| state.word() == s)
            .ok_or_else(|| anyhow!("unknown flow state {s:?}"))
    }
}

/// A change the agent made on request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    /// The configuration file was read again and applied.
    Reloaded,
    Added {
        service: String,
        address: SocketAddr,
    },
    Removed {
        service: String,
        address: SocketAddr,
    },
    /// Drained, undrained, taken down or put up.
    Admin {
        service: String,
        address: SocketAddr,
        admin: Admin,
    },
    Weight {
        service: String,
        address: SocketAddr,
        weight: u32,
    },
    /// The node drained (every VIP withdrawn) or undrained.
    Node { drained: bool },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reloaded => f.write_str("reloaded"),
            Self::Added { service, address } => write!(f, "added {address} to {service}"),
            Self::Removed { service, address } => write!(f, "removed {address} from {service}"),
            Self::Admin {
                service,
                address,
                admin,
            } => {
                let word = match admin {
                    Admin::Up => "in service",
                    Admin::Down => "down",
                    Admin::Drain => "draining",
                };
                write!(f, "{address} in {service} is {word}")
            }
            Self::Weight {
                service,
                address,
                weight,
            } => write!(f, "{address} in {service} now has weight {weight}"),
            Self::Node { drained: true } => f.write_str("node drained: every VIP withdrawn"),
            Self::Node { drained: false } => f.write_str("node undrained: VIPs announced"),
        }
    }
}

/// A request or answer line: the version, then the body's fields.
#[derive(Serialize, Deserialize)]
struct Line<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

/// The version of a line, read before anything else in it.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object with the control protocol version")]
struct Header {
    #[serde(default)]
    version: Option<u32>,
}

/// `request` as a request line, newline included.
pub fn encode_request(request: &Request) -> anyhow::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&Line {
        version: VERSION,
        body: request,
    })?;
    line.push(b'\n');
    Ok(line)
}

/// The request in a request line; `Err` holds the answer line refusing it
/// (not JSON, another protocol version, not a request).
pub fn decode_request(line: &[u8]) -> Result<Request, Vec<u8>> {
    let refuse = |message: String| encode_response(&Response::Error(message));
    let header: Header =
        serde_json::from_slice(line).map_err(|e| refuse(format!("bad request: {e}")))?;
    match header.version {
        Some(VERSION) => {}
        Some(theirs) => return Err(refuse(mismatch(Some(theirs), Some(VERSION)))),
        None => {
            // A client from before versions reads a bare response.
            let refusal = Response::Error(mismatch(None, Some(VERSION)));
            return Err(with_newline(serde_json::to_vec(&refusal)));
        }
    }
    serde_json::from_slice::<Line<Request>>(line)
        .map(|line| line.body)
        .map_err(|e| refuse(format!("bad request: {e}")))
}

/// `response` as an answer line, newline included.
pub fn encode_response(response: &Response) -> Vec<u8> {
    with_newline(serde_json::to_vec(&Line {
        version: VERSION,
        body: response,
    }))
}

/// The response in an answer line: an error if it is not one of this
/// protocol version.
pub fn decode_response(line: &[u8]) -> anyhow::Result<Response> {
    let header: Header =
        serde_json::from_slice(line).map_err(|e| anyhow!("reading the agent's answer: {e}"))?;
    if header.version != Some(VERSION) {
        return Err(anyhow!(mismatch(Some(VERSION), header.version)));
    }
    let line: Line<Response> =
        serde_json::from_slice(line).map_err(|e| anyhow!("reading the agent's answer: {e}"))?;
    Ok(line.body)
}

/// `encoded` with a newline; an error answer if it failed (it does not for
/// these types: their map keys are strings).
fn with_newline(encoded: serde_json::Result<Vec<u8>>) -> Vec<u8> {
    let mut line = encoded
        .or_else(|e| {
            serde_json::to_vec(&Line {
                version: VERSION,
                body: Response::Error(format!("encoding the answer: {e}")),
            })
        })
        .unwrap_or_default();
    line.push(b'\n');
    line
}

/// The error for a client and an agent of different protocol versions.
fn mismatch(client: Option<u32>, agent: Option<u32>) -> String {
    let speaks = |version: Option<u32>| match version {
        Some(v) => format!("version {v}"),
        None => "no version (it is older than version 1)".to_owned(),
    };
    format!(
        "control protocol mismatch: the client speaks {}, the agent {}; use the xlb CLI of \
         the agent's release",
        speaks(client),
        speaks(agent)
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        config::ServiceConfig,
        doctor::{Check, Severity},
    };

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A status with one service, one backend of each kind of field and an
    /// attachment.
    pub(crate) fn status() -> Status {
        let counters = BackendCounters {
            packets: 10,
            bytes: 1000,
            new_flows: 2,
            syn_retries: 1,
            handshake_rsts: 0,
            reply_packets: 9,
            reply_bytes: 900,
            host_connects: 0,
        };
        let backend = |address: &str| BackendStatus {
            address: addr(address),
            weight: 2,
            max_conns: 0,
            connect_ms: None,
            effective_weight: 1.5,
            backup: false,
            admin: Admin::Up,
            state: ServingState::Active,
            health: Health::Healthy,
            live_flows: 1,
            counters,
            packets_per_second: 0.5,
            bytes_per_second: 50.0,
            warning: None,
            runtime_change: None,
        };
        let warned = BackendStatus {
            admin: Admin::Drain,
            state: ServingState::Draining,
            health: Health::FailingChecks {
                last_error: Some("status 500".into()),
            },
            warning: Some(Finding {
                check: Check::RepliesBypass,
                severity: Severity::Warning,
                subject: "service web, backend 10.0.2.11:80".into(),
                problem: "replies bypass the load balancer".into(),
                fix: "point the backend's route to clients at 10.0.2.1".into(),
            }),
            runtime_change: Some(RuntimeChange::Weight { in_file: 1 }),
            ..backend("10.0.2.11:80")
        };
        Status {
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "10.0.0.1".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                mode: Mode::Nat,
                scheduler: Scheduler::Maglev,
                backends: vec![backend("10.0.2.10:80"), warned],
                removed_at_runtime: vec![addr("10.0.2.12:80")],
            }],
            announce: None,
            attachments: vec![AttachmentStatus {
                interface: "eth0".into(),
                mode: AttachedMode::Native,
                path: EgressPath::Xdp,
                path_reason: "the driver transmits XDP frames".into(),
                xdp_features: "basic,redirect,ndo-xmit".into(),
                vlan_devices: vec![],
                xdp_ports: vec![],
            }],
        }
    }

    fn config() -> Config {
        let mut config = Config::parse(
            "interfaces = [\"eth0\"]\n[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\n\
             port = 80\nsnat = \"10.0.2.1\"\n[[service.backend]]\naddress = \"10.0.2.10:80\"\n",
        )
        .unwrap();
        let service: &mut ServiceConfig = &mut config.services[0];
        service.backends[0].slow_start = Duration::from_secs(3);
        config
    }

    /// One answer of every kind and every shape of a change.
    fn answers() -> Vec<Answer> {
        let (service, address) = ("web".to_owned(), addr("10.0.2.10:80"));
        let mut stats = Stats::default();
        stats.global.insert("forward_tx".into(), 7);
        stats.services.insert(
            "web".into(),
            ServiceStats {
                packets: 7,
                bytes: 700,
                backends: [(address, BackendCounters::default())].into(),
            },
        );
        vec![
            Answer::Status(status()),
            Answer::Stats(stats),
            Answer::Metrics("# EOF\n".into()),
            Answer::Flows(vec![Flow {
                client: addr("192.0.2.1:40000"),
                backend: None,
                state: FlowState::SynSent,
                idle_seconds: 0.25,
            }]),
            Answer::Config(Box::new(config())),
            Answer::Change(Change::Reloaded),
            Answer::Change(Change::Admin {
                service,
                address,
                admin: Admin::Drain,
            }),
        ]
    }

    fn requests() -> Vec<Request> {
        let (service, address) = ("web".to_owned(), addr("10.0.2.10:80"));
        vec![
            Request::Status,
            Request::Flows {
                service: service.clone(),
                limit: 10,
            },
            Request::ServerAdd {
                service: service.clone(),
                backend: BackendConfig::new(address),
            },
            Request::ServerSetWeight {
                service,
                address,
                weight: 3,
            },
        ]
    }

    /// Serializations of the samples as of [`VERSION`] 1. If this fails,
    /// the wire format changed: bump `VERSION`, then update the text here.
    const WIRE_V1: &str = include_str!("protocol/wire-v1.jsonl");

    #[test]
    fn the_wire_format_is_pinned_to_the_version() {
        let mut lines: Vec<String> = Vec::new();
        for request in requests() {
            lines.push(String::from_utf8(encode_request(&request).unwrap()).unwrap());
        }
        for answer in answers() {
            let line = encode_response(&Response::Ok(answer));
            lines.push(String::from_utf8(line).unwrap());
        }
        let wire = lines.concat();
        assert_eq!(VERSION, 1, "update WIRE_V1 for the new version");
        assert_eq!(
            wire, WIRE_V1,
            "the control API's wire format changed: bump protocol::VERSION and update \
             protocol/wire-v1.jsonl (renamed for the new version)"
        );
    }

    #[test]
    fn every_request_and_answer_comes_back_the_same() {
        for request in
            requests()
                .into_iter()
                .chain([Request::Reload, Request::ConfigDump, Request::Metrics])
        {
            let line = encode_request(&request).unwrap();
            assert_eq!(decode_request(&line), Ok(request));
        }
        for answer in answers() {
            let response = Response::Ok(answer);
            let line = encode_response(&response);
            assert_eq!(decode_response(&line).unwrap(), response);
        }
        let error = Response::Error("no service named \"x\"".into());
        assert_eq!(decode_response(&encode_response(&error)).unwrap(), error);
    }

    /// The agent's refusal of `line`, as text.
    fn refusal(line: &str) -> String {
        String::from_utf8(decode_request(line.as_bytes()).unwrap_err()).unwrap()
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let text = refusal("{\"version\":2,\"request\":\"status\",\"verbose\":true}\n");
        let answer = decode_response(text.as_bytes()).unwrap();
        let Response::Error(message) = answer else {
            panic!("{text}")
        };
        assert!(
            message.contains("the client speaks version 2, the agent version 1"),
            "{message}"
        );
        // A client from before versions reads `{"error": …}` alone.
        let text = refusal("{\"request\":\"status\"}\n");
        let old: serde_json::Value = serde_json::from_str(&text).unwrap();
        let message = old["error"].as_str().expect("a bare error");
        assert!(
            message.contains("no version") && message.contains("the agent version 1"),
            "{message}"
        );
        assert_eq!(old.as_object().unwrap().len(), 1, "{text}");
        // And the CLI refuses an answer of another version.
        let err = decode_response(b"{\"version\":3,\"ok\":{\"stats\":{}}}\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("the client speaks version 1, the agent version 3"),
            "{err}"
        );
        let err = decode_response(b"{\"ok\":\"reloaded\"}\n").unwrap_err();
        assert!(err.to_string().contains("the agent no version"), "{err}");
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        for (line, reason) in [
            ("not json\n", "bad request: expected ident"),
            ("[1, 2]\n", "bad request: "),
            ("{\"version\":1,\"request\":\"stat", "bad request: EOF"),
            (
                "{\"version\":1,\"request\":\"launch\"}\n",
                "unknown variant `launch`",
            ),
            (
                "{\"version\":1,\"request\":\"flows\"}\n",
                "missing field `service`",
            ),
            (
                "{\"version\":\"1\",\"request\":\"status\"}\n",
                "invalid type: string",
            ),
            ("", "bad request: EOF"),
        ] {
            let text = refusal(line);
            match decode_response(text.as_bytes()).unwrap() {
                Response::Error(message) => assert!(message.contains(reason), "{line}: {message}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_renamed_or_missing_field_fails_loudly() {
        let mut status = serde_json::to_value(status()).unwrap();
        let backend = &mut status["services"][0]["backends"][0];
        let warning = backend.as_object_mut().unwrap().remove("warning").unwrap();
        backend["warnings"] = warning;
        let err = serde_json::from_value::<Status>(status).unwrap_err();
        assert!(err.to_string().contains("missing field `warning`"), "{err}");
    }

    #[test]
    fn answers_of_another_kind_are_given_back() {
        let answer = Answer::Change(Change::Reloaded);
        let back = Status::from_answer(answer.clone()).unwrap_err();
        assert_eq!((back.kind(), back), ("change", answer));
    }

    /// The text shown for a closed set of values is its name on the wire.
    fn assert_display_is_wire_name<T: Serialize + fmt::Display>(values: &[T]) {
        for value in values {
            let wire = serde_json::to_value(value).unwrap();
            assert_eq!(Some(value.to_string().as_str()), wire.as_str());
        }
    }

    #[test]
    fn words_shown_are_words_on_the_wire() {
        use ServingState::*;
        assert_display_is_wire_name(&[Active, Standby, Draining, Down, Unhealthy, Idle]);
        assert_display_is_wire_name(&FlowState::ALL);
        assert_display_is_wire_name(&[AttachedMode::Native, AttachedMode::Generic]);
        assert_display_is_wire_name(&[EgressPath::Xdp, EgressPath::Kernel]);
        assert_display_is_wire_name(&[Mode::Nat, Mode::Dnat]);
        assert_display_is_wire_name(&[Protocol::Tcp, Protocol::Udp]);
        for state in FlowState::ALL {
            assert_eq!(state.to_string().parse::<FlowState>().unwrap(), state);
        }
        assert!("open".parse::<FlowState>().is_err());
    }

    #[test]
    fn changes_read_as_before() {
        let (service, address) = ("web".to_owned(), addr("10.0.2.10:80"));
        let admin = |admin| Change::Admin {
            service: service.clone(),
            address,
            admin,
        };
        let texts = [
            (admin(Admin::Drain), "10.0.2.10:80 in web is draining"),
            (admin(Admin::Up), "10.0.2.10:80 in web is in service"),
            (admin(Admin::Down), "10.0.2.10:80 in web is down"),
            (
                Change::Weight {
                    service: service.clone(),
                    address,
                    weight: 3,
                },
                "10.0.2.10:80 in web now has weight 3",
            ),
            (
                Change::Added {
                    service: service.clone(),
                    address,
                },
                "added 10.0.2.10:80 to web",
            ),
            (
                Change::Removed {
                    service: service.clone(),
                    address,
                },
                "removed 10.0.2.10:80 from web",
            ),
            (Change::Reloaded, "reloaded"),
        ];
        for (change, text) in texts {
            assert_eq!(change.to_string(), text);
        }
        let health = Health::FailedAttempts {
            out_for_seconds: 4.4,
        };
        assert_eq!(health.to_string(), "failed attempts: out for 4s more");
        let failing = Health::FailingChecks { last_error: None };
        assert_eq!(failing.to_string(), "failing checks: ?");
        assert_eq!(RuntimeChange::Added.to_string(), "added at runtime");
        let down = RuntimeChange::Down { in_file: true };
        assert_eq!(down.to_string(), "down = true in the file");
    }
}
