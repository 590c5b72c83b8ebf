//! The TOML configuration file.
//!
//! Every field is documented in `docs/configuration.md`. Unknown fields are
//! rejected; errors name the field and the line.

use std::{collections::HashSet, net::IpAddr, path::Path};

use anyhow::{Context as _, bail};
use lb_common::{IpProto, ServiceKey};
use serde::Deserialize;

/// A whole configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Interfaces the data plane attaches to.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Services, in the order they get their ids.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// One load-balanced service: a virtual IP, port and protocol.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Unique name, used by the CLI, logs and metrics.
    pub name: String,
    /// Virtual IP address clients connect to.
    pub vip: IpAddr,
    /// Port clients connect to.
    pub port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl From<Protocol> for IpProto {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => IpProto::Tcp,
            Protocol::Udp => IpProto::Udp,
        }
    }
}

impl ServiceConfig {
    /// The data plane's key for this service.
    pub fn key(&self) -> ServiceKey {
        let proto = IpProto::from(self.protocol) as u8;
        let port_be = self.port.to_be();
        match self.vip {
            IpAddr::V4(v4) => ServiceKey::v4(v4.octets(), port_be, proto),
            IpAddr::V6(v6) => ServiceKey::v6(v6.octets(), port_be, proto),
        }
    }
}

impl Config {
    /// Parses and validates a configuration from TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.services.len() > lb_common::MAX_SERVICES as usize {
            bail!(
                "{} services configured; at most {} are supported",
                self.services.len(),
                lb_common::MAX_SERVICES
            );
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for service in &self.services {
            if service.name.is_empty() {
                bail!("service.name must not be empty");
            }
            if !names.insert(service.name.as_str()) {
                bail!("service.name {:?} is used twice", service.name);
            }
            if service.port == 0 {
                bail!("service {:?}: port must be 1-65535", service.name);
            }
            if !keys.insert(service.key()) {
                bail!(
                    "service {:?}: {}:{} {:?} is already another service's address",
                    service.name,
                    service.vip,
                    service.port,
                    service.protocol
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_service() {
        let config = Config::parse(
            r#"
            interfaces = ["eth0"]
            [[service]]
            name = "web"
            vip = "10.0.0.1"
            port = 80
            "#,
        )
        .unwrap();
        assert_eq!(config.interfaces, ["eth0"]);
        assert_eq!(config.services[0].protocol, Protocol::Tcp);
        assert_eq!(config.services[0].key().port_be, 80u16.to_be());
    }

    #[test]
    fn unknown_fields_name_the_field_and_line() {
        let err = Config::parse(
            "[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\nweight = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("weight"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, needle) in [
            (
                "[[service]]\nname = \"a\"\nvip = \"10.0.0.300\"\nport = 80\n",
                "line 3",
            ),
            (
                "[[service]]\nname = \"a\"\nvip = \"10.0.0.1\"\nport = 70000\n",
                "line 4",
            ),
            (
                "[[service]]\nname = \"a\"\nvip = \"10.0.0.1\"\nport = 80\nprotocol = \"sctp\"\n",
                "sctp",
            ),
            (
                "[[service]]\nname = \"a\"\nvip = \"10.0.0.1\"\nport = 0\n",
                "port",
            ),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn duplicate_names_and_addresses_are_rejected() {
        let two = |a: &str, b: &str| {
            format!(
                "[[service]]\nname = \"{a}\"\nvip = \"10.0.0.1\"\nport = 80\n\
                 [[service]]\nname = \"{b}\"\nvip = \"10.0.0.1\"\nport = 80\n"
            )
        };
        assert!(
            Config::parse(&two("a", "a"))
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(
            Config::parse(&two("a", "b"))
                .unwrap_err()
                .to_string()
                .contains("already")
        );
    }
}
