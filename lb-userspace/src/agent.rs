//! `xlb run`: the agent. From the configuration, the operator's runtime
//! changes and the backends' health it decides the desired state
//! ([`crate::desired`]), keeps the data plane in line with it, and answers
//! the control API.
//!
//! One task owns all state (the `Agent`); health probes, the control socket
//! and the metrics endpoint talk to it over channels, so nothing is locked.

use std::{
    collections::{BTreeSet, HashMap, HashSet, hash_map::Entry},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail};
use lb_common::BackendCounters;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    announce::Announcer,
    checks,
    config::{BackendConfig, Config, MAX_WEIGHT, Mode, Scheduler},
    control::{self, Envelope},
    dataplane::{Dataplane, DataplaneState, LoadOptions},
    desired::{Desired, DesiredBackend, DesiredService, WEIGHT_SCALE},
    handoff::{HandedBackend, Handoff},
    health::{self, Admin, BackendState},
    lock::Locks,
    metrics,
    protocol::{
        AnnounceStatus, AnnouncedVip, Answer, AttachmentStatus, BackendStatus, Change, FloodStats,
        Flow, Health, Request, Response, RuntimeChange, ServiceStats, ServiceStatus, ServingState,
        Stats, Status,
    },
    xdp::ModeRequest,
};

/// How often the agent reads passive health signals and re-evaluates.
pub const TICK: Duration = Duration::from_millis(250);
/// How often the agent reads again how frames leave by each interface
/// (XDP or the kernel), which changes when a veth peer's XDP program or a
/// VLAN device comes or goes.
pub const EGRESS_REFRESH: Duration = Duration::from_secs(2);

/// How often the agent recounts live flows from the flow table for the
/// load-aware schedulers and `max_conns` (flows that expire or are evicted
/// end unseen by the data plane): such a flow counts this much longer at
/// most.
pub const LIVE_RECOUNT: Duration = Duration::from_secs(2);

/// `xlb run` options that are not in the configuration file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Interfaces to attach to instead of the file's `interfaces`.
    pub ifaces: Vec<String>,
    /// Control socket instead of the file's `agent.control_socket`.
    pub socket: Option<PathBuf>,
}

/// A health probe's verdict on one backend.
struct CheckResult {
    service: String,
    address: SocketAddr,
    passed: bool,
    error: Option<String>,
}

type BackendKey = (String, SocketAddr);

struct Agent {
    config_path: PathBuf,
    /// The file as last loaded successfully.
    file: Config,
    /// What runs: the file plus the operator's changes to services and
    /// backends. Not the operator's wish for a backend (down, drain): its
    /// `down` is read into its state when it enters and cleared here;
    /// `dump` writes the wish back.
    runtime: Config,
    /// The runtime state of every backend of `runtime`: the operator's wish
    /// and its health.
    states: HashMap<BackendKey, BackendState>,
    dataplane: Dataplane,
    /// The desired state last written to the data plane.
    applied: Option<Desired>,
    checks: HashMap<BackendKey, JoinHandle<()>>,
    check_tx: mpsc::Sender<CheckResult>,
    last_check_error: HashMap<BackendKey, String>,
    /// Counters at the previous tick, for rates.
    rates: HashMap<BackendKey, (BackendCounters, f64, f64)>,
    last_tick: Instant,
    state_path: PathBuf,
    reply_watch: crate::reply_watch::ReplyWatch,
    /// The VIPs' routes for the host's BGP daemon, with `[announce]`.
    announcer: Option<Announcer>,
    /// `xlb node drain`: every VIP withdrawn, flows served on.
    node_drained: bool,
    /// The last error announcing, logged once until it changes.
    announce_error: Option<String>,
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config_path: &Path, options: RunOptions) -> anyhow::Result<()> {
    let mut config = Config::load(config_path)?;
    if !options.ifaces.is_empty() {
        config.interfaces = options.ifaces.clone();
    }
    if let Some(socket) = &options.socket {
        config.agent.control_socket = socket.clone();
    }
    if config.interfaces.is_empty() {
        bail!("no interface to attach to: set `interfaces` in the configuration or pass --iface");
    }
    if let Some(problem) = crate::doctor::kernel::too_old(&crate::host::kernel_release()) {
        bail!("{problem}");
    }
    crate::diagnose::log_startup(&config);
    let agent_cfg = config.agent.clone();
    let _locks = Locks::acquire(&agent_cfg.run_dir, &agent_cfg.name, &config.interfaces)?;

    let handoff_path = agent_cfg
        .run_dir
        .join(format!("{}.handoff.json", agent_cfg.name));
    let handoff = Handoff::take(&handoff_path).unwrap_or_else(|e| {
        tracing::warn!(
            "starting from the configuration file, not the upgraded agent's state: {e:#}"
        );
        None
    });
    // After an upgrade in place: the configuration the previous agent ran,
    // runtime changes included; this start's interfaces and settings.
    let (file, runtime) = match &handoff {
        Some(h) => (
            config.with_process_settings_of(h.file.clone()),
            config.with_process_settings_of(h.runtime.clone()),
        ),
        None => (config.clone(), config.clone()),
    };

    let pin_dir = agent_cfg.pin_dir.join(&agent_cfg.name);
    let state_path = agent_cfg
        .run_dir
        .join(format!("{}.state.json", agent_cfg.name));
    let mut dataplane = Dataplane::load_with(LoadOptions {
        pin_dir: Some(pin_dir.clone()),
        sysctl_record: Some(
            agent_cfg
                .run_dir
                .join(format!("{}.sysctls.json", agent_cfg.name)),
        ),
        ..config.load_options()
    })?;
    let kernel_log = spawn_kernel_log(&mut dataplane)?;
    let adopting = previous_state(&mut dataplane, &pin_dir, &state_path, &runtime)?;

    let (check_tx, mut check_rx) = mpsc::channel(1024);
    let now = Instant::now();
    let mut agent = Agent {
        config_path: config_path.to_owned(),
        file,
        runtime,
        states: HashMap::new(),
        dataplane,
        applied: None,
        checks: HashMap::new(),
        check_tx,
        last_check_error: HashMap::new(),
        rates: HashMap::new(),
        last_tick: now,
        state_path,
        reply_watch: Default::default(),
        announcer: match &config.announce {
            Some(announce) => Some(Announcer::new(announce)?),
            None => None,
        },
        node_drained: handoff.as_ref().is_some_and(|h| h.node_drained),
        announce_error: None,
    };
    // At startup every backend counts as usable for long: no slow start.
    agent.sync_states(
        now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now),
        false,
    );
    if let Some(h) = &handoff {
        agent.carry_on(&h.backends, now);
    }
    agent.reconcile(now)?;
    agent.announce();
    let mode: ModeRequest = agent_cfg.xdp_mode.parse()?;
    for iface in &config.interfaces {
        agent.dataplane.attach(iface, mode)?;
    }
    if let Err(e) = agent.dataplane.attach_sockets() {
        tracing::warn!("clients on this host will not be balanced: {e:#}");
    }
    agent.sync_checks();

    let (request_tx, mut request_rx) = mpsc::channel::<Envelope>(64);
    let control = control::serve(&config.agent.control_socket, request_tx.clone())?;
    let metrics = match agent_cfg.metrics {
        Some(addr) => Some(metrics::serve(addr, request_tx.clone()).await?),
        None => None,
    };
    tracing::info!(
        services = config.services.len(),
        socket = %config.agent.control_socket.display(),
        adopted = adopting,
        "xlb running"
    );

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut upgrade = signal(SignalKind::user_defined2())?;
    let mut ticker = tokio::time::interval(TICK);
    let mut egress_ticker = tokio::time::interval(EGRESS_REFRESH);
    let mut recount_ticker = tokio::time::interval(LIVE_RECOUNT);
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = upgrade.recv() => {
                let e = agent.upgrade_in_place(&handoff_path);
                tracing::error!("upgrade failed, this agent keeps running: {e:#}");
            }
            _ = hangup.recv() => match agent.reload() {
                Ok(()) => tracing::info!("configuration reloaded (SIGHUP)"),
                Err(e) => tracing::error!("reload failed, keeping the running configuration: {e:#}"),
            },
            _ = ticker.tick() => {
                if let Err(e) = agent.tick() {
                    tracing::error!("updating the data plane: {e:#}");
                }
                agent.announce();
            }
            _ = egress_ticker.tick() => {
                if let Err(e) = agent.dataplane.refresh_egress() {
                    tracing::error!("reading the interfaces' way out: {e:#}");
                }
            }
            _ = recount_ticker.tick() => {
                if agent.counts_live_flows()
                    && let Err(e) = agent.dataplane.recount_live_flows()
                {
                    tracing::error!("recounting live flows: {e:#}");
                }
            }
            Some(result) = check_rx.recv() => agent.record_check(result),
            Some((request, reply)) = request_rx.recv() => {
                let response = match agent.handle(request) {
                    Ok(value) => Response::Ok(value),
                    Err(e) => Response::Error(format!("{e:#}")),
                };
                let _ = reply.send(response);
            }
        }
    }

    tracing::info!("stopping: detaching the data plane");
    control.abort();
    kernel_log.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    for (_, task) in agent.checks.drain() {
        task.abort();
    }
    let _ = std::fs::remove_file(&config.agent.control_socket);
    let _ = std::fs::remove_file(&agent.state_path);
    // Withdrawn before the data plane goes: the router stops sending.
    if let Some(announcer) = &mut agent.announcer
        && let Err(e) = announcer.sync(&BTreeSet::new(), "stopping")
    {
        tracing::error!("withdrawing the VIPs: {e:#}");
    }
    agent.dataplane.shut_down()
}

/// The path of this process's binary, also once a package upgrade has
/// replaced the file (the kernel then names it `… (deleted)`).
fn running_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    };
    if !path.is_file() {
        bail!("no binary at {} to execute", path.display());
    }
    Ok(path)
}

/// Forwards the data plane's log records to this process's log.
fn spawn_kernel_log(dataplane: &mut Dataplane) -> anyhow::Result<JoinHandle<()>> {
    let logger = dataplane.kernel_logger(log::logger())?;
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the
    // same for as long as the logger lives inside the `AsyncFd`.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)?
    };
    Ok(tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// Carries on with what an earlier agent left in `pin_dir`, if its maps
/// are pinned there (loading has replaced those that no longer fit): with
/// the ids and table ranges of its state file at `state_path`, or, where
/// that cannot be used, ids re-derived from the pinned maps and `config`.
/// Logs what is kept and what is lost; returns whether anything was adopted.
fn previous_state(
    dataplane: &mut Dataplane,
    pin_dir: &Path,
    state_path: &Path,
    config: &Config,
) -> anyhow::Result<bool> {
    if dataplane.pins().reused.is_empty() {
        return Ok(false);
    }
    let adoption = dataplane.adopt(DataplaneState::read(state_path), &Desired::from(config))?;
    if let Some(problem) = &adoption.state_problem {
        tracing::warn!(state = %state_path.display(), "state file not used: {problem}");
    }
    for note in &adoption.notes {
        tracing::warn!("{note}");
    }
    tracing::info!(
        pins = %pin_dir.display(),
        "re-adopting the running data plane: {}",
        adoption.summary
    );
    Ok(true)
}

impl Agent {
    /// Makes `states` hold exactly the runtime backends. A backend
    /// entering the runtime configuration gets its operator state from its
    /// `down` and counts as usable since `since`; with `file_read` (the file
    /// was read again) every backend gets it, a drain carrying over. Then
    /// `down` is cleared in `runtime`: the operator state says it from here.
    fn sync_states(&mut self, since: Instant, file_read: bool) {
        let mut wanted = HashSet::new();
        for service in &mut self.runtime.services {
            for backend in &mut service.backends {
                let key = (service.name.clone(), backend.address);
                let down = std::mem::take(&mut backend.down);
                match self.states.entry(key.clone()) {
                    Entry::Occupied(mut entry) if file_read => {
                        let state = entry.get_mut();
                        state.admin = Admin::from_file(down, Some(state.admin));
                    }
                    Entry::Occupied(_) => {}
                    Entry::Vacant(entry) => {
                        entry.insert(BackendState::new(Admin::from_file(down, None), since));
                    }
                }
                wanted.insert(key);
            }
        }
        self.states.retain(|key, _| wanted.contains(key));
    }

    /// Starts a probe task for every backend of a service with a health
    /// check, and stops those no longer wanted.
    fn sync_checks(&mut self) {
        let mut wanted = HashSet::new();
        for service in &self.runtime.services {
            let Some(check) = &service.health_check else {
                continue;
            };
            let count = service.backends.len();
            for (i, backend) in service.backends.iter().enumerate() {
                let key = (service.name.clone(), backend.address);
                wanted.insert(key.clone());
                if self.checks.contains_key(&key) {
                    continue;
                }
                let (check, tx) = (check.clone(), self.check_tx.clone());
                let (name, address) = key.clone();
                let first = checks::first_delay(check.interval, i, count);
                self.checks.insert(
                    key,
                    tokio::spawn(async move {
                        tokio::time::sleep(first).await;
                        loop {
                            let result = checks::probe(&check, address).await;
                            let error = result.err().map(|e| format!("{e:#}"));
                            let passed = error.is_none();
                            let msg = CheckResult {
                                service: name.clone(),
                                address,
                                passed,
                                error,
                            };
                            if tx.send(msg).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(check.interval).await;
                        }
                    }),
                );
            }
        }
        self.checks.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
    }

    fn record_check(&mut self, result: CheckResult) {
        let key = (result.service.clone(), result.address);
        let Some(check) = self
            .runtime
            .service(&result.service)
            .ok()
            .and_then(|s| s.health_check.clone())
        else {
            return;
        };
        let Some(state) = self.states.get_mut(&key) else {
            return;
        };
        if state
            .health
            .record_check(result.passed, check.rise, check.fall)
        {
            if state.health.active_ok {
                tracing::info!(service = %result.service, backend = %result.address, "backend passed {} checks: back in service", check.rise);
            } else {
                tracing::warn!(
                    service = %result.service, backend = %result.address,
                    "backend failed {} checks ({}): taken out",
                    check.fall, result.error.as_deref().unwrap_or("?")
                );
            }
        }
        match result.error {
            Some(e) => self.last_check_error.insert(key, e),
            None => self.last_check_error.remove(&key),
        };
    }

    /// Whether a running service picks by live flows or connect time, or
    /// limits a backend's flows: only then is the flow table recounted.
    fn counts_live_flows(&self) -> bool {
        self.runtime.services.iter().any(|s| {
            !matches!(s.scheduler, Scheduler::Maglev | Scheduler::RoundRobin)
                || s.backends.iter().any(|b| b.max_conns != 0)
        })
    }

    /// Reads passive health signals and rates, then reconciles.
    fn tick(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let since = now.duration_since(self.last_tick);
        let elapsed = since.as_secs_f64().max(1e-3);
        self.last_tick = now;
        self.dataplane.expire_half_open(since)?;
        for service in &self.runtime.services {
            for backend in &service.backends {
                let key = (service.name.clone(), backend.address);
                let Ok(counters) = self
                    .dataplane
                    .backend_counters(&service.name, backend.address)
                else {
                    continue; // not in the data plane yet
                };
                let active_ok = self.states.get(&key).is_some_and(|s| s.health.active_ok);
                self.reply_watch.record(
                    &self.runtime,
                    service,
                    backend.address,
                    &counters,
                    active_ok,
                    now,
                );
                // In dsr mode no reply crosses the data plane: a SYN sent
                // again says nothing of the backend, which only active
                // checks judge.
                if service.mode != Mode::Dsr
                    && let Some(state) = self.states.get_mut(&key)
                    && state
                        .health
                        .record_failures((&counters).into(), backend, now)
                {
                    tracing::warn!(
                        service = %service.name, backend = %backend.address,
                        "{} failed connection attempts within {:?}: no new connections for {:?} \
                         (established ones go on)",
                        backend.max_fails, backend.fail_timeout, backend.fail_timeout
                    );
                }
                let (pps, bps) = match self.rates.get(&key) {
                    Some((before, _, _)) => (
                        counters.packets.saturating_sub(before.packets) as f64 / elapsed,
                        counters.bytes.saturating_sub(before.bytes) as f64 / elapsed,
                    ),
                    None => (0.0, 0.0),
                };
                self.rates.insert(key, (counters, pps, bps));
            }
        }
        self.reconcile(now)
    }

    /// Decides what every backend should be now (the desired state) and
    /// writes it to the data plane if it differs from what was written last.
    fn reconcile(&mut self, now: Instant) -> anyhow::Result<()> {
        let desired = self.desired(now);
        if self.applied.as_ref() == Some(&desired) {
            return Ok(());
        }
        self.log_transitions(&desired);
        self.dataplane.apply(&desired)?;
        self.applied = Some(desired);
        self.save_state()
    }

    /// The desired state at `now`: the runtime services, each backend
    /// decided from its configuration and its state.
    fn desired(&mut self, now: Instant) -> Desired {
        let services = self
            .runtime
            .services
            .iter()
            .map(|service| {
                let keys: Vec<BackendKey> = service
                    .backends
                    .iter()
                    .map(|b| (service.name.clone(), b.address))
                    .collect();
                let mut states: Vec<BackendState> = keys
                    .iter()
                    .map(|k| self.states.remove(k).expect("a state for every backend"))
                    .collect();
                let backends = health::evaluate(&service.backends, &mut states, now);
                self.states.extend(keys.into_iter().zip(states));
                DesiredService::new(service, backends)
            })
            .collect();
        Desired { services }
    }

    fn log_transitions(&self, desired: &Desired) {
        let Some(before) = &self.applied else { return };
        for service in &desired.services {
            for backend in &service.backends {
                let Some(old) = before.backend(&service.name, backend.address) else {
                    continue;
                };
                if old.failed != backend.failed || (old.weight == 0) != (backend.weight == 0) {
                    let state = if backend.failed {
                        "out of service"
                    } else if backend.weight == 0 {
                        "taking no new connections"
                    } else {
                        "taking new connections"
                    };
                    tracing::info!(service = %service.name, backend = %backend.address, "backend now {state}");
                }
            }
        }
    }

    fn save_state(&self) -> anyhow::Result<()> {
        self.dataplane.export_state().write(&self.state_path)
    }

    /// Re-reads the configuration file. A bad file changes nothing. The
    /// file's settings replace runtime changes; health and drains are kept.
    /// The VIPs to announce: each with a service that has a backend taking
    /// new flows, none while the node is drained.
    fn wanted_vips(&self) -> BTreeSet<IpAddr> {
        if self.node_drained {
            return BTreeSet::new();
        }
        self.applied
            .iter()
            .flat_map(|desired| &desired.services)
            .filter(|service| {
                service
                    .backends
                    .iter()
                    .any(|b| b.weight > 0 && !b.failed && !b.no_new_flows)
            })
            .map(|service| service.vip)
            .collect()
    }

    /// Brings the announced routes in line with [`Agent::wanted_vips`]
    /// (and with what changed them behind the agent's back); an error is
    /// logged once until it changes, and tried again next tick.
    fn announce(&mut self) {
        let wanted = self.wanted_vips();
        let why = if self.node_drained {
            "the node is drained"
        } else {
            "no service on it has a usable backend"
        };
        let Some(announcer) = &mut self.announcer else {
            return;
        };
        match announcer.sync(&wanted, why) {
            Ok(()) => {
                if self.announce_error.take().is_some() {
                    tracing::info!("announcing works again");
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                if self.announce_error.as_ref() != Some(&e) {
                    tracing::error!("announcing the VIPs: {e}");
                    self.announce_error = Some(e);
                }
            }
        }
    }

    /// Executes the binary now at this one's path with the same arguments
    /// (SIGUSR2): the new agent takes over the pinned data plane, flows
    /// included, and, from `handoff_path`, the running configuration and
    /// each backend's wish and health. Returns only if that fails.
    fn upgrade_in_place(&mut self, handoff_path: &Path) -> anyhow::Error {
        use std::os::unix::process::CommandExt as _;
        let prepare = || -> anyhow::Result<PathBuf> {
            let binary = running_binary()?;
            self.dataplane.export_state().write(&self.state_path)?;
            self.handoff().write(handoff_path)?;
            Ok(binary)
        };
        let binary = match prepare() {
            Ok(binary) => binary,
            Err(e) => return e,
        };
        tracing::info!(binary = %binary.display(), "upgrading in place: executing the binary, the data plane carries on");
        let e = std::process::Command::new(&binary)
            .args(std::env::args_os().skip(1))
            .exec();
        let _ = std::fs::remove_file(handoff_path);
        anyhow!(e).context(format!("executing {}", binary.display()))
    }

    /// What the agent an upgrade in place becomes needs from this one.
    fn handoff(&self) -> Handoff {
        let now = Instant::now();
        let backends = self
            .states
            .iter()
            .map(|((service, address), state)| HandedBackend {
                service: service.clone(),
                address: *address,
                admin: state.admin,
                active_ok: state.health.active_ok,
                passive_out_ms: state.health.passive_out_until.map_or(0, |until| {
                    until.saturating_duration_since(now).as_millis() as u64
                }),
            })
            .collect();
        Handoff {
            version: crate::handoff::VERSION,
            file: self.file.clone(),
            runtime: self.runtime.clone(),
            backends,
            node_drained: self.node_drained,
        }
    }

    /// Takes over each backend's wish and health from the agent upgraded
    /// in place.
    fn carry_on(&mut self, backends: &[HandedBackend], now: Instant) {
        for b in backends {
            if let Some(state) = self.states.get_mut(&(b.service.clone(), b.address)) {
                state.admin = b.admin;
                state.health.active_ok = b.active_ok;
                state.health.passive_out_until = b.passive_out_until(now);
            }
        }
        tracing::info!(
            backends = backends.len(),
            "carrying on from the agent upgraded in place: runtime changes, drains and health kept"
        );
    }

    /// Re-reads the configuration file (SIGHUP); a file that fails to
    /// load or to apply changes nothing.
    fn reload(&mut self) -> anyhow::Result<()> {
        self.all_or_nothing(Self::load_file)
    }

    fn load_file(&mut self) -> anyhow::Result<()> {
        let config = Config::load(&self.config_path)?;
        // Interfaces, agent, flow-table and flood settings are fixed for
        // the process's life.
        if config.interfaces != self.runtime.interfaces
            || config.agent != self.runtime.agent
            || config.flows != self.runtime.flows
            || config.flood != self.runtime.flood
            || config.announce != self.runtime.announce
        {
            tracing::warn!(
                "interfaces, [agent], [flows], [flood] and [announce] changes take effect on \
                 the next start"
            );
        }
        let config = self.runtime.with_process_settings_of(config);
        self.file = config.clone();
        self.runtime = config;
        self.sync_states(Instant::now(), true);
        for task in self.checks.values() {
            task.abort();
        }
        self.checks.clear();
        self.sync_checks();
        self.reconcile(Instant::now())
    }

    fn handle(&mut self, request: Request) -> anyhow::Result<Answer> {
        match request {
            Request::Status => Ok(Answer::Status(self.status())),
            Request::Stats => Ok(Answer::Stats(self.stats()?)),
            Request::Metrics => {
                let text = metrics::render(&self.stats()?, &self.status());
                Ok(Answer::Metrics(text))
            }
            Request::Flows { service, limit } => Ok(Answer::Flows(self.flows(&service, limit)?)),
            Request::ConfigDump => Ok(Answer::Config(Box::new(self.dump()))),
            change => self
                .all_or_nothing(|agent| agent.change(change))
                .map(Answer::Change),
        }
    }

    /// Runs `change`; if it fails, puts the configuration and the backends'
    /// states back as they were and writes the data plane from them again:
    /// a change that fails changes nothing.
    fn all_or_nothing<T>(
        &mut self,
        change: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let before = (self.file.clone(), self.runtime.clone(), self.states.clone());
        let result = change(self);
        if result.is_err() {
            (self.file, self.runtime, self.states) = before;
            for task in self.checks.values() {
                task.abort();
            }
            self.checks.clear();
            self.sync_checks();
            self.applied = None;
            if let Err(e) = self.reconcile(Instant::now()) {
                tracing::error!("writing the data plane back after a failed change: {e:#}");
            }
        }
        result
    }

    /// A request that changes what runs.
    fn change(&mut self, request: Request) -> anyhow::Result<Change> {
        let now = Instant::now();
        let change = match request {
            Request::Status
            | Request::Stats
            | Request::Metrics
            | Request::Flows { .. }
            | Request::ConfigDump => bail!("not a change"),
            Request::Reload => {
                self.load_file()?;
                Change::Reloaded
            }
            Request::NodeDrain | Request::NodeUndrain => {
                if self.announcer.is_none() {
                    bail!("nothing to drain: the configuration has no [announce] section");
                }
                let drained = matches!(request, Request::NodeDrain);
                self.node_drained = drained;
                self.announce();
                if let Some(e) = self.announce_error.clone() {
                    self.node_drained = !drained;
                    bail!("{e}");
                }
                Change::Node { drained }
            }
            Request::ServerAdd { service, backend } => {
                let mut candidate = self.runtime.clone();
                let svc = candidate
                    .services
                    .iter_mut()
                    .find(|s| s.name == service)
                    .ok_or_else(|| anyhow!("no service named {service:?}"))?;
                let address = backend.address;
                svc.backends.push(backend);
                candidate.validate()?;
                self.runtime = candidate;
                self.sync_states(now, false);
                self.sync_checks();
                self.reconcile(now)?;
                Change::Added { service, address }
            }
            Request::ServerRemove { service, address } => {
                let svc = self.runtime_service(&service)?;
                let before = svc.backends.len();
                svc.backends.retain(|b| b.address != address);
                if svc.backends.len() == before {
                    bail!("service {service:?} has no backend {address}");
                }
                self.sync_states(now, false);
                self.sync_checks();
                self.reconcile(now)?;
                Change::Removed { service, address }
            }
            Request::ServerDrain { service, address } => {
                self.set_admin(service, address, Admin::Drain)?
            }
            Request::ServerUndrain { service, address }
            | Request::ServerUp { service, address } => {
                self.set_admin(service, address, Admin::Up)?
            }
            Request::ServerDown { service, address } => {
                self.set_admin(service, address, Admin::Down)?
            }
            Request::ServerSetWeight {
                service,
                address,
                weight,
            } => {
                if weight > MAX_WEIGHT {
                    bail!("weight must be 0-{MAX_WEIGHT}");
                }
                self.backend_config(&service, address)?.weight = weight;
                self.reconcile(now)?;
                Change::Weight {
                    service,
                    address,
                    weight,
                }
            }
        };
        Ok(change)
    }

    fn runtime_service(&mut self, name: &str) -> anyhow::Result<&mut crate::config::ServiceConfig> {
        self.runtime
            .services
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| anyhow!("no service named {name:?}"))
    }

    fn backend_config(
        &mut self,
        service: &str,
        address: SocketAddr,
    ) -> anyhow::Result<&mut BackendConfig> {
        self.runtime_service(service)?
            .backends
            .iter_mut()
            .find(|b| b.address == address)
            .ok_or_else(|| anyhow!("service {service:?} has no backend {address}"))
    }

    fn set_admin(
        &mut self,
        service: String,
        address: SocketAddr,
        admin: Admin,
    ) -> anyhow::Result<Change> {
        self.backend_config(&service, address)?;
        let state = self
            .states
            .get_mut(&(service.clone(), address))
            .expect("a state for every backend");
        state.admin = admin;
        self.reconcile(Instant::now())?;
        Ok(Change::Admin {
            service,
            address,
            admin,
        })
    }

    /// The running configuration with runtime changes: backends taken down
    /// with `down = true`, drains as weight 0.
    fn dump(&self) -> Config {
        let mut config = self.runtime.clone();
        for service in &mut config.services {
            for backend in &mut service.backends {
                let key = (service.name.clone(), backend.address);
                match self.states.get(&key).map(|s| s.admin) {
                    Some(Admin::Down) => backend.down = true,
                    Some(Admin::Drain) => backend.weight = 0,
                    _ => {}
                }
            }
        }
        config
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        let live = self.dataplane.live_flows().unwrap_or_default();
        let services = self
            .runtime
            .services
            .iter()
            .map(|service| {
                let file_service = self.file.service(&service.name).ok();
                let backends = service
                    .backends
                    .iter()
                    .map(|backend| {
                        let key = (service.name.clone(), backend.address);
                        let live_flows = live.get(&key).copied().unwrap_or(0);
                        let file_backend = file_service
                            .and_then(|s| s.backends.iter().find(|b| b.address == backend.address));
                        self.backend_status(&key, backend, file_backend, live_flows, now)
                    })
                    .collect();
                let removed_at_runtime = file_service
                    .map(|f| {
                        f.backends
                            .iter()
                            .filter(|b| !service.backends.iter().any(|r| r.address == b.address))
                            .map(|b| b.address)
                            .collect()
                    })
                    .unwrap_or_default();
                ServiceStatus {
                    name: service.name.clone(),
                    vip: service.vip,
                    port: service.port,
                    protocol: service.protocol,
                    mode: service.mode,
                    scheduler: service.scheduler,
                    backends,
                    removed_at_runtime,
                }
            })
            .collect();
        let attachments = self
            .dataplane
            .attachments()
            .map(|a| AttachmentStatus {
                interface: a.iface.clone(),
                mode: a.mode,
                path: a.egress.path,
                path_reason: a.egress.reason().to_owned(),
                xdp_features: a.egress.features.to_string(),
                vlan_devices: a.egress.vlan_devices.clone(),
                xdp_ports: a.xdp_ports.clone(),
            })
            .collect();
        Status {
            services,
            attachments,
            announce: self.announce_status(),
        }
    }

    fn announce_status(&self) -> Option<AnnounceStatus> {
        let announcer = self.announcer.as_ref()?;
        let vips: BTreeSet<IpAddr> = self.runtime.services.iter().map(|s| s.vip).collect();
        Some(AnnounceStatus {
            table: self.runtime.announce.as_ref().map_or(0, |a| a.table),
            drained: self.node_drained,
            vips: vips
                .into_iter()
                .map(|vip| AnnouncedVip {
                    vip,
                    announced: announcer.announced().contains(&vip),
                })
                .collect(),
            error: self.announce_error.clone(),
        })
    }

    /// One backend of the running configuration in [`Status`]; `file` is
    /// its entry in the file, if it has one.
    fn backend_status(
        &self,
        key: &BackendKey,
        backend: &BackendConfig,
        file: Option<&BackendConfig>,
        live_flows: u64,
        now: Instant,
    ) -> BackendStatus {
        let (service, address) = (&key.0, key.1);
        let state = &self.states[key];
        let desired = self
            .applied
            .as_ref()
            .and_then(|a| a.backend(service, address));
        let (_, pps, bps) = self.rates.get(key).cloned().unwrap_or_default();
        let health = if let Some(until) = state.health.passive_out_until.filter(|u| *u > now) {
            Health::FailedAttempts {
                out_for_seconds: (until - now).as_secs_f64(),
            }
        } else if !state.health.active_ok {
            Health::FailingChecks {
                last_error: self.last_check_error.get(key).cloned(),
            }
        } else {
            Health::Healthy
        };
        let runtime_change = match file {
            None => Some(RuntimeChange::Added),
            Some(f) if f.weight != backend.weight => {
                Some(RuntimeChange::Weight { in_file: f.weight })
            }
            _ if state.admin == Admin::Drain => Some(RuntimeChange::Draining),
            Some(f) if f.down != (state.admin == Admin::Down) => {
                Some(RuntimeChange::Down { in_file: f.down })
            }
            _ => None,
        };
        let load = self
            .dataplane
            .backend_load(service, address)
            .unwrap_or_default();
        let mut serving = serving_state(desired, backend.backup, state.admin);
        if serving == ServingState::Active
            && lb_common::load::at_limit(live_flows, backend.max_conns)
        {
            serving = ServingState::Full;
        }
        BackendStatus {
            address,
            weight: backend.weight,
            max_conns: backend.max_conns,
            connect_ms: (load.connects > 0).then(|| load.connect_ns as f64 / 1e6),
            effective_weight: desired
                .map_or(0.0, |d| f64::from(d.weight) / f64::from(WEIGHT_SCALE)),
            backup: backend.backup,
            admin: state.admin,
            state: serving,
            health,
            live_flows,
            counters: self.counters_of(service, address),
            packets_per_second: pps,
            bytes_per_second: bps,
            warning: self.reply_watch.warning(service, address).cloned(),
            runtime_change,
        }
    }

    /// A backend's counters; zero while it is not in the data plane yet.
    fn counters_of(&self, service: &str, address: SocketAddr) -> BackendCounters {
        self.dataplane
            .backend_counters(service, address)
            .unwrap_or_default()
    }

    fn stats(&self) -> anyhow::Result<Stats> {
        let global = self
            .dataplane
            .global_counters()?
            .into_iter()
            .map(|(c, v)| (c.label().to_owned(), v))
            .collect();
        let mut services = std::collections::BTreeMap::new();
        for service in &self.runtime.services {
            let c = self.dataplane.service_counters(&service.name)?;
            let backends = service
                .backends
                .iter()
                .map(|b| (b.address, self.counters_of(&service.name, b.address)))
                .collect();
            let stats = ServiceStats {
                packets: c.packets,
                bytes: c.bytes,
                backends,
            };
            services.insert(service.name.clone(), stats);
        }
        let counts = self.dataplane.flood_counts()?;
        let flood = Some(FloodStats {
            half_open: counts.half_open,
            half_open_limit: counts.half_open_limit,
            handshakes: counts.handshakes,
            cookies_validated: counts.cookies_validated,
        });
        Ok(Stats {
            global,
            services,
            flood,
        })
    }

    /// Flow-table entries of `service`, at most `limit`.
    fn flows(&self, service: &str, limit: usize) -> anyhow::Result<Vec<Flow>> {
        let flows = self.dataplane.flows(service, limit)?;
        Ok(flows
            .into_iter()
            .map(|f| Flow {
                client: f.client,
                backend: f.backend,
                state: f.state,
                idle_seconds: f.idle_seconds,
            })
            .collect())
    }
}

/// What a backend is doing, from what was applied (`desired`), whether it
/// is a backup and what the operator asked.
fn serving_state(desired: Option<&DesiredBackend>, backup: bool, admin: Admin) -> ServingState {
    match (desired, admin) {
        (_, Admin::Down) => ServingState::Down,
        (Some(d), _) if d.failed || d.no_new_flows => ServingState::Unhealthy,
        (_, Admin::Drain) => ServingState::Draining,
        (Some(d), _) if d.weight > 0 => ServingState::Active,
        (Some(_), _) if backup => ServingState::Standby,
        _ => ServingState::Idle,
    }
}

/// For the CLI: waits until the backend has no live flows or `deadline`
/// passes; returns the flows left.
pub async fn wait_drained(
    socket: &Path,
    service: &str,
    address: SocketAddr,
    deadline: Instant,
) -> anyhow::Result<u64> {
    loop {
        let status = control::ask(socket, &Request::Status).await?;
        let left = live_flows_of(&status, service, address)?;
        if left == 0 || Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Live flows of one backend in a status report.
pub fn live_flows_of(status: &Status, service: &str, address: SocketAddr) -> anyhow::Result<u64> {
    Ok(status.backend(service, address)?.live_flows)
}
