//! What a page or the API shows of a node: its place in the inventory and what the collector
//! last heard, with its age. Staleness is explicit: a status older than `stale_after` is
//! `stale`, and a failure newer than the last status is `unreachable`, never the last
//! "healthy".

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
#[cfg(test)]
use serde_json::json;

use crate::store::NodeSnapshot;

/// The node's state word: `unknown` (never heard), `unreachable`, `stale`, `no_agent` (no
/// daemon runs), else the server's state as its agent reported it.
pub fn state(snapshot: Option<&NodeSnapshot>, now_ms: i64, stale_after: Duration) -> String {
    let Some(s) = snapshot else {
        return "unknown".into();
    };
    let status_at = s.status.as_ref().map(|(at, _)| *at);
    match (status_at, &s.error) {
        (None, None) => "unknown".into(),
        (None, Some(_)) => "unreachable".into(),
        (Some(at), Some((err_at, _))) if *err_at > at => "unreachable".into(),
        (Some(at), _)
            if now_ms - at > i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX) =>
        {
            "stale".into()
        }
        (Some(_), _) => s
            .status
            .as_ref()
            .and_then(|(_, st)| st["daemon"]["server"].as_str())
            .map_or_else(|| "no_agent".into(), str::to_owned),
    }
}

/// Whether node `n` is in the selection the pages and the API share: of `customer` and of
/// `cluster` (each empty: any), its name containing `part` (empty: any).
pub fn selected(n: &fleet_inventory::Node, customer: &str, cluster: &str, part: &str) -> bool {
    (customer.is_empty() || n.customer == customer)
        && (cluster.is_empty() || n.cluster == cluster)
        && n.name.contains(part)
}

/// Null, for a field a node never reported.
static NULL: Value = Value::Null;

/// A node as the API and the pages show it, borrowing from the inventory and from what was
/// heard (no copy of the status: a page builds one per row it shows).
#[derive(Debug, Serialize)]
pub struct NodeView<'a> {
    pub name: &'a str,
    /// Its page, and its cluster's.
    pub page: String,
    pub cluster_page: String,
    pub customer: &'a str,
    pub cluster: &'a str,
    pub mode: fleet_inventory::Mode,
    pub labels: &'a std::collections::BTreeMap<String, String>,
    pub state: String,
    pub reported_ms: Option<i64>,
    pub age_ms: Option<i64>,
    pub active: &'a Value,
    pub staged: &'a Value,
    pub free_bytes: &'a Value,
    pub server_release: &'a Value,
    pub restarts: &'a Value,
    pub heartbeat_age_ms: &'a Value,
    pub step: &'a Value,
    pub error: Option<&'a str>,
    pub error_ms: Option<i64>,
}

/// A node's view.
pub fn row<'a>(
    n: &'a fleet_inventory::Node,
    snapshot: Option<&'a NodeSnapshot>,
    now_ms: i64,
    stale_after: Duration,
) -> NodeView<'a> {
    let status = snapshot.and_then(|s| s.status.as_ref());
    let st = status.map(|(_, v)| v);
    let field = |f: &str| st.and_then(|v| v.get(f)).unwrap_or(&NULL);
    let daemon = |f: &str| {
        st.and_then(|v| v.get("daemon"))
            .and_then(|d| d.get(f))
            .unwrap_or(&NULL)
    };
    let error = snapshot.and_then(|s| s.error.as_ref());
    NodeView {
        name: &n.name,
        page: format!("/nodes/{}", super::pages::url_encode(&n.name)),
        cluster_page: format!(
            "/clusters/{}/{}",
            super::pages::url_encode(&n.customer),
            super::pages::url_encode(&n.cluster)
        ),
        customer: &n.customer,
        cluster: &n.cluster,
        mode: n.mode,
        labels: &n.labels,
        state: state(snapshot, now_ms, stale_after),
        reported_ms: status.map(|(at, _)| *at),
        age_ms: status.map(|(at, _)| now_ms - at),
        active: field("active"),
        staged: field("staged"),
        free_bytes: field("free_bytes"),
        server_release: daemon("server_release"),
        restarts: daemon("restarts"),
        heartbeat_age_ms: daemon("heartbeat_age_ms"),
        step: daemon("step"),
        error: error.map(|(_, e)| e.as_str()),
        error_ms: error.map(|(at, _)| *at),
    }
}

/// A node's view as JSON.
pub fn node(
    n: &fleet_inventory::Node,
    snapshot: Option<&NodeSnapshot>,
    now_ms: i64,
    stale_after: Duration,
) -> Value {
    serde_json::to_value(row(n, snapshot, now_ms, stale_after)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(status_at: Option<i64>, server: &str, error_at: Option<i64>) -> NodeSnapshot {
        NodeSnapshot {
            node: "n".into(),
            status: status_at.map(|at| (at, json!({ "daemon": { "server": server } }))),
            error: error_at.map(|at| (at, "connection refused".to_owned())),
        }
    }

    #[test]
    fn an_old_or_failed_report_never_reads_healthy() {
        let stale = Duration::from_secs(90);
        let now = 1_000_000;
        assert_eq!(state(None, now, stale), "unknown");
        assert_eq!(
            state(Some(&snap(Some(now - 1_000), "healthy", None)), now, stale),
            "healthy"
        );
        assert_eq!(
            state(Some(&snap(Some(now - 91_000), "healthy", None)), now, stale),
            "stale"
        );
        assert_eq!(
            state(
                Some(&snap(Some(now - 5_000), "healthy", Some(now - 1_000))),
                now,
                stale
            ),
            "unreachable"
        );
        assert_eq!(
            state(
                Some(&snap(Some(now - 1_000), "healthy", Some(now - 5_000))),
                now,
                stale
            ),
            "healthy"
        );
        assert_eq!(
            state(Some(&snap(None, "", Some(now))), now, stale),
            "unreachable"
        );
        let no_daemon = NodeSnapshot {
            node: "n".into(),
            status: Some((now, json!({ "active": "1.0.0", "daemon": null }))),
            error: None,
        };
        assert_eq!(state(Some(&no_daemon), now, stale), "no_agent");
    }
}
