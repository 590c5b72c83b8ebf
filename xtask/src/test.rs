//! `cargo xtask test`: every check the project has, in one command.

use crate::{cmd, setup};

pub fn test() -> anyhow::Result<()> {
    setup::setup()?;
    cmd::build(false)?;
    // Leftovers of an interrupted run would collide with the tests' labs.
    crate::run::lab_down_all(false)?;
    let result = checks();
    crate::run::lab_down_all(false)?;
    result?;
    println!("xtask: all tests passed");
    Ok(())
}

fn checks() -> anyhow::Result<()> {
    cmd::status(cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;
    cmd::status(cmd::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate only builds for the BPF target, with nightly.
    cmd::status(
        cmd::command("rustup")
            .args(["run", "nightly", "cargo", "clippy", "--package", "lb-ebpf"])
            .args([
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .args(["--", "-D", "warnings"]),
    )?;
    cmd::status(cmd::cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--no-fail-fast",
    ]))
}
