//! Host-side library target of `lb-ebpf`: empty on purpose.
//!
//! `xlb`'s build script depends on this crate so that cargo rebuilds the eBPF
//! object when it or `lb-common` changes; the program itself is the `lb-ebpf`
//! binary, built for `bpfel-unknown-none`.
#![no_std]
