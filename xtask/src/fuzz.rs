//! `cargo xtask fuzz`: the data-plane fuzz test of every CI run
//! (`tests/tests/packet/fuzz.rs`) with millions of frames instead of
//! 400 000, then the cargo-fuzz targets in `fuzz/` (the configuration parser
//! and the Maglev builder) for a while each. Never part of `cargo xtask test`.

use clap::Args;

use crate::{cmd, setup};

/// The cargo-fuzz targets (`fuzz/fuzz_targets/`).
const TARGETS: &[&str] = &["config", "maglev"];

#[derive(Args)]
pub struct FuzzArgs {
    /// Frames through the data plane.
    #[arg(long, default_value_t = 5_000_000)]
    frames: u64,
    /// Seed of the frame generator: a run is repeated exactly by its seed.
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Seconds each cargo-fuzz target runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only the data plane; no cargo-fuzz.
    #[arg(long)]
    dataplane_only: bool,
}

pub fn fuzz(args: FuzzArgs) -> anyhow::Result<()> {
    setup::setup()?;
    cmd::status(
        cmd::cargo()
            .args(["test", "--package", "xlb-tests", "--test", "packet"])
            .args(["fuzz::", "--", "--nocapture"])
            .env("XLB_FUZZ_FRAMES", args.frames.to_string())
            .env("XLB_FUZZ_SEED", args.seed.to_string()),
    )?;
    if args.dataplane_only {
        return Ok(());
    }
    // cargo-fuzz needs nightly (sanitizers, `-Z` flags); it is installed
    // from crates.io the first time.
    if !cmd::on_path("cargo-fuzz") {
        cmd::status(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    for target in TARGETS {
        cmd::status(
            cmd::command("rustup")
                .args(["run", "nightly", "cargo", "fuzz", "run", target])
                .arg("--")
                .arg(format!("-max_total_time={}", args.seconds)),
        )?;
    }
    Ok(())
}
