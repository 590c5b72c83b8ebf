//! A NIC's driver and the receive offloads that matter to XDP, from
//! `ethtool -i` and `ethtool --json -k` (run in the caller's network
//! namespace, like any child process).

use std::process::Command;

use serde::{Deserialize, Serialize};

/// Receive offloads that change what XDP sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Offloads {
    /// `large-receive-offload` (`ethtool -K … lro`): the NIC merges frames.
    pub lro: Option<Feature>,
    /// `rx-gro-hw`: GRO done by the NIC, merged frames too.
    pub gro_hw: Option<Feature>,
    /// `rx-vlan-offload` (`rxvlan`): the NIC strips VLAN tags.
    pub rx_vlan: Option<Feature>,
}

/// One offload's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Feature {
    pub active: bool,
    /// The driver does not let it change.
    pub fixed: bool,
}

impl Feature {
    /// On, whether or not it can be turned off.
    pub fn on(feature: Option<Self>) -> Option<Self> {
        feature.filter(|f| f.active)
    }
}

/// The driver `ethtool -i` names, if ethtool runs and knows one.
pub(super) fn driver(iface: &str) -> Option<String> {
    parse_driver(&run(&["-i", iface])?)
}

/// The offloads `ethtool --json -k` reports, if ethtool runs.
pub(super) fn offloads(iface: &str) -> Option<Offloads> {
    parse_offloads(&run(&["--json", "-k", iface])?)
}

fn run(args: &[&str]) -> Option<String> {
    let out = Command::new("ethtool").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_driver(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("driver:"))
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
}

fn parse_offloads(json: &str) -> Option<Offloads> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "large-receive-offload")]
        lro: Option<RawFeature>,
        #[serde(rename = "rx-gro-hw")]
        gro_hw: Option<RawFeature>,
        #[serde(rename = "rx-vlan-offload")]
        rx_vlan: Option<RawFeature>,
    }
    #[derive(Deserialize)]
    struct RawFeature {
        active: bool,
        fixed: Option<bool>,
    }
    let feature = |f: Option<RawFeature>| {
        f.map(|f| Feature {
            active: f.active,
            fixed: f.fixed.unwrap_or(false),
        })
    };
    let raw: Vec<Raw> = serde_json::from_str(json).ok()?;
    let raw = raw.into_iter().next()?;
    Some(Offloads {
        lro: feature(raw.lro),
        gro_hw: feature(raw.gro_hw),
        rx_vlan: feature(raw.rx_vlan),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ethtool_output() {
        assert_eq!(
            parse_driver("driver: veth\nversion: 1.0\n").as_deref(),
            Some("veth")
        );
        assert_eq!(parse_driver("Cannot get driver information"), None);
        let json = r#"[ { "ifname": "eth0",
            "large-receive-offload": { "active": false, "fixed": true, "requested": false },
            "rx-gro-hw": { "active": true, "fixed": false, "requested": true },
            "rx-vlan-offload": { "active": true, "fixed": null, "requested": null } } ]"#;
        let offloads = parse_offloads(json).unwrap();
        assert_eq!(
            offloads.lro,
            Some(Feature {
                active: false,
                fixed: true
            })
        );
        assert_eq!(Feature::on(offloads.gro_hw).map(|f| f.fixed), Some(false));
        assert!(Feature::on(offloads.rx_vlan).is_some());
        assert_eq!(parse_offloads("not json"), None);
    }
}
