//! End to end in a lab: the same four backends behind nothing, xlb (`nat`
//! and `dnat`), nftables DNAT, nginx `stream` and HAProxy `mode tcp`, loaded
//! by wrk from the client namespace, with keep-alive connections and with
//! one connection per request; then each through a random-source SYN flood
//! with 32 keep-alive connections open ([`flood_one`]).
//!
//! Everything runs in the bench's own lab (`xlbbench-*` namespaces), torn
//! down when the bench ends, passing or failing.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_common::GlobalCounter;
use serde::Serialize;
use xlb::{config::Config, dataplane::Dataplane, xdp::ModeRequest};
use xlb_lab::{Lab, LabSpec, Shape, client, netns, topology};
use xlb_tests::{
    flood::{Source, SynFlood},
    keepalive::{KeepAlive, WINDOW},
};

use crate::{
    machine::{CpuTimes, busy_fraction, ticks_per_second},
    peers,
};

/// Prefix of the bench's lab namespaces.
pub const PREFIX: &str = "xlbbench";
/// Backends behind every setup.
const BACKENDS: usize = 4;
const VIP_PORT: u16 = 80;

/// How to load the setups.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Seconds per measured wrk run (each after a 1 s warm-up run).
    pub duration_s: u32,
    /// wrk connections.
    pub connections: u32,
    /// wrk threads, and the peers' workers.
    pub threads: u32,
    /// Rounds over all setups; each setup and load reports its median round.
    pub rounds: usize,
    /// Setups to run (all when empty).
    #[serde(skip)]
    pub only: Vec<String>,
    /// Where the setups' configuration files are written.
    #[serde(skip)]
    pub configs_dir: PathBuf,
    /// How the lab wires the load balancer.
    #[serde(serialize_with = "display")]
    pub shape: Shape,
    /// Whether to run the SYN-flood scenario ([`flood_one`]) after the
    /// rounds, once per setup.
    pub flood: bool,
}

fn display<S: serde::Serializer>(value: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// Everything the end-to-end part measured.
#[derive(Clone, Debug, Serialize)]
pub struct E2eResults {
    pub options: Options,
    pub setups: Vec<SetupResult>,
}

impl E2eResults {
    pub fn setup(&self, name: &str) -> Option<&SetupResult> {
        self.setups.iter().find(|s| s.name == name)
    }
}

/// One setup: what it is and its runs.
#[derive(Clone, Debug, Serialize)]
pub struct SetupResult {
    pub name: String,
    pub description: String,
    /// What wrk loads.
    pub url: String,
    /// Backends that answered 40 one-shot requests before the runs.
    pub reached: BTreeMap<String, usize>,
    pub runs: Vec<RunResult>,
    /// xlb only: what its program cost in the lab under each load (the
    /// kernel's BPF run-time statistics, in separate 3 s runs of round 1).
    pub xlb_in_situ: Vec<InSitu>,
    /// Through a random-source SYN flood, if it ran.
    pub flood: Option<FloodResult>,
    /// Why the setup could not be measured, if it could not.
    pub error: Option<String>,
}

impl SetupResult {
    /// The run of `load` with the median requests/s over the rounds (the
    /// lower middle one for an even count).
    pub fn run(&self, load: Load) -> Option<&RunResult> {
        let mut runs: Vec<&RunResult> = self.runs.iter().filter(|r| r.load == load).collect();
        runs.sort_by(|a, b| a.requests_per_s.total_cmp(&b.requests_per_s));
        runs.get(runs.len().saturating_sub(1) / 2).copied()
    }

    /// Every run of `load`.
    pub fn runs_of(&self, load: Load) -> impl Iterator<Item = &RunResult> {
        self.runs.iter().filter(move |r| r.load == load)
    }

    /// Whether every run of `load` got all its answers.
    pub fn all_ok(&self, load: Load) -> bool {
        self.runs_of(load).all(RunResult::ok)
    }

    /// The run of `load` with the median requests/s over the rounds that
    /// got all their answers (the lower middle one for an even count).
    pub fn clean_run(&self, load: Load) -> Option<&RunResult> {
        let mut runs: Vec<&RunResult> = self.runs_of(load).filter(|r| r.ok()).collect();
        runs.sort_by(|a, b| a.requests_per_s.total_cmp(&b.requests_per_s));
        runs.get(runs.len().saturating_sub(1) / 2).copied()
    }

    /// Rounds of `load` that did not get all their answers.
    pub fn rounds_with_problems(&self, load: Load) -> usize {
        self.runs_of(load).filter(|r| !r.ok()).count()
    }
}

/// Keep-alive connections, or one connection per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    KeepAlive,
    NewConnection,
}

impl Load {
    pub fn label(self) -> &'static str {
        match self {
            Load::KeepAlive => "keep-alive",
            Load::NewConnection => "new connection per request",
        }
    }
}

/// One wrk run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub load: Load,
    /// Which round of the setups this run was in (from 0).
    pub round: usize,
    /// Busy fraction of the machine in the 0.5 s before the run, with the
    /// lab idle: other work on the machine.
    pub busy_before: f64,
    /// The wrk command, as run in the client namespace.
    pub command: String,
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: WrkErrors,
    /// CPU time of the whole machine during the run (clock ticks).
    pub cpu: CpuTimes,
    /// Busy CPU time of the whole machine per request (all CPUs, µs).
    pub cpu_us_per_request: f64,
    /// xlb's counters over the run (xlb setups only; non-zero ones).
    pub xlb_counters: BTreeMap<String, u64>,
    /// TCP segments the client and the backends retransmitted during the
    /// run (`RetransSegs`): a latency tail with none is not packet loss.
    pub tcp_retransmits: u64,
    /// What makes this run untrustworthy; empty when all answers came.
    pub problems: Vec<String>,
}

impl RunResult {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// wrk's error counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WrkErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub non_2xx_3xx: u64,
}

impl WrkErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout + self.non_2xx_3xx
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    None,
    Xlb(XlbSetup),
    Nftables,
    Nginx,
    Haproxy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct XlbSetup {
    /// `nat` or `dnat`.
    mode: &'static str,
    /// Native XDP (or generic, for comparison).
    attach: ModeRequest,
    /// Only backend b0, the one `none` talks to: isolates what forwarding
    /// through xlb costs from what spreading over 4 backends costs.
    only_b0: bool,
}

const fn xlb(mode: &'static str, attach: ModeRequest, only_b0: bool) -> Setup {
    Setup::Xlb(XlbSetup {
        mode,
        attach,
        only_b0,
    })
}

/// Every setup; the last ones only run when asked for by name.
const SETUPS: [Setup; 9] = [
    Setup::None,
    xlb("nat", ModeRequest::Native, true),
    xlb("nat", ModeRequest::Native, false),
    xlb("dnat", ModeRequest::Native, false),
    Setup::Nftables,
    Setup::Nginx,
    Setup::Haproxy,
    xlb("nat", ModeRequest::Generic, false),
    xlb("dnat", ModeRequest::Generic, false),
];

/// Setups run unless `--only` names others.
const DEFAULT_SETUPS: usize = 7;

impl Setup {
    fn name(self) -> String {
        match self {
            Setup::Xlb(x) => format!(
                "xlb-{}{}{}",
                x.mode,
                if x.attach == ModeRequest::Generic {
                    "-generic"
                } else {
                    ""
                },
                if x.only_b0 { "-b0" } else { "" }
            ),
            Setup::None => "none".into(),
            Setup::Nftables => "nftables".into(),
            Setup::Nginx => "nginx".into(),
            Setup::Haproxy => "haproxy".into(),
        }
    }
}

/// A fresh lab with the host tuning of a load-generating client and of a
/// proxy host: the whole ephemeral port range, and TIME_WAIT ports reused
/// for new outgoing connections (`tcp_tw_reuse`). Without them the client
/// runs out of ports within seconds whenever it, not the server, closes
/// first (as it does behind the proxies).
fn fresh_lab(shape: Shape) -> anyhow::Result<Lab> {
    let lab = Lab::up(LabSpec {
        prefix: PREFIX.into(),
        backends: BACKENDS,
        shape,
    })
    .context("bringing up the bench's lab")?;
    for ns in [lab.client_ns(), lab.lb_ns()] {
        netns::run_in(&ns, || -> anyhow::Result<()> {
            netns::sysctl("net/ipv4/ip_local_port_range", "1024 65535")?;
            netns::sysctl("net/ipv4/tcp_tw_reuse", "1")
        })??;
    }
    Ok(lab)
}

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(topology::VIP_V4, VIP_PORT)
}

/// Runs every (selected) setup in a fresh lab.
pub fn run(options: &Options) -> anyhow::Result<E2eResults> {
    for name in &options.only {
        if !SETUPS.iter().any(|s| &s.name() == name) {
            bail!("unknown setup {name:?}");
        }
    }
    let result = run_all(options);
    let _ = std::fs::remove_dir_all(peers::RUN_DIR);
    result
}

fn run_all(options: &Options) -> anyhow::Result<E2eResults> {
    let backends: Vec<SocketAddrV4> =
        topology::Topology::with_shape(PREFIX, BACKENDS, options.shape)?
            .backends()
            .iter()
            .map(|b| SocketAddrV4::new(b.v4, b.port))
            .collect();
    std::fs::create_dir_all(&options.configs_dir)?;
    let configs = &options.configs_dir;
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = configs.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(std::fs::canonicalize(&path)?)
    };
    for mode in ["nat", "dnat"] {
        write(
            &format!("xlb-{mode}.toml"),
            peers::xlb(vip(), topology::SNAT_V4, &backends, mode),
        )?;
    }
    for mode in ["nat", "dnat"] {
        write(
            &format!("xlb-{mode}-flood.toml"),
            peers::xlb_flood(vip(), topology::SNAT_V4, &backends, mode),
        )?;
    }
    write(
        "xlb-nat-b0.toml",
        peers::xlb(vip(), topology::SNAT_V4, &backends[..1], "nat"),
    )?;
    write(
        "xlb-nat-b0-flood.toml",
        peers::xlb_flood(vip(), topology::SNAT_V4, &backends[..1], "nat"),
    )?;
    write("nftables.nft", peers::nftables(vip(), &backends))?;
    write(
        "nginx.conf",
        peers::nginx(vip(), &backends, options.threads),
    )?;
    write(
        "haproxy.cfg",
        peers::haproxy(vip(), &backends, options.threads),
    )?;

    let selected: Vec<Setup> = SETUPS
        .into_iter()
        .enumerate()
        .filter(|(i, setup)| {
            if options.only.is_empty() {
                *i < DEFAULT_SETUPS
            } else {
                options.only.contains(&setup.name())
            }
        })
        .map(|(_, setup)| setup)
        .collect();
    let mut setups: Vec<SetupResult> = selected
        .iter()
        .map(|setup| SetupResult {
            name: setup.name(),
            description: String::new(),
            url: String::new(),
            reached: BTreeMap::new(),
            runs: Vec::new(),
            xlb_in_situ: Vec::new(),
            flood: None,
            error: None,
        })
        .collect();
    // Rounds, each starting one setup later, so a slow stretch of the
    // machine does not land on one setup's runs only. Every setup gets a
    // fresh lab each round: no TIME_WAIT or conntrack state carries over
    // from another setup's connections.
    for round in 0..options.rounds {
        for k in 0..selected.len() {
            let i = (k + round) % selected.len();
            let lab = fresh_lab(options.shape)?;
            measure_one(&lab, selected[i], options, round, &mut setups[i])?;
            lab.down()?;
        }
    }
    if options.flood {
        for (setup, result) in selected.iter().zip(&mut setups) {
            let lab = fresh_lab(options.shape)?;
            eprintln!(
                "bench: end to end, {}, random-source SYN flood",
                setup.name()
            );
            match flood_one(&lab, *setup, options) {
                Ok(flood) => {
                    eprintln!(
                        "bench:   {:.0} SYNs/s: {:.0} req/s before, {:.0} during, {:.0} after; \
                         {} of {} keep-alive connections survived; {} of {} new connections \
                         answered after",
                        flood.syns_per_s,
                        flood.rps_before,
                        flood.rps_during,
                        flood.rps_after,
                        flood.survived,
                        flood.connections,
                        flood.new_answered,
                        flood.new_connections
                    );
                    result.flood = Some(flood);
                }
                Err(e) => {
                    let e = format!("flood: {e:#}");
                    eprintln!("bench:   FAILED: {e}");
                    result.error = Some(match result.error.take() {
                        Some(earlier) => format!("{earlier}; {e}"),
                        None => e,
                    });
                }
            }
            lab.down()?;
        }
    }
    Ok(E2eResults {
        options: options.clone(),
        setups,
    })
}

fn measure_one(
    lab: &Lab,
    setup: Setup,
    options: &Options,
    round: usize,
    result: &mut SetupResult,
) -> anyhow::Result<()> {
    {
        if let Some(gone) = lab.namespaces().into_iter().find(|ns| !netns::exists(ns)) {
            bail!(
                "namespace {gone} of the bench's lab was removed from outside (`cargo xtask \
                 test` and `cargo xtask lab down` remove every xlb* namespace); run the bench \
                 again when nothing else uses the labs"
            );
        }
        eprintln!(
            "bench: end to end, {}, round {} of {}",
            setup.name(),
            round + 1,
            options.rounds
        );
        let first = result.runs.len();
        if let Err(e) = measure_round(lab, setup, options, round, result) {
            let e = format!("round {}: {e:#}", round + 1);
            eprintln!("bench:   FAILED: {e}");
            result.error = Some(match result.error.take() {
                Some(earlier) => format!("{earlier}; {e}"),
                None => e,
            });
        }
        for r in &result.runs[first..] {
            eprintln!(
                "bench:   {:<27} {:>8.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  {:>5.1} us CPU/req{}",
                r.load.label(),
                r.requests_per_s,
                r.p50_us,
                r.p99_us,
                r.cpu_us_per_request,
                if r.ok() {
                    String::new()
                } else {
                    format!("  PROBLEMS: {}", r.problems.join("; "))
                }
            );
        }
    }
    Ok(())
}

/// What a started setup holds until it is stopped.
struct Running {
    description: String,
    url: String,
    dataplane: Option<Dataplane>,
    child: Option<Child>,
    /// Commands undoing the setup, run in order when it stops.
    undo: Vec<Command>,
}

impl Running {
    fn stop(mut self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        // Detaches xlb.
        drop(self.dataplane.take());
        for mut cmd in self.undo.drain(..) {
            if let Err(e) = netns::run(&mut cmd) {
                errors.push(format!("{e:#}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }
}

/// SIGTERM, then SIGKILL after 5 s.
fn stop_child(child: &mut Child) {
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One round of `setup`: start it, check it answers, run both loads, stop
/// it; adds to `result`.
fn measure_round(
    lab: &Lab,
    setup: Setup,
    options: &Options,
    round: usize,
    result: &mut SetupResult,
) -> anyhow::Result<()> {
    let mut running = start(lab, setup, options, false)?;
    result.description = running.description.clone();
    result.url = running.url.clone();
    let outcome = (|| -> anyhow::Result<()> {
        let target = target_of(&running.url)?;
        let reached = reach(lab, target)?;
        if round == 0 {
            result.reached = reached;
        }
        for load in [Load::KeepAlive, Load::NewConnection] {
            // Warm-up: caches, conntrack, the peers' connection pools.
            let _ = wrk(lab, &running.url, load, options, 1);
            // Meanwhile the lab is idle: what else keeps the machine busy?
            let busy_before = busy_fraction(Duration::from_millis(500))?;
            let before = match &running.dataplane {
                Some(dp) => Some(dp.global_counters()?),
                None => None,
            };
            let mut run = wrk(lab, &running.url, load, options, options.duration_s)?;
            run.round = round;
            run.busy_before = busy_before;
            if let (Some(dp), Some(before)) = (&running.dataplane, before) {
                let after = dp.global_counters()?;
                for ((counter, b), (_, a)) in before.iter().zip(&after) {
                    if a > b {
                        run.xlb_counters.insert(counter.label().to_owned(), a - b);
                    }
                }
                // Whichever way out the lab's shape gives: XDP_TX, a
                // redirect, or the kernel (into a bridge).
                // Local backends: the kernel's local delivery.
                let forwarded: u64 = [
                    GlobalCounter::ForwardTx,
                    GlobalCounter::ForwardRedirect,
                    GlobalCounter::PassKernelForward,
                    GlobalCounter::PassLocal,
                ]
                .iter()
                .filter_map(|c| run.xlb_counters.get(c.label()))
                .sum();
                if forwarded < run.requests {
                    run.problems.push(format!(
                        "xlb forwarded only {forwarded} packets for {} requests",
                        run.requests
                    ));
                }
            }
            result.runs.push(run);
        }
        if round == 0
            && let Some(dp) = &mut running.dataplane
        {
            for load in [Load::KeepAlive, Load::NewConnection] {
                result
                    .xlb_in_situ
                    .push(in_situ(lab, dp, &running.url, load, options)?);
            }
        }
        Ok(())
    })();
    let stopped = running.stop().context("stopping");
    outcome.and(stopped)
}

/// Keep-alive connections, each sending `GET /` after `GET /`, through
/// the flood (the lab had 32, under wrk).
const FLOOD_CONNECTIONS: usize = 32;
/// Load before the flood: the rate to compare with.
const FLOOD_BEFORE: Duration = Duration::from_secs(2);
/// How long hping3 floods.
const FLOOD_SECONDS: Duration = Duration::from_secs(4);
/// Load after the flood (after the new connections).
const FLOOD_AFTER: Duration = Duration::from_secs(2);
/// New connections opened one after another right after the flood, each
/// within [`FLOOD_NEW_TIMEOUT`] (under the client's first SYN
/// retransmission).
const FLOOD_NEW_CONNECTIONS: usize = 16;
const FLOOD_NEW_TIMEOUT: Duration = Duration::from_millis(900);

/// A setup through a random-source SYN flood (issue 12): what keep-alive
/// connections kept, and whether new ones were answered after.
#[derive(Clone, Debug, Serialize)]
pub struct FloodResult {
    /// The hping3 command, as run in the client namespace.
    pub command: String,
    /// SYNs hping3 sent, a second, and for how long.
    pub syns_per_s: f64,
    pub seconds: f64,
    /// Keep-alive connections open when the flood began, and those still
    /// open (never broken) at the end.
    pub connections: usize,
    pub survived: usize,
    /// Of those, the ones answered during the flood.
    pub answered_during: usize,
    /// Requests/s over all the keep-alive connections.
    pub rps_before: f64,
    pub rps_during: f64,
    pub rps_after: f64,
    /// Requests/s every 250 ms from the start of the load.
    pub rps_windows: Vec<u64>,
    /// New connections right after the flood, and those answered in time.
    pub new_connections: usize,
    pub new_answered: usize,
    /// How the first connections broke.
    pub breaks: Vec<String>,
    /// xlb's counters over the scenario (xlb setups only; non-zero ones).
    pub xlb_counters: BTreeMap<String, u64>,
}

/// Runs the flood scenario on `setup` in `lab`: [`FLOOD_CONNECTIONS`]
/// keep-alive connections (not wrk: they must not be replaced when they
/// break) loading it for [`FLOOD_BEFORE`], `hping3 -S --flood
/// --rand-source` at its address for [`FLOOD_SECONDS`], then new
/// connections, then [`FLOOD_AFTER`] more. xlb gets a flow table of 16 384
/// entries, as in the issue.
fn flood_one(lab: &Lab, setup: Setup, options: &Options) -> anyhow::Result<FloodResult> {
    let running = start(lab, setup, options, true)?;
    let outcome = (|| -> anyhow::Result<FloodResult> {
        let target = target_of(&running.url)?;
        reach(lab, target)?;
        let before = match &running.dataplane {
            Some(dp) => Some(dp.global_counters()?),
            None => None,
        };
        let load = KeepAlive::start(lab, target, FLOOD_CONNECTIONS)?;
        std::thread::sleep(FLOOD_BEFORE);
        let from = load.elapsed();
        let flood = SynFlood::start(lab, target, Source::Random, FLOOD_SECONDS)?.wait()?;
        let to = load.elapsed();
        let new_answered = lab.in_client(|| {
            (0..FLOOD_NEW_CONNECTIONS)
                .filter(|_| client::http_get(target, FLOOD_NEW_TIMEOUT).is_ok())
                .count()
        })?;
        std::thread::sleep(FLOOD_AFTER);
        let report = load.stop();
        let mut xlb_counters = BTreeMap::new();
        if let (Some(dp), Some(before)) = (&running.dataplane, before) {
            for ((counter, b), (_, a)) in before.iter().zip(&dp.global_counters()?) {
                if a > b {
                    xlb_counters.insert(counter.label().to_owned(), a - b);
                }
            }
        }
        Ok(FloodResult {
            command: format!(
                "hping3 -S --flood --rand-source -p {} {} (for {} s)",
                target.port(),
                target.ip(),
                FLOOD_SECONDS.as_secs()
            ),
            syns_per_s: flood.rate(),
            seconds: flood.ran.as_secs_f64(),
            connections: FLOOD_CONNECTIONS,
            survived: report.alive(),
            answered_during: (0..FLOOD_CONNECTIONS)
                .filter(|&i| report.answers_between(i, from, to) > 0)
                .count(),
            rps_before: report.rate(WINDOW, from),
            rps_during: report.rate(from, to),
            rps_after: report.rate(to, report.elapsed),
            rps_windows: report.rates(),
            new_connections: FLOOD_NEW_CONNECTIONS,
            new_answered,
            breaks: report
                .breaks()
                .iter()
                .take(4)
                .map(|(i, backend, b)| {
                    format!(
                        "connection {i} (to {backend}) at {:.2} s: {}",
                        b.at.as_secs_f64(),
                        b.error
                    )
                })
                .collect(),
            xlb_counters,
        })
    })();
    let stopped = running.stop().context("stopping");
    let result = outcome?;
    stopped?;
    Ok(result)
}

/// What xlb's program cost in the lab under one load.
#[derive(Clone, Debug, Serialize)]
pub struct InSitu {
    pub load: Load,
    /// Mean ns per run of the program (one run per packet).
    pub ns_per_packet: f64,
    /// Packets the program handled per request.
    pub packets_per_request: f64,
    /// Their product: the program's CPU time per request, µs.
    pub us_per_request: f64,
}

/// Runs `load` for 3 s with the kernel's BPF run-time statistics on (only
/// then: they add two clock reads to every run of every program).
fn in_situ(
    lab: &Lab,
    dp: &mut Dataplane,
    url: &str,
    load: Load,
    options: &Options,
) -> anyhow::Result<InSitu> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics")?;
    // The XDP program, and the egress program that rewrites local
    // backends' replies (it runs on every packet the lb host sends).
    let before = [dp.program()?.info()?, dp.egress_program()?.info()?];
    let run = wrk(lab, url, load, options, 3)?;
    let after = [dp.program()?.info()?, dp.egress_program()?.info()?];
    let xdp_packets = after[0].run_count() - before[0].run_count();
    anyhow::ensure!(
        xdp_packets > 0 && run.requests > 0,
        "no traffic through xlb"
    );
    let (mut packets, mut time) = (0, Duration::ZERO);
    for (b, a) in before.iter().zip(&after) {
        packets += a.run_count() - b.run_count();
        time += a.run_time() - b.run_time();
    }
    let ns_per_packet = time.as_nanos() as f64 / packets as f64;
    let packets_per_request = packets as f64 / run.requests as f64;
    Ok(InSitu {
        load,
        ns_per_packet,
        packets_per_request,
        us_per_request: ns_per_packet * packets_per_request / 1e3,
    })
}

fn target_of(url: &str) -> anyhow::Result<SocketAddr> {
    let hostport = url
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix('/'))
        .with_context(|| format!("unexpected url {url}"))?;
    let with_port = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    Ok(with_port.parse()?)
}

/// Brings `setup` up in the lab; xlb with the flood scenario's smaller
/// flow table if `flood`.
fn start(lab: &Lab, setup: Setup, options: &Options, flood: bool) -> anyhow::Result<Running> {
    let lb = lab.lb_ns();
    let configs = &options.configs_dir;
    let vip_url = format!("http://{}/", topology::VIP_V4);
    let backends: Vec<SocketAddrV4> = lab
        .backends()
        .iter()
        .map(|b| SocketAddrV4::new(b.v4, b.port))
        .collect();
    let mut running = Running {
        description: String::new(),
        url: vip_url.clone(),
        dataplane: None,
        child: None,
        undo: Vec::new(),
    };
    match setup {
        Setup::None if lab.shape().local_backends() => {
            // The app instances listen on every address of the lb host.
            let direct = SocketAddrV4::new(topology::LB_CLIENT_SIDE_V4, backends[0].port());
            running.url = format!("http://{direct}/");
            running.description = format!(
                "no load balancer: the client talks to one app instance on the lb host \
                 ({direct}) directly"
            );
        }
        Setup::None => {
            running.url = format!("http://{}/", backends[0]);
            running.description = format!(
                "no load balancer: the client talks to one backend ({}) through the lb host's \
                 kernel forwarding",
                backends[0]
            );
        }
        Setup::Xlb(x) => {
            let (mode, request) = (x.mode, x.attach);
            let file = format!(
                "xlb-{mode}{}{}.toml",
                if x.only_b0 { "-b0" } else { "" },
                if flood { "-flood" } else { "" }
            );
            let text = std::fs::read_to_string(configs.join(file))?;
            let config = Config::parse(&text)?;
            // As the agent loads it: the half-open budget follows the
            // flow table's size.
            let load = config.load_options();
            // Native where the driver allows: a bridge takes generic only.
            let request = match request {
                ModeRequest::Native => ModeRequest::Auto,
                other => other,
            };
            let interfaces = lab.lb_interfaces();
            let (dataplane, attached) = lab
                .in_lb(|| -> anyhow::Result<(Dataplane, Vec<String>)> {
                    let mut dataplane = Dataplane::load_with(load)?;
                    dataplane.apply(&xlb::desired::Desired::from(&config))?;
                    for iface in &interfaces {
                        dataplane.attach(iface, request)?;
                    }
                    let attached = dataplane
                        .attachments()
                        .map(|a| {
                            let ports = if a.xdp_ports.is_empty() {
                                String::new()
                            } else {
                                format!("; to its ports {} by xdp", a.xdp_ports.join(", "))
                            };
                            format!(
                                "{} ({} XDP, out by {}{ports})",
                                a.iface, a.mode, a.egress.path
                            )
                        })
                        .collect();
                    Ok((dataplane, attached))
                })?
                .context("attaching xlb in the lab")?;
            running.dataplane = Some(dataplane);
            running.description = format!(
                "xlb, mode {mode}, on the lb's {}{}; {}",
                attached.join(", "),
                if x.only_b0 {
                    format!(", only backend b0 ({}) like `none`", backends[0])
                } else {
                    String::new()
                },
                if lab.shape().local_backends() {
                    "the app instances on the lb host see the client (local delivery; replies \
                     through the egress program)"
                        .into()
                } else if mode == "nat" {
                    format!("backends see SNAT {}", topology::SNAT_V4)
                } else {
                    "backends see the client and route back through the lb".into()
                }
            );
        }
        Setup::Nftables => {
            let file = configs.join("nftables.nft");
            netns::run(&mut netns::exec(
                &lb,
                "nft",
                [OsStr::new("-f"), file.as_os_str()],
            ))?;
            running.undo.push(netns::exec(
                &lb,
                "nft",
                ["delete", "table", "ip", peers::NFT_TABLE],
            ));
            running.description = "nftables: DNAT to `numgen random mod 4` in the lb's \
                                   prerouting hook, conntrack for replies"
                .into();
            if lab.shape().local_backends() {
                // DNAT to 127.0.0.1 from outside needs what xlb sets too.
                let key = "net/ipv4/conf/eth0/route_localnet";
                lab.in_lb(|| netns::sysctl(key, "1"))??;
                running.undo.push(netns::exec(
                    &lb,
                    "sysctl",
                    ["-w", "net.ipv4.conf.eth0.route_localnet=0"],
                ));
                running.description += "; route_localnet on eth0 for 127.0.0.1";
            }
        }
        Setup::Nginx | Setup::Haproxy => {
            // The proxy must own the VIP to accept connections for it.
            let vip_cidr = format!("{}/32", topology::VIP_V4);
            netns::run(&mut netns::ip_in(
                &lb,
                ["addr", "add", &vip_cidr, "dev", "lo"],
            ))?;
            running
                .undo
                .push(netns::ip_in(&lb, ["addr", "del", &vip_cidr, "dev", "lo"]));
            let (name, program, args): (&str, &str, Vec<String>) = if setup == Setup::Nginx {
                let dir = format!("{}/nginx", peers::RUN_DIR);
                (
                    "nginx",
                    "nginx",
                    vec![
                        "-p".into(),
                        dir.clone(),
                        "-e".into(),
                        format!("{dir}/error.log"),
                        "-c".into(),
                        path_arg(&configs.join("nginx.conf"))?,
                        "-g".into(),
                        "daemon off;".into(),
                    ],
                )
            } else {
                (
                    "haproxy",
                    "haproxy",
                    vec![
                        "-f".into(),
                        path_arg(&configs.join("haproxy.cfg"))?,
                        "-db".into(),
                    ],
                )
            };
            let dir = Path::new(peers::RUN_DIR).join(name);
            std::fs::create_dir_all(&dir)?;
            let log = std::fs::File::create(dir.join("output.log"))?;
            let mut cmd = netns::exec(&lb, program, &args);
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            running.child = Some(
                cmd.spawn()
                    .with_context(|| format!("starting {}", netns::show(&cmd)))?,
            );
            running.description = if setup == Setup::Nginx {
                format!(
                    "nginx {} stream proxy on the lb, {} workers, reuseport, round robin",
                    version("nginx", "-v"),
                    options.threads
                )
            } else {
                format!(
                    "HAProxy {} mode tcp on the lb, {} threads, a listener per thread, round robin",
                    version("haproxy", "-v"),
                    options.threads
                )
            };
        }
    }
    Ok(running)
}

/// A path as a command-line argument.
fn path_arg(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("non-UTF-8 path {}", path.display()))
}

/// The version a program reports (`nginx/1.22.1` → `1.22.1`).
fn version(program: &str, flag: &str) -> String {
    let out = Command::new(program).arg(flag).output();
    let text = out
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t += &String::from_utf8_lossy(&o.stderr);
            t
        })
        .unwrap_or_default();
    text.split(|c: char| c.is_whitespace() || c == '/')
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .unwrap_or("?")
        .to_owned()
}

/// Waits (up to 5 s) until `target` answers from the client, then sends 40
/// one-shot requests and counts which backend answered each.
fn reach(lab: &Lab, target: SocketAddr) -> anyhow::Result<BTreeMap<String, usize>> {
    lab.in_client(|| -> anyhow::Result<BTreeMap<String, usize>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match client::http_get(target, Duration::from_millis(500)) {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("{target} does not answer"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let mut counts = BTreeMap::new();
        for _ in 0..40 {
            let name = client::http_get(target, client::DEFAULT_TIMEOUT)?;
            *counts.entry(name).or_insert(0) += 1;
        }
        Ok(counts)
    })?
}

/// Runs wrk from the client namespace for `seconds` and reads its report.
fn wrk(
    lab: &Lab,
    url: &str,
    load: Load,
    options: &Options,
    seconds: u32,
) -> anyhow::Result<RunResult> {
    let mut args = vec![
        "-t".to_owned(),
        options.threads.to_string(),
        "-c".into(),
        options.connections.to_string(),
        "-d".into(),
        format!("{seconds}s"),
        "--latency".into(),
    ];
    if load == Load::NewConnection {
        args.extend(["-H".into(), "Connection: close".into()]);
    }
    args.push(url.to_owned());
    let mut cmd = netns::exec(&lab.client_ns(), "wrk", &args);
    let command = netns::show(&cmd).replace("Connection: close", "'Connection: close'");
    let retransmits_before = tcp_retransmits(lab)?;
    let before = CpuTimes::now()?;
    let output = netns::run(&mut cmd)?;
    let cpu = CpuTimes::now()?.since(&before);
    let tcp_retransmits = tcp_retransmits(lab)?.saturating_sub(retransmits_before);
    let report = parse_wrk(&output).with_context(|| format!("reading wrk's report:\n{output}"))?;

    let mut problems = Vec::new();
    if report.requests == 0 {
        problems.push("no answers".to_owned());
    }
    let e = report.errors;
    if e.total() > 0 {
        problems.push(format!(
            "wrk errors: connect {}, read {}, write {}, timeout {}, non-2xx/3xx {}",
            e.connect, e.read, e.write, e.timeout, e.non_2xx_3xx
        ));
    }
    let busy_s = cpu.busy() as f64 / ticks_per_second();
    Ok(RunResult {
        load,
        command,
        requests: report.requests,
        seconds: report.seconds,
        requests_per_s: report.requests_per_s,
        p50_us: report.p50_us,
        p99_us: report.p99_us,
        errors: report.errors,
        cpu,
        round: 0,
        busy_before: 0.0,
        cpu_us_per_request: if report.requests > 0 {
            busy_s * 1e6 / report.requests as f64
        } else {
            0.0
        },
        xlb_counters: BTreeMap::new(),
        tcp_retransmits,
        problems,
    })
}

/// TCP segments retransmitted so far by the client and the backends (the
/// namespaces ending the connections; local backends share the lb's).
fn tcp_retransmits(lab: &Lab) -> anyhow::Result<u64> {
    let mut namespaces = vec![lab.client_ns()];
    for b in lab.backends() {
        if !namespaces.contains(&b.ns) {
            namespaces.push(b.ns);
        }
    }
    let mut total = 0;
    for ns in namespaces {
        // The calling thread's namespace, not the process's.
        let snmp = netns::run_in(&ns, || {
            std::fs::read_to_string("/proc/thread-self/net/snmp")
        })?
        .with_context(|| format!("reading TCP counters in {ns}"))?;
        total += snmp_value(&snmp, "Tcp:", "RetransSegs")
            .with_context(|| format!("no Tcp RetransSegs in {ns}"))?;
    }
    Ok(total)
}

/// A counter from `/proc/net/snmp`: a header line and a value line, both
/// starting with `group`.
fn snmp_value(snmp: &str, group: &str, name: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with(group));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// What wrk's `--latency` report says.
#[derive(Debug, Default, PartialEq)]
struct WrkReport {
    requests: u64,
    seconds: f64,
    requests_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    errors: WrkErrors,
}

fn parse_wrk(text: &str) -> anyhow::Result<WrkReport> {
    let mut report = WrkReport::default();
    let (mut p50, mut p99, mut rps) = (None, None, None);
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = Some(duration_us(v)?),
            ["99%", v] => p99 = Some(duration_us(v)?),
            ["Requests/sec:", v] => rps = Some(v.parse()?),
            [n, "requests", "in", t, ..] => {
                report.requests = n.parse()?;
                report.seconds = duration_us(t.trim_end_matches(','))? / 1e6;
            }
            ["Socket", "errors:", rest @ ..] => {
                let numbers: Vec<u64> = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse().ok())
                    .collect();
                if let [connect, read, write, timeout] = numbers[..] {
                    report.errors.connect = connect;
                    report.errors.read = read;
                    report.errors.write = write;
                    report.errors.timeout = timeout;
                } else {
                    bail!("cannot read {line:?}");
                }
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => report.errors.non_2xx_3xx = n.parse()?,
            _ => {}
        }
    }
    report.p50_us = p50.context("no 50% latency")?;
    report.p99_us = p99.context("no 99% latency")?;
    report.requests_per_s = rps.context("no Requests/sec")?;
    Ok(report)
}

/// wrk's durations (`310.00us`, `1.20ms`, `2.00s`, `1.00m`) in µs.
fn duration_us(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in {text:?}"),
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_wrk_report() {
        let text = "Running 8s test @ http://10.10.100.1/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   420.12us  200.00us   8.00ms   90.00%
    Req/Sec    38.00k     2.00k   42.00k    70.00%
  Latency Distribution
     50%  310.00us
     75%  500.00us
     90%  800.00us
     99%    1.20ms
  604321 requests in 8.00s, 70.00MB read
  Socket errors: connect 0, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:  75540.12
Transfer/sec:      8.75MB
";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests, 604_321);
        assert_eq!(r.seconds, 8.0);
        assert_eq!(r.p50_us, 310.0);
        assert_eq!(r.p99_us, 1200.0);
        assert_eq!(r.requests_per_s, 75_540.12);
        assert_eq!(
            r.errors,
            WrkErrors {
                connect: 0,
                read: 12,
                write: 0,
                timeout: 3,
                non_2xx_3xx: 5
            }
        );
        assert!(parse_wrk("nothing").is_err());
        assert_eq!(duration_us("1.00m").unwrap(), 60e6);
    }

    #[test]
    fn reads_snmp_counters() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm RtoMin RetransSegs InErrs\nTcp: 1 200 17 0\n";
        assert_eq!(snmp_value(snmp, "Tcp:", "RetransSegs"), Some(17));
        assert_eq!(snmp_value(snmp, "Tcp:", "OutRsts"), None);
    }

    #[test]
    fn urls_give_targets() {
        assert_eq!(
            target_of("http://10.10.100.1/").unwrap(),
            "10.10.100.1:80".parse().unwrap()
        );
        assert_eq!(
            target_of("http://10.10.2.10:8000/").unwrap(),
            "10.10.2.10:8000".parse().unwrap()
        );
    }

    fn round(round: usize, requests_per_s: f64, problem: bool) -> RunResult {
        RunResult {
            load: Load::NewConnection,
            round,
            busy_before: 0.0,
            command: String::new(),
            requests: 0,
            seconds: 5.0,
            requests_per_s,
            p50_us: 0.0,
            p99_us: 0.0,
            errors: WrkErrors::default(),
            cpu: CpuTimes::default(),
            cpu_us_per_request: 0.0,
            xlb_counters: BTreeMap::new(),
            tcp_retransmits: 0,
            problems: if problem {
                vec!["wrk errors: read 1".into()]
            } else {
                Vec::new()
            },
        }
    }

    fn setup(runs: Vec<RunResult>) -> SetupResult {
        SetupResult {
            name: "none".into(),
            description: String::new(),
            url: String::new(),
            reached: BTreeMap::new(),
            runs,
            xlb_in_situ: Vec::new(),
            flood: None,
            error: None,
        }
    }

    #[test]
    fn a_round_with_errors_is_left_out_of_the_median() {
        let s = setup(vec![
            round(0, 300.0, false),
            round(1, 200.0, true),
            round(2, 100.0, false),
        ]);
        // Of the clean rounds (300, 100) the lower middle; of all three the
        // median would have been the round with errors.
        assert_eq!(s.clean_run(Load::NewConnection).unwrap().round, 2);
        assert_eq!(s.run(Load::NewConnection).unwrap().round, 1);
        assert_eq!(s.rounds_with_problems(Load::NewConnection), 1);
        assert_eq!(s.rounds_with_problems(Load::KeepAlive), 0);

        let all_bad = setup(vec![round(0, 300.0, true), round(1, 200.0, true)]);
        assert!(all_bad.clean_run(Load::NewConnection).is_none());
    }
}
