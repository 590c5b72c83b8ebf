//! `cargo xtask install` and `cargo xtask deb`: xlb as a system service.
//! Both install the same files from `packaging/` (the systemd unit, an
//! example `/etc/xlb/xlb.toml`) beside the binary; they differ in where the
//! binary and the unit go.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use clap::Args;

use crate::{cmd, setup, workspace_root};

/// Paths in `packaging/xlb.service` as the Debian package installs them;
/// `install` rewrites them for its prefix.
const UNIT_BINARY: &str = "/usr/bin/xlb";
const UNIT_DOCS: &str = "/usr/share/doc/xlb";

/// The documents installed beside the binary (`operations.md` is the one
/// the unit names).
const DOCS: &[&str] = &[
    "README.md",
    "docs/operations.md",
    "docs/configuration.md",
    "docs/agent.md",
    "docs/topologies.md",
    "docs/migrating-from-nginx.md",
];

#[derive(Args)]
pub struct InstallArgs {
    /// Where the binary (`bin/`) and documents (`share/doc/xlb/`) go.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Stage everything under this directory instead of `/` (the paths
    /// written into the unit stay those of `/`).
    #[arg(long, default_value = "/")]
    destdir: PathBuf,
    /// Install the debug build (quicker to build; for trying the layout).
    #[arg(long)]
    debug: bool,
}

#[derive(Args)]
pub struct DebArgs {
    /// Directory the `.deb` is written to.
    #[arg(long, default_value = "target/debian")]
    out: PathBuf,
    /// Package the debug build (quicker to build; for trying the package).
    #[arg(long)]
    debug: bool,
}

/// Builds xlb and installs the binary, the unit (in /etc/systemd/system)
/// and, unless one exists, the example configuration.
pub fn install(args: InstallArgs) -> anyhow::Result<()> {
    let binary = build(!args.debug)?;
    let root = &args.destdir;
    let bin = args.prefix.join("bin/xlb");
    let docs = args.prefix.join("share/doc/xlb");
    copy(&binary, &under(root, &bin), 0o755)?;
    install_docs(&under(root, &docs))?;
    let unit = unit_text()?
        .replace(UNIT_BINARY, &bin.to_string_lossy())
        .replace(UNIT_DOCS, &docs.to_string_lossy());
    write(
        &under(root, Path::new("/etc/systemd/system/xlb.service")),
        &unit,
        0o644,
    )?;
    let config = under(root, Path::new("/etc/xlb/xlb.toml"));
    if config.exists() {
        println!("install: {} kept as it is", config.display());
    } else {
        copy(&packaging("xlb.toml"), &config, 0o644)?;
    }
    if root == Path::new("/") && Path::new("/run/systemd/system").is_dir() {
        cmd::status(Command::new("systemctl").arg("daemon-reload"))?;
    }
    println!(
        "install: done. Edit /etc/xlb/xlb.toml (`xlb check -c /etc/xlb/xlb.toml`), \
         then `systemctl enable --now xlb`."
    );
    Ok(())
}

/// Builds xlb and writes `xlb_<version>_<arch>.deb` into `args.out`; prints
/// its path.
pub fn deb(args: DebArgs) -> anyhow::Result<()> {
    let binary = build(!args.debug)?;
    let version = package_version()?;
    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))
        .context("dpkg --print-architecture")?
        .trim()
        .to_owned();
    let name = format!("xlb_{version}_{arch}");
    let out = workspace_root().join(&args.out);
    let stage = out.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    copy(&binary, &stage.join("usr/bin/xlb"), 0o755)?;
    // Debug information stays out of the package, as Debian's dh_strip does.
    cmd::status(
        Command::new("strip")
            .arg("--strip-unneeded")
            .arg(stage.join("usr/bin/xlb")),
    )?;
    copy(
        &packaging("xlb.service"),
        &stage.join("lib/systemd/system/xlb.service"),
        0o644,
    )?;
    copy(
        &packaging("xlb.toml"),
        &stage.join("etc/xlb/xlb.toml"),
        0o644,
    )?;
    install_docs(&stage.join("usr/share/doc/xlb"))?;
    write(
        &stage.join("usr/share/doc/xlb/copyright"),
        "xlb\nLicense: MIT OR Apache-2.0\n",
        0o644,
    )?;
    let control = format!(
        "Package: xlb\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: xlb developers <xlb@localhost>\n\
         Section: net\n\
         Priority: optional\n\
         Depends: libc6 (>= {glibc})\n\
         Installed-Size: {size}\n\
         Description: XDP layer-4 load balancer for TCP and UDP\n \
         xlb balances TCP and UDP flows over backends with nginx upstream\n \
         semantics (weights, backup, max_fails, drain) in an XDP program,\n \
         health-checks them and changes them live.\n",
        glibc = glibc_needed(&binary)?,
        size = dir_size(&stage)?.div_ceil(1024),
    );
    write(&stage.join("DEBIAN/control"), &control, 0o644)?;
    write(
        &stage.join("DEBIAN/conffiles"),
        "/etc/xlb/xlb.toml\n",
        0o644,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &packaging(&format!("debian/{script}")),
            &stage.join("DEBIAN").join(script),
            0o755,
        )?;
    }
    let deb = out.join(format!("{name}.deb"));
    cmd::status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    fs::remove_dir_all(&stage)?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the `xlb` binary; returns its path.
fn build(release: bool) -> anyhow::Result<PathBuf> {
    setup::setup()?;
    let mut build = cmd::cargo();
    build.args(["build", "--package", "xlb", "--bin", "xlb"]);
    if release {
        build.arg("--release");
    }
    cmd::status(&mut build)?;
    Ok(cmd::binary(release, "xlb"))
}

fn packaging(file: &str) -> PathBuf {
    workspace_root().join("packaging").join(file)
}

fn unit_text() -> anyhow::Result<String> {
    let path = packaging("xlb.service");
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn install_docs(dir: &Path) -> anyhow::Result<()> {
    for doc in DOCS {
        let name = Path::new(doc).file_name().expect("a file");
        copy(&workspace_root().join(doc), &dir.join(name), 0o644)?;
    }
    Ok(())
}

/// `path` (absolute) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(to.parent().expect("a file in a directory"))?;
    // A new file, not the old one's inode overwritten: a running agent's
    // binary stays intact until it executes the new one.
    let tmp = to.with_extension("xtask-new");
    fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to)?;
    println!("install: {}", to.display());
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(to.parent().expect("a file in a directory"))?;
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The `version` of `lb-userspace/Cargo.toml` (the `xlb` crate).
fn package_version() -> anyhow::Result<String> {
    let manifest = fs::read_to_string(workspace_root().join("lb-userspace/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_owned)
        .context("no version in lb-userspace/Cargo.toml")
}

/// The newest glibc symbol version the binary links against.
fn glibc_needed(binary: &Path) -> anyhow::Result<String> {
    let bytes = fs::read(binary)?;
    newest_glibc(&bytes)
        .with_context(|| format!("no GLIBC_ symbol version in {}", binary.display()))
}

fn newest_glibc(bytes: &[u8]) -> Option<String> {
    const TAG: &[u8] = b"GLIBC_2.";
    bytes
        .windows(TAG.len())
        .enumerate()
        .filter(|(_, w)| *w == TAG)
        .filter_map(|(i, _)| {
            let digits: Vec<u8> = bytes[i + TAG.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b'.')
                .copied()
                .collect();
            let minor: Vec<u32> = std::str::from_utf8(&digits)
                .ok()?
                .split('.')
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            Some(minor)
        })
        .max()
        .map(|minor| {
            let rest: Vec<String> = minor.iter().map(u32::to_string).collect();
            format!("2.{}", rest.join("."))
        })
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_glibc_version() {
        let bytes = b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0GLIBC_2.3.4\0";
        assert_eq!(newest_glibc(bytes).as_deref(), Some("2.34"));
        assert_eq!(newest_glibc(b"no versions here"), None);
    }
}
