//! `xlb-lab`: brings the lab up or down, shows it, and drives traffic from
//! its client namespace. `cargo xtask lab` and `cargo xtask run` call this.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use xlb_lab::{Cluster, ClusterSpec, Lab, LabSpec, Shape, client, cluster, topology};

#[derive(Parser)]
#[command(about = "xlb's lab of network namespaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the namespaces, start the backends and leave them running.
    Up {
        #[arg(long, default_value = topology::DEFAULT_PREFIX)]
        prefix: String,
        #[arg(long, default_value_t = topology::DEFAULT_BACKENDS)]
        backends: usize,
        /// How the load balancer is wired: one-armed, two-armed, bridge,
        /// host-bridge, macvlan, vxlan, vlan, or local (the backends on the load balancer's host, on
        /// 127.0.0.1) (see docs/lab.md).
        #[arg(long, default_value_t = Shape::OneArmed)]
        shape: Shape,
    },
    /// Bring up a scale-out cluster: nodes behind a router doing ECMP over
    /// their BGP announcements (BIRD), backends on one segment (see
    /// docs/lab.md); wait for BGP and leave it running.
    Cluster {
        #[arg(long, default_value = "xlbc")]
        prefix: String,
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value_t = 2)]
        backends: usize,
    },
    /// Remove a lab or cluster (idempotent).
    Down {
        #[arg(long, default_value = topology::DEFAULT_PREFIX, conflicts_with = "all")]
        prefix: String,
        /// Remove every lab, including leftovers of interrupted test runs.
        #[arg(long)]
        all: bool,
        /// Remove only what test runs left (namespaces `xlbt-*`).
        #[arg(long, conflicts_with_all = ["all", "prefix"])]
        tests: bool,
    },
    /// Show a lab's namespaces, addresses, backends and XDP attachment.
    Status {
        #[arg(long, default_value = topology::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Print the load balancer's interfaces xlb attaches to in this lab's
    /// shape, one per line.
    Interfaces {
        #[arg(long, default_value = topology::DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Stop, start, pause (hang) or resume one backend's server.
    Backend {
        #[arg(long, default_value = topology::DEFAULT_PREFIX)]
        prefix: String,
        /// What to do.
        #[arg(value_parser = ["stop", "start", "pause", "resume"])]
        action: String,
        /// Backend index (0 for b0).
        index: usize,
    },
    /// Send HTTP requests from the client namespace (one connection each)
    /// and print, every second, how many each backend answered.
    Load {
        #[arg(long, default_value = topology::DEFAULT_PREFIX)]
        prefix: String,
        /// Where to send them, in turn (repeatable); default: the lab's IPv4
        /// and IPv6 VIPs, port 80.
        #[arg(long = "target")]
        targets: Vec<SocketAddr>,
        /// Requests per second.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Stop after this many seconds (default: run until killed).
        #[arg(long)]
        duration: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up {
            prefix,
            backends,
            shape,
        } => {
            let lab = Lab::up(LabSpec {
                prefix: prefix.clone(),
                backends,
                shape,
            })?;
            println!(
                "lab {prefix} ({shape}) is up; xlb attaches to {} in {}",
                lab.lb_interfaces().join(", "),
                lab.lb_ns()
            );
            lab.keep();
            print!("{}", Lab::status(&prefix)?);
        }
        Command::Cluster {
            prefix,
            nodes,
            backends,
        } => {
            let cluster = Cluster::up(ClusterSpec {
                prefix: prefix.clone(),
                nodes,
                backends,
            })?;
            let took = cluster.wait_established(&cluster.all_nodes(), Duration::from_secs(10))?;
            println!("cluster {prefix} is up; BGP established in {took:?}");
            for i in cluster.all_nodes() {
                println!(
                    "node {i}: {} on {}, SNAT {} and {}",
                    cluster.node_ns(i),
                    cluster.node_interfaces(i).join(", "),
                    cluster.node_snat(i),
                    cluster.node_snat_v6(i)
                );
            }
            println!(
                "announce a VIP from node i: ip -n <node ns> route replace blackhole {}/32 table {} proto {}",
                cluster.vip(),
                cluster::ANNOUNCE_TABLE,
                cluster::ANNOUNCE_PROTO
            );
            cluster.keep();
        }
        Command::Down { prefix, all, tests } => {
            if tests {
                let removed = Lab::down_tests()?;
                println!("lab: removed {} test namespace(s)", removed.len());
            } else if all {
                let removed = Lab::down_all()?;
                println!("lab: removed {} namespace(s)", removed.len());
            } else {
                Lab::down_prefix(&prefix)?;
                println!("lab {prefix}: down");
            }
        }
        Command::Status { prefix } => print!("{}", Lab::status(&prefix)?),
        Command::Interfaces { prefix } => {
            for iface in Lab::existing(&prefix)?.lb_interfaces() {
                println!("{iface}");
            }
        }
        Command::Backend {
            prefix,
            action,
            index,
        } => {
            let mut lab = Lab::existing(&prefix)?;
            anyhow::ensure!(
                index < lab.backend_count(),
                "lab {prefix} has no backend {index}"
            );
            match action.as_str() {
                "stop" => lab.stop_backend(index)?,
                "start" => lab.start_backend(index)?,
                "pause" => lab.pause_backend(index)?,
                _ => lab.resume_backend(index)?,
            }
            let name = lab.backend(index).name;
            println!("lab {prefix}: backend {name}: {action}");
        }
        Command::Load {
            prefix,
            mut targets,
            rate,
            duration,
        } => {
            if targets.is_empty() {
                targets = vec![
                    SocketAddr::new(IpAddr::V4(topology::VIP_V4), 80),
                    SocketAddr::new(IpAddr::V6(topology::VIP_V6), 80),
                ];
            }
            let lab = Lab::existing(&prefix)?;
            lab.in_client(|| load(&targets, rate, duration.map(Duration::from_secs)))??;
        }
    }
    Ok(())
}

/// Sends `rate` requests per second to `targets` in turn, printing a line
/// per target of answers by backend (and failures) each second.
fn load(targets: &[SocketAddr], rate: u32, duration: Option<Duration>) -> anyhow::Result<()> {
    let start = Instant::now();
    let gap = Duration::from_secs(1) / rate.max(1);
    let mut second = vec![BTreeMap::<String, u64>::new(); targets.len()];
    let mut total = second.clone();
    let mut next_report = start + Duration::from_secs(1);
    let mut next_request = start;
    let print = |label: &str, counts: &[BTreeMap<String, u64>]| {
        for (target, counts) in targets.iter().zip(counts) {
            let line: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("client -> {target}{label}: {}", line.join(" "));
        }
    };
    for i in (0..targets.len()).cycle() {
        if duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let now = Instant::now();
        if now < next_request {
            std::thread::sleep(next_request - now);
        }
        next_request += gap;
        let answer = client::http_get(targets[i], Duration::from_millis(500))
            .unwrap_or_else(|_| "failed".to_owned());
        *second[i].entry(answer.clone()).or_default() += 1;
        *total[i].entry(answer).or_default() += 1;
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            print("", &second);
            second.iter_mut().for_each(BTreeMap::clear);
        }
    }
    print(" total", &total);
    Ok(())
}
