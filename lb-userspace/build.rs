//! Builds the `lb-ebpf` XDP object with the nightly toolchain and bpf-linker
//! and leaves it in `OUT_DIR`, where `xlb` embeds it.

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    if which("bpf-linker").is_none() && std::env::var_os("AYA_BUILD_SKIP").is_none() {
        return Err(anyhow!(
            "bpf-linker is not installed; run `cargo xtask setup` (it installs \
             rust-src for nightly and bpf-linker)"
        ));
    }
    let root_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .join("lb-ebpf");
    let root_dir = root_dir.to_str().context("non-UTF-8 path")?;
    // aya-build forwards every line the nested cargo prints as a warning;
    // keep that to real diagnostics.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
