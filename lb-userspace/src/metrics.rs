//! Prometheus metrics on `agent.metrics` (`GET /metrics`), rendered from the
//! same answers as `xlb stats` and `xlb status`.

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

use crate::control::{Envelope, Request, Response as ControlResponse};

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
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let requests = requests.clone();
                    async move {
                        let (tx, rx) = oneshot::channel();
                        let body = match requests.send((Request::Metrics, tx)).await {
                            Ok(()) => match rx.await {
                                Ok(ControlResponse::Ok(text)) => {
                                    text.as_str().unwrap_or_default().to_owned()
                                }
                                Ok(ControlResponse::Error(e)) => format!("# error: {e}\n"),
                                Err(_) => "# agent stopping\n".to_owned(),
                            },
                            Err(_) => "# agent stopping\n".to_owned(),
                        };
                        let response = Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)));
                        Ok::<_, hyper::http::Error>(response.expect("static response parts"))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

/// Prometheus text for a `stats` and a `status` answer.
pub fn render(stats: serde_json::Value, status: serde_json::Value) -> String {
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

    if let Some(map) = stats["global"].as_object() {
        for (reason, value) in map {
            global
                .get_or_create(&vec![("reason".into(), reason.clone())])
                .inc_by(value.as_u64().unwrap_or(0));
        }
    }
    if let Some(map) = stats["services"].as_object() {
        for (name, c) in map {
            packets
                .get_or_create(&vec![("service".into(), name.clone())])
                .inc_by(c["packets"].as_u64().unwrap_or(0));
        }
    }
    for service in status["services"].as_array().into_iter().flatten() {
        let name = service["name"].as_str().unwrap_or_default().to_owned();
        for b in service["backends"].as_array().into_iter().flatten() {
            let labels: Labels = vec![
                ("service".into(), name.clone()),
                (
                    "backend".into(),
                    b["address"].as_str().unwrap_or_default().to_owned(),
                ),
            ];
            let n = |field: &str| b[field].as_u64().unwrap_or(0);
            backend_packets.get_or_create(&labels).inc_by(n("packets"));
            backend_bytes.get_or_create(&labels).inc_by(n("bytes"));
            backend_flows.get_or_create(&labels).inc_by(n("new_flows"));
            let mut kind = labels.clone();
            kind.push(("kind".into(), "syn_retry".into()));
            backend_failures
                .get_or_create(&kind)
                .inc_by(n("syn_retries"));
            kind.pop();
            kind.push(("kind".into(), "handshake_rst".into()));
            backend_failures
                .get_or_create(&kind)
                .inc_by(n("handshake_rsts"));
            live_flows
                .get_or_create(&labels)
                .set(n("live_flows") as i64);
            usable
                .get_or_create(&labels)
                .set(i64::from(b["state"] == "active"));
            weight
                .get_or_create(&labels)
                .set(b["effective_weight"].as_f64().unwrap_or(0.0));
        }
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
        "Weight in the Maglev table after health, drain, backup and slow start",
        weight,
    );
    let mut out = String::new();
    let _ = encode(&mut out, &registry);
    out
}
