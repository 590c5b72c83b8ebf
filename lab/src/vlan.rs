//! The VLAN tagger of the VLAN shape: `lb-ebpf`'s `lab_vlan` tc program on
//! the client's egress, tagging its TCP and UDP frames with
//! [`crate::topology::VLAN_ID`], and `lab_vlan_untag` on its ingress,
//! taking the tag off frames that come back tagged: the client's end of a
//! trunk port.

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
/// Name of the program that untags what the client receives.
pub const UNTAGGER: &str = "lab_vlan_untag";

/// Attaches the tagger to `iface`'s egress and the untagger to its ingress
/// (adding a `clsact` qdisc) as netlink tc filters, which stay attached
/// after this process exits; they go with the interface.
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
    for (name, direction) in [
        (TAGGER, TcAttachType::Egress),
        (UNTAGGER, TcAttachType::Ingress),
    ] {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing from the eBPF object"))?
            .try_into()?;
        program.load()?;
        // Netlink, not TCX: a TCX link would go when its last fd closes.
        let id = program.attach_with_options(
            iface,
            direction,
            TcAttachOptions::Netlink(NlOptions::default()),
        )?;
        // The filter holds its own reference to the program; only dropping
        // the link handle would delete it, so the handle (no fd, plain
        // data) is forgotten.
        std::mem::forget(program.take_link(id)?);
    }
    Ok(())
}
