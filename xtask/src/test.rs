//! `cargo xtask test`: every check the project has, in one command.

use crate::{cmd, setup};

pub fn test() -> anyhow::Result<()> {
    setup::setup()?;
    cmd::build(false)?;
    // Leftovers of an interrupted run would collide with the tests' labs;
    // a `cargo xtask run` or bench lab beside them is left alone.
    lab_down_tests()?;
    let result = checks();
    lab_down_tests()?;
    result?;
    println!("xtask: all tests passed");
    Ok(())
}

fn lab_down_tests() -> anyhow::Result<()> {
    cmd::status(cmd::command(cmd::binary(false, "xlb-lab")).args(["down", "--tests"]))
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
