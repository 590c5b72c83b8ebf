//! The VLAN tagger of the VLAN shape: `lb-ebpf`'s `lab_vlan` tc program on
//! the client's egress, tagging its TCP and UDP frames with
//! [`crate::topology::VLAN_ID`].

use std::process::Command;

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    },
};

use crate::{netns, wiring::Iface};

/// Name of the tagger program in xlb's eBPF object.
pub const TAGGER: &str = "lab_vlan";

/// Attaches the tagger to `iface`'s egress (adding a `clsact` qdisc) as a
/// netlink tc filter, which stays attached after this process exits; it
/// goes with the interface.
pub fn attach_tagger(iface: &Iface) -> anyhow::Result<()> {
    netns::run_in(&iface.ns, || attach_here(&iface.name))?
        .with_context(|| format!("attaching {TAGGER} to {} in {}", iface.name, iface.ns))
}

/// Whether `iface`'s egress runs the tagger (from `tc filter show`).
pub fn tagger_attached(iface: &Iface) -> anyhow::Result<bool> {
    let out = netns::run(Command::new("tc").args([
        "-n",
        &iface.ns,
        "filter",
        "show",
        "dev",
        &iface.name,
        "egress",
    ]))?;
    Ok(out.contains(TAGGER))
}

fn attach_here(iface: &str) -> anyhow::Result<()> {
    tc::qdisc_add_clsact(iface).context("adding the clsact qdisc")?;
    let mut ebpf = Ebpf::load(xlb::ebpf_object()).context("loading the xlb eBPF object")?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(TAGGER)
        .with_context(|| format!("{TAGGER} missing from the eBPF object"))?
        .try_into()?;
    program.load()?;
    // Netlink, not TCX: a TCX link would go when its last fd closes.
    let id = program.attach_with_options(
        iface,
        TcAttachType::Egress,
        TcAttachOptions::Netlink(NlOptions::default()),
    )?;
    // The filter holds its own reference to the program; only dropping the
    // link handle would delete it, so the handle (no fd, plain data) is
    // forgotten.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}
