//! Data-plane cost per packet, through `BPF_PROG_TEST_RUN`.
//!
//! Everything runs inside a fixture namespace (`xlb_tests::fixture`) with
//! two more routes, so every route lookup resolves to a known MAC address
//! and every rewritten packet is transmitted (`XDP_TX`), never passed:
//!
//! - backends live in 10.50.0.0/16, routed via 10.1.0.10 (a resolved
//!   neighbour, [`backend_mac`]`(0)`), so any number of backends resolve;
//! - clients live in 10.60.0.0/16, routed via 10.0.0.2 ([`CLIENT_MAC`]).
//!
//! A rewriting path cannot be timed with `repeat > 1`: the kernel does not
//! restore the frame between repetitions, so from the second one on the
//! program sees its own output (addressed to a backend) and times another
//! path. Every rewriting figure is therefore a loop of `repeat = 1` calls,
//! each checked (action and every output byte) against a frame built
//! independently by `etherparse`; and each is reported raw and net of the
//! do-nothing program `xlb_tx` timed the same way, interleaved in batches so
//! both see the same machine. Frames that are not rewritten (pass-through,
//! the floor's MAC swap) are also timed with `repeat = N`.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    Flow, FlowKey, GlobalCounter, Reply,
    flow::{SNAT_PORT_ATTEMPTS, flow_hash, snat_candidate},
    hash::next_draw,
    service::NEW_FLOW_PICKS,
};
use serde::Serialize;
use xlb::{
    config::Config,
    dataplane::{Dataplane, LoadOptions},
    xdp::ModeRequest,
};
use xlb_lab::netns;
use xlb_tests::{
    fixture::{CLIENT_MAC, FixtureNet, LB_MAC, backend_mac},
    frames::{Frame, Transport},
};

use crate::stats::Summary;

mod extra;

/// XDP verdicts as the kernel numbers them.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Source address of `nat` flows towards backends (on the fixture's `fx0`).
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 100);
/// The VIP of a single-service scenario.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8000;

/// How much to measure.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Timed `repeat = 1` calls per path and scenario (and as many of the
    /// do-nothing program, interleaved).
    pub calls: usize,
    /// Calls per batch before switching between a path and the do-nothing
    /// program.
    pub batch: usize,
    /// Repetitions per call for the `repeat = N` figures.
    pub repeat: u32,
    /// Calls of `repeat` repetitions each.
    pub repeat_calls: usize,
    /// Established flows in the flow table for the "1M" scenario.
    pub big_flows: usize,
    /// CPU the measuring thread is pinned to.
    pub cpu: usize,
    /// Scenarios to run (all when empty).
    #[serde(skip)]
    pub scenarios: Vec<String>,
}

/// One timed path.
#[derive(Clone, Debug, Serialize)]
pub struct PathResult {
    /// What was timed.
    pub path: String,
    /// `repeat=1` (a loop of single runs) or `repeat=N`.
    pub method: String,
    /// Kernel-reported ns per run.
    pub raw: Summary,
    /// The do-nothing program timed the same way, interleaved with `raw`.
    pub overhead: Summary,
    /// `raw.median - overhead.median`.
    pub net_median: f64,
}

impl PathResult {
    fn new(path: &str, method: String, raw: &[f64], overhead: &[f64]) -> Self {
        let (raw, overhead) = (Summary::of(raw), Summary::of(overhead));
        Self {
            path: path.to_owned(),
            method,
            net_median: raw.median - overhead.median,
            raw,
            overhead,
        }
    }
}

/// A configuration of the data plane and what its timings gave.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub services: usize,
    pub backends_per_service: usize,
    pub table_size: u32,
    pub flow_capacity: u32,
    /// Established flows put in the table (through the program) before timing.
    pub flows: usize,
    /// Seconds the program took to build those flows (SYN out, SYN-ACK back).
    pub prefill_seconds: f64,
    /// SYNs the program dropped for want of a free SNAT port
    /// (`drop_snat_ports_busy`) while building the flows (their clients are
    /// left out) and while timing new flows (those calls are not timed).
    pub snat_ports_busy: u64,
    pub paths: Vec<PathResult>,
    /// How long each walk over the flows took (`Extra::Walk`): the second
    /// walk's flows were idle for the first one's time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub walk_seconds: Vec<f64>,
}

impl ScenarioResult {
    fn new(
        scenario: &Scenario,
        prefill_seconds: f64,
        loaded: &Loaded<'_>,
        paths: Vec<PathResult>,
    ) -> Self {
        Self {
            name: scenario.name.to_owned(),
            services: scenario.services,
            backends_per_service: scenario.backends,
            table_size: scenario.table_size,
            flow_capacity: scenario.flow_capacity,
            flows: scenario.flows,
            prefill_seconds,
            snat_ports_busy: loaded.snat_ports_busy,
            paths,
            walk_seconds: Vec::new(),
        }
    }

    /// The `repeat=1` result for `path` (`established`, `new flow`, …).
    pub fn path(&self, path: &str) -> Option<&PathResult> {
        self.paths
            .iter()
            .find(|p| p.path == path && p.method.starts_with("repeat=1 "))
    }
}

/// Everything the data-plane part measured.
#[derive(Clone, Debug, Serialize)]
pub struct DataplaneResults {
    pub options: Options,
    /// The floor, pass-through and do-nothing programs alone.
    pub reference: Vec<PathResult>,
    /// `scenarios[0]` is the baseline; the rest vary one dimension each.
    pub scenarios: Vec<ScenarioResult>,
}

impl DataplaneResults {
    pub fn baseline(&self) -> &ScenarioResult {
        &self.scenarios[0]
    }

    pub fn reference(&self, path: &str, method_prefix: &str) -> Option<&PathResult> {
        self.reference
            .iter()
            .find(|p| p.path == path && p.method.starts_with(method_prefix))
    }
}

/// A data-plane configuration to time.
#[derive(Clone, Debug)]
struct Scenario {
    name: &'static str,
    services: usize,
    backends: usize,
    table_size: u32,
    flow_capacity: u32,
    flows: usize,
    /// What it times besides (or instead of) the usual paths.
    extra: Extra,
    /// Every service's `scheduler`.
    scheduler: &'static str,
    /// Every service's `mode`: `nat` (from the SNAT address), `dnat`
    /// (from the client's own address and port) or `dsr` (the frame only
    /// re-addressed at the link layer, as Katran's is by its tunnel; no
    /// reply crosses the data plane).
    mode: &'static str,
    /// Backends of the (single) service that each refuse a handshake after
    /// the flows are opened, the last first, and so take no new flows
    /// (`max_fails = 1`), their slots still in the table as until the
    /// agent's next one: new flows search past them.
    out: usize,
    /// Every service's `protocol`: `tcp`, or `udp` (a flow opened by its
    /// first datagram, its packets datagrams).
    protocol: &'static str,
    /// Every address in IPv6 ([`at`]): the VIP, the backends, the clients,
    /// the SNAT address.
    ipv6: bool,
}

/// Measurements some scenarios make beyond the usual four paths
/// (`extra.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extra {
    /// The usual paths only.
    None,
    /// Two walks over every flow in the table, in the same random order:
    /// first with every flow idle for over a second, then again at once
    /// (each idle for one walk's time, under a second); then the usual paths.
    Walk,
    /// Established and new-flow packets while the other CPU runs the same
    /// path on the same maps; instead of the usual paths.
    OtherCpuBusy,
    /// SYNs answered with SYN cookies (`[flood] syn_cookies = "always"`),
    /// one source address each; instead of the usual paths.
    Cookies,
}

fn scenarios(options: &Options) -> Vec<Scenario> {
    let default_capacity = lb_common::DEFAULT_FLOW_CAPACITY;
    let s = |name, services, backends, table_size, flow_capacity, flows| Scenario {
        name,
        services,
        backends,
        table_size,
        flow_capacity,
        flows,
        extra: Extra::None,
        scheduler: "maglev",
        mode: "nat",
        out: 0,
        protocol: "tcp",
        ipv6: false,
    };
    let with = |extra, scenario: Scenario| Scenario { extra, ..scenario };
    let dnat = |scenario: Scenario| Scenario {
        mode: "dnat",
        ..scenario
    };
    let dsr = |scenario: Scenario| Scenario {
        mode: "dsr",
        ..scenario
    };
    let udp = |scenario: Scenario| Scenario {
        protocol: "udp",
        ..scenario
    };
    let ipv6 = |scenario: Scenario| Scenario {
        ipv6: true,
        ..scenario
    };
    let out = |name, out| Scenario {
        out,
        ..s(name, 1, 4, 65_537, default_capacity, 10_000)
    };
    // The baseline with another method: its new-flow cost beside Maglev's.
    let by = |scheduler| Scenario {
        name: scheduler,
        scheduler,
        ..s("", 1, 4, 65_537, default_capacity, 10_000)
    };
    vec![
        s("baseline", 1, 4, 65_537, default_capacity, 10_000),
        s("1 backend", 1, 1, 65_537, default_capacity, 10_000),
        s("100 backends", 1, 100, 65_537, default_capacity, 10_000),
        s(
            "10,000 backends",
            1,
            10_000,
            1_000_003,
            default_capacity,
            10_000,
        ),
        s("1 service", 1, 4, 1_009, default_capacity, 10_000),
        s("1,000 services", 1_000, 4, 1_009, default_capacity, 10_000),
        s("flow table 1 (hot)", 1, 100, 65_537, 1_024, 1),
        s("flow table 1k", 1, 100, 65_537, 1_024, 1_000),
        s(
            "flow table 1M",
            1,
            100,
            65_537,
            1 << 20,
            options.big_flows.min((1 << 20) - 2 * options.calls),
        ),
        with(
            Extra::Walk,
            s("100k flows", 1, 4, 65_537, default_capacity, 100_000),
        ),
        with(
            Extra::OtherCpuBusy,
            s("both CPUs", 1, 4, 65_537, default_capacity, 10_000),
        ),
        with(
            Extra::Cookies,
            s("SYN cookies", 1, 4, 65_537, default_capacity, 0),
        ),
        dnat(s("dnat", 1, 4, 65_537, default_capacity, 10_000)),
        dnat(s("dnat hot flow", 1, 100, 65_537, 1_024, 1)),
        dsr(s("dsr", 1, 4, 65_537, default_capacity, 10_000)),
        dsr(s("dsr hot flow", 1, 100, 65_537, 1_024, 1)),
        udp(s("udp", 1, 4, 65_537, default_capacity, 10_000)),
        udp(dnat(s("udp dnat", 1, 4, 65_537, default_capacity, 10_000))),
        ipv6(s("ipv6", 1, 4, 65_537, default_capacity, 10_000)),
        ipv6(dnat(s("ipv6 dnat", 1, 4, 65_537, default_capacity, 10_000))),
        out("3 of 4 backends out", 3),
        out("4 of 4 backends out", 4),
        by("round_robin"),
        by("least_conn"),
        by("random_two"),
        by("least_time"),
    ]
}

/// Runs every data-plane measurement.
pub fn run(options: &Options) -> anyhow::Result<DataplaneResults> {
    let fx = FixtureNet::new().context("creating the fixture namespace")?;
    let ip = |args: &str| netns::run(&mut netns::ip_in(fx.name(), args.split_whitespace()));
    ip("route add 10.50.0.0/16 via 10.1.0.10 dev fx0")?;
    ip("route add 10.60.0.0/16 via 10.0.0.2 dev fx0")?;
    ip("-6 route add fd50::/64 via fd01::10 dev fx0")?;
    ip("-6 route add fd60::/64 via fd00::2 dev fx0")?;
    let ifindex = fx.ifindex();
    fx.run(|| -> anyhow::Result<DataplaneResults> {
        pin_to_cpu(options.cpu)?;
        let refs = References::load()?;
        let mut bench = Bench {
            refs,
            ifindex,
            out: vec![0; 512],
            rng: Rng(0x2545_f491_4f6c_dd1d),
        };
        let reference = bench.reference(options)?;
        let mut results = Vec::new();
        for scenario in scenarios(options) {
            // `--scenarios` splits at commas: "1000 services" names "1,000 services".
            let unseparated = scenario.name.replace(',', "");
            if !options.scenarios.is_empty()
                && !options
                    .scenarios
                    .iter()
                    .any(|s| *s == scenario.name || *s == unseparated)
            {
                continue;
            }
            eprintln!(
                "bench: data plane, {} ({} services x {} backends, table {}, {} flows in a table of {})",
                scenario.name,
                scenario.services,
                scenario.backends,
                scenario.table_size,
                scenario.flows,
                scenario.flow_capacity
            );
            let result = bench
                .scenario(&scenario, options)
                .with_context(|| format!("scenario {}", scenario.name))?;
            for p in &result.paths {
                eprintln!(
                    "bench:   {:<12} median {:>6.0} ns raw, {:>6.0} ns net (p10 {:.0}, p90 {:.0})",
                    p.path, p.raw.median, p.net_median, p.raw.p10, p.raw.p90
                );
            }
            results.push(result);
        }
        Ok(DataplaneResults {
            options: options.clone(),
            reference,
            scenarios: results,
        })
    })
}

/// Calls one path of one scenario (checked, `repeat = 1`) in a loop for
/// `seconds`, for a profiler to watch (`perf record -C <cpu>`); prints the
/// calls made and their mean kernel-reported ns.
pub fn profile(options: &Options, scenario: &str, path: &str, seconds: f64) -> anyhow::Result<()> {
    let scenario = scenarios(options)
        .into_iter()
        .find(|s| s.name == scenario)
        .with_context(|| format!("no scenario {scenario:?}"))?;
    let kind = [
        PathKind::Established,
        PathKind::Reply,
        PathKind::Passthrough,
        PathKind::NewFlow,
    ]
    .into_iter()
    .find(|k| k.name() == path)
    .with_context(|| format!("no path {path:?}"))?;
    ensure!(
        !(matches!(kind, PathKind::Reply) && scenario.mode == "dsr"),
        "no reply crosses a dsr data plane"
    );
    let fx = FixtureNet::new().context("creating the fixture namespace")?;
    let ip = |args: &str| netns::run(&mut netns::ip_in(fx.name(), args.split_whitespace()));
    ip("route add 10.50.0.0/16 via 10.1.0.10 dev fx0")?;
    ip("route add 10.60.0.0/16 via 10.0.0.2 dev fx0")?;
    ip("-6 route add fd50::/64 via fd01::10 dev fx0")?;
    ip("-6 route add fd60::/64 via fd00::2 dev fx0")?;
    let ifindex = fx.ifindex();
    fx.run(|| -> anyhow::Result<()> {
        pin_to_cpu(options.cpu)?;
        let mut bench = Bench {
            refs: References::load()?,
            ifindex,
            out: vec![0; 512],
            rng: Rng(0x2545_f491_4f6c_dd1d),
        };
        let (mut loaded, _) = bench.load(&scenario)?;
        eprintln!(
            "bench: calling {path} of {} on cpu {} for {seconds} s",
            scenario.name, options.cpu
        );
        let started = Instant::now();
        let (mut calls, mut total_ns) = (0u64, 0.0);
        while started.elapsed().as_secs_f64() < seconds {
            // New flows as the timed run opens them: at most `calls` beyond
            // the scenario's own, all with distinct ports. Past that, the
            // clients' ports repeat and each SYN meets busy SNAT candidates,
            // a costlier path than the one timed.
            if matches!(kind, PathKind::NewFlow)
                && loaded.next_flow >= scenario.flows + options.calls
            {
                forget_new_flows(&mut loaded)?;
            }
            for _ in 0..1000 {
                if let Some(ns) = bench.path_call(&mut loaded, &kind)? {
                    total_ns += ns;
                    calls += 1;
                }
            }
        }
        eprintln!(
            "bench: {calls} calls, {:.0} ns per run (kernel-reported, harness included)",
            total_ns / calls as f64
        );
        Ok(())
    })
}

/// Removes the flows the new-flow path opened (clients from index
/// `scenario.flows` on) with their reply entries, writes their handshakes
/// off as expired, and starts the next new flow at that index again: the
/// data plane is as after loading.
fn forget_new_flows(loaded: &mut Loaded<'_>) -> anyhow::Result<()> {
    // Each client's address and port, as the maps hold them.
    let opened: std::collections::HashSet<([u8; 16], u16)> = (loaded.scenario.flows
        ..loaded.next_flow)
        .map(|i| {
            let c = client(i);
            let c = at(loaded.scenario, c);
            let ip = match c.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            (ip, c.port().to_be())
        })
        .collect();
    let ebpf = loaded.dp.ebpf_mut();
    let mut flows: aya::maps::HashMap<_, FlowKey, Flow> =
        aya::maps::HashMap::try_from(ebpf.map_mut("FLOWS").context("no FLOWS map")?)?;
    let new: Vec<FlowKey> = flows
        .keys()
        .filter_map(Result::ok)
        .filter(|key| opened.contains(&(key.src, key.src_port_be)))
        .collect();
    for key in &new {
        flows.remove(key)?;
    }
    let mut replies: aya::maps::HashMap<_, FlowKey, Reply> =
        aya::maps::HashMap::try_from(ebpf.map_mut("REPLIES").context("no REPLIES map")?)?;
    let new: Vec<FlowKey> = replies
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, reply)| opened.contains(&(reply.client, reply.client_port_be)))
        .map(|(key, _)| key)
        .collect();
    for key in &new {
        replies.remove(key)?;
    }
    loaded
        .dp
        .expire_half_open(std::time::Duration::from_secs(3600))?;
    loaded.next_flow = loaded.scenario.flows;
    Ok(())
}

/// The reference programs `xlb_floor` and `xlb_tx`, from the same object as
/// `xlb`.
struct References {
    ebpf: Ebpf,
}

impl References {
    fn load() -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(xlb::ebpf_object())
            .context("loading the eBPF object for the reference programs")?;
        for name in ["xlb_floor", "xlb_tx"] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name} in the eBPF object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("loading {name} (verifier)"))?;
        }
        Ok(Self { ebpf })
    }

    fn program(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .expect("loaded in References::load")
            .try_into()
            .expect("an XDP program")
    }
}

/// One call's result: action, output length, kernel-reported ns per run.
struct Call {
    action: u32,
    len: usize,
    ns: f64,
}

/// Runs `program` on `frame` as received on `ifindex`, `repeat` times.
fn call(
    program: &Xdp,
    ifindex: u32,
    frame: &[u8],
    out: &mut [u8],
    repeat: u32,
) -> anyhow::Result<Call> {
    let ctx = xlb_tests::xdp::xdp_md(frame.len(), ifindex);
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok(Call {
        action: result.return_value,
        len: result.data_size_out as usize,
        ns: result.duration.as_nanos() as f64,
    })
}

/// Fails unless a call gave `action` and exactly `want`.
fn check(what: &str, call: &Call, out: &[u8], action: u32, want: &[u8]) -> anyhow::Result<()> {
    ensure!(
        call.action == action,
        "{what}: action {} instead of {action}",
        call.action
    );
    let got = &out[..call.len];
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        bail!(
            "{what}: output differs from the expected frame at byte {at} (lengths {} and {})",
            got.len(),
            want.len()
        );
    }
    Ok(())
}

/// A small deterministic generator (xorshift64*), for picking flows.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// The measuring state shared by all scenarios.
struct Bench {
    refs: References,
    ifindex: u32,
    out: Vec<u8>,
    rng: Rng,
}

/// A loaded scenario: the data plane and the flows it holds.
struct Loaded<'s> {
    /// Backends taken out (`Scenario::out`), by global index.
    out: Vec<u32>,
    scenario: &'s Scenario,
    dp: Dataplane,
    /// Per established flow: its client index, its backend's global index
    /// and its SNAT port (in `dnat` mode the client's port).
    flows: Vec<(usize, u32, u16)>,
    /// SYNs dropped for want of a SNAT port.
    snat_ports_busy: u64,
    /// Index of the next fresh flow (for new-flow calls).
    next_flow: usize,
}

/// What one timed call of a path did.
enum PathKind {
    Established,
    NewFlow,
    Reply,
    Passthrough,
}

impl PathKind {
    fn name(&self) -> &'static str {
        match self {
            PathKind::Established => "established",
            PathKind::NewFlow => "new flow",
            PathKind::Reply => "reply",
            PathKind::Passthrough => "passthrough",
        }
    }
}

impl Bench {
    /// Times the do-nothing program, the floor and the pass-through path
    /// alone, with `repeat = 1` loops and with `repeat = N`.
    fn reference(&mut self, options: &Options) -> anyhow::Result<Vec<PathResult>> {
        let frame = tcp(client(0), SocketAddrV4::new(VIP, VIP_PORT), Transport::ACK).build();
        let mut swapped = frame.clone();
        swapped[..6].copy_from_slice(&frame[6..12]);
        swapped[6..12].copy_from_slice(&frame[..6]);
        let mut out = std::mem::take(&mut self.out);
        let ifindex = self.ifindex;
        let tx = self.refs.program("xlb_tx");
        let floor = self.refs.program("xlb_floor");

        let mut results = Vec::new();
        // repeat = 1: the floor interleaved with the do-nothing program.
        let (mut raw, mut overhead) = (Vec::new(), Vec::new());
        while raw.len() < options.calls {
            for _ in 0..options.batch {
                let c = call(floor, ifindex, &frame, &mut out, 1)?;
                check("floor", &c, &out, XDP_TX, &swapped)?;
                raw.push(c.ns);
            }
            for _ in 0..options.batch {
                let c = call(tx, ifindex, &frame, &mut out, 1)?;
                check("do-nothing", &c, &out, XDP_TX, &frame)?;
                overhead.push(c.ns);
            }
        }
        results.push(PathResult::new(
            "floor",
            format!("repeat=1 x{}", raw.len()),
            &raw,
            &overhead,
        ));
        results.push(PathResult::new(
            "do-nothing",
            format!("repeat=1 x{}", overhead.len()),
            &overhead,
            &overhead,
        ));

        // repeat = N: the frame is not restored between repetitions, so the
        // floor's output has its MACs swapped N times (N even: unchanged).
        let n = options.repeat;
        let floor_out = if n.is_multiple_of(2) {
            &frame
        } else {
            &swapped
        };
        let (mut floor_ns, mut tx_ns) = (Vec::new(), Vec::new());
        for _ in 0..options.repeat_calls {
            let c = call(floor, ifindex, &frame, &mut out, n)?;
            check("floor, repeat=N", &c, &out, XDP_TX, floor_out)?;
            floor_ns.push(c.ns);
            let c = call(tx, ifindex, &frame, &mut out, n)?;
            check("do-nothing, repeat=N", &c, &out, XDP_TX, &frame)?;
            tx_ns.push(c.ns);
        }
        let method = format!("repeat={n} x{}", options.repeat_calls);
        results.push(PathResult::new("floor", method.clone(), &floor_ns, &tx_ns));
        results.push(PathResult::new("do-nothing", method, &tx_ns, &tx_ns));
        self.out = out;
        for r in &results {
            eprintln!(
                "bench:   {:<12} {:<18} median {:>6.1} ns raw, {:>6.1} ns net",
                r.path, r.method, r.raw.median, r.net_median
            );
        }
        Ok(results)
    }

    /// Loads the data plane for `scenario` and opens its flows; returns it
    /// and the seconds the flows took.
    fn load<'s>(&mut self, scenario: &'s Scenario) -> anyhow::Result<(Loaded<'s>, f64)> {
        let mut dp = Dataplane::load_with(LoadOptions {
            flow_capacity: scenario.flow_capacity,
            flood: extra::flood_config(scenario.extra),
            ..LoadOptions::default()
        })?;
        // Attached (generic: nothing arrives here) so XDP may send out of
        // fx0, as out of a load balancer's NIC.
        dp.attach("fx0", ModeRequest::Generic)?;
        let mut loaded = Loaded {
            scenario,
            dp,
            flows: Vec::with_capacity(scenario.flows),
            next_flow: 0,
            snat_ports_busy: 0,
            out: Vec::new(),
        };
        let config = Config::parse(&config_text(scenario))?;
        loaded.dp.apply(&xlb::desired::Desired::from(&config))?;

        let started = Instant::now();
        while loaded.flows.len() < scenario.flows {
            let i = loaded.next_flow;
            loaded.next_flow += 1;
            let flow = self
                .open_flow(&mut loaded, i)
                .with_context(|| format!("opening flow {i} (drops so far: {})", drops(&loaded)))?;
            loaded.flows.extend(flow);
        }
        let seconds = started.elapsed().as_secs_f64();
        for k in (0..scenario.out).map(|k| (scenario.backends - 1 - k) as u32) {
            self.refuse(&mut loaded, k)
                .with_context(|| format!("taking backend {k} out"))?;
        }
        Ok((loaded, seconds))
    }

    /// Backend `k` refuses a fresh client's handshake (a RST to its SYN):
    /// the data plane takes it out of new flows (`max_fails = 1`).
    fn refuse(&mut self, loaded: &mut Loaded<'_>, k: u32) -> anyhow::Result<()> {
        let s = loaded.scenario;
        ensure!(s.services == 1, "backends out: a scenario of one service");
        let service = service_name(s, 0);
        let want = Some(at(s, backend_addr(k)));
        let mut i = loaded.next_flow;
        while loaded.dp.lookup(&service, first_draw(s, i))? != want {
            i += 1;
            ensure!(
                i < loaded.next_flow + 1_000_000,
                "no client's first pick is backend {k}"
            );
        }
        loaded.next_flow = i + 1;
        let syn = from_client(s, i, Transport::SYN);
        let c = self.once(loaded, &syn.build())?;
        let (backend, port) = self
            .check_new_flow(loaded, i, &syn, &c)?
            .context("the SYN was dropped")?;
        ensure!(backend == k, "the SYN went to backend {backend}");
        let refusal = segment(s, backend_addr(k), sent_from(s, i, port), Transport::RST)
            .macs(backend_mac(0), LB_MAC);
        let refused = loaded
            .dp
            .global_counter(GlobalCounter::DropRefusedHandshake)?;
        let c = self.once(loaded, &refusal.build())?;
        ensure!(
            c.action == XDP_DROP
                && loaded
                    .dp
                    .global_counter(GlobalCounter::DropRefusedHandshake)?
                    == refused + 1,
            "the refusal was not kept from the client as one (action {})",
            c.action
        );
        loaded.out.push(k);
        Ok(())
    }

    fn scenario(
        &mut self,
        scenario: &Scenario,
        options: &Options,
    ) -> anyhow::Result<ScenarioResult> {
        let (mut loaded, prefill_seconds) = self.load(scenario)?;

        let mut paths = Vec::new();
        let mut walk_seconds = Vec::new();
        match scenario.extra {
            Extra::None => {}
            Extra::Walk => {
                let (walks, seconds) = self.walks(&mut loaded, options)?;
                paths.extend(walks);
                walk_seconds = seconds;
            }
            Extra::OtherCpuBusy => {
                paths.extend(self.contended(&mut loaded, options)?);
                return Ok(ScenarioResult::new(
                    scenario,
                    prefill_seconds,
                    &loaded,
                    paths,
                ));
            }
            Extra::Cookies => {
                paths.push(self.cookies(&mut loaded, options)?);
                return Ok(ScenarioResult::new(
                    scenario,
                    prefill_seconds,
                    &loaded,
                    paths,
                ));
            }
        }
        // New flows last: they add to (and in a full table, evict from) the
        // flows the other paths use. No reply crosses a `dsr` data plane.
        for kind in [
            PathKind::Established,
            PathKind::Reply,
            PathKind::Passthrough,
            PathKind::NewFlow,
        ] {
            if matches!(kind, PathKind::Reply) && scenario.mode == "dsr" {
                continue;
            }
            let before = new_flows(&loaded)?;
            let busy = loaded.snat_ports_busy;
            let (raw, overhead) = self.interleaved(&mut loaded, &kind, options)?;
            let added = new_flows(&loaded)? - before;
            let want = match kind {
                PathKind::NewFlow => raw.len() as u64,
                _ => 0,
            };
            ensure!(
                matches!(kind, PathKind::NewFlow) || loaded.snat_ports_busy == busy,
                "{}: a SYN was dropped",
                kind.name()
            );
            ensure!(
                added == want,
                "{}: the data plane counted {added} new flows, expected {want}",
                kind.name()
            );
            paths.push(PathResult::new(
                kind.name(),
                format!("repeat=1 x{}", raw.len()),
                &raw,
                &overhead,
            ));
        }
        // Pass-through does not rewrite: time it with repeat = N as well.
        let frame = passthrough_frame().build();
        let program = loaded.dp.program()?;
        let tx = self.refs.program("xlb_tx");
        let (mut raw, mut overhead) = (Vec::new(), Vec::new());
        for _ in 0..options.repeat_calls {
            let c = call(program, self.ifindex, &frame, &mut self.out, options.repeat)?;
            check("passthrough, repeat=N", &c, &self.out, XDP_PASS, &frame)?;
            raw.push(c.ns);
            let c = call(tx, self.ifindex, &frame, &mut self.out, options.repeat)?;
            check("do-nothing, repeat=N", &c, &self.out, XDP_TX, &frame)?;
            overhead.push(c.ns);
        }
        paths.push(PathResult::new(
            "passthrough",
            format!("repeat={} x{}", options.repeat, raw.len()),
            &raw,
            &overhead,
        ));

        let mut result = ScenarioResult::new(scenario, prefill_seconds, &loaded, paths);
        result.walk_seconds = walk_seconds;
        Ok(result)
    }

    /// `options.calls` checked calls of `kind`, in batches alternating with
    /// as many calls of the do-nothing program.
    fn interleaved(
        &mut self,
        loaded: &mut Loaded<'_>,
        kind: &PathKind,
        options: &Options,
    ) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let tx_frame = passthrough_frame().build();
        let (mut raw, mut overhead) = (Vec::with_capacity(options.calls), Vec::new());
        while raw.len() < options.calls {
            for _ in 0..options.batch {
                raw.extend(self.path_call(loaded, kind)?);
            }
            let tx = self.refs.program("xlb_tx");
            for _ in 0..options.batch {
                let c = call(tx, self.ifindex, &tx_frame, &mut self.out, 1)?;
                check("do-nothing", &c, &self.out, XDP_TX, &tx_frame)?;
                overhead.push(c.ns);
            }
        }
        Ok((raw, overhead))
    }

    /// One checked `repeat = 1` call of `kind`; returns its ns (`None`: a
    /// new flow's SYN dropped for want of a SNAT port, counted, not timed).
    fn path_call(
        &mut self,
        loaded: &mut Loaded<'_>,
        kind: &PathKind,
    ) -> anyhow::Result<Option<f64>> {
        let (input, action, want) = match kind {
            PathKind::Established => {
                let flow = loaded.flows[self.rng.below(loaded.flows.len())];
                let (input, want) = established(loaded.scenario, flow);
                (input, XDP_TX, want)
            }
            PathKind::Reply => {
                let (i, backend, port) = loaded.flows[self.rng.below(loaded.flows.len())];
                let mut input = segment(
                    loaded.scenario,
                    backend_addr(backend),
                    sent_from(loaded.scenario, i, port),
                    Transport::ACK,
                )
                .macs(backend_mac(0), LB_MAC);
                input.payload = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
                let want = to_client(&input, loaded.scenario, i);
                (input, XDP_TX, want)
            }
            PathKind::Passthrough => {
                let input = passthrough_frame();
                let want = input.build();
                (input, XDP_PASS, want)
            }
            PathKind::NewFlow => {
                let i = loaded.next_flow;
                loaded.next_flow += 1;
                let input = from_client(loaded.scenario, i, Transport::SYN);
                let frame = input.build();
                let c = self.once(loaded, &frame)?;
                let opened = self.check_new_flow(loaded, i, &input, &c)?;
                return Ok(opened.map(|_| c.ns));
            }
        };
        let frame = input.build();
        let c = self.once(loaded, &frame)?;
        check(kind.name(), &c, &self.out, action, &want)?;
        Ok(Some(c.ns))
    }

    /// One `repeat = 1` run of the scenario's program on `frame`.
    fn once(&mut self, loaded: &mut Loaded<'_>, frame: &[u8]) -> anyhow::Result<Call> {
        call(loaded.dp.program()?, self.ifindex, frame, &mut self.out, 1)
    }

    /// Opens flow `i` through the program: the client's SYN (checked), then
    /// the backend's SYN-ACK (checked), so the flow is established. Returns
    /// its client index, backend and SNAT port (`None`: SYN dropped for
    /// want of a SNAT port).
    fn open_flow(
        &mut self,
        loaded: &mut Loaded<'_>,
        i: usize,
    ) -> anyhow::Result<Option<(usize, u32, u16)>> {
        let syn = from_client(loaded.scenario, i, Transport::SYN);
        let c = self.once(loaded, &syn.build())?;
        let Some((backend, port)) = self.check_new_flow(loaded, i, &syn, &c)? else {
            return Ok(None);
        };
        if loaded.scenario.mode == "dsr" {
            // The backend's SYN-ACK goes to the client directly; the
            // client's ACK completes the handshake.
            let ack = from_client(loaded.scenario, i, Transport::ACK);
            let c = self.once(loaded, &ack.build())?;
            let want = to_backend(&ack, loaded.scenario, backend, client(i));
            check("handshake ACK", &c, &self.out, XDP_TX, &want)?;
            return Ok(Some((i, backend, port)));
        }
        let syn_ack = segment(
            loaded.scenario,
            backend_addr(backend),
            sent_from(loaded.scenario, i, port),
            Transport::SYN_ACK,
        )
        .macs(backend_mac(0), LB_MAC);
        let c = self.once(loaded, &syn_ack.build())?;
        let want = to_client(&syn_ack, loaded.scenario, i);
        check("SYN-ACK", &c, &self.out, XDP_TX, &want)?;
        Ok(Some((i, backend, port)))
    }

    /// Checks a new flow's first packet went to the backend the agent's
    /// Maglev table names for it, from one of its SNAT port candidates, with
    /// every byte as `etherparse` builds it; returns the backend and port.
    /// A drop is accepted (`None`) only if counted as `drop_snat_ports_busy`.
    fn check_new_flow(
        &self,
        loaded: &mut Loaded<'_>,
        i: usize,
        input: &Frame,
        c: &Call,
    ) -> anyhow::Result<Option<(u32, u16)>> {
        if c.action == XDP_DROP {
            let busy = loaded.dp.global_counter(GlobalCounter::DropSnatPortsBusy)?;
            ensure!(
                busy > loaded.snat_ports_busy,
                "new flow: dropped, but not for want of a SNAT port"
            );
            loaded.snat_ports_busy = busy;
            return Ok(None);
        }
        ensure!(c.action == XDP_TX, "new flow: action {}", c.action);
        let out = &self.out[..c.len];
        ensure!(out.len() >= 38, "new flow: output of {} bytes", out.len());
        let hash = flow_hash(&input.flow_key(), false);
        let backend = if loaded.scenario.scheduler == "maglev" {
            // The first of the search's draws that names a backend still
            // taking new flows, else its last.
            let service = service_name(loaded.scenario, i);
            let mut draw = hash;
            let mut expected = None;
            for _ in 0..NEW_FLOW_PICKS {
                let named = loaded
                    .dp
                    .lookup(&service, draw)?
                    .context("the service has no backend")?;
                let named = backend_index(named)?;
                expected = Some(named);
                if !loaded.out.contains(&named) {
                    break;
                }
                draw = next_draw(draw);
            }
            expected.context("no draw")?
        } else {
            // Other methods pick by state (turns, live flows) the bench does
            // not model: any backend of the flow's service will do.
            ensure!(
                loaded.scenario.mode != "dsr" && !loaded.scenario.ipv6,
                "a dsr frame keeps the VIP, and IPv6 frames are not read here: their backend is \
                 checked by Maglev's pick only"
            );
            let sent_to = SocketAddrV4::new(
                std::net::Ipv4Addr::new(out[30], out[31], out[32], out[33]),
                u16::from_be_bytes([out[36], out[37]]),
            );
            let backend = backend_index(SocketAddr::V4(sent_to))?;
            let service = i % loaded.scenario.services;
            let first = (service * loaded.scenario.backends) as u32;
            ensure!(
                (first..first + loaded.scenario.backends as u32).contains(&backend),
                "new flow: sent to {sent_to}, not a backend of its service"
            );
            backend
        };
        // The source port, after the Ethernet and IP headers.
        let at_port = if loaded.scenario.ipv6 { 54 } else { 34 };
        ensure!(
            out.len() >= at_port + 2,
            "new flow: output of {} bytes",
            out.len()
        );
        let port = u16::from_be_bytes([out[at_port], out[at_port + 1]]);
        if loaded.scenario.mode == "nat" {
            ensure!(
                (0..SNAT_PORT_ATTEMPTS).any(|a| snat_candidate(hash, input.src.port(), a) == port),
                "new flow: source port {port} is none of the flow's candidates"
            );
        }
        let from = sent_from(loaded.scenario, i, port);
        check(
            "new flow",
            c,
            &self.out,
            XDP_TX,
            &to_backend(input, loaded.scenario, backend, from),
        )?;
        Ok(Some((backend, port)))
    }
}

/// A client's ACK with data on established `flow` (client index, backend,
/// SNAT port), and the frame xlb sends the backend for it.
fn established(scenario: &Scenario, (i, backend, port): (usize, u32, u16)) -> (Frame, Vec<u8>) {
    let mut input = from_client(scenario, i, Transport::ACK);
    input.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    let want = to_backend(&input, scenario, backend, sent_from(scenario, i, port));
    (input, want)
}

/// Where flow `i`'s packets reach its backend from: the SNAT address and
/// `port` in `nat` mode, the client itself in `dnat` and `dsr` mode (where
/// `port` is the client's).
fn sent_from(scenario: &Scenario, i: usize, port: u16) -> SocketAddrV4 {
    if scenario.mode != "nat" {
        client(i)
    } else {
        SocketAddrV4::new(SNAT, port)
    }
}

/// New flows the data plane counted over every backend of the scenario.
fn new_flows(loaded: &Loaded<'_>) -> anyhow::Result<u64> {
    let s = loaded.scenario;
    let mut total = 0;
    for service in 0..s.services {
        let name = service_name(s, service);
        for k in 0..s.backends {
            let addr = at(s, backend_addr((service * s.backends + k) as u32));
            total += loaded.dp.backend_counters(&name, addr)?.new_flows;
        }
    }
    Ok(total)
}

fn config_text(s: &Scenario) -> String {
    let mut text = String::new();
    for service in 0..s.services {
        text += &format!(
            "[[service]]\nname = \"{}\"\nvip = \"{}\"\nport = {}\nmode = \"{}\"\ntable_size = {}\nscheduler = \"{}\"\n",
            service_name(s, service),
            at(s, vip(s, service)).ip(),
            vip(s, service).port(),
            s.mode,
            s.table_size,
            s.scheduler
        );
        if s.mode == "nat" {
            let snat = at(s, SocketAddrV4::new(SNAT, 0)).ip();
            text += &format!("snat = \"{snat}\"\n");
        }
        if s.protocol == "udp" {
            text += "protocol = \"udp\"\n";
        }
        if s.mode == "dsr" {
            // Required in `dsr` mode; the bench runs no agent to probe.
            text += "[service.health_check]\ntype = \"tcp\"\n";
        }
        for k in 0..s.backends {
            let backend = at(s, backend_addr((service * s.backends + k) as u32));
            text += &format!("[[service.backend]]\naddress = \"{backend}\"\n");
        }
    }
    text
}

/// The first draw of flow `i`'s backend search: its SYN's hash.
fn first_draw(s: &Scenario, i: usize) -> u32 {
    flow_hash(&from_client(s, i, Transport::SYN).flow_key(), false)
}

/// Service of flow `i` (flows are spread over the services in turn).
fn service_name(s: &Scenario, i: usize) -> String {
    format!("s{}", i % s.services)
}

/// VIP of the service of flow `i`.
/// A `dsr` service listens on its backends' port (the frame keeps it).
fn vip(s: &Scenario, i: usize) -> SocketAddrV4 {
    let service = i % s.services;
    let port = if s.mode == "dsr" {
        BACKEND_PORT
    } else {
        VIP_PORT
    };
    if s.services == 1 {
        SocketAddrV4::new(VIP, port)
    } else {
        let (hi, lo) = (service / 250, service % 250 + 1);
        SocketAddrV4::new(Ipv4Addr::new(10, 100, hi as u8, lo as u8), port)
    }
}

/// Backend number `g` (over all services): 10.50.0.1 onwards, port 8000.
fn backend_addr(g: u32) -> SocketAddrV4 {
    let n = g + 1;
    SocketAddrV4::new(Ipv4Addr::new(10, 50, (n >> 8) as u8, n as u8), BACKEND_PORT)
}

fn backend_index(addr: SocketAddr) -> anyhow::Result<u32> {
    match addr.ip() {
        IpAddr::V4(v4) if v4.octets()[..2] == [10, 50] => {
            let [_, _, hi, lo] = v4.octets();
            Ok((u32::from(hi) << 8 | u32::from(lo)) - 1)
        }
        IpAddr::V6(v6) if v6.segments()[..6] == [0xfd50, 0, 0, 0, 0, 0] => {
            let [.., hi, lo] = v6.segments();
            Ok((u32::from(hi) << 8 | u32::from(lo)) - 1)
        }
        other => bail!("{other} is not a bench backend"),
    }
}

/// `addr` in `s`'s address family: itself, or in an IPv6 scenario
/// 10.B.C.D as fdBB::C:D (B in hex digits: 10.50.0.1 is fd50::0:1 when B
/// is 50, as every bench address's B is below 100) with the same port.
fn at(s: &Scenario, addr: SocketAddrV4) -> SocketAddr {
    if !s.ipv6 {
        return SocketAddr::V4(addr);
    }
    let [_, b, c, d] = addr.ip().octets();
    let prefix = 0xfd00 | u16::from(b / 10) << 4 | u16::from(b % 10);
    let ip = std::net::Ipv6Addr::new(prefix, 0, 0, 0, 0, 0, u16::from(c), u16::from(d));
    SocketAddr::new(IpAddr::V6(ip), addr.port())
}

/// Client of flow `i`: 10.60.0.1 onwards, 50 000 ports each.
fn client(i: usize) -> SocketAddrV4 {
    let (host, port) = (i / 50_000, i % 50_000);
    SocketAddrV4::new(
        Ipv4Addr::new(10, 60, (host / 250) as u8, (host % 250 + 1) as u8),
        10_000 + port as u16,
    )
}

/// Traffic for the load balancer host itself (not a service, not a reply).
fn passthrough_frame() -> Frame {
    tcp(
        client(0),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 22),
        Transport::ACK,
    )
}

/// Flow `i`'s client's packet to its service ([`segment`]).
fn from_client(s: &Scenario, i: usize, transport: Transport) -> Frame {
    segment(s, client(i), vip(s, i), transport)
}

/// A packet of one of `s`'s flows: a TCP segment with `transport`'s flags,
/// or in a `udp` scenario a datagram (which has none: a flow's first
/// stands for its SYN, the backend's first for its SYN-ACK).
fn segment(s: &Scenario, src: SocketAddrV4, dst: SocketAddrV4, transport: Transport) -> Frame {
    // Placeholder addresses, replaced below.
    let mut frame = if s.protocol == "udp" {
        Frame::udp("10.0.0.2:1", "10.0.0.1:1")
    } else {
        Frame::tcp("10.0.0.2:1", "10.0.0.1:1", transport)
    };
    frame.src = at(s, src);
    frame.dst = at(s, dst);
    frame
}

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, transport: Transport) -> Frame {
    let mut frame = Frame::tcp("10.0.0.2:1", "10.0.0.1:1", transport);
    frame.src = src.into();
    frame.dst = dst.into();
    frame
}

/// A client packet as xlb sends it on to backend `g` from `from` (see
/// [`sent_from`]; by XDP, so one hop further: TTL less one). A `dsr` frame
/// stays addressed to the service.
fn to_backend(input: &Frame, s: &Scenario, g: u32, from: SocketAddrV4) -> Vec<u8> {
    let dst = if s.mode == "dsr" {
        input.dst
    } else {
        at(s, backend_addr(g))
    };
    Frame {
        src: at(s, from),
        dst,
        src_mac: LB_MAC,
        dst_mac: backend_mac(0),
        ..input.clone()
    }
    .hop()
    .build()
}

/// A backend's packet of flow `i` as xlb sends it on to the client (by
/// XDP, so one hop further: TTL less one).
fn to_client(input: &Frame, s: &Scenario, i: usize) -> Vec<u8> {
    Frame {
        src: at(s, vip(s, i)),
        dst: at(s, client(i)),
        src_mac: LB_MAC,
        dst_mac: CLIENT_MAC,
        ..input.clone()
    }
    .hop()
    .build()
}

/// Pins the calling thread to `cpu`, so every run sees the same caches.
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for any
    // cpu below CPU_SETSIZE, checked first; sched_setaffinity(0) acts on the
    // calling thread.
    unsafe {
        ensure!(cpu < libc::CPU_SETSIZE as usize, "cpu {cpu} out of range");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning to cpu {cpu}"));
        }
    }
    Ok(())
}

/// The drop counters that moved, as `drop_x=n, …`: what went wrong when a
/// frame the bench sent came back dropped.
fn drops(loaded: &Loaded<'_>) -> String {
    let moved: Vec<String> = loaded
        .dp
        .global_counters()
        .unwrap_or_default()
        .into_iter()
        .filter(|(c, n)| *n > 0 && c.label().starts_with("drop_"))
        .map(|(c, n)| format!("{}={n}", c.label()))
        .collect();
    moved.join(", ")
}
