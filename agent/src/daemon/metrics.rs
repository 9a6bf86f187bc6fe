//! Prometheus text on the loopback address `metrics_listen`: the server's state, restarts,
//! uptime, health checks and their latency, and the heartbeat's age. `GET /metrics` only;
//! the request head is read up to a cap and within a timeout, and every connection is closed
//! after one answer.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::ServerState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Daemon;

const HEAD_CAP: u64 = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const STATES: [ServerState; 6] = [
    ServerState::Stopped,
    ServerState::Starting,
    ServerState::Healthy,
    ServerState::Unhealthy,
    ServerState::Crashlooping,
    ServerState::Draining,
];

pub async fn serve(
    daemon: Arc<Daemon>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) {
    super::accept_each("the metrics listener", &shutdown, || listener.accept(), |mut stream| {
        let daemon = daemon.clone();
        async move {
            let mut head = Vec::new();
            let read = tokio::time::timeout(READ_TIMEOUT, async {
                let mut buf = [0u8; 1024];
                let mut limited = (&mut stream).take(HEAD_CAP);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = limited.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
            let answer = if first.starts_with(b"GET /metrics ") {
                let body = text(&daemon);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    })
    .await;
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The metrics, as Prometheus text.
pub fn text(daemon: &Daemon) -> String {
    let v = daemon.supervision();
    let (checks, failures, latency_total) = {
        let s = daemon.snapshot();
        (s.health_checks, s.health_failures, s.health_latency_total)
    };
    let node = label(&v.node);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{{node=\"{node}\"{labels}}} {value}");
        }
    };
    let secs =
        |ms: Option<u64>| ms.map_or("NaN".to_owned(), |ms| format!("{:.3}", ms as f64 / 1000.0));
    metric(
        "fleet_agent_server_state",
        "gauge",
        "1 for the state the supervised server is in.",
        STATES
            .iter()
            .map(|s| {
                (
                    format!(",state=\"{s}\""),
                    u8::from(*s == v.server).to_string(),
                )
            })
            .collect(),
    );
    metric(
        "fleet_agent_server_restarts_total",
        "counter",
        "Server restarts since the agent started.",
        vec![(String::new(), v.restarts.to_string())],
    );
    metric(
        "fleet_agent_server_healthy_seconds",
        "gauge",
        "How long the server has been healthy without a miss (0 when it is not).",
        vec![(String::new(), secs(Some(v.healthy_for_ms.unwrap_or(0))))],
    );
    metric(
        "fleet_agent_uptime_seconds",
        "gauge",
        "How long the agent daemon has run.",
        vec![(String::new(), secs(Some(v.agent_uptime_ms)))],
    );
    metric(
        "fleet_agent_health_check_latency_seconds",
        "gauge",
        "How long the last /health check took.",
        vec![(String::new(), secs(v.health_latency_ms))],
    );
    metric(
        "fleet_agent_health_check_latency_seconds_total",
        "counter",
        "Time spent in /health checks.",
        vec![(String::new(), format!("{:.3}", latency_total.as_secs_f64()))],
    );
    metric(
        "fleet_agent_health_checks_total",
        "counter",
        "/health checks made.",
        vec![(String::new(), checks.to_string())],
    );
    metric(
        "fleet_agent_health_check_failures_total",
        "counter",
        "/health checks that failed.",
        vec![(String::new(), failures.to_string())],
    );
    metric(
        "fleet_agent_heartbeat_age_seconds",
        "gauge",
        "Since the last heartbeat Redis accepted (NaN before the first).",
        vec![(String::new(), secs(v.heartbeat_age_ms))],
    );
    out
}
