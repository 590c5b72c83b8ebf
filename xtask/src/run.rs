//! `cargo xtask run`: xlb in the lab (default) or on a real interface.
//!
//! In the lab it starts the agent on the load balancer, a client that keeps
//! sending requests to both VIPs and prints which backend answered, and a
//! short show of what the agent does while traffic flows: a backend killed
//! and brought back, a backup taking over, a drain.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;

use crate::{cmd, setup, workspace_root};

/// Name prefix of the lab `cargo xtask run` and `cargo xtask lab` manage.
pub const LAB_PREFIX: &str = "xlb";
/// Backends in the lab `cargo xtask run` uses: four, and a backup.
const RUN_BACKENDS: usize = 5;

#[derive(Args)]
pub struct RunArgs {
    /// Run on this real interface instead of the lab (needs --config);
    /// repeat it for every interface (two NICs, a NIC and a bridge).
    #[arg(long, requires = "config")]
    iface: Vec<String>,
    /// Configuration file; default in the lab: examples/lab.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Requests per second the lab client sends.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// Skip the show of failover, backup and drain.
    #[arg(long)]
    no_demo: bool,
    /// How the lab wires the load balancer: one-armed, two-armed, bridge,
    /// host-bridge, macvlan, vxlan, vlan, or local (the backends on the load balancer's host, on
    /// 127.0.0.1:8000-8004, with examples/local.toml) (docs/lab.md); xlb
    /// attaches to that shape's interfaces.
    #[arg(long, default_value = "one-armed", conflicts_with = "iface")]
    shape: String,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    setup::setup()?;
    cmd::build(true)?;
    let xlb = cmd::binary(true, "xlb");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the handler of Ctrl-C, SIGTERM and SIGHUP")?;
    }
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));

    if !args.iface.is_empty() {
        let config = args.config.expect("clap requires --config with --iface");
        let mut agent = Command::new(&xlb);
        agent.arg("run");
        for iface in &args.iface {
            agent.args(["--iface", iface]);
        }
        let mut agent = agent.arg("--config").arg(&config).spawn()?;
        return wait(&mut [&mut agent], &stop, deadline, None);
    }

    let lab = cmd::binary(true, "xlb-lab");
    cmd::status(
        cmd::command(&lab)
            .args(["up", "--prefix", LAB_PREFIX, "--backends"])
            .arg(RUN_BACKENDS.to_string())
            .args(["--shape", &args.shape]),
    )?;
    let result = run_in_lab(&args, &xlb, &lab, &stop, deadline);
    // Its own lab only: test labs running beside it are not its to remove.
    cmd::status(cmd::command(&lab).args(["down", "--prefix", LAB_PREFIX]))?;
    result
}

fn run_in_lab(
    args: &RunArgs,
    xlb: &Path,
    lab: &Path,
    stop: &Arc<AtomicBool>,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    let local = args.shape == "local";
    let example = if local {
        "examples/local.toml"
    } else {
        "examples/lab.toml"
    };
    let config = args
        .config
        .clone()
        .unwrap_or_else(|| workspace_root().join(example));
    let interfaces = cmd::output(cmd::command(lab).args(["interfaces", "--prefix", LAB_PREFIX]))
        .context("asking the lab which interfaces xlb attaches to")?;
    let interfaces: Vec<&str> = interfaces.split_whitespace().collect();
    // nsenter, not `ip netns exec`: the agent must see the host's bpffs so
    // its pins outlive it.
    let mut agent = cmd::command("nsenter");
    agent
        .arg(format!("--net=/run/netns/{LAB_PREFIX}-lb"))
        .arg(xlb)
        .args(["run", "--config"])
        .arg(&config);
    for iface in &interfaces {
        agent.args(["--iface", iface]);
    }
    let mut agent = agent.spawn().context("starting xlb in the lab")?;
    std::thread::sleep(Duration::from_millis(800));
    let mut client = cmd::command(lab)
        .args(["load", "--prefix", LAB_PREFIX, "--rate"])
        .arg(args.rate.to_string())
        .spawn()
        .context("starting the lab client")?;
    println!(
        "xtask: xlb runs in namespace {LAB_PREFIX}-lb ({} lab) on {}; the client in {LAB_PREFIX}-client \
         sends {} req/s to the VIPs. `xlb --socket /run/xlb/lab.sock status` shows the agent's view. \
         Ctrl-C stops.",
        args.shape,
        interfaces.join(", "),
        args.rate
    );
    let demo = (!args.no_demo).then(|| {
        let (xlb, lab, stop) = (xlb.to_owned(), lab.to_owned(), stop.clone());
        std::thread::spawn(move || demo(&xlb, &lab, &stop, local))
    });
    wait(&mut [&mut agent, &mut client], stop, deadline, demo)
}

/// Failover, backup and drain while the client keeps sending requests;
/// with `local` backends (the local shape), on 127.0.0.1.
fn demo(xlb: &Path, lab: &Path, stop: &AtomicBool, local: bool) -> anyhow::Result<()> {
    let pause = |secs: u64| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    };
    let xlb_cli = |args: &[&str]| {
        let _ = Command::new(xlb)
            .args(["--socket", "/run/xlb/lab.sock"])
            .args(args)
            .status();
    };
    let backend = |action: &str, index: &str| {
        let _ = Command::new(lab)
            .args(["backend", "--prefix", LAB_PREFIX, action, index])
            .status();
    };
    let say = |text: &str| println!("\n===== {text} =====\n");
    let primaries = if local {
        [
            "127.0.0.1:8000",
            "127.0.0.1:8001",
            "127.0.0.1:8002",
            "127.0.0.1:8003",
        ]
    } else {
        [
            "10.10.2.10:8000",
            "10.10.2.11:8001",
            "10.10.2.12:8002",
            "10.10.2.13:8003",
        ]
    };
    let (b1, b3, b4) = if local {
        ("l1", "l3", "l4")
    } else {
        ("b1", "b3", "b4")
    };

    if !pause(5) {
        return Ok(());
    }
    say(&format!(
        "killing backend {b1}: the health check takes it out, traffic moves to the others"
    ));
    backend("stop", "1");
    if !pause(5) {
        return Ok(());
    }
    xlb_cli(&["status"]);
    say(&format!(
        "starting {b1} again: once its fail_timeout (10 s) is over and 2 checks pass, it is back"
    ));
    backend("start", "1");
    if !pause(9) {
        return Ok(());
    }
    say(&format!(
        "taking every primary down: the backup {b4} takes over"
    ));
    for address in primaries {
        xlb_cli(&["server", "down", "web", address]);
    }
    if !pause(5) {
        return Ok(());
    }
    xlb_cli(&["status"]);
    say(&format!("primaries up again: {b4} gets no new connections"));
    for address in primaries {
        xlb_cli(&["server", "up", "web", address]);
    }
    if !pause(5) {
        return Ok(());
    }
    say(&format!(
        "draining {b3}: no new connections, waiting for its live flows to end"
    ));
    xlb_cli(&[
        "server",
        "drain",
        "web",
        primaries[3],
        "--wait",
        "--timeout",
        "30s",
    ]);
    xlb_cli(&["status"]);
    if !pause(5) {
        return Ok(());
    }
    say(&format!(
        "undraining {b3}; the show is over, traffic keeps flowing until Ctrl-C"
    ));
    xlb_cli(&["server", "undrain", "web", primaries[3]]);
    Ok(())
}

/// Waits until Ctrl-C, the deadline, or a child exits; then stops them all.
fn wait(
    children: &mut [&mut Child],
    stop: &AtomicBool,
    deadline: Option<Instant>,
    demo: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<()> {
    let mut exited = None;
    while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(status) = children
            .iter_mut()
            .find_map(|c| c.try_wait().ok().flatten())
        {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for child in children.iter_mut() {
        // SIGINT lets xlb detach cleanly; kill() would skip that.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
    if let Some(demo) = demo {
        // The demo sees the stop flag or finishes its current step.
        let _ = demo.join();
    }
    match exited {
        Some(status) if !status.success() => anyhow::bail!("a lab process exited: {status}"),
        _ => Ok(()),
    }
}
