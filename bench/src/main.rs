//! `xlb-bench`: xlb's benchmarks (run them with `cargo xtask bench`, which
//! installs the peers and builds this in release mode).
//!
//! 1. The data plane's cost per packet through `BPF_PROG_TEST_RUN`, beside a
//!    floor program and a do-nothing program, and how it scales
//!    ([`dataplane`]).
//! 2. End to end in a lab of network namespaces: no load balancer, xlb in
//!    both modes, nginx, HAProxy and nftables, loaded with wrk ([`e2e`]),
//!    and each through a random-source SYN flood with 32 keep-alive
//!    connections open (issue 12).
//!
//! Results go to `<out>/latest.json` and `<out>/latest.md` (`partial.*`
//! when only part ran); the setups' configuration files to
//! `<out>/configs/`.

mod dataplane;
mod e2e;
mod machine;
mod peers;
mod report;
mod stats;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use xlb_lab::Shape;

#[derive(Parser)]
#[command(about = "xlb benchmarks: data plane through BPF_PROG_TEST_RUN, and end to end in a lab")]
struct Args {
    /// Directory for latest.json, latest.md (partial.* for a partial run)
    /// and configs/.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Only the data-plane part.
    #[arg(long, conflicts_with = "e2e_only")]
    dataplane_only: bool,
    /// Only the end-to-end part.
    #[arg(long)]
    e2e_only: bool,
    /// Timed calls per data-plane path and scenario.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Established flows in the "flow table 1M" scenario.
    #[arg(long, default_value_t = 1_000_000)]
    big_flows: usize,
    /// Only these data-plane scenarios (comma-separated names, e.g.
    /// baseline; "1000 services" for "1,000 services").
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Instead of benchmarking, call one data-plane path of one scenario in
    /// a loop for a profiler: `SCENARIO:PATH[:SECONDS]`, e.g.
    /// `baseline:established:20` (paths: established, reply, passthrough,
    /// new flow).
    #[arg(long)]
    profile: Option<String>,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u32,
    /// Rounds over the end-to-end setups (each reports its median round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// How the lab wires the load balancer for the end-to-end part:
    /// one-armed, two-armed, bridge, host-bridge, macvlan, vxlan, vlan or local (the backends on the lb
    /// host, 127.0.0.1:8000-8003) (docs/lab.md).
    #[arg(long, default_value_t = Shape::OneArmed)]
    shape: Shape,
    /// Only these end-to-end setups (comma-separated: none, xlb-nat-b0,
    /// xlb-nat, xlb-dnat, nftables, nginx, haproxy; and, never by default,
    /// xlb-nat-generic, xlb-dnat-generic).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the SYN-flood scenario (hping3 --flood --rand-source at each
    /// setup for 4 s, 32 keep-alive connections through it) that follows
    /// the end-to-end rounds.
    #[arg(long)]
    no_flood: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    anyhow::ensure!(
        euid == 0,
        "the bench loads BPF programs and builds network namespaces: run it as root"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machine = machine::Machine::describe().context("describing the machine")?;
    let background = machine::busy_fraction(std::time::Duration::from_secs(1))?;
    eprintln!(
        "bench: {} ({} CPUs), kernel {}; CPU busy before starting: {:.0}%",
        machine.cpu_model,
        machine.cpus,
        machine.kernel,
        background * 100.0
    );

    let dataplane_options = dataplane::Options {
        calls: args.calls,
        batch: 500.min(args.calls),
        repeat: 10_000,
        repeat_calls: 40,
        big_flows: args.big_flows,
        cpu: cpus - 1,
        scenarios: args.scenarios.clone(),
    };
    if let Some(spec) = &args.profile {
        let mut parts = spec.split(':');
        let (scenario, path) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let seconds = parts.next().map_or(Ok(20.0), str::parse)?;
        return dataplane::profile(&dataplane_options, scenario, path, seconds);
    }

    let dataplane = if args.e2e_only {
        None
    } else {
        Some(dataplane::run(&dataplane_options)?)
    };
    let e2e = if args.dataplane_only {
        None
    } else {
        let options = e2e::Options {
            duration_s: args.duration,
            connections: args.connections,
            threads: cpus as u32,
            rounds: args.rounds.max(1),
            only: args.only.clone(),
            configs_dir: args.out.join("configs"),
            shape: args.shape,
            flood: !args.no_flood,
        };
        Some(e2e::run(&options)?)
    };

    let results = report::Results::new(machine, background, dataplane, e2e);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // A partial run must not pass for the full one.
    let partial = args.dataplane_only
        || args.e2e_only
        || args.no_flood
        || !args.only.is_empty()
        || !args.scenarios.is_empty();
    let name = match (partial, args.shape) {
        (true, _) => "partial".to_owned(),
        (false, Shape::OneArmed) => "latest".to_owned(),
        (false, shape) => format!("latest-{shape}"),
    };
    let json = args.out.join(format!("{name}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let markdown = report::markdown(&results);
    let md = args.out.join(format!("{name}.md"));
    std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
    println!("{markdown}");
    eprintln!("bench: wrote {} and {}", json.display(), md.display());
    Ok(())
}
