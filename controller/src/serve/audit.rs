//! The audit log in `fleet serve`: a page (`/audit`), a CSV export (`/audit.csv`) and JSON
//! (`/api/audit`), newest first, filtered by `command`, `user` (a part of it) and `since` (a
//! duration before now or a time), all in the URL. The CSV neutralises cells a spreadsheet
//! would read as a formula.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::session::{Who, refuse, store_down};
use super::{App, pages};
use crate::store::AuditRow;

/// Rows on one page.
const PAGE: usize = 100;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    command: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    page: Option<usize>,
}

/// The rows the filters select, newest first; or the answer refusing the filters.
async fn select(app: &App, path: &str, q: &AuditQuery) -> Result<Vec<AuditRow>, Response> {
    let since = if q.since.is_empty() {
        None
    } else if let Ok(ago) = humantime::parse_duration(&q.since) {
        Some(crate::store::now_ms() - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
    } else if let Ok(at) = humantime::parse_rfc3339_weak(&q.since) {
        Some(
            at.duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        )
    } else {
        return Err(refuse(
            path,
            StatusCode::BAD_REQUEST,
            &format!(
                "since={:?}: neither a duration (2h) nor a time (2026-11-30T10:00:00Z)",
                q.since
            ),
        ));
    };
    let rows = app
        .store
        .audit(since)
        .await
        .map_err(|e| store_down(path, &e))?;
    Ok(rows
        .into_iter()
        .rev()
        .filter(|r| q.command.is_empty() || r.entry.command == q.command)
        .filter(|r| q.user.is_empty() || r.entry.os_user.contains(q.user.as_str()))
        .collect())
}

/// `GET /api/audit`.
pub async fn json(
    State(app): State<Arc<App>>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return refuse("/api/audit", StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let rows = match select(&app, "/api/audit", &q).await {
        Ok(rows) => rows,
        Err(r) => return r,
    };
    let page = q.page.unwrap_or(1).max(1);
    let total = rows.len();
    let rows: Vec<&AuditRow> = rows.iter().skip((page - 1) * PAGE).take(PAGE).collect();
    axum::Json(serde_json::json!({ "total": total, "page": page, "per_page": PAGE, "rows": rows }))
        .into_response()
}

/// A row's nodes with their results, as one text (`node-1: ok; node-2: failed: …`).
pub fn nodes_text(entry: &crate::store::AuditEntry) -> String {
    let nodes: Vec<String> = entry
        .nodes
        .iter()
        .map(|(n, res)| format!("{n}: {res}"))
        .collect();
    nodes.join("; ")
}

/// A CSV cell: one that a spreadsheet would run as a formula gets a leading `'`.
fn cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

/// `GET /audit.csv`: every row the filters select.
pub async fn csv(
    State(app): State<Arc<App>>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return refuse("/audit.csv", StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let rows = match select(&app, "/audit.csv", &q).await {
        Ok(rows) => rows,
        Err(r) => return r,
    };
    let mut out = csv::Writer::from_writer(Vec::new());
    let header_row = [
        "id", "at", "user", "keys", "command", "args", "nodes", "digests", "result", "hash",
    ];
    let mut written = out.write_record(header_row);
    for r in &rows {
        let record = [
            r.id.to_string(),
            pages::when(r.entry.at_ms),
            r.entry.os_user.clone(),
            r.entry.key_fingerprints.join(" "),
            r.entry.command.clone(),
            r.entry.args.join(" "),
            nodes_text(&r.entry),
            r.entry.digests.join(" "),
            r.entry.result.clone(),
            r.hash.clone(),
        ];
        written = written.and_then(|()| out.write_record(record.iter().map(|c| cell(c))));
    }
    match written
        .map_err(|e| e.to_string())
        .and_then(|()| out.into_inner().map_err(|e| e.to_string()))
    {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"fleet-audit.csv\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => refuse(
            "/audit.csv",
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("writing the CSV: {e}"),
        ),
    }
}

/// `GET /audit`: one page of rows, newest first.
pub async fn page(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return refuse("/audit", StatusCode::BAD_REQUEST, &e.body_text()),
    };
    let rows = match select(&app, "/audit", &q).await {
        Ok(rows) => rows,
        Err(r) => return r,
    };
    let Some(caller) = who.0.0.as_ref() else {
        return axum::response::Redirect::to("/login").into_response();
    };
    pages::audit(caller, &q, &rows, PAGE).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_never_reads_as_a_formula() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("-2"), "'-2");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("ok"), "ok");
    }
}
