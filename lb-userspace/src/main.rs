//! `xlb`: the load balancer's agent and command-line interface.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use xlb::{config::Config, dataplane::Dataplane, xdp::ModeRequest};

#[derive(Parser)]
#[command(version, about = "xlb: an XDP layer-4 load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the data plane, attach it and report its counters until stopped.
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Interface to attach to (repeatable); replaces `interfaces` from the
        /// configuration file.
        #[arg(short, long = "iface")]
        ifaces: Vec<String>,
        /// XDP mode: auto (native, else generic), native or generic.
        #[arg(long, default_value = "auto")]
        xdp_mode: ModeRequest,
        /// Seconds between counter reports; 0 turns them off.
        #[arg(long, default_value_t = 1.0)]
        stats_interval: f64,
    },
    /// Validate a configuration file without touching the kernel.
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Check { config } => {
            let config = Config::load(&config)?;
            println!("configuration ok: {} service(s)", config.services.len());
            Ok(())
        }
        Command::Run {
            config,
            ifaces,
            xdp_mode,
            stats_interval,
        } => {
            let config = Config::load(&config)?;
            let ifaces = if ifaces.is_empty() {
                config.interfaces.clone()
            } else {
                ifaces
            };
            anyhow::ensure!(
                !ifaces.is_empty(),
                "no interface to attach to: set `interfaces` in the configuration or pass --iface"
            );
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(run(config, ifaces, xdp_mode, stats_interval))
        }
    }
}

async fn run(
    config: Config,
    ifaces: Vec<String>,
    xdp_mode: ModeRequest,
    stats_interval: f64,
) -> anyhow::Result<()> {
    let mut dataplane = Dataplane::load()?;
    dataplane.apply(&config)?;
    for iface in &ifaces {
        dataplane.attach(iface, xdp_mode)?;
    }
    tracing::info!(
        services = config.services.len(),
        "xlb running; Ctrl-C stops it"
    );

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let period = Duration::from_secs_f64(if stats_interval > 0.0 {
        stats_interval
    } else {
        3600.0
    });
    let mut ticker = tokio::time::interval(period);
    let mut previous = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick() => {
                if stats_interval > 0.0 {
                    report(&dataplane, &config, &mut previous, period)
                        .context("reading counters")?;
                }
            }
        }
    }
    tracing::info!("stopping; detaching XDP program");
    Ok(())
}

/// Prints, per service and per backend, totals and rates since the last
/// report.
fn report(
    dataplane: &Dataplane,
    config: &Config,
    previous: &mut std::collections::HashMap<String, (u64, u64)>,
    period: Duration,
) -> anyhow::Result<()> {
    let secs = period.as_secs_f64();
    let mut rate = |name: String, packets: u64, bytes: u64| {
        let (p0, b0) = previous
            .insert(name, (packets, bytes))
            .unwrap_or((packets, bytes));
        (
            packets.saturating_sub(p0) as f64 / secs,
            bytes.saturating_sub(b0) as f64 / secs,
        )
    };
    for service in &config.services {
        let now = dataplane.service_counters(&service.name)?;
        let (pps, bps) = rate(service.name.clone(), now.packets, now.bytes);
        println!(
            "{} {}:{} {:>10} pkts {:>9.0} pkt/s {:>11.0} B/s",
            service.name, service.vip, service.port, now.packets, pps, bps
        );
        for backend in &service.backends {
            let c = dataplane.backend_counters(&service.name, backend.address)?;
            let (pps, _) = rate(
                format!("{}/{}", service.name, backend.address),
                c.packets,
                c.bytes,
            );
            println!(
                "  -> {:<24} weight {:<4} {:>8} flows {:>10} pkts {:>9.0} pkt/s {:>10} replies",
                backend.address, backend.weight, c.new_flows, c.packets, pps, c.reply_packets
            );
        }
    }
    Ok(())
}
