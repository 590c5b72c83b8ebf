//! The kernel itself: whether it can run xlb's programs at all.

use super::{Check, Finding, Setup, Severity};
use crate::host::kernel_version;

/// The oldest kernel xlb runs on: TCX links for the tc egress program
/// (6.6), and the XDP program's stack by 6.6's rule (docs/operations.md).
pub const OLDEST: (u32, u32) = (6, 6);

pub(super) fn check(setup: &Setup, out: &mut Vec<Finding>) {
    let release = &setup.facts.kernel_release;
    if let Some(problem) = too_old(release) {
        out.push(Finding::new(
            Check::KernelTooOld,
            Severity::Error,
            format!("kernel {release}"),
            problem,
            format!("run xlb on Linux {}.{} or later", OLDEST.0, OLDEST.1),
        ));
    }
}

/// What goes wrong on a kernel of `release`, if it is older than
/// [`OLDEST`]; `None` for a newer one, or one whose version cannot be read.
pub fn too_old(release: &str) -> Option<String> {
    let version = kernel_version(release)?;
    (version < OLDEST).then(|| {
        format!(
            "Linux {}.{} is older than {}.{}, which xlb needs: it attaches its tc egress \
             program by a TCX link, and its XDP program does not fit the stack of older \
             verifiers; loading would fail",
            version.0, version.1, OLDEST.0, OLDEST.1
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::testing::*;

    #[test]
    fn a_kernel_before_6_6_is_an_error() {
        let config = two_nic_config();
        for release in ["6.1.0-18-amd64", "5.15.0-105-generic", "6.5.13"] {
            let mut facts = two_nic_host();
            facts.kernel_release = release.into();
            let finding = one_error(&config, &facts, Check::KernelTooOld);
            assert_eq!(finding.subject, format!("kernel {release}"));
        }
        for release in ["6.6.0", "6.8.0-45-generic", "6.18.0", ""] {
            let mut facts = two_nic_host();
            facts.kernel_release = release.into();
            assert!(
                found(&config, &facts, Check::KernelTooOld).is_empty(),
                "{release:?}"
            );
        }
    }
}
