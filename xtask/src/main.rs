//! `cargo xtask`: xlb's developer tasks.

mod bench;
mod cmd;
mod fuzz;
mod package;
mod run;
mod setup;
mod test;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "xlb developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need (idempotent, quick when done).
    Setup,
    /// Build everything, the eBPF object included.
    Build {
        /// Build with optimizations.
        #[arg(long)]
        release: bool,
    },
    /// Run xlb: in the lab by default, or on a real interface with --iface.
    Run(run::RunArgs),
    /// Bring the lab of network namespaces up or down, or show it.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Run every test: unit, packet-level, namespace tests, fmt and clippy.
    Test,
    /// Benchmark xlb beside the floor and its peers; writes bench/results/.
    Bench(bench::BenchArgs),
    /// Build xlb (release) and install it as a systemd service: the binary
    /// in /usr/local/bin, the unit, an example /etc/xlb/xlb.toml.
    Install(package::InstallArgs),
    /// Build xlb (release) as a Debian package, target/debian/xlb_*.deb.
    Deb(package::DebArgs),
    /// Fuzz the data plane with millions of frames, then the configuration
    /// parser and the Maglev builder with cargo-fuzz.
    Fuzz(fuzz::FuzzArgs),
}

#[derive(Subcommand)]
enum LabAction {
    /// Create the namespaces and start the backends.
    Up {
        /// Number of backends.
        #[arg(long, default_value_t = 4)]
        backends: usize,
        /// How the load balancer is wired: one-armed, two-armed, bridge,
        /// host-bridge, macvlan, vxlan, vlan or local (docs/lab.md; `xlb-lab` checks the
        /// name).
        #[arg(long, default_value = "one-armed")]
        shape: String,
    },
    /// Remove every lab namespace and process (idempotent).
    Down,
    /// Show what the lab holds.
    Status,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::Build { release } => {
            setup::setup()?;
            cmd::build(release)
        }
        Command::Run(args) => run::run(args),
        Command::Lab { action } => {
            setup::setup()?;
            cmd::build(false)?;
            let lab = cmd::binary(false, "xlb-lab");
            match action {
                LabAction::Up { backends, shape } => cmd::status(
                    cmd::command(&lab)
                        .args(["up", "--prefix", run::LAB_PREFIX, "--backends"])
                        .arg(backends.to_string())
                        .args(["--shape", &shape]),
                ),
                LabAction::Down => cmd::status(cmd::command(&lab).args(["down", "--all"])),
                LabAction::Status => {
                    cmd::status(cmd::command(&lab).args(["status", "--prefix", run::LAB_PREFIX]))
                }
            }
        }
        Command::Test => test::test(),
        Command::Bench(args) => bench::bench(args),
        Command::Install(args) => package::install(args),
        Command::Deb(args) => package::deb(args),
        Command::Fuzz(args) => fuzz::fuzz(args),
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}
