//! `cargo xtask bench`: installs the peers (nginx, HAProxy, nftables) and
//! wrk, builds `xlb-bench` in release mode and runs it, which writes
//! `bench/results/latest.{json,md}`. `cargo xtask test` runs only its
//! data-plane part, short, for its checks (`bench/tests/dataplane.rs`).
//!
//! The bench logic lives in the `xlb-bench` crate (`bench/`), which needs
//! the eBPF object; xtask itself stays free of eBPF-building crates.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use clap::Args;

use crate::{cmd, setup, workspace_root};

/// What the end-to-end part runs, with the Debian package providing each
/// (a path stands for a file the package installs).
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("wrk", "wrk"),
    ("nginx", "nginx"),
    (
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "libnginx-mod-stream",
    ),
    ("haproxy", "haproxy"),
    ("nft", "nftables"),
];

/// Prefix of the bench's lab (`xlb_bench::e2e::PREFIX`).
const LAB_PREFIX: &str = "xlbbench";

/// Where the peers keep their pid and log files (`xlb_bench::peers::RUN_DIR`).
const PEERS_RUN_DIR: &str = "/run/xlb-bench";

#[derive(Args)]
pub struct BenchArgs {
    /// Arguments for xlb-bench, e.g. `--duration 5 --only none,xlb-nat`
    /// (`cargo xtask bench -- --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    setup::setup()?;
    peers()?;
    cmd::status(cmd::cargo().args([
        "build",
        "--release",
        "--package",
        "xlb-bench",
        "--package",
        "xlb-lab",
        "--bins",
    ]))?;

    // Ctrl-C reaches the bench too; xtask stays to clean up after it.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        ctrlc::set_handler(move || interrupted.store(true, Ordering::SeqCst))
            .context("installing the handler of Ctrl-C, SIGTERM and SIGHUP")?;
    }
    let mut bench = cmd::command(cmd::binary(true, "xlb-bench"));
    bench
        .arg("--out")
        .arg(workspace_root().join("bench/results"))
        .args(&args.args);
    eprintln!(
        "xtask: xlb-bench --out bench/results {}",
        args.args.join(" ")
    );
    let mut child = bench.spawn().context("starting xlb-bench")?;
    let pid = child.id();
    let status = child.wait()?;
    clean_up(pid);
    if interrupted.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    anyhow::ensure!(status.success(), "xlb-bench failed ({status})");
    Ok(())
}

/// Installs the peers and wrk if missing (Debian does not start their
/// services: `setup::debian_packages`).
fn peers() -> anyhow::Result<()> {
    setup::debian_packages(BENCH_PACKAGES)
}

/// Removes what an interrupted or failed bench (pid `pid`) left behind: its
/// lab, its fixture namespaces and the peers' run directory. Leaves every
/// other lab alone.
fn clean_up(pid: u32) {
    let _ = cmd::output(
        cmd::command(cmd::binary(true, "xlb-lab")).args(["down", "--prefix", LAB_PREFIX]),
    );
    let fixture = format!("xlbt-fx-{pid}-");
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&fixture) {
                let _ = cmd::output(Command::new("ip").args(["netns", "del", &name]));
            }
        }
    }
    let _ = std::fs::remove_dir_all(PEERS_RUN_DIR);
}
