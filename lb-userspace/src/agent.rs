//! `xlb run`: the agent. It keeps the data plane in line with the
//! configuration, the operator's runtime changes and the backends' health,
//! and answers the control API.
//!
//! One task owns all state (the `Agent`); health probes, the control socket
//! and the metrics endpoint talk to it over channels, so nothing is locked.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use lb_common::BackendCounters;
use serde_json::json;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    checks,
    config::{BackendConfig, Config, MAX_WEIGHT},
    control::{self, Envelope, Request, Response},
    dataplane::{Dataplane, DataplaneState, LoadOptions},
    health::{self, Admin, BackendState, WEIGHT_SCALE},
    lock::Locks,
    metrics,
    xdp::ModeRequest,
};

/// How often the agent reads passive health signals and re-evaluates.
pub const TICK: Duration = Duration::from_millis(250);
/// How often the agent reads again how frames leave by each interface
/// (XDP or the kernel), which changes when a veth peer's XDP program or a
/// VLAN device comes or goes.
pub const EGRESS_REFRESH: Duration = Duration::from_secs(2);

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
    /// What runs: the file plus runtime changes.
    runtime: Config,
    health: HashMap<BackendKey, BackendState>,
    dataplane: Dataplane,
    /// The effective configuration last written to the data plane.
    applied: Option<Config>,
    checks: HashMap<BackendKey, JoinHandle<()>>,
    check_tx: mpsc::Sender<CheckResult>,
    last_check_error: HashMap<BackendKey, String>,
    /// Counters at the previous tick, for rates.
    rates: HashMap<BackendKey, (BackendCounters, f64, f64)>,
    last_tick: Instant,
    state_path: PathBuf,
    reply_watch: crate::reply_watch::ReplyWatch,
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
    crate::diagnose::log_startup(&config);
    let agent_cfg = config.agent.clone();
    let _locks = Locks::acquire(&agent_cfg.run_dir, &agent_cfg.name, &config.interfaces)?;

    let pin_dir = agent_cfg.pin_dir.join(&agent_cfg.name);
    let state_path = agent_cfg
        .run_dir
        .join(format!("{}.state.json", agent_cfg.name));
    let adopted = previous_state(&pin_dir, &state_path);
    let mut dataplane = Dataplane::load_with(LoadOptions {
        pin_dir: Some(pin_dir.clone()),
        flow_capacity: config.flows.table_size,
        timeouts: config.flows.timeouts(),
    })?;
    let adopting = adopted.is_some();
    let kernel_log = spawn_kernel_log(&mut dataplane)?;
    if let Some(state) = adopted {
        dataplane.import_state(state);
        tracing::info!(pins = %pin_dir.display(), "re-adopting the running data plane");
    }

    let (check_tx, mut check_rx) = mpsc::channel(1024);
    let now = Instant::now();
    let mut agent = Agent {
        config_path: config_path.to_owned(),
        file: config.clone(),
        runtime: config.clone(),
        health: HashMap::new(),
        dataplane,
        applied: None,
        checks: HashMap::new(),
        check_tx,
        last_check_error: HashMap::new(),
        rates: HashMap::new(),
        last_tick: now,
        state_path,
        reply_watch: Default::default(),
    };
    // At startup every backend counts as usable for long: no slow start.
    agent.sync_health(now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now));
    agent.reconcile(now)?;
    let mode: ModeRequest = agent_cfg.xdp_mode.parse()?;
    for iface in &config.interfaces {
        agent.dataplane.attach(iface, mode)?;
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
    let mut ticker = tokio::time::interval(TICK);
    let mut egress_ticker = tokio::time::interval(EGRESS_REFRESH);
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => match agent.reload() {
                Ok(()) => tracing::info!("configuration reloaded (SIGHUP)"),
                Err(e) => tracing::error!("reload failed, keeping the running configuration: {e:#}"),
            },
            _ = ticker.tick() => {
                if let Err(e) = agent.tick() {
                    tracing::error!("updating the data plane: {e:#}");
                }
            }
            _ = egress_ticker.tick() => {
                if let Err(e) = agent.dataplane.refresh_egress() {
                    tracing::error!("reading the interfaces' way out: {e:#}");
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
    agent.dataplane.shut_down()
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

/// The state an earlier agent left, if its pinned maps are still there.
/// Pins without a state file cannot be trusted (ids unknown): they are
/// removed and the data plane starts afresh.
fn previous_state(pin_dir: &Path, state_path: &Path) -> Option<DataplaneState> {
    let pinned = pin_dir.join("SERVICES").exists();
    let state = std::fs::read(state_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<DataplaneState>(&bytes).ok());
    match (pinned, state) {
        (true, Some(state)) => Some(state),
        (true, None) => {
            tracing::warn!(pins = %pin_dir.display(), "pinned maps without a readable state file; starting afresh");
            if let Ok(entries) = std::fs::read_dir(pin_dir) {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            None
        }
        (false, _) => None,
    }
}

impl Agent {
    /// Makes the health map hold exactly the runtime backends; new ones are
    /// usable since `since`.
    fn sync_health(&mut self, since: Instant) {
        let mut wanted = HashSet::new();
        for service in &self.runtime.services {
            for backend in &service.backends {
                let key = (service.name.clone(), backend.address);
                wanted.insert(key.clone());
                match self.health.get_mut(&key) {
                    Some(state) => {
                        state.config = backend.clone();
                        if backend.down {
                            state.admin = Admin::Down;
                        } else if state.admin == Admin::Down {
                            state.admin = Admin::Up;
                        }
                    }
                    None => {
                        self.health
                            .insert(key, BackendState::new(backend.clone(), since));
                    }
                }
            }
        }
        self.health.retain(|key, _| wanted.contains(key));
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
        let Some(state) = self.health.get_mut(&key) else {
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

    /// Reads passive health signals and rates, then reconciles.
    fn tick(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_tick).as_secs_f64().max(1e-3);
        self.last_tick = now;
        for service in &self.runtime.services {
            for backend in &service.backends {
                let key = (service.name.clone(), backend.address);
                let Ok(counters) = self
                    .dataplane
                    .backend_counters(&service.name, backend.address)
                else {
                    continue; // not in the data plane yet
                };
                let active_ok = self.health.get(&key).is_some_and(|s| s.health.active_ok);
                self.reply_watch.record(
                    &self.runtime,
                    service,
                    backend.address,
                    &counters,
                    active_ok,
                    now,
                );
                if let Some(state) = self.health.get_mut(&key)
                    && state.health.record_failures(
                        counters.syn_retries + counters.handshake_rsts,
                        backend,
                        now,
                    )
                {
                    tracing::warn!(
                        service = %service.name, backend = %backend.address,
                        "{} failed connection attempts within {:?}: no new connections for {:?}",
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

    /// Computes what every backend should be now and writes it to the data
    /// plane if it changed.
    fn reconcile(&mut self, now: Instant) -> anyhow::Result<()> {
        let mut effective = self.runtime.clone();
        for service in &mut effective.services {
            let keys: Vec<BackendKey> = service
                .backends
                .iter()
                .map(|b| (service.name.clone(), b.address))
                .collect();
            let mut states: Vec<BackendState> =
                keys.iter().map(|k| self.health[k].clone()).collect();
            let decisions = health::evaluate(&mut states, now);
            for ((backend, state), (key, decision)) in service
                .backends
                .iter_mut()
                .zip(states)
                .zip(keys.into_iter().zip(decisions))
            {
                backend.weight = decision.weight;
                backend.down = decision.failed;
                self.health.insert(key, state);
            }
        }
        if self.applied.as_ref() == Some(&effective) {
            return Ok(());
        }
        self.log_transitions(&effective);
        self.dataplane.apply(&effective)?;
        self.applied = Some(effective);
        self.save_state()
    }

    fn log_transitions(&self, effective: &Config) {
        let Some(before) = &self.applied else { return };
        for service in &effective.services {
            for backend in &service.backends {
                let old = before
                    .service(&service.name)
                    .ok()
                    .and_then(|s| s.backends.iter().find(|b| b.address == backend.address));
                let Some(old) = old else { continue };
                if old.down != backend.down || (old.weight == 0) != (backend.weight == 0) {
                    let state = if backend.down {
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
        let tmp = self.state_path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&self.dataplane.export_state())?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state_path)?;
        Ok(())
    }

    /// Re-reads the configuration file. A bad file changes nothing. The
    /// file's settings replace runtime changes; health and drains are kept.
    fn reload(&mut self) -> anyhow::Result<()> {
        let mut config = Config::load(&self.config_path)?;
        // Interfaces, agent and flow-table settings are fixed for the
        // process's life.
        if config.interfaces != self.runtime.interfaces
            || config.agent != self.runtime.agent
            || config.flows != self.runtime.flows
        {
            tracing::warn!("interfaces, [agent] and [flows] changes take effect on the next start");
        }
        config.interfaces = self.runtime.interfaces.clone();
        config.agent = self.runtime.agent.clone();
        config.flows = self.runtime.flows.clone();
        self.file = config.clone();
        self.runtime = config;
        self.sync_health(Instant::now());
        for task in self.checks.values() {
            task.abort();
        }
        self.checks.clear();
        self.sync_checks();
        self.reconcile(Instant::now())
    }

    fn handle(&mut self, request: Request) -> anyhow::Result<serde_json::Value> {
        let now = Instant::now();
        match request {
            Request::Status => self.status(),
            Request::Stats => self.stats(),
            Request::Metrics => Ok(json!(metrics::render(self.stats()?, self.status()?))),
            Request::Flows { service, limit } => Ok(json!(self.dataplane.flows(&service, limit)?)),
            Request::Reload => {
                self.reload()?;
                Ok(json!("reloaded"))
            }
            Request::ConfigDump => Ok(json!(self.dump()?.to_toml()?)),
            Request::ServerAdd { service, backend } => {
                let mut candidate = self.runtime.clone();
                let svc = candidate
                    .services
                    .iter_mut()
                    .find(|s| s.name == service)
                    .ok_or_else(|| anyhow!("no service named {service:?}"))?;
                svc.backends.push(backend.clone());
                candidate.validate()?;
                self.runtime = candidate;
                self.sync_health(now);
                self.sync_checks();
                self.reconcile(now)?;
                Ok(json!(format!("added {} to {service}", backend.address)))
            }
            Request::ServerRemove { service, address } => {
                let svc = self.runtime_service(&service)?;
                let before = svc.backends.len();
                svc.backends.retain(|b| b.address != address);
                if svc.backends.len() == before {
                    bail!("service {service:?} has no backend {address}");
                }
                self.sync_health(now);
                self.sync_checks();
                self.reconcile(now)?;
                Ok(json!(format!("removed {address} from {service}")))
            }
            Request::ServerDrain { service, address } => {
                self.set_admin(&service, address, Admin::Drain)
            }
            Request::ServerUndrain { service, address }
            | Request::ServerUp { service, address } => {
                self.backend_config(&service, address)?.down = false;
                self.set_admin(&service, address, Admin::Up)
            }
            Request::ServerDown { service, address } => {
                self.backend_config(&service, address)?.down = true;
                self.set_admin(&service, address, Admin::Down)
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
                self.sync_health(now);
                self.reconcile(now)?;
                Ok(json!(format!(
                    "{address} in {service} now has weight {weight}"
                )))
            }
        }
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
        service: &str,
        address: SocketAddr,
        admin: Admin,
    ) -> anyhow::Result<serde_json::Value> {
        self.backend_config(service, address)?;
        let now = Instant::now();
        self.sync_health(now);
        let state = self
            .health
            .get_mut(&(service.to_owned(), address))
            .expect("synced");
        state.admin = admin;
        self.reconcile(now)?;
        let word = match admin {
            Admin::Up => "in service",
            Admin::Down => "down",
            Admin::Drain => "draining",
        };
        Ok(json!(format!("{address} in {service} is {word}")))
    }

    /// The running configuration with runtime changes, drains as weight 0.
    fn dump(&self) -> anyhow::Result<Config> {
        let mut config = self.runtime.clone();
        for service in &mut config.services {
            for backend in &mut service.backends {
                if self
                    .health
                    .get(&(service.name.clone(), backend.address))
                    .is_some_and(|s| s.admin == Admin::Drain)
                {
                    backend.weight = 0;
                }
            }
        }
        Ok(config)
    }

    fn status(&self) -> anyhow::Result<serde_json::Value> {
        let now = Instant::now();
        let applied = self.applied.as_ref();
        let live = self.dataplane.live_flows().unwrap_or_default();
        let mut services = Vec::new();
        for service in &self.runtime.services {
            let file_service = self.file.service(&service.name).ok();
            let mut backends = Vec::new();
            for backend in &service.backends {
                let key = (service.name.clone(), backend.address);
                let state = &self.health[&key];
                let effective = applied
                    .and_then(|a| a.service(&service.name).ok())
                    .and_then(|s| s.backends.iter().find(|b| b.address == backend.address));
                let counters = self
                    .dataplane
                    .backend_counters(&service.name, backend.address)
                    .unwrap_or_default();
                let (_, pps, bps) = self.rates.get(&key).cloned().unwrap_or_default();
                let health_text =
                    if let Some(until) = state.health.passive_out_until.filter(|u| *u > now) {
                        format!(
                            "failed attempts: out for {:.0}s more",
                            (until - now).as_secs_f64()
                        )
                    } else if !state.health.active_ok {
                        format!(
                            "failing checks: {}",
                            self.last_check_error.get(&key).map_or("?", String::as_str)
                        )
                    } else {
                        "healthy".to_owned()
                    };
                let file_backend = file_service
                    .and_then(|s| s.backends.iter().find(|b| b.address == backend.address));
                let runtime_change = match file_backend {
                    None => Some("added at runtime".to_owned()),
                    Some(f) if f.weight != backend.weight => {
                        Some(format!("weight {} in the file", f.weight))
                    }
                    Some(f) if f.down != backend.down => {
                        Some(format!("down = {} in the file", f.down))
                    }
                    _ if state.admin == Admin::Drain => Some("draining".to_owned()),
                    _ => None,
                };
                backends.push(json!({
                    "address": backend.address,
                    "weight": backend.weight,
                    "effective_weight": effective.map_or(0.0, |e| f64::from(e.weight) / f64::from(WEIGHT_SCALE)),
                    "backup": backend.backup,
                    "admin": state.admin,
                    "health": health_text,
                    "state": state_word(effective, state.admin),
                    "live_flows": live.get(&key).copied().unwrap_or(0),
                    "new_flows": counters.new_flows,
                    "packets": counters.packets,
                    "bytes": counters.bytes,
                    "packets_per_second": pps,
                    "bytes_per_second": bps,
                    "syn_retries": counters.syn_retries,
                    "handshake_rsts": counters.handshake_rsts,
                    "warning": self.reply_watch.warning(&service.name, backend.address),
                    "runtime_change": runtime_change,
                }));
            }
            let removed: Vec<String> = file_service
                .map(|f| {
                    f.backends
                        .iter()
                        .filter(|b| !service.backends.iter().any(|r| r.address == b.address))
                        .map(|b| b.address.to_string())
                        .collect()
                })
                .unwrap_or_default();
            services.push(json!({
                "name": service.name,
                "vip": service.vip,
                "port": service.port,
                "protocol": service.protocol,
                "mode": service.mode,
                "backends": backends,
                "removed_at_runtime": removed,
            }));
        }
        let attachments: Vec<_> = self
            .dataplane
            .attachments()
            .map(|a| {
                json!({
                    "interface": a.iface,
                    "mode": a.mode.to_string(),
                    "path": a.egress.path,
                    "path_reason": a.egress.reason(),
                    "xdp_features": a.egress.features.to_string(),
                    "vlan_devices": a.egress.vlan_devices,
                })
            })
            .collect();
        Ok(json!({ "services": services, "attachments": attachments }))
    }

    fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let global: serde_json::Map<String, serde_json::Value> = self
            .dataplane
            .global_counters()?
            .into_iter()
            .map(|(c, v)| (c.label().to_owned(), json!(v)))
            .collect();
        let mut services = serde_json::Map::new();
        for service in &self.runtime.services {
            let c = self.dataplane.service_counters(&service.name)?;
            services.insert(
                service.name.clone(),
                json!({"packets": c.packets, "bytes": c.bytes}),
            );
        }
        Ok(json!({ "global": global, "services": services }))
    }
}

/// One word for what a backend is doing.
fn state_word(effective: Option<&BackendConfig>, admin: Admin) -> &'static str {
    match (effective, admin) {
        (_, Admin::Down) => "down",
        (Some(e), _) if e.down => "unhealthy",
        (_, Admin::Drain) => "draining",
        (Some(e), _) if e.weight > 0 => "active",
        (Some(e), _) if e.backup => "standby",
        _ => "idle",
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
        let status = control::call(socket, &Request::Status).await?;
        let left = live_flows_of(&status, service, address)?;
        if left == 0 || Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Live flows of one backend in a status answer.
pub fn live_flows_of(
    status: &serde_json::Value,
    service: &str,
    address: SocketAddr,
) -> anyhow::Result<u64> {
    let services = status["services"]
        .as_array()
        .context("status without services")?;
    let svc = services
        .iter()
        .find(|s| s["name"] == service)
        .ok_or_else(|| anyhow!("no service named {service:?}"))?;
    let backend = svc["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["address"] == address.to_string()))
        .ok_or_else(|| anyhow!("service {service:?} has no backend {address}"))?;
    backend["live_flows"].as_u64().context("live_flows")
}
