//! `xlb`: the load balancer's agent (`xlb run`) and the command-line
//! interface that talks to it.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use xlb::{
    agent::{self, RunOptions},
    config::{BackendConfig, Config},
    control, diagnose, import_nginx,
    protocol::{Change, Flow, Request, Stats, Status},
};

#[derive(Parser)]
#[command(version, about = "xlb: an XDP layer-4 load balancer")]
struct Cli {
    /// Control socket of the agent.
    #[arg(long, global = true, default_value_os_t = control::default_socket())]
    socket: PathBuf,
    /// How log lines are written to stderr: `text` (colours on a terminal
    /// only) or `json` (one object per line, for log shippers).
    #[arg(long, global = true, env = "XLB_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load and attach the data plane, check backends,
    /// serve the control API, until SIGTERM or SIGINT.
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Interface to attach to (repeatable); replaces `interfaces` from
        /// the configuration file.
        #[arg(short, long = "iface")]
        ifaces: Vec<String>,
    },
    /// Validate a configuration file, then check this host for what would
    /// make it serve nothing (exits non-zero on any error).
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// Interfaces `xlb run --iface` would attach to instead of the file's.
        #[arg(short, long = "iface")]
        ifaces: Vec<String>,
        /// Check the file alone, not this host (e.g. on another machine).
        #[arg(long)]
        offline: bool,
    },
    /// Check this host and the running agent: the host checks of `check`,
    /// XDP attachments and modes, sysctls, offloads, MTU.
    Doctor {
        /// Configuration file (default: the running agent's).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Interfaces to check instead of the configuration's.
        #[arg(short, long = "iface")]
        ifaces: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Services and backends: state, weight, health, live flows, rates.
    Status {
        /// Print the report as JSON (`xlb::protocol::Status`).
        #[arg(long)]
        json: bool,
    },
    /// Data-plane counters.
    Stats {
        /// Print again every second until interrupted.
        #[arg(long)]
        watch: bool,
        /// Print the counters as JSON (`xlb::protocol::Stats`).
        #[arg(long)]
        json: bool,
    },
    /// The flow table of a service: which client goes to which backend.
    Flows {
        service: String,
        /// Most entries to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Re-read the configuration file (a bad file changes nothing).
    Reload,
    /// The running configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Change backends of the running agent.
    Server {
        #[command(subcommand)]
        action: ServerAction,
    },
    /// This load balancer among others (`[announce]`, docs/scale-out.md).
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Translate an nginx configuration (its `upstream` and `server`
    /// blocks, includes followed) into xlb's: TOML on stdout, what did not
    /// carry over on stderr (docs/migrating-from-nginx.md).
    ImportNginx {
        /// nginx's main configuration file, e.g. /etc/nginx/nginx.conf.
        file: PathBuf,
        /// The address clients connect to, for `listen` lines that name no
        /// address (once per address family).
        #[arg(long)]
        vip: Vec<IpAddr>,
        /// Source address towards backends not on this host, for `nat`
        /// mode (once per address family); without it they get `dnat`.
        #[arg(long)]
        snat: Vec<IpAddr>,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Withdraw every VIP from the router: new connections go to the other
    /// nodes; the flows that still arrive here are served.
    Drain,
    /// Announce the VIPs again (each while it has a usable backend).
    Undrain,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the running configuration, runtime changes included, as TOML.
    Dump,
}

#[derive(Args)]
struct Target {
    /// Service name.
    service: String,
    /// Backend address and port.
    address: SocketAddr,
}

#[derive(Subcommand)]
enum ServerAction {
    /// Add a backend.
    Add {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[arg(long)]
        backup: bool,
        #[arg(long, default_value_t = 1)]
        max_fails: u32,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        fail_timeout: Duration,
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        slow_start: Duration,
    },
    /// Remove a backend now (see `drain --remove` for a graceful removal).
    Remove(Target),
    /// No new flows to a backend; existing ones continue. Reports the live
    /// flows left.
    Drain {
        #[command(flatten)]
        target: Target,
        /// Wait until no live flow is left (or --timeout passes).
        #[arg(long)]
        wait: bool,
        /// Longest wait.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Remove the backend once drained (implies --wait).
        #[arg(long)]
        remove: bool,
    },
    /// Undo a drain.
    Undrain(Target),
    /// Set a backend's weight.
    SetWeight {
        #[command(flatten)]
        target: Target,
        weight: u32,
    },
    /// Put a backend (back) in service.
    Up(Target),
    /// Take a backend out of service; its flows move.
    Down(Target),
}

/// Logs to stderr at `RUST_LOG`'s levels (default `info`) in `format`.
fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match format {
        // Colours on a terminal only: a log file or journal gets plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if !matches!(cli.command, Command::Run { .. }) {
        // A command's output piped into `head` ends quietly when the pipe
        // closes, as other command-line tools do (the agent keeps ignoring
        // SIGPIPE: a client hanging up must not stop it).
        // SAFETY: signal(2) with a valid signal number and disposition,
        // before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Run { config, ifaces } => {
                let socket = (cli.socket != control::default_socket()).then_some(cli.socket);
                agent::run(&config, RunOptions { ifaces, socket }).await
            }
            Command::Check {
                config,
                ifaces,
                offline,
            } => diagnose::check_command(&config, &ifaces, offline),
            Command::Doctor {
                config,
                ifaces,
                json,
            } => {
                let socket = (cli.socket != control::default_socket()).then_some(cli.socket);
                diagnose::doctor_command(config.as_deref(), &ifaces, socket, json).await
            }
            Command::Status { json } => {
                let status: Status = control::ask(&cli.socket, &Request::Status).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print_status(&status);
                }
                Ok(())
            }
            Command::Stats { watch, json } => loop {
                let stats: Stats = control::ask(&cli.socket, &Request::Stats).await?;
                if json {
                    println!("{}", serde_json::to_string(&stats)?);
                } else {
                    print_stats(&stats);
                }
                if !watch {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            },
            Command::Flows { service, limit } => {
                let request = Request::Flows { service, limit };
                let flows: Vec<Flow> = control::ask(&cli.socket, &request).await?;
                print_flows(&flows);
                Ok(())
            }
            Command::Reload => print_change(&cli.socket, &Request::Reload).await,
            Command::Config {
                action: ConfigAction::Dump,
            } => {
                let config: Config = control::ask(&cli.socket, &Request::ConfigDump).await?;
                print!("{}", config.to_toml()?);
                Ok(())
            }
            Command::Server { action } => server(&cli.socket, action).await,
            Command::Node { action } => {
                let request = match action {
                    NodeAction::Drain => Request::NodeDrain,
                    NodeAction::Undrain => Request::NodeUndrain,
                };
                print_change(&cli.socket, &request).await
            }
            Command::ImportNginx { file, vip, snat } => {
                let options = import_nginx::Options {
                    vips: vip,
                    snats: snat,
                };
                let import = import_nginx::import(&file, &options)?;
                for message in &import.messages {
                    eprintln!("{message}");
                }
                print!("{}", import.toml);
                Ok(())
            }
        }
    })
}

async fn server(socket: &std::path::Path, action: ServerAction) -> anyhow::Result<()> {
    let request = match action {
        ServerAction::Add {
            target,
            weight,
            backup,
            max_fails,
            fail_timeout,
            slow_start,
        } => Request::ServerAdd {
            service: target.service,
            backend: BackendConfig {
                weight,
                backup,
                max_fails,
                fail_timeout,
                slow_start,
                ..BackendConfig::new(target.address)
            },
        },
        ServerAction::Remove(t) => Request::ServerRemove {
            service: t.service,
            address: t.address,
        },
        ServerAction::Undrain(t) => Request::ServerUndrain {
            service: t.service,
            address: t.address,
        },
        ServerAction::Up(t) => Request::ServerUp {
            service: t.service,
            address: t.address,
        },
        ServerAction::Down(t) => Request::ServerDown {
            service: t.service,
            address: t.address,
        },
        ServerAction::SetWeight { target, weight } => Request::ServerSetWeight {
            service: target.service,
            address: target.address,
            weight,
        },
        ServerAction::Drain {
            target,
            wait,
            timeout,
            remove,
        } => {
            let (service, address) = (target.service, target.address);
            let request = Request::ServerDrain {
                service: service.clone(),
                address,
            };
            print_change(socket, &request).await?;
            let status: Status = control::ask(socket, &Request::Status).await?;
            let left = agent::live_flows_of(&status, &service, address)?;
            println!("{left} live flow(s) on {address}");
            if !(wait || remove) {
                return Ok(());
            }
            let deadline = std::time::Instant::now() + timeout;
            let left = agent::wait_drained(socket, &service, address, deadline).await?;
            if left > 0 {
                anyhow::bail!(
                    "{left} live flow(s) still on {address} after {timeout:?}; not removed"
                );
            }
            println!("{address} drained");
            if !remove {
                return Ok(());
            }
            Request::ServerRemove { service, address }
        }
    };
    print_change(socket, &request).await
}

/// Sends a request that changes something and prints what changed.
async fn print_change(socket: &std::path::Path, request: &Request) -> anyhow::Result<()> {
    let change: Change = control::ask(socket, request).await?;
    println!("{change}");
    Ok(())
}

fn print_status(status: &Status) {
    for attachment in &status.attachments {
        println!(
            "attached to {} ({} XDP); frames leave by it through {}: {}",
            attachment.interface, attachment.mode, attachment.path, attachment.path_reason,
        );
        if !attachment.xdp_ports.is_empty() {
            println!(
                "  frames to hosts behind its ports {} go straight to the port by XDP",
                attachment.xdp_ports.join(", ")
            );
        }
    }
    if let Some(announce) = &status.announce {
        let vips: Vec<String> = announce
            .vips
            .iter()
            .map(|v| {
                format!(
                    "{} {}",
                    v.vip,
                    if v.announced {
                        "announced"
                    } else {
                        "withdrawn"
                    }
                )
            })
            .collect();
        println!(
            "routes in table {}{}: {}{}",
            announce.table,
            if announce.drained {
                ", node drained"
            } else {
                ""
            },
            vips.join(", "),
            announce
                .error
                .as_ref()
                .map(|e| format!(" (error: {e})"))
                .unwrap_or_default()
        );
    }
    for service in &status.services {
        println!(
            "\n{} {}:{} {} {} {}",
            service.name,
            service.vip,
            service.port,
            service.protocol,
            service.mode,
            service.scheduler,
        );
        println!(
            "  {:<26} {:<10} {:>6} {:>9} {:>11} {:>9} {:>9} {:>11}  health",
            "backend", "state", "weight", "effective", "flows", "connect", "pkt/s", "B/s"
        );
        for b in &service.backends {
            let note = b
                .runtime_change
                .as_ref()
                .map(|c| format!(" [{c}]"))
                .unwrap_or_default();
            let backup = if b.backup { " (backup)" } else { "" };
            let flows = match b.max_conns {
                0 => b.live_flows.to_string(),
                max => format!("{}/{max}", b.live_flows),
            };
            let connect = b
                .connect_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}ms"));
            println!(
                "  {:<26} {:<10} {:>6} {:>9.2} {:>11} {:>9} {:>9.0} {:>11.0}  {}{}{}",
                b.address,
                b.state,
                b.weight,
                b.effective_weight,
                flows,
                connect,
                b.packets_per_second,
                b.bytes_per_second,
                b.health,
                backup,
                note,
            );
            if let Some(warning) = &b.warning {
                println!("    warning: {}", warning.problem);
                println!("    fix: {}", warning.fix);
            }
        }
        for removed in &service.removed_at_runtime {
            println!("  {removed:<26} removed at runtime");
        }
    }
}

fn print_stats(stats: &Stats) {
    let services: Vec<String> = stats
        .services
        .iter()
        .map(|(service, c)| format!("{service}: {} pkts {} bytes", c.packets, c.bytes))
        .collect();
    let global: Vec<String> = stats
        .global
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("{} | {}", services.join(", "), global.join(" "));
}

fn print_flows(flows: &[Flow]) {
    println!(
        "{:<44} {:<44} {:<12} {:>8}",
        "client", "backend", "state", "idle s"
    );
    for f in flows {
        let backend = f.backend.map_or("(removed)".to_owned(), |b| b.to_string());
        println!(
            "{:<44} {:<44} {:<12} {:>8.1}",
            f.client, backend, f.state, f.idle_seconds
        );
    }
}
