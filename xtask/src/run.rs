//! `cargo xtask run`: xlb in the lab (default) or on a real interface.

use std::{
    path::PathBuf,
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

#[derive(Args)]
pub struct RunArgs {
    /// Run on this real interface instead of the lab (needs --config).
    #[arg(long, requires = "config")]
    iface: Option<String>,
    /// Configuration file; default in the lab: examples/lab.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Requests per second the lab client sends.
    #[arg(long, default_value_t = 50)]
    rate: u32,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    setup::setup()?;
    cmd::build(true)?;
    let xlb = cmd::binary(true, "xlb");
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));

    if let Some(iface) = &args.iface {
        let config = args.config.expect("clap requires --config with --iface");
        let mut agent = Command::new(&xlb)
            .args(["run", "--iface", iface, "--config"])
            .arg(&config)
            .spawn()?;
        return wait(&mut [&mut agent], &stop, deadline);
    }

    let lab = cmd::binary(true, "xlb-lab");
    cmd::status(cmd::command(&lab).args(["up", "--prefix", LAB_PREFIX, "--backends", "4"]))?;
    let result = run_in_lab(&args, &xlb, &lab, &stop, deadline);
    lab_down_all(true)?;
    result
}

fn run_in_lab(
    args: &RunArgs,
    xlb: &PathBuf,
    lab: &PathBuf,
    stop: &AtomicBool,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    let config = args
        .config
        .clone()
        .unwrap_or_else(|| workspace_root().join("examples/lab.toml"));
    let netns = |role: &str| format!("{LAB_PREFIX}-{role}");
    let mut agent = cmd::command("ip")
        .args(["netns", "exec", &netns("lb")])
        .arg(xlb)
        .args(["run", "--iface", "eth0", "--config"])
        .arg(&config)
        .spawn()
        .context("starting xlb in the lab")?;
    // Give the agent a moment to attach before traffic starts.
    std::thread::sleep(Duration::from_millis(500));
    let mut client = cmd::command(lab)
        .args(["load", "--prefix", LAB_PREFIX, "--rate"])
        .arg(args.rate.to_string())
        .spawn()
        .context("starting the lab client")?;
    println!(
        "xtask: xlb runs in namespace {} on eth0; the client in {} sends {} req/s to the VIP. \
         Ctrl-C stops.",
        netns("lb"),
        netns("client"),
        args.rate
    );
    wait(&mut [&mut agent, &mut client], stop, deadline)
}

/// Waits until Ctrl-C, the deadline, or a child exits; then stops them all.
fn wait(
    children: &mut [&mut Child],
    stop: &AtomicBool,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    let mut exited = None;
    while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some((i, status)) = children
            .iter_mut()
            .enumerate()
            .find_map(|(i, c)| c.try_wait().ok().flatten().map(|s| (i, s)))
        {
            exited = Some((i, status));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for child in children.iter_mut() {
        // SIGINT lets xlb detach cleanly; kill() would skip that.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
    match exited {
        Some((_, status)) if !status.success() => anyhow::bail!("a lab process exited: {status}"),
        _ => Ok(()),
    }
}

/// Removes every lab namespace and process, whatever run left them.
pub fn lab_down_all(release: bool) -> anyhow::Result<()> {
    cmd::status(cmd::command(cmd::binary(release, "xlb-lab")).args(["down", "--all"]))
}
