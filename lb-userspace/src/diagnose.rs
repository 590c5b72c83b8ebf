//! `xlb check`, `xlb doctor` and the host checks `xlb run` logs at
//! startup: read the host's facts ([`host`]), run the checks ([`doctor`]),
//! report.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    config::{AgentConfig, Config, FlowsConfig},
    control,
    doctor::{self, Finding, Severity},
    egress::{self, EgressPath},
    host::{GlobalSysctls, HostFacts, IfaceSysctls, Link, RpFilter},
    protocol::{FromAnswer, Request, Status},
};

/// The findings for `config` on this host (in this network namespace).
pub fn host_findings(config: &Config) -> anyhow::Result<Vec<Finding>> {
    let facts = HostFacts::gather(&doctor::query(config)).context("reading the host's network")?;
    Ok(doctor::check(config, &facts))
}

/// Logs each finding for `config` on this host with its fix, errors as
/// errors; `xlb run` carries on whatever they say (the host may be fixed
/// while it runs).
pub fn log_startup(config: &Config) {
    let findings = match host_findings(config) {
        Ok(findings) => findings,
        Err(e) => return tracing::warn!("host checks skipped: {e:#}"),
    };
    for f in findings {
        let (check, subject, fix) = (f.check, &f.subject, &f.fix);
        match f.severity {
            Severity::Error => {
                tracing::error!(%check, subject, fix, "{}", f.problem);
            }
            Severity::Warning => tracing::warn!(%check, subject, fix, "{}", f.problem),
            Severity::Info => tracing::info!(%check, subject, fix, "{}", f.problem),
        }
    }
}

/// `xlb check -c FILE`: the file's own rules, then (unless `offline`) the
/// host checks that apply to it, printed; an error if any finding is one.
pub fn check_command(path: &Path, ifaces: &[String], offline: bool) -> anyhow::Result<()> {
    let config = load(path, ifaces)?;
    println!("configuration ok: {} service(s)", config.services.len());
    if offline {
        return Ok(());
    }
    let findings = host_findings(&config).context("checking the host (--offline skips it)")?;
    print_findings(&findings);
    fail_on_errors(&findings)
}

/// `xlb doctor`: the host checks of the configuration in `path` (else the
/// running agent's) and what the running host says, as text or JSON; an
/// error if any finding is one.
pub async fn doctor_command(
    path: Option<&Path>,
    ifaces: &[String],
    socket: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let report = doctor(path, ifaces, socket).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    fail_on_errors(&report.findings)
}

/// What `xlb doctor` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Where the configuration checked came from.
    pub config: ConfigSource,
    /// Whether an agent answered on the control socket.
    pub agent_running: bool,
    /// Forwarding and `all.rp_filter`.
    #[serde(flatten)]
    pub sysctls: GlobalSysctls,
    /// The configured interfaces and those with an XDP program.
    pub interfaces: Vec<InterfaceReport>,
    /// Most severe first.
    pub findings: Vec<Finding>,
}

/// Where `xlb doctor` got the configuration.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum ConfigSource {
    /// `-c FILE`.
    File { path: PathBuf },
    /// The running agent's `config dump`.
    Agent { socket: PathBuf },
    /// Neither: only what the host says.
    None,
}

/// One interface as `xlb doctor` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct InterfaceReport {
    #[serde(flatten)]
    pub link: Link,
    /// Whether the configuration attaches xlb to it.
    pub configured: bool,
    /// How frames xlb sends out of it leave: by XDP, or handed to the
    /// kernel (from the driver's XDP features).
    pub path: Option<EgressPath>,
    pub sysctls: Option<IfaceSysctls>,
    /// The reverse-path filter that applies: the larger of `all` and the
    /// interface's.
    pub rp_filter: Option<RpFilter>,
}

async fn doctor(
    path: Option<&Path>,
    ifaces: &[String],
    socket: Option<PathBuf>,
) -> anyhow::Result<Report> {
    let file = path.map(|p| load(p, ifaces)).transpose()?;
    let socket = socket
        .or_else(|| file.as_ref().map(|c| c.agent.control_socket.clone()))
        .unwrap_or_else(control::default_socket);
    let status: Option<Status> = ask(&socket, &Request::Status).await;
    let (config, source) = match (file, path) {
        (Some(config), Some(path)) => (
            Some(config),
            ConfigSource::File {
                path: path.to_owned(),
            },
        ),
        _ => match running_config(&socket, ifaces).await {
            Some(config) => (Some(config), ConfigSource::Agent { socket }),
            None => (None, ConfigSource::None),
        },
    };
    let mut query = config.as_ref().map(doctor::query).unwrap_or_default();
    query.with_xdp = true;
    let facts = HostFacts::gather(&query).context("reading the host's network")?;
    // Without a configuration: judge the interfaces XDP runs on.
    let config = config.unwrap_or_else(|| Config {
        interfaces: attached(&facts),
        agent: AgentConfig::default(),
        flows: FlowsConfig::default(),
        flood: Default::default(),
        announce: None,
        services: Vec::new(),
    });
    let mut findings = Vec::new();
    if !matches!(source, ConfigSource::None) {
        findings.extend(doctor::check(&config, &facts));
    }
    findings.extend(doctor::check_running(&config, &facts, status.is_some()));
    findings.extend(status.as_ref().map(status_warnings).unwrap_or_default());
    doctor::sort(&mut findings);
    Ok(Report {
        config: source,
        agent_running: status.is_some(),
        sysctls: facts.sysctls.global,
        interfaces: interface_reports(&config, &facts),
        findings,
    })
}

/// The configuration file at `path`, `ifaces` replacing its interfaces
/// as `xlb run --iface` does.
fn load(path: &Path, ifaces: &[String]) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    if !ifaces.is_empty() {
        config.interfaces = ifaces.to_vec();
    }
    Ok(config)
}

/// The running agent's configuration, if one answers at `socket`.
async fn running_config(socket: &Path, ifaces: &[String]) -> Option<Config> {
    let mut config: Config = ask(socket, &Request::ConfigDump).await?;
    if !ifaces.is_empty() {
        config.interfaces = ifaces.to_vec();
    }
    Some(config)
}

/// The agent's answer at `socket`, if one comes within [`AGENT_TIMEOUT`].
/// No agent there is no answer; an agent that does not answer (another
/// protocol version, say) is logged, since the report then counts it as
/// not running.
async fn ask<T: FromAnswer>(socket: &Path, request: &Request) -> Option<T> {
    let answer = tokio::time::timeout(AGENT_TIMEOUT, control::ask(socket, request)).await;
    let error = match answer {
        Ok(Ok(answer)) => return Some(answer),
        Ok(Err(e)) if e.is::<control::Unreachable>() => return None,
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => format!("no answer within {AGENT_TIMEOUT:?}"),
    };
    tracing::warn!(socket = %socket.display(), "the agent gave no {request:?} report: {error}");
    None
}

/// How long `xlb doctor` waits for the agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Names of the interfaces an XDP program is attached to.
fn attached(facts: &HostFacts) -> Vec<String> {
    facts
        .links
        .iter()
        .filter(|l| l.xdp.is_some())
        .map(|l| l.name.clone())
        .collect()
}

/// The warnings the agent's status carries on backends.
fn status_warnings(status: &Status) -> Vec<Finding> {
    let backends = status.services.iter().flat_map(|s| &s.backends);
    backends.filter_map(|b| b.warning.clone()).collect()
}

fn interface_reports(config: &Config, facts: &HostFacts) -> Vec<InterfaceReport> {
    facts
        .links
        .iter()
        .filter(|l| config.interfaces.contains(&l.name) || l.xdp.is_some())
        .map(|link| InterfaceReport {
            link: link.clone(),
            configured: config.interfaces.contains(&link.name),
            path: link.xdp_features.map(egress::path_for),
            sysctls: facts.sysctls.interfaces.get(&link.name).cloned(),
            rp_filter: facts.sysctls.rp_filter(&link.name),
        })
        .collect()
}

fn print_findings(findings: &[Finding]) {
    for finding in findings {
        println!("{finding}");
    }
    println!("{}", summary(findings));
}

/// "host: 1 error, 2 warnings, 0 notes".
fn summary(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "host: no problem found".to_owned();
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    format!(
        "host: {} error(s), {} warning(s), {} note(s)",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    )
}

fn fail_on_errors(findings: &[Finding]) -> anyhow::Result<()> {
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if errors > 0 {
        bail!("{errors} error(s) found: xlb would not serve as configured");
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.config {
            ConfigSource::File { path } => writeln!(f, "configuration: {}", path.display())?,
            ConfigSource::Agent { socket } => writeln!(
                f,
                "configuration: the running agent's ({})",
                socket.display()
            )?,
            ConfigSource::None => writeln!(
                f,
                "configuration: none (no -c FILE, no agent answering); host facts only"
            )?,
        }
        let running = if self.agent_running {
            "running"
        } else {
            "not running"
        };
        writeln!(f, "agent: {running}")?;
        writeln!(
            f,
            "sysctls: net.ipv4.ip_forward={} net.ipv6.conf.all.forwarding={} \
             net.ipv4.conf.all.rp_filter={}",
            flag(self.sysctls.ipv4_forward),
            flag(self.sysctls.ipv6_forwarding),
            rp(self.sysctls.rp_filter_all)
        )?;
        for interface in &self.interfaces {
            write!(f, "\n{interface}")?;
        }
        writeln!(f)?;
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        writeln!(f, "{}", summary(&self.findings))
    }
}

impl fmt::Display for InterfaceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let link = &self.link;
        writeln!(
            f,
            "interface {} (index {}, {}, driver {}){}: {}, mtu {}",
            link.name,
            link.index,
            link.kind,
            link.driver.as_deref().unwrap_or("?"),
            if self.configured {
                ", in `interfaces`"
            } else {
                ""
            },
            if link.up { "up" } else { "down" },
            link.mtu
        )?;
        match link.xdp {
            Some(xdp) => write!(
                f,
                "  xdp: {} (program {})",
                xdp.mode,
                xdp.prog_id.map_or("?".to_owned(), |id| id.to_string())
            )?,
            None => write!(f, "  xdp: none")?,
        }
        match (self.path, link.xdp_features) {
            (Some(path), Some(features)) => writeln!(
                f,
                "; frames leave through {path} (XDP features: {features})"
            )?,
            _ => writeln!(f, "; XDP features unknown")?,
        }
        let sysctls = self.sysctls.clone().unwrap_or_default();
        writeln!(
            f,
            "  forwarding: ipv4 {}, ipv6 {}; rp_filter {} (applies: {}); accept_local {}",
            flag(sysctls.ipv4_forwarding),
            flag(sysctls.ipv6_forwarding),
            rp(sysctls.rp_filter),
            rp(self.rp_filter),
            flag(sysctls.accept_local)
        )?;
        match link.offloads {
            Some(o) => {
                let state = |feature: Option<crate::host::Feature>| match feature {
                    None => "?",
                    Some(f) if f.active => "on",
                    Some(_) => "off",
                };
                writeln!(
                    f,
                    "  offloads: lro {}, rx-gro-hw {}, rxvlan {}",
                    state(o.lro),
                    state(o.gro_hw),
                    state(o.rx_vlan)
                )
            }
            None => writeln!(f, "  offloads: unknown (ethtool)"),
        }
    }
}

fn flag(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "1",
        Some(false) => "0",
        None => "?",
    }
}

fn rp(value: Option<RpFilter>) -> String {
    value.map_or("?".to_owned(), |r| r.value().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_warnings_come_back_as_findings() {
        // One backend with a warning, one without.
        let status = crate::protocol::tests::status();
        let warned = status.services[0].backends[1].warning.clone();
        assert!(status.services[0].backends[0].warning.is_none());
        assert_eq!(status_warnings(&status), [warned.unwrap()]);
        assert_eq!(summary(&[]), "host: no problem found");
    }
}
