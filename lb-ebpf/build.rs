//! Rebuild the eBPF object when bpf-linker changes (it is the linker, so cargo
//! does not track it on its own), and let LLVM expand small copies and
//! zeroings into word-sized loads and stores.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // By default bpf-linker asks LLVM to expand only `memcpy`, in order,
    // and leaves every `memset` and `memmove` a call to a byte-by-byte
    // loop: zeroing a 48-byte `Packet` cost ~240 instructions a packet.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
