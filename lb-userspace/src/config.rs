//! The TOML configuration file.
//!
//! Every field is documented in `docs/configuration.md`. Unknown fields are
//! rejected; errors name the field and the line.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use lb_common::{IpProto, ServiceKey, maglev};
use serde::{Deserialize, Serialize};

/// A whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Interfaces the data plane attaches to.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// How the agent runs.
    #[serde(default)]
    pub agent: AgentConfig,
    /// Size of the flow table and how long idle flows live.
    #[serde(default)]
    pub flows: FlowsConfig,
    /// How SYN floods are met. Written out only when not the default, so
    /// the control API's wire format (`xlb config dump`) stays as it was
    /// for configurations that do not set it.
    #[serde(default, skip_serializing_if = "FloodSettings::is_default")]
    pub flood: FloodSettings,
    /// Announcing the VIPs to a router through BGP (docs/scale-out.md);
    /// off if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceConfig>,
    /// Services, in the order they get their ids.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// Settings of the agent process itself.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Instance name: keeps the pins, lock and socket of several agents on
    /// one host apart.
    pub name: String,
    /// Unix socket of the control API (mode 0600: root only).
    pub control_socket: PathBuf,
    /// Local address to serve Prometheus metrics on (`/metrics`); off if
    /// absent.
    pub metrics: Option<SocketAddr>,
    /// Directory under bpffs for the pinned program link and maps.
    pub pin_dir: PathBuf,
    /// Directory for the lock and state files.
    pub run_dir: PathBuf,
    /// XDP mode: `auto`, `native` or `generic`.
    pub xdp_mode: String,
    /// Frames for hosts behind an attached bridge go straight to their
    /// bridge port by XDP where the port takes XDP frames; `false` leaves
    /// them to the kernel (and the host's and the bridge's netfilter).
    /// Written out only when off, so that the control API's answers stay
    /// those of its version 1.
    #[serde(skip_serializing_if = "is_true")]
    pub xdp_past_bridges: bool,
}

fn is_true(value: &bool) -> bool {
    *value
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            name: "xlb".into(),
            control_socket: "/run/xlb/xlb.sock".into(),
            metrics: None,
            pin_dir: "/sys/fs/bpf/xlb".into(),
            run_dir: "/run/xlb".into(),
            xdp_mode: "auto".into(),
            xdp_past_bridges: true,
        }
    }
}

/// The flow table: its size and idle timeouts. Read at start, not on
/// reload; the size only when the flow table is created afresh, not when a
/// restarted agent keeps a pinned one.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsConfig {
    /// Entries of the flow table (and of the reply table beside it).
    pub table_size: u32,
    /// Idle time of an established TCP flow.
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// Idle time of a TCP flow still in its handshake.
    #[serde(with = "humantime_serde")]
    pub tcp_handshake_timeout: Duration,
    /// Idle time of a TCP flow after FIN or RST.
    #[serde(with = "humantime_serde")]
    pub tcp_closing_timeout: Duration,
    /// Idle time of a UDP flow.
    #[serde(with = "humantime_serde")]
    pub udp_idle_timeout: Duration,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        let t = lb_common::flow::FlowTimeouts::DEFAULT;
        Self {
            table_size: lb_common::DEFAULT_FLOW_CAPACITY,
            tcp_idle_timeout: Duration::from_nanos(t.tcp_idle_ns),
            tcp_handshake_timeout: Duration::from_nanos(t.syn_ns),
            tcp_closing_timeout: Duration::from_nanos(t.closing_ns),
            udp_idle_timeout: Duration::from_nanos(t.udp_idle_ns),
        }
    }
}

impl FlowsConfig {
    /// Smallest and largest flow table accepted.
    pub const TABLE_SIZES: std::ops::RangeInclusive<u32> = 1024..=(1 << 24);

    /// The timeouts as the data plane reads them.
    pub fn timeouts(&self) -> lb_common::flow::FlowTimeouts {
        let ns = |d: Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
        lb_common::flow::FlowTimeouts {
            syn_ns: ns(self.tcp_handshake_timeout),
            tcp_idle_ns: ns(self.tcp_idle_timeout),
            closing_ns: ns(self.tcp_closing_timeout),
            udp_idle_ns: ns(self.udp_idle_timeout),
        }
    }
}

/// How SYN floods are met (`lb_common::flood`, docs/reliability.md). Read
/// at start, not on reload.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FloodSettings {
    /// When the data plane answers a SYN with a cookie instead of opening
    /// a flow: `auto` (past the half-open budget), `always` or `off`.
    pub syn_cookies: lb_common::flood::SynCookies,
    /// Handshakes that may be outstanding before cookies take over; an
    /// eighth of `flows.table_size` if unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_limit: Option<u64>,
    /// While SYNs get cookies, cookies one source address gets a second
    /// (a second's worth at once); 0 for no limit.
    #[serde(default = "default_source_syn_rate")]
    pub source_syn_rate: u32,
}

impl Default for FloodSettings {
    fn default() -> Self {
        Self {
            syn_cookies: Default::default(),
            half_open_limit: None,
            source_syn_rate: default_source_syn_rate(),
        }
    }
}

fn default_source_syn_rate() -> u32 {
    lb_common::flood::DEFAULT_SOURCE_SYN_RATE
}

/// How the agent announces its VIPs: a blackhole host route per VIP in a
/// routing table of its own, which a BGP daemon on the host (BIRD, FRR)
/// exports to the router while it is there. The agent keeps a VIP's route
/// while some service on it has a usable backend and the node is not
/// drained (`xlb node drain`), and removes it on stop.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnnounceConfig {
    /// Routing table the routes go in: one no `ip rule` selects, so they
    /// change no forwarding.
    pub table: u32,
    /// Route protocol number marking the agent's routes (`ip route show
    /// proto 250`); the agent removes routes of it it did not want.
    #[serde(default = "default_route_protocol")]
    pub protocol: u8,
}

/// xlb's route protocol number (free in `/etc/iproute2/rt_protos`).
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 250;

fn default_route_protocol() -> u8 {
    DEFAULT_ROUTE_PROTOCOL
}

impl AnnounceConfig {
    /// Routing tables the kernel keeps for itself.
    const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];

    fn validate(&self) -> anyhow::Result<()> {
        if Self::RESERVED_TABLES.contains(&self.table) {
            bail!(
                "announce.table {} is the kernel's (unspec, default, main, local): pick a table \
                 of the agent's own, e.g. 100",
                self.table
            );
        }
        // 0-4: unspec, redirect, kernel, boot, static: routes of others.
        if self.protocol <= 4 {
            bail!(
                "announce.protocol {} is the kernel's or the operator's: pick one of the \
                 agent's own, e.g. {DEFAULT_ROUTE_PROTOCOL}",
                self.protocol
            );
        }
        Ok(())
    }
}

impl FloodSettings {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// A budget as large as the flow table would let a flood's half-open
    /// flows evict live ones before any SYN got a cookie.
    fn validate(&self, table_size: u32) -> anyhow::Result<()> {
        if self.syn_cookies != lb_common::flood::SynCookies::Auto {
            return Ok(());
        }
        if let Some(limit) = self.half_open_limit
            && limit >= u64::from(table_size)
        {
            bail!(
                "flood.half_open_limit {limit} must be below flows.table_size {table_size}: \
                 half-open handshakes hold flow-table entries, and a flood would evict live \
                 connections before SYN cookies took over (the default is an eighth, {})",
                lb_common::flood::default_half_open_limit(table_size)
            );
        }
        Ok(())
    }

    /// The settings as the data plane reads them, for a flow table of
    /// `table_size` entries.
    pub fn data_plane(&self, table_size: u32) -> lb_common::flood::FloodConfig {
        lb_common::flood::FloodConfig {
            half_open_limit: self
                .half_open_limit
                .unwrap_or(lb_common::flood::default_half_open_limit(table_size)),
            source_interval_ns: lb_common::flood::source_interval_ns(self.source_syn_rate),
            source_burst_ns: 1_000_000_000,
            syn_cookies: self.syn_cookies as u8,
            _pad: [0; 7],
        }
    }
}

/// One load-balanced service: a virtual IP, port and protocol.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name, used by the CLI, logs and metrics.
    pub name: String,
    /// Virtual IP address clients connect to.
    pub vip: IpAddr,
    /// Port clients connect to.
    pub port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// How packets reach the backends: `nat` (default) or `dnat`.
    #[serde(default)]
    pub mode: Mode,
    /// How a new flow's backend is picked (nginx's balancing method):
    /// `maglev` (default), `round_robin`, `least_conn`, `random_two`,
    /// `least_time`. Every method honours weights, backup, drain, slow
    /// start, health and `max_conns`.
    #[serde(default, skip_serializing_if = "Scheduler::is_default")]
    pub scheduler: Scheduler,
    /// What `maglev` hashes: `five-tuple` (default) or `source-ip` (nginx
    /// `ip_hash`).
    #[serde(default)]
    pub hash: HashPolicy,
    /// When a new connection goes to another backend instead of failing
    /// (nginx `proxy_next_upstream`): `error` (the backend refused the
    /// handshake), `timeout` (it left the SYN unanswered). Both by default;
    /// `[]` turns it off. Written out only when not the default, so the
    /// control API's wire format (`xlb config dump`) stays as it was for
    /// configurations that do not set it.
    #[serde(
        default = "default_next_upstream",
        skip_serializing_if = "is_default_next_upstream"
    )]
    pub next_upstream: Vec<NextUpstream>,
    /// Source address towards the backends in `nat` mode (required there).
    pub snat: Option<IpAddr>,
    /// Slots in the service's Maglev table: a prime, at least 100 per
    /// backend for an even spread.
    #[serde(default = "default_table_size")]
    pub table_size: u32,
    /// Active health check; none means backends count as healthy unless
    /// passive checks say otherwise.
    pub health_check: Option<HealthCheck>,
    /// `dnat` on several nodes whose backends send every reply to one of
    /// them: a backend's packet from its service port that no flow of this
    /// node covers is rewritten to come from the VIP all the same
    /// (docs/scale-out.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateless_replies: bool,
    /// The backends (nginx `server` lines).
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

/// An active health check, run against every backend of a service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `tcp` (a connect) or `http` (a GET expecting a status).
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// Path of the HTTP GET.
    #[serde(default = "default_path")]
    pub path: String,
    /// Status code an HTTP check expects.
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// Time between checks of one backend.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long a check may take before it counts as failed.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passes that bring a failed backend back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take a backend out.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

/// Kind of active health check.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Tcp,
    Http,
}

fn default_path() -> String {
    "/".into()
}
fn default_status() -> u16 {
    200
}
fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

fn default_table_size() -> u32 {
    maglev::DEFAULT_TABLE_SIZE
}

/// One backend server of a service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Address and port, e.g. `10.0.0.10:8000` or `[fd00::10]:8000`.
    pub address: SocketAddr,
    /// Relative share of new flows (nginx `weight`); 0 takes none.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Gets new flows only while no primary backend is usable.
    #[serde(default)]
    pub backup: bool,
    /// Never used (nginx `down`). Read into the backend's operator state
    /// ([`crate::health::Admin`]) when it enters the running configuration
    /// (at start, reload or `xlb server add`); the agent keeps it there.
    #[serde(default)]
    pub down: bool,
    /// Failed connection attempts within `fail_timeout` that take the
    /// backend out for `fail_timeout`; 0 turns passive checks off.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// The window for `max_fails`, and how long the backend then stays out.
    #[serde(default = "default_fail_timeout", with = "humantime_serde")]
    pub fail_timeout: Duration,
    /// Time over which a recovered or added backend's weight ramps up to
    /// `weight`; 0 (default) means at once.
    #[serde(default, with = "humantime_serde")]
    pub slow_start: Duration,
    /// Most live flows the backend may have (nginx `max_conns`): at the
    /// limit it takes no new flows. 0 (default): no limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_conns: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_weight() -> u32 {
    1
}
fn default_max_fails() -> u32 {
    1
}
fn default_fail_timeout() -> Duration {
    Duration::from_secs(10)
}

impl BackendConfig {
    /// A primary backend of weight 1 with nginx's defaults.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            weight: default_weight(),
            backup: false,
            down: false,
            max_fails: default_max_fails(),
            fail_timeout: default_fail_timeout(),
            slow_start: Duration::ZERO,
            max_conns: 0,
        }
    }
}

/// Most weight one backend may have.
pub const MAX_WEIGHT: u32 = 1_000;

/// How packets reach a service's backends.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Full NAT: destination becomes the backend, source the SNAT address.
    #[default]
    Nat,
    /// Destination NAT: the client's address is kept; the load balancer
    /// must be the backends' route back to clients.
    Dnat,
    /// Direct server return at layer 2: the frame goes to the backend
    /// unchanged but for its MAC addresses; the backend holds the VIP (on
    /// `lo`) and answers the client directly. Backends on a link of the
    /// load balancer, listening on the service's port.
    Dsr,
}

/// How a service picks the backend of a new flow (docs/configuration.md
/// compares them). nginx's spellings are accepted too.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// Weighted Maglev consistent hashing over `hash`: a flow's backend
    /// follows from its hash alone, the same on every node.
    #[default]
    #[serde(alias = "hash", alias = "consistent")]
    Maglev,
    /// Smooth weighted round robin, nginx's default: over every cycle of
    /// the weights' sum, each backend gets exactly its weight in new flows.
    #[serde(alias = "round-robin", alias = "rr")]
    RoundRobin,
    /// Fewest live flows per unit of weight, of two backends drawn at
    /// random (nginx `least_conn`).
    #[serde(alias = "least-conn")]
    LeastConn,
    /// Of two backends drawn at random by weight, the one with fewer live
    /// flows per unit of weight (nginx `random two least_conn`).
    #[serde(
        alias = "random-two",
        alias = "random two",
        alias = "random two least_conn"
    )]
    RandomTwo,
    /// Lowest smoothed connect time (SYN to SYN-ACK, measured by the data
    /// plane) times live flows, per unit of weight, of two backends drawn at
    /// random (nginx `least_time connect`; the "fair" of tutorials).
    #[serde(alias = "least-time", alias = "least_time connect", alias = "fair")]
    LeastTime,
}

impl Scheduler {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Maglev => "maglev",
            Self::RoundRobin => "round_robin",
            Self::LeastConn => "least_conn",
            Self::RandomTwo => "random_two",
            Self::LeastTime => "least_time",
        })
    }
}

/// What the Maglev lookup hashes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HashPolicy {
    /// Source and destination address and port, and protocol.
    #[default]
    FiveTuple,
    /// Only the client's address: a client always reaches one backend.
    SourceIp,
}

/// A failed connection attempt after which the connection goes to another
/// backend (nginx `proxy_next_upstream`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NextUpstream {
    /// The backend refused the handshake (a RST to the SYN): the RST is
    /// kept from the client, whose SYN, sent again, goes elsewhere.
    Error,
    /// The backend left the SYN unanswered until the client sent it again:
    /// that SYN goes elsewhere.
    Timeout,
}

fn default_next_upstream() -> Vec<NextUpstream> {
    vec![NextUpstream::Error, NextUpstream::Timeout]
}

fn is_default_next_upstream(on: &[NextUpstream]) -> bool {
    on == default_next_upstream().as_slice()
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Nat => "nat",
            Self::Dnat => "dnat",
            Self::Dsr => "dsr",
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl From<Protocol> for IpProto {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => IpProto::Tcp,
            Protocol::Udp => IpProto::Udp,
        }
    }
}

impl ServiceConfig {
    /// The data plane's key for this service.
    pub fn key(&self) -> ServiceKey {
        crate::desired::service_key(self.vip, self.port, IpProto::from(self.protocol) as u8)
    }
}

impl Config {
    /// `other` with this configuration's interfaces, `[agent]`, `[flows]`,
    /// `[flood]` and `[announce]`: the settings fixed for an agent
    /// process's life.
    pub fn with_process_settings_of(&self, other: Config) -> Config {
        Config {
            interfaces: self.interfaces.clone(),
            agent: self.agent.clone(),
            flows: self.flows.clone(),
            flood: self.flood.clone(),
            announce: self.announce.clone(),
            ..other
        }
    }

    /// How the data plane is loaded for this configuration: the flow
    /// table's size and timeouts, and the half-open budget scaled to that
    /// table. Not pinned; the agent adds its pin directory.
    pub fn load_options(&self) -> crate::dataplane::LoadOptions {
        crate::dataplane::LoadOptions {
            flow_capacity: self.flows.table_size,
            timeouts: self.flows.timeouts(),
            flood: self.flood.data_plane(self.flows.table_size),
            past_bridges: self.agent.xdp_past_bridges,
            ..Default::default()
        }
    }

    /// The configuration as TOML text, as `xlb config dump` writes it.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> anyhow::Result<&ServiceConfig> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no service named {name:?}"))
    }

    /// Parses and validates a configuration from TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Checks every rule the types alone do not express.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.agent.name.is_empty() || self.agent.name.contains('/') {
            bail!("agent.name must be a non-empty name without '/'");
        }
        self.agent
            .xdp_mode
            .parse::<crate::xdp::ModeRequest>()
            .context("agent.xdp_mode")?;
        if let Some(announce) = &self.announce {
            announce.validate()?;
        }
        if !FlowsConfig::TABLE_SIZES.contains(&self.flows.table_size) {
            bail!(
                "flows.table_size must be {}-{}",
                FlowsConfig::TABLE_SIZES.start(),
                FlowsConfig::TABLE_SIZES.end()
            );
        }
        self.flood.validate(self.flows.table_size)?;
        if self.services.len() > lb_common::MAX_SERVICES as usize {
            bail!(
                "{} services configured; at most {} are supported",
                self.services.len(),
                lb_common::MAX_SERVICES
            );
        }
        // Each service keeps two tables (the one packets read and the one
        // the next change is written to) in slots every service shares.
        let slots: u64 = self
            .services
            .iter()
            .map(|s| 2 * u64::from(s.table_size))
            .sum();
        if slots > u64::from(lb_common::MAGLEV_SLOTS) {
            bail!(
                "the services' Maglev tables need {slots} slots (two of table_size each) and the \
                 data plane has {}: lower some services' table_size (e.g. 10007 or 1009)",
                lb_common::MAGLEV_SLOTS
            );
        }
        let mut stateless = HashSet::new();
        for service in self.services.iter().filter(|s| s.stateless_replies) {
            for b in &service.backends {
                if !stateless.insert((b.address, service.protocol == Protocol::Udp)) {
                    bail!(
                        "service {:?}: backend {} is in another service with \
                         stateless_replies too: its packets would not say which VIP they \
                         answer for",
                        service.name,
                        b.address
                    );
                }
            }
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for service in &self.services {
            if service.name.is_empty() {
                bail!("service.name must not be empty");
            }
            if !names.insert(service.name.as_str()) {
                bail!("service.name {:?} is used twice", service.name);
            }
            if service.port == 0 {
                bail!("service {:?}: port must be 1-65535", service.name);
            }
            service.validate()?;
            if !keys.insert(service.key()) {
                bail!(
                    "service {:?}: {}:{} {:?} is already another service's address",
                    service.name,
                    service.vip,
                    service.port,
                    service.protocol
                );
            }
        }
        Ok(())
    }
}

impl ServiceConfig {
    /// What `dsr` needs: the frame keeps its destination, so each backend
    /// listens on the service's port and is another host; the data plane
    /// sees no reply, so the active check (whose probes also keep each
    /// backend's link-layer address known) is the health signal.
    fn validate_dsr(&self) -> anyhow::Result<()> {
        let name = &self.name;
        for b in &self.backends {
            if b.address.port() != self.port {
                bail!(
                    "service {name:?}: backend {} in mode \"dsr\" must listen on the \
                     service's port {} (the frame keeps its destination)",
                    b.address,
                    self.port
                );
            }
            if crate::local::is_local(b.address.ip()) {
                bail!(
                    "service {name:?}: backend {} is on this host; mode \"dsr\" sends frames \
                     to other hosts (use \"nat\" for backends here)",
                    b.address
                );
            }
            if b.address.is_ipv4() != self.vip.is_ipv4() {
                bail!(
                    "service {name:?}: backend {} and the vip {} in mode \"dsr\" must be of \
                     one address family",
                    b.address,
                    self.vip
                );
            }
        }
        if self.health_check.is_none() {
            bail!(
                "service {name:?}: mode \"dsr\" needs a [service.health_check]: no reply \
                 crosses the load balancer, so only active checks see a backend fail"
            );
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        let name = &self.name;
        let family = |ip: IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        // Backends on this host are reached without a source address
        // (their replies leave through the egress program), so a service
        // whose backends are all local needs no `snat`.
        let all_local = !self.backends.is_empty()
            && self
                .backends
                .iter()
                .all(|b| crate::local::is_local(b.address.ip()));
        match (self.mode, self.snat) {
            (Mode::Nat, None) if !all_local => bail!(
                "service {name:?}: mode \"nat\" needs a `snat` address (backends on this host \
                 need none, the others do)"
            ),
            (Mode::Dsr, Some(_)) => {
                bail!("service {name:?}: mode \"dsr\" keeps the client's address: remove `snat`")
            }
            (_, Some(snat)) if snat.is_ipv4() != self.vip.is_ipv4() => bail!(
                "service {name:?}: snat {snat} is {} but the vip is {}",
                family(snat),
                family(self.vip)
            ),
            _ => {}
        }
        if self.mode == Mode::Dsr {
            self.validate_dsr()?;
        }
        if self.stateless_replies && self.mode != Mode::Dnat {
            bail!(
                "service {name:?}: stateless_replies is for mode \"dnat\" (in nat mode replies \
                 come back to the node's own SNAT address; in dsr mode none crosses a node)"
            );
        }
        if !maglev::is_prime(self.table_size) || self.table_size > lb_common::MAGLEV_SLOTS / 2 {
            bail!(
                "service {name:?}: table_size {} must be a prime of at most {} (e.g. 65537, 10007, 1009)",
                self.table_size,
                lb_common::MAGLEV_SLOTS / 2
            );
        }
        if self.backends.len() > self.table_size as usize {
            bail!(
                "service {name:?}: {} backends do not fit a table of {} slots",
                self.backends.len(),
                self.table_size
            );
        }
        if self.hash == HashPolicy::SourceIp && self.scheduler != Scheduler::Maglev {
            bail!(
                "service {name:?}: hash = \"source-ip\" (nginx ip_hash) is a scheduler of its \
                 own; it works with scheduler = \"maglev\" only, not {:?}",
                self.scheduler.to_string()
            );
        }
        if let Some(check) = &self.health_check {
            if check.rise == 0 || check.fall == 0 {
                bail!("service {name:?}: health_check rise and fall must be at least 1");
            }
            if check.interval.is_zero() || check.timeout.is_zero() {
                bail!("service {name:?}: health_check interval and timeout must be above 0");
            }
            if !check.path.starts_with('/') {
                bail!("service {name:?}: health_check path must start with '/'");
            }
            if !(100..=599).contains(&check.expect_status) {
                bail!("service {name:?}: health_check expect_status must be 100-599");
            }
        }
        let mut seen = HashSet::new();
        for backend in &self.backends {
            let address = backend.address;
            if address.is_ipv4() != self.vip.is_ipv4() {
                bail!(
                    "service {name:?}: backend {address} is {} but the vip is {}",
                    family(address.ip()),
                    family(self.vip)
                );
            }
            if address.port() == 0 {
                bail!("service {name:?}: backend {address} needs a port");
            }
            if backend.weight > MAX_WEIGHT {
                bail!("service {name:?}: backend {address}: weight must be 0-{MAX_WEIGHT}");
            }
            if !seen.insert(address) {
                bail!("service {name:?}: backend {address} is listed twice");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid service, to which tests append lines.
    const WEB: &str =
        "[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\nmode = \"dnat\"\n";

    #[test]
    fn parses_a_service() {
        let config = Config::parse(
            r#"
            interfaces = ["eth0"]
            [[service]]
            name = "web"
            vip = "10.0.0.1"
            port = 80
            snat = "10.0.1.100"
            [[service.backend]]
            address = "10.0.1.10:8000"
            [[service.backend]]
            address = "10.0.1.11:8001"
            weight = 3
            "#,
        )
        .unwrap();
        assert_eq!(config.interfaces, ["eth0"]);
        let web = &config.services[0];
        assert_eq!(web.protocol, Protocol::Tcp);
        assert_eq!((web.mode, web.hash), (Mode::Nat, HashPolicy::FiveTuple));
        assert_eq!(web.table_size, 65_537);
        assert_eq!(web.key().port_be, 80u16.to_be());
        assert_eq!(web.backends[0].weight, 1);
        assert_eq!(web.backends[1].weight, 3);
    }

    #[test]
    fn next_upstream_defaults_to_error_and_timeout_and_is_dumped_only_when_set() {
        let default = Config::parse(WEB).unwrap();
        let on = &default.services[0].next_upstream;
        assert_eq!(on, &[NextUpstream::Error, NextUpstream::Timeout]);
        assert!(!default.to_toml().unwrap().contains("next_upstream"));
        for (line, want) in [
            ("next_upstream = []", vec![]),
            ("next_upstream = [\"error\"]", vec![NextUpstream::Error]),
        ] {
            let config = Config::parse(&format!("{WEB}{line}\n")).unwrap();
            assert_eq!(config.services[0].next_upstream, want);
            assert_eq!(Config::parse(&config.to_toml().unwrap()).unwrap(), config);
        }
        let err = Config::parse(&format!("{WEB}next_upstream = [\"http_500\"]\n")).unwrap_err();
        assert!(err.to_string().contains("http_500"), "{err}");
    }

    #[test]
    fn the_half_open_budget_follows_the_flow_table_and_stays_below_it() {
        let small = Config::parse(&format!("[flows]\ntable_size = 16384\n{WEB}")).unwrap();
        let load = small.load_options();
        assert_eq!(load.flow_capacity, 16_384);
        assert_eq!(load.flood.half_open_limit, 2_048);
        assert_eq!(load.timeouts, small.flows.timeouts());

        let budget = |line: &str| {
            Config::parse(&format!(
                "[flows]\ntable_size = 16384\n[flood]\n{line}\n{WEB}"
            ))
        };
        assert_eq!(
            budget("half_open_limit = 16383")
                .unwrap()
                .load_options()
                .flood
                .half_open_limit,
            16_383
        );
        let err = budget("half_open_limit = 16384").unwrap_err().to_string();
        assert!(err.contains("below flows.table_size 16384"), "{err}");
        // Without `auto` the budget decides nothing.
        budget("half_open_limit = 65536\nsyn_cookies = \"always\"").unwrap();
    }

    #[test]
    fn services_whose_tables_exceed_the_shared_slots_are_refused() {
        let services = |n: usize, table_size: u32| -> String {
            (0..n)
                .map(|i| {
                    format!(
                        "[[service]]\nname = \"s{i}\"\nvip = \"10.0.0.1\"\nport = {}\nmode = \"dnat\"\n\
                         table_size = {table_size}\n[[service.backend]]\naddress = \"10.1.0.1:80\"\n",
                        8000 + i
                    )
                })
                .collect()
        };
        // 15 x 2 x 65537 = 1 966 110 of 2 097 152 slots fit; a 16th does not.
        Config::parse(&services(15, 65_537)).unwrap();
        let err = Config::parse(&services(16, 65_537))
            .unwrap_err()
            .to_string();
        assert!(err.contains("2097184 slots"), "{err}");
        Config::parse(&services(16, 10_007)).unwrap();
    }

    #[test]
    fn flow_settings_parse_and_are_checked() {
        let config = Config::parse(&format!(
            "[flows]\ntable_size = 1048576\nudp_idle_timeout = \"5s\"\n{WEB}"
        ))
        .unwrap();
        assert_eq!(config.flows.table_size, 1 << 20);
        assert_eq!(config.flows.timeouts().udp_idle_ns, 5_000_000_000);
        assert_eq!(config.flows.timeouts().tcp_idle_ns, 900_000_000_000);
        let err = Config::parse(&format!("[flows]\ntable_size = 10\n{WEB}")).unwrap_err();
        assert!(err.to_string().contains("flows.table_size"), "{err}");
    }

    #[test]
    fn announce_takes_a_table_and_protocol_of_the_agents_own() {
        let config = Config::parse(&format!("[announce]\ntable = 100\n{WEB}")).unwrap();
        let announce = config.announce.as_ref().unwrap();
        assert_eq!((announce.table, announce.protocol), (100, 250));
        assert!(config.to_toml().unwrap().contains("[announce]"));
        assert!(
            !Config::parse(WEB)
                .unwrap()
                .to_toml()
                .unwrap()
                .contains("announce")
        );
        for (section, says) in [
            ("table = 254", "announce.table 254 is the kernel's"),
            ("table = 0", "announce.table 0 is the kernel's"),
            (
                "table = 100\nprotocol = 4",
                "announce.protocol 4 is the kernel's",
            ),
        ] {
            let e = Config::parse(&format!("[announce]\n{section}\n{WEB}")).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{section}: {e:#}");
        }
    }

    #[test]
    fn the_lab_example_is_valid() {
        let config = Config::parse(include_str!("../../examples/lab.toml")).unwrap();
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.services[0].backends.len(), 5);
    }

    #[test]
    fn the_local_example_is_valid() {
        let config = Config::parse(include_str!("../../examples/local.toml")).unwrap();
        assert_eq!(config.services.len(), 3);
        assert_eq!(config.services[0].snat, None);
        assert!(config.services[0].backends[4].backup);
    }

    #[test]
    fn service_rules_are_enforced() {
        for (extra, needle) in [
            ("mode = \"nat\"\n", "needs a `snat`"),
            ("table_size = 65536\n", "prime"),
            ("hash = \"round-robin\"\n", "round-robin"),
            (
                "[[service.backend]]\naddress = \"[fd00::1]:80\"\n",
                "is IPv6",
            ),
            (
                "[[service.backend]]\naddress = \"10.0.0.2:0\"\n",
                "needs a port",
            ),
            (
                "[[service.backend]]\naddress = \"10.0.0.2:80\"\nweight = 1001\n",
                "weight",
            ),
            (
                "[[service.backend]]\naddress = \"10.0.0.2:80\"\n[[service.backend]]\naddress = \"10.0.0.2:80\"\n",
                "twice",
            ),
        ] {
            // `mode` appears twice in the first case; drop the default one.
            let text = if extra.starts_with("mode") {
                format!("{}{extra}", WEB.replace("mode = \"dnat\"\n", ""))
            } else {
                format!("{WEB}{extra}")
            };
            let err = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn local_backends_need_no_snat() {
        let service = "[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\n";
        let local = "[[service.backend]]\naddress = \"127.0.0.1:8000\"\n\
                     [[service.backend]]\naddress = \"127.0.0.1:8001\"\nweight = 3\n";
        let config = Config::parse(&format!("{service}{local}")).unwrap();
        assert_eq!(config.services[0].mode, Mode::Nat);
        assert_eq!(config.services[0].snat, None);
        let mixed = format!("{service}{local}[[service.backend]]\naddress = \"192.0.2.1:80\"\n");
        let err = format!("{:#}", Config::parse(&mixed).unwrap_err());
        assert!(err.contains("needs a `snat`"), "{err}");
    }

    #[test]
    fn unknown_fields_name_the_field_and_line() {
        let err = Config::parse(&format!("{WEB}weight = 3\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("weight"), "{err}");
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, needle) in [
            (
                &"[[service]]\nname = \"a\"\nvip = \"10.0.0.300\"\nport = 80\n".to_owned(),
                "line 3",
            ),
            (
                &"[[service]]\nname = \"a\"\nvip = \"10.0.0.1\"\nport = 70000\n".to_owned(),
                "line 4",
            ),
            (&format!("{WEB}protocol = \"sctp\"\n"), "sctp"),
            (&WEB.replace("port = 80", "port = 0"), "port"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn duplicate_names_and_addresses_are_rejected() {
        let two = |a: &str, b: &str| {
            format!(
                "[[service]]\nname = \"{a}\"\nvip = \"10.0.0.1\"\nport = 80\nmode = \"dnat\"\n\
                 [[service]]\nname = \"{b}\"\nvip = \"10.0.0.1\"\nport = 80\nmode = \"dnat\"\n"
            )
        };
        assert!(
            Config::parse(&two("a", "a"))
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(
            Config::parse(&two("a", "b"))
                .unwrap_err()
                .to_string()
                .contains("already")
        );
    }
}
