//! `cargo xtask setup`: installs what building and testing xlb needs, and
//! says what it does. Each step checks first, so a second run is quick.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Toolchain the eBPF object is built with (`-Z build-std=core`).
const EBPF_TOOLCHAIN: &str = "nightly";
/// bpf-linker release installed; it must link the nightly's own LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Commands the lab and tests use, with the Debian package providing each
/// (hping3: the SYN floods of `tests/tests/flood.rs`; nginx: the side-by-side
/// test of an imported configuration; promtool: the metrics' format check;
/// bird: BGP in the scale-out cluster, `xlb_lab::cluster`).
const DEBIAN_COMMANDS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("hping3", "hping3"),
    ("nginx", "nginx"),
    ("promtool", "prometheus"),
    ("bird", "bird2"),
];

/// Tells Debian's maintainer scripts not to start the services they install
/// (nginx, HAProxy, Prometheus would otherwise listen on this host's ports).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn setup() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    debian_packages(DEBIAN_COMMANDS)
}

fn rust_src() -> anyhow::Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .with_context(|| {
        format!("rustup has no `{EBPF_TOOLCHAIN}` toolchain; the eBPF build needs it")
    })?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src for {EBPF_TOOLCHAIN}: ok");
        return Ok(());
    }
    println!("setup: installing rust-src for {EBPF_TOOLCHAIN} (eBPF builds core from source)");
    cmd::status(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
}

/// The nightly's LLVM shared library: its path and its file name, which is
/// also its soname (`libLLVM.so.22.1-rust-…`).
fn nightly_llvm() -> anyhow::Result<(PathBuf, String)> {
    let sysroot = cmd::output(Command::new("rustup").args([
        "run",
        EBPF_TOOLCHAIN,
        "rustc",
        "--print",
        "sysroot",
    ]))
    .context("asking the nightly rustc for its sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
            return Ok((lib.join(&name), name));
        }
    }
    bail!("no libLLVM.so.*-rust-* in {}", lib.display())
}

/// LLVM major version from a soname like `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn llvm_major(soname: &str) -> anyhow::Result<&str> {
    soname
        .strip_prefix("libLLVM.so.")
        .and_then(|rest| rest.split('.').next())
        .filter(|major| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()))
        .with_context(|| format!("cannot read the LLVM version from {soname}"))
}

fn bpf_linker() -> anyhow::Result<()> {
    let (llvm, soname) = nightly_llvm()?;
    let major = llvm_major(&soname)?;
    if bpf_linker_uses(&soname) {
        println!("setup: bpf-linker (LLVM {major}, the nightly's own): ok");
        return Ok(());
    }
    println!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} \
         ({soname}); this takes about a minute"
    );
    // bpf-linker's build script looks for `bin/llvm-config` under LLVM_PREFIX
    // and links `lib/libLLVM.so`; the binary keeps `lib/` as its runpath, so
    // the prefix lives beside the installed binary, not in a temp dir.
    let prefix = cargo_home().join("xlb").join(format!("llvm-{soname}"));
    let (bin, lib) = (prefix.join("bin"), prefix.join("lib"));
    fs::create_dir_all(&bin)?;
    fs::create_dir_all(&lib)?;
    let llvm_config = bin.join("llvm-config");
    fs::write(
        &llvm_config,
        "#!/bin/sh\n# Stub: bpf-linker only checks that it exists.\nexit 0\n",
    )?;
    fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))?;
    for link in [lib.join("libLLVM.so"), lib.join(&soname)] {
        let _ = fs::remove_file(&link);
        symlink(&llvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    cmd::status(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_uses(&soname) {
        bail!("bpf-linker was installed but does not load {soname}");
    }
    Ok(())
}

/// Whether the bpf-linker on PATH runs and loads exactly `soname`.
fn bpf_linker_uses(soname: &str) -> bool {
    let Some(path) = find_on_path("bpf-linker") else {
        return false;
    };
    let Some(libs) = cmd::output(Command::new("ldd").arg(&path)) else {
        return false;
    };
    let resolved = libs
        .lines()
        .any(|l| l.trim_start().starts_with(soname) && !l.contains("not found"));
    resolved && cmd::output(Command::new(&path).arg("--version")).is_some()
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

/// Installs the Debian packages providing whichever of `commands` are missing.
pub fn debian_packages(commands: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = commands
        .iter()
        .filter(|(command, _)| {
            !cmd::on_path(command) && !Path::new("/usr/sbin").join(command).exists()
        })
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        println!(
            "setup: {}: ok",
            commands
                .iter()
                .map(|(c, _)| *c)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    println!("setup: installing Debian packages {}", missing.join(" "));
    let guard = !Path::new(POLICY_RC_D).exists();
    if guard {
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# Written by cargo xtask setup while it installs packages.\nexit 101\n",
        )?;
        std::fs::set_permissions(
            POLICY_RC_D,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
    }
    let result = cmd::status(Command::new("apt-get").args(["update", "-qq"])).and_then(|()| {
        cmd::status(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    });
    if guard {
        std::fs::remove_file(POLICY_RC_D)?;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_llvm_major_from_the_soname() {
        assert_eq!(
            llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").unwrap(),
            "22"
        );
        assert!(llvm_major("libLLVM.so.x-rust").is_err());
    }
}
