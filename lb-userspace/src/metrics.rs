//! Prometheus metrics on `agent.metrics` (`GET /metrics`), rendered from the
//! same reports as `xlb stats` and `xlb status`: OpenMetrics text to a
//! scraper that asks for it (`Accept: application/openmetrics-text`, as
//! Prometheus does), Prometheus's text format 0.0.4 to anything else
//! (curl, `promtool check metrics`).

use std::net::SocketAddr;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use crate::{
    control::Envelope,
    protocol::{Answer, Request, Response as ControlResponse, ServingState, Stats, Status},
};

type Labels = Vec<(String, String)>;

/// Serves metrics on `addr`; each scrape asks the agent for fresh numbers.
pub async fn serve(
    addr: SocketAddr,
    requests: mpsc::Sender<Envelope>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("serving metrics on {addr}"))?;
    Ok(tokio::spawn(async move {
        let accept = || listener.accept();
        crate::accept::serve("metrics server", accept, |(stream, _)| {
            let requests = requests.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let requests = requests.clone();
                    let openmetrics = req
                        .headers()
                        .get_all(hyper::header::ACCEPT)
                        .iter()
                        .any(|v| v.to_str().is_ok_and(|v| v.contains(OPENMETRICS)));
                    async move {
                        let body = scrape(&requests).await;
                        let (content_type, body) = if openmetrics {
                            (OPENMETRICS_CONTENT_TYPE, body)
                        } else {
                            (TEXT_CONTENT_TYPE, to_text_format(&body))
                        };
                        let response = Response::builder()
                            .header("content-type", content_type)
                            .body(Full::new(Bytes::from(body)));
                        Ok::<_, hyper::http::Error>(response.expect("static response parts"))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        })
        .await;
    }))
}

const OPENMETRICS: &str = "application/openmetrics-text";
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as Prometheus's text format 0.0.4: a counter's `HELP`
/// and `TYPE` name its samples (`…_total`), and no `# EOF` or `# UNIT`.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        out += renamed.as_deref().unwrap_or(line);
        out.push('\n');
    }
    out
}

/// The agent's metrics text, or a comment saying why there is none.
async fn scrape(requests: &mpsc::Sender<Envelope>) -> String {
    let (tx, rx) = oneshot::channel();
    if requests.send((Request::Metrics, tx)).await.is_err() {
        return "# agent stopping\n".to_owned();
    }
    match rx.await {
        Ok(ControlResponse::Ok(Answer::Metrics(text))) => text,
        Ok(ControlResponse::Ok(other)) => format!("# error: a {} answer\n", other.kind()),
        Ok(ControlResponse::Error(e)) => format!("# error: {e}\n"),
        Err(_) => "# agent stopping\n".to_owned(),
    }
}

/// Prometheus text for a `stats` and a `status` report.
pub fn render(stats: &Stats, status: &Status) -> String {
    let mut registry = Registry::with_prefix("xlb");
    let packets = Family::<Labels, Counter>::default();
    let global = Family::<Labels, Counter>::default();
    let backend_packets = Family::<Labels, Counter>::default();
    let backend_bytes = Family::<Labels, Counter>::default();
    let backend_flows = Family::<Labels, Counter>::default();
    let backend_failures = Family::<Labels, Counter>::default();
    let live_flows = Family::<Labels, Gauge>::default();
    let usable = Family::<Labels, Gauge>::default();
    let weight = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let connect = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let max_conns = Family::<Labels, Gauge>::default();

    for (reason, value) in &stats.global {
        global
            .get_or_create(&vec![("reason".into(), reason.clone())])
            .inc_by(*value);
    }
    for (name, c) in &stats.services {
        packets
            .get_or_create(&vec![("service".into(), name.clone())])
            .inc_by(c.packets);
    }
    for service in &status.services {
        for b in &service.backends {
            let labels: Labels = vec![
                ("service".into(), service.name.clone()),
                ("backend".into(), b.address.to_string()),
            ];
            let c = &b.counters;
            backend_packets.get_or_create(&labels).inc_by(c.packets);
            backend_bytes.get_or_create(&labels).inc_by(c.bytes);
            // Flows through XDP and connections of clients on the host.
            backend_flows
                .get_or_create(&labels)
                .inc_by(c.new_flows + c.host_connects);
            let mut kind = labels.clone();
            kind.push(("kind".into(), "syn_retry".into()));
            backend_failures.get_or_create(&kind).inc_by(c.syn_retries);
            kind.pop();
            kind.push(("kind".into(), "handshake_rst".into()));
            backend_failures
                .get_or_create(&kind)
                .inc_by(c.handshake_rsts);
            live_flows
                .get_or_create(&labels)
                .set(i64::try_from(b.live_flows).unwrap_or(i64::MAX));
            usable
                .get_or_create(&labels)
                .set(i64::from(b.state == ServingState::Active));
            weight.get_or_create(&labels).set(b.effective_weight);
            if let Some(ms) = b.connect_ms {
                connect.get_or_create(&labels).set(ms / 1e3);
            }
            if b.max_conns != 0 {
                max_conns.get_or_create(&labels).set(i64::from(b.max_conns));
            }
        }
    }
    if let Some(flood) = &stats.flood {
        let half_open = Gauge::<i64>::default();
        half_open.set(i64::try_from(flood.half_open).unwrap_or(i64::MAX));
        registry.register(
            "half_open",
            "Handshakes outstanding, as the half-open budget reckons them",
            half_open,
        );
        let limit = Gauge::<i64>::default();
        limit.set(i64::try_from(flood.half_open_limit).unwrap_or(i64::MAX));
        registry.register(
            "half_open_limit",
            "Outstanding handshakes past which SYNs get cookies",
            limit,
        );
        let handshakes = Counter::<u64>::default();
        handshakes.inc_by(flood.handshakes);
        registry.register(
            "handshakes",
            "Handshakes opened by clients' SYNs",
            handshakes,
        );
        let validated = Counter::<u64>::default();
        validated.inc_by(flood.cookies_validated);
        registry.register(
            "syn_cookies_validated",
            "Clients that answered a SYN cookie correctly",
            validated,
        );
    }
    if let Some(announce) = &status.announce {
        let announced = Family::<Labels, Gauge>::default();
        for v in &announce.vips {
            announced
                .get_or_create(&vec![("vip".to_owned(), v.vip.to_string())])
                .set(i64::from(v.announced));
        }
        registry.register(
            "vip_announced",
            "1 while the VIP's route is there for the BGP daemon to announce",
            announced,
        );
        let drained = Gauge::<i64>::default();
        drained.set(i64::from(announce.drained));
        registry.register("node_drained", "1 while the node is drained", drained);
    }
    registry.register("packets", "Packets to each service", packets);
    registry.register(
        "datapath_packets",
        "Packets by what the data plane did with them",
        global,
    );
    registry.register(
        "backend_packets",
        "Packets forwarded to each backend",
        backend_packets,
    );
    registry.register(
        "backend_bytes",
        "Bytes forwarded to each backend",
        backend_bytes,
    );
    registry.register(
        "backend_flows",
        "Flows scheduled to each backend",
        backend_flows,
    );
    registry.register(
        "backend_failed_attempts",
        "Failed connection attempts seen by the data plane",
        backend_failures,
    );
    registry.register(
        "backend_live_flows",
        "Flows currently pinned to each backend",
        live_flows,
    );
    registry.register("backend_active", "1 if the backend takes new flows", usable);
    registry.register(
        "backend_effective_weight",
        "Weight new flows are picked by, after health, drain, backup and slow start",
        weight,
    );
    registry.register(
        "backend_connect_seconds",
        "Connect time (SYN to SYN-ACK) measured by the data plane, smoothed",
        connect,
    );
    registry.register(
        "backend_max_conns",
        "Most live flows the backend may have (max_conns), where set",
        max_conns,
    );
    let mut out = String::new();
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ServiceStats;

    #[test]
    fn metrics_come_from_the_reports() {
        let status = crate::protocol::tests::status();
        let mut stats = Stats::default();
        stats.global.insert("forward_tx".into(), 7);
        let web = ServiceStats {
            packets: 12,
            ..ServiceStats::default()
        };
        stats.services.insert("web".into(), web);
        let text = render(&stats, &status);
        let b0 = r#"{service="web",backend="10.0.2.10:80"}"#;
        let b1 = r#"{service="web",backend="10.0.2.11:80"}"#;
        for line in [
            "xlb_datapath_packets_total{reason=\"forward_tx\"} 7".to_owned(),
            "xlb_packets_total{service=\"web\"} 12".to_owned(),
            format!("xlb_backend_flows_total{b0} 2"),
            format!("xlb_backend_live_flows{b0} 1"),
            format!("xlb_backend_active{b0} 1"),
            format!("xlb_backend_active{b1} 0"),
            format!("xlb_backend_effective_weight{b0} 1.5"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        let failures = r#"xlb_backend_failed_attempts_total{service="web",backend="10.0.2.10:80",kind="syn_retry"} 1"#;
        assert!(text.contains(failures), "{text}");
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let openmetrics = "# HELP xlb_packets Packets to each service.\n\
                           # TYPE xlb_packets counter\n\
                           xlb_packets_total{service=\"web\"} 12\n\
                           # HELP xlb_backend_active 1 if the backend takes new flows.\n\
                           # TYPE xlb_backend_active gauge\n\
                           xlb_backend_active 1\n\
                           # EOF\n";
        assert_eq!(
            to_text_format(openmetrics),
            "# HELP xlb_packets_total Packets to each service.\n\
             # TYPE xlb_packets_total counter\n\
             xlb_packets_total{service=\"web\"} 12\n\
             # HELP xlb_backend_active 1 if the backend takes new flows.\n\
             # TYPE xlb_backend_active gauge\n\
             xlb_backend_active 1\n"
        );
    }
}
