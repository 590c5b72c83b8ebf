//! The results as JSON (serde) and as Markdown, with the targets
//! evaluated (reported, never asserted).

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    dataplane::{DataplaneResults, PathResult},
    e2e::{E2eResults, Load, RunResult},
    machine::Machine,
};

/// Everything one bench run found.
#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: Machine,
    /// Fraction of the machine's CPU busy in the second before the bench
    /// started (other work on the machine makes the numbers noisier).
    pub busy_before: f64,
    pub targets: Vec<Target>,
    pub dataplane: Option<DataplaneResults>,
    pub e2e: Option<E2eResults>,
}

/// A target from the issue and how this run did against it.
#[derive(Debug, Serialize)]
pub struct Target {
    pub target: String,
    /// The measured ratio.
    pub value: Option<f64>,
    /// How it was computed.
    pub detail: String,
    /// `None` when it could not be measured (or every round behind it had
    /// errors).
    pub met: Option<bool>,
}

impl Target {
    /// A target this run could not evaluate, and why.
    fn unmeasured(target: String, why: &str) -> Self {
        Self {
            target,
            value: None,
            detail: why.to_owned(),
            met: None,
        }
    }
}

impl Results {
    pub fn new(
        machine: Machine,
        busy_before: f64,
        dataplane: Option<DataplaneResults>,
        e2e: Option<E2eResults>,
    ) -> Self {
        let mut targets = Vec::new();
        if let Some(dp) = &dataplane {
            targets.extend(per_packet_targets(dp));
        }
        if let Some(e2e) = &e2e {
            targets.extend(e2e_targets(e2e));
        }
        Self {
            machine,
            busy_before,
            targets,
            dataplane,
            e2e,
        }
    }
}

/// The per-packet targets of issue 13, as multiples of the floor's net
/// cost in the same run (Katran's own multiples on this machine type), in
/// `nat` mode and, where the modes differ, in `dnat` mode.
const PER_PACKET_TARGETS: [(&str, &str, &str, f64); 9] = [
    (
        "established, one hot flow",
        "flow table 1 (hot)",
        "established",
        3.0,
    ),
    (
        "established, walk over 100 000 flows idle > 1 s",
        "100k flows",
        "walk, idle > 1 s",
        9.0,
    ),
    (
        "established, walk over 100 000 flows idle < 1 s",
        "100k flows",
        "walk, idle < 1 s",
        9.0,
    ),
    ("new flow (SYN)", "baseline", "new flow", 10.0),
    (
        "passthrough (not a service)",
        "baseline",
        "passthrough",
        1.2,
    ),
    ("reply, one hot flow", "flow table 1 (hot)", "reply", 3.0),
    (
        "dnat: established, one hot flow",
        "dnat hot flow",
        "established",
        3.0,
    ),
    ("dnat: new flow (SYN)", "dnat", "new flow", 10.0),
    ("dnat: reply, one hot flow", "dnat hot flow", "reply", 3.0),
];

fn per_packet_targets(dp: &DataplaneResults) -> Vec<Target> {
    let floor = dp
        .reference("floor", "repeat=1")
        .map(|f| f.net_median)
        .filter(|f| *f > 0.0);
    PER_PACKET_TARGETS
        .iter()
        .map(|&(what, scenario, path, goal)| {
            let target = format!("{what}: <= {goal}x the floor (net ns)");
            let measured = dp
                .scenarios
                .iter()
                .find(|s| s.name == scenario)
                .and_then(|s| s.path(path));
            match (measured, floor) {
                (Some(p), Some(f)) => {
                    let ratio = p.net_median / f;
                    Target {
                        target,
                        value: Some(ratio),
                        detail: format!(
                            "{:.0} ns / {f:.0} ns = {ratio:.1}x ({scenario})",
                            p.net_median
                        ),
                        met: Some(ratio <= goal),
                    }
                }
                _ => Target::unmeasured(target, "not measured"),
            }
        })
        .collect()
}

fn e2e_targets(e2e: &E2eResults) -> Vec<Target> {
    // The median of the rounds that got all their answers: a round with
    // errors is left out (the table flags it, "Problems" says what), and
    // the target says so.
    let run = |setup: &str, load| e2e.setup(setup).and_then(|s| s.clean_run(load));
    let none_ka = run("none", Load::KeepAlive);
    let none_new = run("none", Load::NewConnection);
    // xlb over the 4 backends, and over b0 only: the same backend as none.
    let setups = [
        ("xlb-nat", ""),
        ("xlb-dnat", ""),
        ("xlb-nat-b0", " (same single backend as none)"),
    ];
    let ran = |name: &str| e2e.setup(name).is_some();
    let mut targets = Vec::new();
    for (name, note) in setups.iter().filter(|(n, _)| ran(n)) {
        targets.push(left_out(
            ratio_target(
                format!("{name}{note}: keep-alive req/s >= 0.95x no load balancer"),
                run(name, Load::KeepAlive),
                none_ka,
                0.95,
            ),
            e2e,
            &[name, "none"],
            Load::KeepAlive,
        ));
    }
    for (name, note) in setups.iter().filter(|(n, _)| ran(n)) {
        targets.push(left_out(
            p99_target(
                format!("{name}{note}: keep-alive p99 latency <= 1.5x no load balancer's"),
                run(name, Load::KeepAlive),
                none_ka,
                1.5,
            ),
            e2e,
            &[name, "none"],
            Load::KeepAlive,
        ));
    }
    let peers: Vec<(&str, Option<&RunResult>)> = ["nginx", "haproxy", "nftables"]
        .iter()
        .map(|p| (*p, run(p, Load::KeepAlive)))
        .collect();
    for name in ["xlb-nat", "xlb-dnat"].into_iter().filter(|n| ran(n)) {
        let target = format!("{name}: keep-alive req/s ahead of nginx, HAProxy and nftables");
        targets.push(
            match (
                run(name, Load::KeepAlive),
                peers.iter().all(|(_, r)| r.is_some()),
            ) {
                (Some(x), true) => {
                    let (best_name, best) = peers
                        .iter()
                        .map(|(n, r)| (*n, r.expect("checked").requests_per_s))
                        .max_by(|a, b| a.1.total_cmp(&b.1))
                        .expect("three peers");
                    let ratio = x.requests_per_s / best;
                    Target {
                        target,
                        value: Some(ratio),
                        detail: format!(
                            "{:.0} req/s vs the best peer, {best_name}, {best:.0} req/s: \
                             {ratio:.2}x",
                            x.requests_per_s
                        ),
                        met: Some(ratio > 1.0),
                    }
                }
                _ => Target::unmeasured(target, "a setup is missing or every round had errors"),
            },
        );
        let last = targets.pop().expect("just pushed");
        targets.push(left_out(
            last,
            e2e,
            &[name, "nginx", "haproxy", "nftables"],
            Load::KeepAlive,
        ));
    }
    for (name, note) in setups.iter().filter(|(n, _)| ran(n)) {
        targets.push(left_out(
            ratio_target(
                format!("{name}{note}: one-connection-per-request req/s >= 0.9x no load balancer"),
                run(name, Load::NewConnection),
                none_new,
                0.9,
            ),
            e2e,
            &[name, "none"],
            Load::NewConnection,
        ));
    }
    for name in ["xlb-nat", "xlb-dnat"].into_iter().filter(|n| ran(n)) {
        let target = format!(
            "{name}: through a random-source SYN flood, every keep-alive connection survives \
             and req/s stay >= 0.5x those before"
        );
        targets.push(match e2e.setup(name).and_then(|s| s.flood.as_ref()) {
            Some(f) if f.rps_before > 0.0 => {
                let ratio = f.rps_during / f.rps_before;
                Target {
                    target,
                    value: Some(ratio),
                    detail: format!(
                        "{} of {} survived; {:.0} / {:.0} req/s = {ratio:.2}x at {:.0} SYNs/s",
                        f.survived, f.connections, f.rps_during, f.rps_before, f.syns_per_s
                    ),
                    met: Some(f.survived == f.connections && ratio >= 0.5),
                }
            }
            _ => Target::unmeasured(target, "the flood did not run, or no load before it"),
        });
    }
    targets
}

/// `target`, evaluated on the rounds of `setups` under `load` that got all
/// their answers, with a note of the rounds left out, if any.
fn left_out(mut target: Target, e2e: &E2eResults, setups: &[&str], load: Load) -> Target {
    let left: Vec<String> = setups
        .iter()
        .filter_map(|name| {
            let n = e2e.setup(name)?.rounds_with_problems(load);
            (n > 0).then(|| format!("{name} {n}"))
        })
        .collect();
    if target.value.is_some() && !left.is_empty() {
        target.detail += &format!(" (rounds with errors left out: {})", left.join(", "));
    }
    target
}

fn ratio_target(
    target: String,
    run: Option<&RunResult>,
    base: Option<&RunResult>,
    goal: f64,
) -> Target {
    match (run, base) {
        (Some(r), Some(b)) if b.requests_per_s > 0.0 => {
            let ratio = r.requests_per_s / b.requests_per_s;
            Target {
                target,
                value: Some(ratio),
                detail: format!(
                    "{:.0} / {:.0} req/s = {ratio:.2}x",
                    r.requests_per_s, b.requests_per_s
                ),
                met: Some(ratio >= goal),
            }
        }
        _ => Target::unmeasured(target, "a setup is missing or every round had errors"),
    }
}

/// `run`'s p99 latency over `base`'s, met at or below `goal`; the medians
/// beside them.
fn p99_target(
    target: String,
    run: Option<&RunResult>,
    base: Option<&RunResult>,
    goal: f64,
) -> Target {
    match (run, base) {
        (Some(r), Some(b)) if b.p99_us > 0.0 => {
            let ratio = r.p99_us / b.p99_us;
            Target {
                target,
                value: Some(ratio),
                detail: format!(
                    "p99 {:.2} / {:.2} ms = {ratio:.2}x (p50 {:.2} / {:.2} ms)",
                    r.p99_us / 1e3,
                    b.p99_us / 1e3,
                    r.p50_us / 1e3,
                    b.p50_us / 1e3
                ),
                met: Some(ratio <= goal),
            }
        }
        _ => Target::unmeasured(target, "a setup is missing or every round had errors"),
    }
}

/// Formats a count with thin groups: 54321 -> "54 321".
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// The results as Markdown: targets, data plane, scale, end to end.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# xlb bench results\n");
    let _ = writeln!(
        md,
        "Run {} on {} ({} CPUs{}), {} GiB, kernel {}, {}; code `{}`. \
         CPU busy in the second before the run: {:.0}%.\n",
        m.date,
        m.cpu_model,
        m.cpus,
        if m.virtualized {
            ", virtual machine"
        } else {
            ""
        },
        m.memory_gib,
        m.kernel,
        m.os,
        m.commit,
        r.busy_before * 100.0
    );

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | measured | met |\n|---|---|---|");
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(md, "| {} | {} | {met} |", t.target, t.detail);
    }
    md.push('\n');

    if let Some(dp) = &r.dataplane {
        dataplane_markdown(&mut md, dp);
    }
    if let Some(e2e) = &r.e2e {
        e2e_markdown(&mut md, e2e);
    }
    md
}

fn dataplane_markdown(md: &mut String, dp: &DataplaneResults) {
    let base = dp.baseline();
    let floor_net = dp.reference("floor", "repeat=1").map(|f| f.net_median);
    let _ = writeln!(md, "## Data plane: ns per packet (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        md,
        "Baseline: {} service, {} backends (`nat`), Maglev table {}, flow table of {} holding \
         {} established flows; IPv4 TCP frames of 59-73 bytes. `repeat=1`: that many single \
         runs, each checked; `repeat=N`: calls of N runs, for frames the program does not \
         rewrite. *net* = median minus the median of the do-nothing program timed the same \
         way, interleaved.\n",
        base.services, base.backends_per_service, base.table_size, base.flow_capacity, base.flows
    );
    let _ = writeln!(
        md,
        "| path | method | median | p10 | p90 | do-nothing | net | net / floor |\n\
         |---|---|---:|---:|---:|---:|---:|---:|"
    );
    let row = |md: &mut String, p: &PathResult| {
        let vs_floor = match floor_net {
            Some(f) if f > 0.0 && p.path != "do-nothing" => {
                format!("{:.1}x", p.net_median / f)
            }
            _ => String::new(),
        };
        let precision = if p.method.starts_with("repeat=1 ") {
            0
        } else {
            1
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.*} | {:.*} | {:.*} | {:.*} | {:.*} | {vs_floor} |",
            p.path,
            p.method,
            precision,
            p.raw.median,
            precision,
            p.raw.p10,
            precision,
            p.raw.p90,
            precision,
            p.overhead.median,
            precision,
            p.net_median,
        );
    };
    for p in &dp.reference {
        row(md, p);
    }
    for p in &base.paths {
        row(md, p);
    }
    md.push('\n');

    let _ = writeln!(md, "### Scale: net ns per packet (median)\n");
    let _ = writeln!(
        md,
        "One dimension at a time; `repeat=1` loops except the last column.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | services x backends | table | flows / capacity | established | new flow | \
         reply | passthrough | passthrough (repeat=N) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for s in &dp.scenarios {
        let find = |path: &str, single: bool| {
            s.paths
                .iter()
                .find(|p| p.path == path && p.method.starts_with("repeat=1 ") == single)
        };
        let net = |path: &str| {
            find(path, true).map_or("-".to_owned(), |p| format!("{:.0}", p.net_median))
        };
        let repeated =
            find("passthrough", false).map_or("-".to_owned(), |p| format!("{:.1}", p.net_median));
        let _ = writeln!(
            md,
            "| {} | {} x {} | {} | {} / {} | {} | {} | {} | {} | {repeated} |",
            s.name,
            s.services,
            s.backends_per_service,
            s.table_size,
            s.flows,
            s.flow_capacity,
            net("established"),
            net("new flow"),
            net("reply"),
            net("passthrough"),
        );
    }
    md.push('\n');
    extra_markdown(md, dp, floor_net);
    katran_markdown(md, dp);
}

/// A scenario's name and one of its paths (`("", "")`: none).
type ScenarioPath = (&'static str, &'static str);

/// Katran's net ns per packet on this machine type, as issue 13 measured
/// them (its default build, 1 VIP, 4 reals, a per-CPU LRU of 262 144), and
/// the scenario and path that time the same packet in each of xlb's modes.
const BESIDE_KATRAN: [(&str, (f64, f64), [ScenarioPath; 3]); 5] = [
    (
        "established, one hot flow",
        (150.0, 150.0),
        [
            ("flow table 1 (hot)", "established"),
            ("dnat hot flow", "established"),
            ("dsr hot flow", "established"),
        ],
    ),
    (
        "established, walk over 100 000 flows idle > 1 s",
        (400.0, 470.0),
        [("100k flows", "walk, idle > 1 s"), ("", ""), ("", "")],
    ),
    (
        "established, walk over 100 000 flows idle < 1 s",
        (400.0, 430.0),
        [("100k flows", "walk, idle < 1 s"), ("", ""), ("", "")],
    ),
    (
        "new flow (SYN)",
        (500.0, 510.0),
        [
            ("baseline", "new flow"),
            ("dnat", "new flow"),
            ("dsr", "new flow"),
        ],
    ),
    (
        "passthrough (not a service)",
        (50.0, 50.0),
        [
            ("baseline", "passthrough"),
            ("dnat", "passthrough"),
            ("dsr", "passthrough"),
        ],
    ),
];

/// xlb's net ns per packet in each mode beside Katran's. Katran sends by
/// IPIP to the real, which answers the client itself: `dsr` is the like
/// for like; `nat` and `dnat` also carry the replies (and keep an entry
/// for them per flow).
fn katran_markdown(md: &mut String, dp: &DataplaneResults) {
    let net = |(scenario, path): (&str, &str)| {
        dp.scenarios
            .iter()
            .find(|s| s.name == scenario)
            .and_then(|s| s.path(path))
            .map(|p| p.net_median)
    };
    if !BESIDE_KATRAN
        .iter()
        .any(|(_, _, modes)| modes.iter().any(|&m| net(m).is_some()))
    {
        return;
    }
    let _ = writeln!(
        md,
        "### Beside Katran: net ns per packet
"
    );
    let _ = writeln!(
        md,
        "Katran's figures are issue 13's, on this machine type (not rerun here). Katran \
         tunnels each packet to its real, which answers the client itself: `dsr` is the like \
         for like; `nat` and `dnat` also carry every reply, `nat` with a reply entry per flow \
         (its source-port claim), `dnat` finding the flow itself. \
         *at or below*: the modes at or below Katran's lower figure, or within its range.\n"
    );
    let _ = writeln!(
        md,
        "| path | Katran | nat | dnat | dsr | at or below Katran |\n|---|---:|---:|---:|---:|---|"
    );
    for &(what, (low, high), modes) in &BESIDE_KATRAN {
        let katran = if low == high {
            format!("{low:.0}")
        } else {
            format!("{low:.0}–{high:.0}")
        };
        let figures: Vec<Option<f64>> = modes.iter().map(|&m| net(m)).collect();
        let cells: Vec<String> = figures
            .iter()
            .map(|f| f.map_or("-".to_owned(), |ns| format!("{ns:.0}")))
            .collect();
        // A mode at or below Katran's lower figure, or within its range.
        let verdicts: Vec<String> = ["nat", "dnat", "dsr"]
            .into_iter()
            .zip(&figures)
            .filter_map(|(mode, f)| match f {
                Some(ns) if *ns <= low => Some(mode.to_owned()),
                Some(ns) if *ns <= high => Some(format!("{mode} (within its range)")),
                _ => None,
            })
            .collect();
        let verdict = if figures.iter().all(Option::is_none) {
            "not measured".to_owned()
        } else if verdicts.is_empty() {
            "**no**".to_owned()
        } else {
            verdicts.join(", ")
        };
        let _ = writeln!(
            md,
            "| {what} | {katran} | {} | {} | {} | {verdict} |",
            cells[0], cells[1], cells[2]
        );
    }
    md.push('\n');
}

/// The walks, both CPUs at once, SYN cookies, and what one core sustains.
fn extra_markdown(md: &mut String, dp: &DataplaneResults, floor_net: Option<f64>) {
    let scenario = |name: &str| dp.scenarios.iter().find(|s| s.name == name);
    let extra: Vec<_> = ["100k flows", "both CPUs", "SYN cookies"]
        .into_iter()
        .filter_map(scenario)
        .collect();
    if extra.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### Walks, both CPUs, SYN cookies: net ns per packet
"
    );
    let _ = writeln!(
        md,
        "*100,000 flows*: 1 service x 4 backends, a flow table of 262 144; every flow \
         visited once per walk in one random order, the first walk after all were idle for \
         1.1 s, the second right after it. *both CPUs*: the baseline's paths timed while a \
         thread on the other CPU runs the same path without pause on the same maps. *SYN \
         cookies*: `syn_cookies = \"always\"`, each SYN from an address of its own.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | path | median | p10 | p90 | net | net / floor |\n\
         |---|---|---:|---:|---:|---:|---:|"
    );
    for s in &extra {
        for p in s.paths.iter().filter(|p| p.method.starts_with("repeat=1 ")) {
            let vs = floor_net.map_or(String::new(), |f| format!("{:.1}x", p.net_median / f));
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {vs} |",
                s.name, p.path, p.raw.median, p.raw.p10, p.raw.p90, p.net_median
            );
        }
        if !s.walk_seconds.is_empty() {
            let walks: Vec<String> = s.walk_seconds.iter().map(|w| format!("{w:.2} s")).collect();
            let _ = writeln!(
                md,
                "| {} | (walks took {}) | | | | | |",
                s.name,
                walks.join(", ")
            );
        }
    }
    md.push('\n');
    let per_core = |scenario_name: &str, path: &str| {
        scenario(scenario_name)
            .and_then(|s| s.path(path))
            .filter(|p| p.net_median > 0.0)
            .map(|p| 1e9 / p.net_median)
    };
    let line_rate = 14.88e6;
    for (what, rate) in [
        (
            "new flows (baseline SYNs)",
            per_core("baseline", "new flow"),
        ),
        (
            "new flows with the other CPU opening flows too",
            per_core("both CPUs", "new flow, other CPU busy"),
        ),
        (
            "SYNs answered with cookies",
            per_core("SYN cookies", "syn cookie"),
        ),
    ] {
        if let Some(rate) = rate {
            let _ = writeln!(
                md,
                "- {what}: {} a second on one core (1 / net ns), {:.1}% of 10 GbE line rate \
                 in 64-byte SYNs (14.88 Mpps)",
                grouped(rate),
                100.0 * rate / line_rate
            );
        }
    }
    md.push('\n');
}

fn e2e_markdown(md: &mut String, e2e: &E2eResults) {
    let o = &e2e.options;
    let _ = writeln!(md, "## End to end in the lab\n");
    let _ = writeln!(
        md,
        "wrk, {} threads, {} connections, {} s per run after a 1 s warm-up, from the client \
         namespace; 4 backends (`xlb-lab-httpd`); a {} lab (docs/lab.md). CPU = busy time of \
         the whole machine (wrk, backends and load balancer together) per request, from \
         /proc/stat.\n",
        o.threads, o.connections, o.duration_s, o.shape
    );
    let none = e2e.setup("none");
    let _ = writeln!(
        md,
        "Each setup ran {} rounds (setups rotated between rounds); the table shows the median \
         round by requests/s, with the lowest and highest round. *vs none* compares medians.\n",
        o.rounds
    );
    let _ = writeln!(
        md,
        "| setup | keep-alive req/s (range) | vs none | p50 / p99 ms | CPU us/req | \
         new-conn req/s (range) | vs none | p50 / p99 ms | CPU us/req |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut problems = Vec::new();
    for s in &e2e.setups {
        let mut cells = vec![s.name.clone()];
        for load in [Load::KeepAlive, Load::NewConnection] {
            match s.run(load) {
                Some(r) => {
                    for bad in s.runs_of(load).filter(|r| !r.ok()) {
                        problems.push(format!(
                            "{} ({}, round {}): {}",
                            s.name,
                            load.label(),
                            bad.round + 1,
                            bad.problems.join("; ")
                        ));
                    }
                    let flag = if s.all_ok(load) { "" } else { " (errors)" };
                    let (lo, hi) = s.runs_of(load).fold((f64::MAX, 0.0f64), |(lo, hi), r| {
                        (lo.min(r.requests_per_s), hi.max(r.requests_per_s))
                    });
                    let vs = none
                        .and_then(|n| n.run(load))
                        .filter(|n| n.requests_per_s > 0.0)
                        .map_or(String::new(), |n| {
                            format!("{:.2}", r.requests_per_s / n.requests_per_s)
                        });
                    cells.push(format!(
                        "{}{flag} ({}-{})",
                        grouped(r.requests_per_s),
                        grouped(lo),
                        grouped(hi)
                    ));
                    cells.push(vs);
                    cells.push(format!("{:.2} / {:.2}", r.p50_us / 1e3, r.p99_us / 1e3));
                    cells.push(format!("{:.1}", r.cpu_us_per_request));
                }
                None => cells.extend(std::iter::repeat_n("-".to_owned(), 4)),
            }
        }
        let _ = writeln!(md, "| {} |", cells.join(" | "));
        if let Some(e) = &s.error {
            problems.push(format!("{}: {e}", s.name));
        }
    }
    md.push('\n');
    for s in &e2e.setups {
        let reached: Vec<String> = s.reached.iter().map(|(b, n)| format!("{b} {n}")).collect();
        let in_situ: String = s
            .xlb_in_situ
            .iter()
            .map(|i| {
                format!(
                    "; {}: its program took {:.0} ns a packet x {:.1} packets a request = \
                     {:.1} us CPU a request",
                    i.load.label(),
                    i.ns_per_packet,
                    i.packets_per_request,
                    i.us_per_request
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "- **{}**: {}; `{}`; 40 one-shot requests reached {}{in_situ}.",
            s.name,
            s.description,
            s.url,
            if reached.is_empty() {
                "-".to_owned()
            } else {
                reached.join(", ")
            }
        );
    }
    let busy: Vec<f64> = e2e
        .setups
        .iter()
        .flat_map(|s| s.runs.iter().map(|r| r.busy_before))
        .collect();
    if let Some(worst) = busy.iter().copied().max_by(f64::total_cmp) {
        let _ = writeln!(
            md,
            "\nOther work on the machine, measured with the lab idle just before each run: \
             at most {:.0}% busy ({} of {} runs above 10%).",
            worst * 100.0,
            busy.iter().filter(|b| **b > 0.1).count(),
            busy.len()
        );
    }
    let retransmits: Vec<String> = e2e
        .setups
        .iter()
        .filter(|s| !s.runs.is_empty())
        .map(|s| {
            format!(
                "{} {}",
                s.name,
                s.runs.iter().map(|r| r.tcp_retransmits).sum::<u64>()
            )
        })
        .collect();
    if !retransmits.is_empty() {
        let _ = writeln!(
            md,
            "\nTCP segments retransmitted by the client and the backends, all measured runs of \
             a setup together: {}.",
            retransmits.join(", ")
        );
    }
    flood_markdown(md, e2e);
    if !problems.is_empty() {
        let _ = writeln!(md, "\nProblems:\n");
        for p in problems {
            let _ = writeln!(md, "- {p}");
        }
    }
    md.push('\n');
}

/// The SYN-flood scenario's table, if it ran.
fn flood_markdown(md: &mut String, e2e: &E2eResults) {
    let floods: Vec<_> = e2e
        .setups
        .iter()
        .filter_map(|s| s.flood.as_ref().map(|f| (s, f)))
        .collect();
    let Some((_, first)) = floods.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "\n### Through a random-source SYN flood\n\n\
         {} keep-alive connections from the client namespace, each sending `GET /` after \
         `GET /` (not replaced when they break), for 2 s; then `hping3 -S --flood \
         --rand-source` at the setup's address (the VIP; b0 itself for none) for {:.0} s, also \
         from the client namespace, while they go on; right after it, {} new connections one \
         after another, each to be answered within 900 ms; 2 s more. xlb's flow table has {} \
         entries (`[flows] table_size`). One run per setup, after the rounds above. hping3 \
         sends as fast as it can, and the receiving side of a veth runs in the sender's \
         context: a setup whose kernel does more per SYN (conntrack, a listen queue) slows \
         the flood itself, so compare SYNs/s before comparing the rest.\n",
        first.connections,
        first.seconds,
        first.new_connections,
        crate::peers::FLOOD_TABLE_SIZE
    );
    let _ = writeln!(
        md,
        "| setup | SYNs/s | req/s before | during | vs before | after | connections surviving \
         | answered during | new connections answered |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (s, f) in &floods {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2}x | {} | {} of {} | {} | {} of {} |",
            s.name,
            grouped(f.syns_per_s),
            grouped(f.rps_before),
            grouped(f.rps_during),
            f.rps_during / f.rps_before.max(1.0),
            grouped(f.rps_after),
            f.survived,
            f.connections,
            f.answered_during,
            f.new_answered,
            f.new_connections
        );
    }
    md.push('\n');
    for (s, f) in &floods {
        if f.breaks.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "- **{}**: first breaks: {}.",
            s.name,
            f.breaks.join("; ")
        );
    }
}
