//! The HTTP API (JSON): flows, runs, tokens, `/health` and `/metrics`. Every route is in the
//! table of `routes.rs` with the access it needs and, but `/health` and `/metrics`, behind the
//! gate (`auth::Gate`): a tenant's token sees and acts on its tenant's flows and runs only
//! (another tenant's answer 404), the operator's picks a tenant with `?tenant=` (the default
//! tenant otherwise; every tenant in lists). Every bad request gets a 4xx with a JSON error
//! naming the field; a failure on this side gets a generic 5xx with a code, its detail logged
//! with the request (`error.rs`, `AppError`); nothing a client sends can panic the server.

mod error;
pub mod routes;
mod tokens;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::rejection::QueryRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Caller, DEFAULT_TENANT, Scope};
use crate::node::Node;
use crate::pipeline::flow::Flow;
use crate::runs::{self, Cancel, RunState};

pub use error::AppError;

type Shared = State<Arc<Node>>;

type ApiResult = Result<Response, AppError>;

/// Serves the API on `listener` (and over TLS on `tls`'s listener) until the node's shutdown
/// token is cancelled, then lets the requests in flight end (none waits long: see
/// `cluster::drain`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<(tokio::net::TcpListener, Arc<fleet_tls::ServerConfig>)>,
    node: Arc<Node>,
) -> std::io::Result<()> {
    let stop = node.stop.clone();
    let app = router(node);
    let secure = async {
        match tls {
            Some((listener, config)) => {
                fleet_tls::serve(
                    app.clone(),
                    listener,
                    config,
                    stop.clone().cancelled_owned(),
                )
                .await
            }
            None => Ok(()),
        }
    };
    let plain = axum::serve(
        listener,
        app.clone()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let (plain, secure) = tokio::join!(plain.into_future(), secure);
    plain.and(secure)
}

/// A query string that did not parse is a 400 naming `query`.
fn query_params<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, AppError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| AppError::field(StatusCode::BAD_REQUEST, "query", e.body_text()))
}

pub fn router(app: Arc<Node>) -> Router {
    let limit = app.config.limits.max_body_bytes;
    routes::router(app.clone())
        .fallback(|| async { AppError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(error::log_failures))
        .with_state(app)
}

/// `?tenant=`: the tenant an operator's request acts in (a tenant's token may name only its
/// own).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantQuery {
    tenant: Option<String>,
}

/// The one tenant a request acts in: a tenant's token's own; the operator's `asked`, else the
/// default tenant. Naming a tenant that is not the caller's, or one this node does not know,
/// is a 404 like a name that does not exist.
fn tenant_of(app: &Node, caller: &Caller, asked: Option<&str>) -> Result<String, AppError> {
    let tenant = match (&caller.tenant, asked) {
        (Some(own), Some(asked)) if own != asked => asked,
        (Some(own), _) => own.as_str(),
        (None, asked) => asked.unwrap_or(DEFAULT_TENANT),
    };
    let known = caller.tenant.as_deref().is_none_or(|own| own == tenant)
        && app.config.tenant(tenant).is_some();
    if !known {
        return Err(AppError::field(
            StatusCode::NOT_FOUND,
            "tenant",
            format!("no tenant `{tenant}`"),
        ));
    }
    Ok(tenant.to_owned())
}

/// The tenant a list is of: a tenant's token's own (naming another is a 404, as in
/// `tenant_of`); the operator's `asked`, else every tenant (`None`).
fn tenant_filter(caller: &Caller, asked: Option<String>) -> Result<Option<String>, AppError> {
    match (&caller.tenant, asked) {
        (Some(own), Some(asked)) if *own != asked => Err(AppError::field(
            StatusCode::NOT_FOUND,
            "tenant",
            format!("no tenant `{asked}`"),
        )),
        (Some(own), _) => Ok(Some(own.clone())),
        (None, asked) => Ok(asked),
    }
}

async fn put_flow(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    query: Result<Query<TenantQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> ApiResult {
    let q = query_params(query)?;
    let tenant = tenant_of(&app, &caller, q.tenant.as_deref())?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| AppError::field(StatusCode::BAD_REQUEST, "body", "the body is not UTF-8"))?;
    let connections: Vec<&str> = app.config.sources.keys().map(String::as_str).collect();
    let flow =
        Flow::parse_for_node(text, "body", &connections).map_err(|e| AppError::invalid_flow(&e))?;
    if let Err(out) = Scope::new(&tenant).confine(&flow, app.config.tenant(&tenant)) {
        return Err(AppError::out_of_bounds(&tenant, &out));
    }
    let created = runs::put_flow(&app.pool, &tenant, &flow).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(
            json!({ "tenant": tenant, "name": flow.name, "created": created, "definition": flow.to_json() }),
        ),
    )
        .into_response())
}

async fn list_flows(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> ApiResult {
    let tenant = tenant_filter(&caller, query_params(query)?.tenant)?;
    let flows = runs::list_flows(&app.pool, tenant.as_deref()).await?;
    Ok(Json(json!({ "flows": flows })).into_response())
}

async fn get_flow(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> ApiResult {
    let tenant = tenant_of(&app, &caller, query_params(query)?.tenant.as_deref())?;
    match runs::get_flow(&app.pool, &tenant, &name).await? {
        Some(f) => Ok(Json(f).into_response()),
        None => Err(no_flow(&name)),
    }
}

async fn delete_flow(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> ApiResult {
    let tenant = tenant_of(&app, &caller, query_params(query)?.tenant.as_deref())?;
    if runs::delete_flow(&app.pool, &tenant, &name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(no_flow(&name))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunQuery {
    node: Option<String>,
    tenant: Option<String>,
}

/// Queues a run of the flow: on the node the cluster's load balancing picks, or with
/// `?node=NAME` on that node alone (`pinned`), which only the operator's admin may ask (see
/// `run_pinned`).
async fn run_flow(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<RunQuery>, QueryRejection>,
) -> ApiResult {
    let q = query_params(query)?;
    let tenant = tenant_of(&app, &caller, q.tenant.as_deref())?;
    if let Some(node) = q.node {
        if caller.role < crate::auth::Role::Admin || caller.tenant.is_some() {
            return Err(AppError::field(
                StatusCode::FORBIDDEN,
                "node",
                format!(
                    "token {} may not pin a run to a node: that is the operator's admin's",
                    caller.token
                ),
            ));
        }
        return run_pinned(&app, &tenant, &name, &node).await;
    }
    // The executing node is picked among the active ones; without Redis, any node runs it.
    let targets = app.targets().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "dispatching without membership");
        Vec::new()
    });
    match runs::create_run(
        &app.pool,
        &tenant,
        &name,
        &targets,
        app.config.load_balancing,
    )
    .await?
    {
        Some((id, target)) => {
            wake(&app, target.as_deref()).await;
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "run_id": id, "state": RunState::Queued, "node": target, "pinned": false })),
            )
                .into_response())
        }
        None => Err(no_flow(&name)),
    }
}

fn no_flow(name: &str) -> AppError {
    AppError::field(StatusCode::NOT_FOUND, "name", format!("no flow `{name}`"))
}

/// Wakes the node a run was queued for (this one: its executor).
async fn wake(app: &Node, target: Option<&str>) {
    match target {
        Some(node) if node != app.config.node => app.membership.wake(node).await,
        _ => app.executor.poke(),
    }
}

/// A run pinned to `node`, which must be a live member that takes runs now (not draining, the
/// database's schema; a node on probation takes pinned runs): 409 naming why not. Pinning
/// overrides the cluster's dispatch and is never handed over, so it is the admin's (the
/// agent's smoke flow on its own node, which is on probation during its health gate).
async fn run_pinned(app: &Node, tenant: &str, flow: &str, node: &str) -> ApiResult {
    let refuse = |why: String| AppError::field(StatusCode::CONFLICT, "node", why);
    if node.is_empty() {
        return Err(AppError::field(
            StatusCode::BAD_REQUEST,
            "node",
            "the node to run on is empty",
        ));
    }
    let members = app.membership.members().await?;
    let Some(member) = members.iter().find(|m| m.node == node) else {
        return Err(refuse(format!(
            "node `{node}` is not a live member of the cluster (no heartbeat)"
        )));
    };
    if member.draining {
        return Err(refuse(format!(
            "node `{node}` is draining: it takes no runs"
        )));
    }
    let schema = runs::database_schema_version(&app.pool).await?;
    if member.schema_version < schema {
        return Err(refuse(format!(
            "node `{node}` knows schema {} but the database has {schema}: it takes no runs",
            member.schema_version
        )));
    }
    match runs::create_pinned_run(&app.pool, tenant, flow, node).await? {
        Some(id) => {
            wake(app, Some(node)).await;
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "run_id": id, "state": RunState::Queued, "node": node, "pinned": true })),
            )
                .into_response())
        }
        None => Err(no_flow(flow)),
    }
}

/// The cluster's members, leader and queues (a tenant's token: its own runs' queues).
async fn cluster(State(app): Shared, Extension(caller): Extension<Caller>) -> ApiResult {
    let members = app.membership.members().await?;
    let depths = runs::queue_depths(&app.pool, caller.tenant.as_deref()).await?;
    let queues: Vec<_> = depths
        .into_iter()
        .map(
            |(node, queued, running)| json!({ "node": node, "queued": queued, "running": running }),
        )
        .collect();
    // The leader is the lease's holder once its grant is recorded: until then (the moment
    // between taking the lease and the grant) there is no leader to report with its epoch.
    let holder = app.membership.lease_holder().await.ok().flatten();
    let (epoch, granted_to) = crate::cluster::scheduler::latest_grant(&app.pool).await?;
    let leader = holder
        .as_deref()
        .and_then(|t| t.split(':').next())
        .filter(|n| granted_to.as_deref() == Some(*n))
        .map(str::to_owned);
    let active: Vec<&str> = members
        .iter()
        .filter(|m| !m.draining && !m.probation)
        .map(|m| m.node.as_str())
        .collect();
    Ok(Json(json!({
        "node": app.config.node,
        "load_balancing": app.config.load_balancing,
        "leader": leader,
        "epoch": epoch,
        "members": members,
        "active": active,
        "queues": queues,
    }))
    .into_response())
}

fn run_id(text: &str) -> Result<i64, AppError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            AppError::field(
                StatusCode::BAD_REQUEST,
                "id",
                format!("`{text}` is not a run id"),
            )
        })
}

async fn get_run(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = run_id(&id)?;
    match runs::get_run(&app.pool, id, caller.tenant.as_deref()).await? {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(AppError::field(
            StatusCode::NOT_FOUND,
            "id",
            format!("no run {id}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    flow: Option<String>,
    state: Option<String>,
    limit: Option<String>,
    tenant: Option<String>,
}

async fn list_runs(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> ApiResult {
    let q = query_params(query)?;
    let tenant = tenant_filter(&caller, q.tenant.clone())?;
    let state = match &q.state {
        None => None,
        Some(s) => Some(
            s.parse::<RunState>()
                .map_err(|e| AppError::field(StatusCode::BAD_REQUEST, "state", e.to_string()))?,
        ),
    };
    let limit = match &q.limit {
        None => 50,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| {
                AppError::field(
                    StatusCode::BAD_REQUEST,
                    "limit",
                    format!("`{l}` is not a number from 1 to 1000"),
                )
            })?,
    };
    let list = runs::list_runs(
        &app.pool,
        tenant.as_deref(),
        q.flow.as_deref(),
        state,
        limit,
    )
    .await?;
    Ok(Json(json!({ "runs": list })).into_response())
}

async fn cancel_run(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    let id = run_id(&id)?;
    match runs::cancel_run(&app.pool, id, caller.tenant.as_deref()).await? {
        Cancel::Canceled => {
            Ok(Json(json!({ "run_id": id, "state": RunState::Canceled })).into_response())
        }
        Cancel::Requested => {
            app.executor.cancel_local(id);
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "run_id": id, "state": RunState::Running, "cancel_requested": true })),
            )
                .into_response())
        }
        Cancel::AlreadyEnded(state) => Err(AppError::new(
            StatusCode::CONFLICT,
            format!("run {id} already ended: {state}"),
        )),
        Cancel::NotFound => Err(AppError::field(
            StatusCode::NOT_FOUND,
            "id",
            format!("no run {id}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainQuery {
    deadline_secs: Option<String>,
}

/// Starts (or joins) the drain of this node (`cluster::drain`) and answers `drained` (200)
/// when it ends within the wait a drain request gets; otherwise 202 with `draining` and the
/// progress (ask again to keep waiting), or `stopping` when the server shuts down meanwhile.
async fn drain(State(app): Shared, query: Result<Query<DrainQuery>, QueryRejection>) -> ApiResult {
    let q = query_params(query)?;
    let deadline = match q.deadline_secs {
        None => app.config.shutdown_grace(),
        Some(d) => std::time::Duration::from_secs(
            d.parse::<u64>()
                .ok()
                .filter(|d| *d <= 86_400)
                .ok_or_else(|| {
                    AppError::field(
                        StatusCode::BAD_REQUEST,
                        "deadline_secs",
                        format!("`{d}` is not a number of seconds up to 86400"),
                    )
                })?,
        ),
    };
    use crate::cluster::Drain;
    let (status, state, handed_back, running) = match crate::cluster::drain(&app, deadline).await? {
        Drain::Drained { handed_back } => (StatusCode::OK, "drained", handed_back, None),
        Drain::Draining {
            handed_back,
            running,
        } => (StatusCode::ACCEPTED, "draining", handed_back, Some(running)),
        Drain::Stopping { handed_back } => (StatusCode::ACCEPTED, "stopping", handed_back, None),
    };
    let mut body = json!({ "node": app.config.node, "state": state, "handed_back": handed_back });
    if let Some(running) = running {
        body["running"] = running.into();
    }
    Ok((status, Json(body)).into_response())
}

/// Takes this node out of its drain and off probation: it takes dispatched runs again and
/// may run for scheduler leader.
async fn resume(State(app): Shared) -> ApiResult {
    app.executor.set_draining(false);
    app.executor.set_probation(false);
    if let Err(e) = app.beat().await {
        tracing::warn!(error = %e, "publishing the resume");
    }
    Ok(Json(json!({ "node": app.config.node, "state": "active" })).into_response())
}

/// This node's health report and whether it is healthy.
async fn own_health(app: &Node) -> (bool, serde_json::Value) {
    let timeout = std::time::Duration::from_secs(2);
    let database =
        match tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&app.pool)).await {
            Ok(Ok(_)) => json!({ "ok": true }),
            Ok(Err(e)) => json!({ "ok": false, "error": crate::db::describe(&e) }),
            Err(_) => json!({ "ok": false, "error": "no answer within 2 s" }),
        };
    let redis = match app.membership.ping().await {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    };
    let disk = match rustix::fs::statvfs(&app.config.shared_storage) {
        Ok(s) => {
            json!({ "ok": true, "free_bytes": s.f_bavail * s.f_frsize, "total_bytes": s.f_blocks * s.f_frsize })
        }
        Err(e) => json!({ "ok": false, "error": format!("shared storage: {e}") }),
    };
    let ok = [&database, &redis, &disk].iter().all(|v| v["ok"] == true);
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "node": app.config.node,
        "version": crate::VERSION,
        "release": app.config.release,
        "probation": app.executor.on_probation(),
        "schema_version": crate::db::schema_version(),
        "database": database,
        "redis": redis,
        "shared_storage": disk,
        "running_flows": app.executor.running(),
    });
    (ok, body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthQuery {
    all_nodes: Option<bool>,
}

/// `/health`, or with `?all_nodes=true` (which needs a token: it calls every node) every live
/// node's report merged (asked at the address each one publishes in its heartbeat, with the
/// cluster token, over TLS when the cluster requires it); 503 when any is unhealthy or
/// unreachable. Shows nothing of any tenant.
async fn health(
    State(app): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    secure: Option<Extension<fleet_tls::Secure>>,
    headers: HeaderMap,
    query: Result<Query<HealthQuery>, QueryRejection>,
) -> ApiResult {
    let q = query_params(query)?;
    if q.all_nodes == Some(true) {
        let access = routes::Access::Tenant(crate::auth::Role::Read);
        if let Err(refused) = routes::admit(&app, access, peer, secure.is_some(), &headers).await {
            return Ok(refused);
        }
    }
    let (mut ok, mine) = own_health(&app).await;
    let body = if q.all_nodes == Some(true) {
        let mut nodes = serde_json::Map::new();
        nodes.insert(app.config.node.clone(), mine);
        match app.membership.members().await {
            Ok(members) => {
                for m in members.into_iter().filter(|m| m.node != app.config.node) {
                    let report = match fetch_health(&app, &m).await {
                        Ok((true, r)) => r,
                        Ok((false, r)) => {
                            ok = false;
                            r
                        }
                        Err(e) => {
                            ok = false;
                            json!({ "status": "unreachable", "error": e.to_string() })
                        }
                    };
                    nodes.insert(m.node, report);
                }
            }
            Err(e) => {
                ok = false;
                nodes.insert(
                    "(members)".into(),
                    json!({ "status": "unknown", "error": e.to_string() }),
                );
            }
        }
        json!({ "status": if ok { "ok" } else { "degraded" }, "nodes": nodes })
    } else {
        mine
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(body)).into_response())
}

/// Why another node's health report could not be read (it goes into the merged report).
#[derive(Debug, thiserror::Error)]
enum PeerHealthError {
    /// Connecting, asking or reading failed.
    #[error("{0}")]
    Io(std::io::Error),
    #[error("no HTTP answer")]
    NoAnswer,
    #[error("not a health report: {0}")]
    NotAReport(serde_json::Error),
    #[error("no answer within 2 s")]
    Timeout,
    #[error("it serves no HTTPS, which this cluster requires (cluster.require_tls)")]
    NoTls,
}

/// GET /health of another node with a 2 s limit, with the cluster token (over HTTPS at its
/// `listen_tls` when the cluster requires TLS): (healthy, report).
async fn fetch_health(
    app: &Node,
    peer: &crate::cluster::Member,
) -> Result<(bool, serde_json::Value), PeerHealthError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, tls) = match (app.config.cluster.require_tls, &peer.listen_tls) {
        (false, _) => (peer.listen.as_str(), None),
        (true, Some(addr)) => (addr.as_str(), app.peer_tls.as_ref()),
        (true, None) => return Err(PeerHealthError::NoTls),
    };
    let token = app
        .config
        .cluster_token
        .as_deref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let work = async {
        let mut stream = fleet_tls::connect(addr, tls)
            .await
            .map_err(PeerHealthError::Io)?;
        stream
            .write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n{token}\r\n").as_bytes())
            .await
            .map_err(PeerHealthError::Io)?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(1 << 20)
            .read_to_end(&mut answer)
            .await
            .map_err(PeerHealthError::Io)?;
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or(PeerHealthError::NoAnswer)?;
        let healthy = head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200");
        let report = serde_json::from_str(body).map_err(PeerHealthError::NotAReport)?;
        Ok((healthy, report))
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), work)
        .await
        .map_err(|_| PeerHealthError::Timeout)?
}

async fn metrics(State(app): Shared) -> Response {
    let m = &app.executor.metrics;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let text = format!(
        "# HELP etl_runs_finished_total Runs this node finished, by final state.\n\
         # TYPE etl_runs_finished_total counter\n\
         etl_runs_finished_total{{state=\"succeeded\"}} {}\n\
         etl_runs_finished_total{{state=\"failed\"}} {}\n\
         etl_runs_finished_total{{state=\"canceled\"}} {}\n\
         # HELP etl_rows_total Rows this node's runs read, wrote and rejected.\n\
         # TYPE etl_rows_total counter\n\
         etl_rows_total{{kind=\"read\"}} {}\n\
         etl_rows_total{{kind=\"written\"}} {}\n\
         etl_rows_total{{kind=\"rejected\"}} {}\n\
         # HELP etl_running_flows Runs executing on this node now.\n\
         # TYPE etl_running_flows gauge\n\
         etl_running_flows {}\n",
        get(&m.succeeded),
        get(&m.failed),
        get(&m.canceled),
        get(&m.rows_read),
        get(&m.rows_written),
        get(&m.rows_rejected),
        app.executor.running(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
