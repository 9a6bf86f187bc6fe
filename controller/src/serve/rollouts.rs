//! Rollouts in `fleet serve`, through the same code as `fleet rollout` (`crate::rollout`):
//! the list and a rollout's per-node progress (pages and JSON), starting one on a cluster and
//! pausing, resuming or aborting it (operators; each an audit row as `web:<user>`). The server
//! watches every rollout in flight as `fleet rollout watch` does (whoever started it: the CLI
//! or the browser), which records what the nodes report in the store, and a follower turns
//! each change in the store into a live `rollout` note for the pages.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use fleet_release::order::Action;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::session::{Who, refuse, store_down};
use super::{App, pages};
use crate::ssh::Timeouts;
use crate::store::{NodeOutcome, Rollout};

/// How often the follower looks at the store for changes of rollouts.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// A rollout and its targets as the pages and the API show it.
pub fn shown(rollout: &Rollout, outcomes: &[NodeOutcome]) -> Value {
    let by_node: HashMap<&str, &NodeOutcome> =
        outcomes.iter().map(|o| (o.node.as_str(), o)).collect();
    let nodes: Vec<Value> = rollout
        .targets
        .iter()
        .map(|n| {
            let o = by_node.get(n.as_str());
            json!({
                "node": n,
                "outcome": o.and_then(|o| o.outcome.clone()),
                "step": o.and_then(|o| o.step.clone()),
                "reason": o.and_then(|o| o.reason.clone()),
                "started_ms": o.and_then(|o| o.started_ms),
                "ended_ms": o.and_then(|o| o.ended_ms),
                "updated_ms": o.map(|o| o.updated_ms),
            })
        })
        .collect();
    json!({
        "id": rollout.id,
        "cluster": rollout.cluster,
        "version": rollout.version,
        "state": rollout.state,
        "created_ms": rollout.created_ms,
        "ended_ms": rollout.ended_ms,
        "reason": rollout.reason,
        "last_control": rollout.last_control,
        "in_flight": rollout.in_flight(),
        "nodes": nodes,
    })
}

async fn load(app: &App, id: &str) -> Result<Option<Value>, Response> {
    let down = |e: crate::store::StoreError| store_down("/api/rollouts", &e);
    let Some(rollout) = app.store.rollout(id).await.map_err(down)? else {
        return Ok(None);
    };
    let outcomes = app.store.node_outcomes(id).await.map_err(down)?;
    Ok(Some(shown(&rollout, &outcomes)))
}

/// `GET /api/rollouts`: every rollout, in flight first, then newest first.
pub async fn list_json(State(app): State<Arc<App>>) -> Response {
    match app.store.rollouts(false).await {
        Ok(mut all) => {
            all.sort_by_key(|r| (!r.in_flight(), std::cmp::Reverse(r.created_ms)));
            Json(json!({ "rollouts": all })).into_response()
        }
        Err(e) => store_down("/api/rollouts", &e),
    }
}

/// `GET /api/rollouts/{id}`.
pub async fn one_json(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    match load(&app, &id).await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => refuse(
            "/api/rollouts",
            StatusCode::NOT_FOUND,
            &format!("no rollout {id}"),
        ),
        Err(r) => r,
    }
}

/// `GET /rollouts`: the list, and the start form for operators.
pub async fn list_page(State(app): State<Arc<App>>, who: axum::Extension<Who>) -> Response {
    let Some(caller) = who.0.0.as_ref() else {
        return Redirect::to("/login").into_response();
    };
    let mut all = match app.store.rollouts(false).await {
        Ok(all) => all,
        Err(e) => return store_down("/rollouts", &e),
    };
    all.sort_by_key(|r| (!r.in_flight(), std::cmp::Reverse(r.created_ms)));
    let clusters: Vec<String> = app
        .inventory
        .clusters()
        .iter()
        .map(|c| format!("{}/{}", c.customer, c.name))
        .collect();
    pages::rollouts(caller, &all, &clusters, app.options.release_store.is_some()).into_response()
}

/// `GET /rollouts/{id}`: its per-node progress, live.
pub async fn one_page(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    Path(id): Path<String>,
) -> Response {
    let Some(caller) = who.0.0.as_ref() else {
        return Redirect::to("/login").into_response();
    };
    match load(&app, &id).await {
        Ok(Some(v)) => pages::rollout(caller, &v, app.options.stale_after).into_response(),
        Ok(None) => refuse(
            "/rollouts",
            StatusCode::NOT_FOUND,
            &format!("no rollout {id}"),
        ),
        Err(r) => r,
    }
}

/// What starting a rollout from the web takes (JSON or a form).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    version: String,
    /// `customer/cluster`.
    cluster: String,
    #[serde(default, deserialize_with = "blank_as_none")]
    canary: Option<u32>,
    #[serde(default, deserialize_with = "blank_as_none")]
    max_unavailable: Option<u32>,
    #[serde(default, deserialize_with = "blank_as_none")]
    min_healthy_secs: Option<u64>,
    /// Start even outside the cluster's maintenance windows (recorded in the audit row): JSON
    /// `true`, or a checked box (`on`).
    #[serde(default, deserialize_with = "flag")]
    now: bool,
    /// A form's CSRF field (checked by the guard).
    #[serde(default)]
    #[allow(dead_code)]
    csrf: Option<String>,
}

/// A form sends an empty field for a number left blank: none.
fn blank_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(u64),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Text(t)) if t.trim().is_empty() => Ok(None),
        Some(Raw::Text(t)) => t.trim().parse().map(Some).map_err(serde::de::Error::custom),
        Some(Raw::Number(n)) => n
            .to_string()
            .parse()
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A JSON boolean, or a form's checkbox (`on`, `true`, `1`; blank or absent: false).
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(false),
        Some(Raw::Bool(b)) => Ok(b),
        Some(Raw::Text(t)) => match t.trim() {
            "" | "false" | "off" | "0" => Ok(false),
            "on" | "true" | "1" => Ok(true),
            other => Err(serde::de::Error::custom(format!(
                "now: {other:?} is neither true nor false"
            ))),
        },
    }
}

fn caller_name(who: &Who) -> String {
    who.0
        .as_ref()
        .map_or_else(|| "?".to_owned(), |c| c.principal.name.clone())
}

/// A started rollout: the id of each, and what an explicit "now" overrode.
struct Started {
    ids: Vec<String>,
    overrode: Vec<String>,
}

/// Why a start was refused: 409 for a cluster outside its maintenance windows, else 422.
struct Refused {
    status: StatusCode,
    why: String,
}

impl From<String> for Refused {
    fn from(why: String) -> Self {
        Refused {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            why,
        }
    }
}

impl From<&str> for Refused {
    fn from(why: &str) -> Self {
        why.to_owned().into()
    }
}

/// Starts a rollout: the same steps as `fleet rollout start` (claim, stage, sign, hand out),
/// except that a cluster outside its maintenance windows is refused, not waited for, unless
/// the request says "now"; an airgapped customer's cluster is never started (never
/// contacted). The ids of the rollouts started, or why not.
async fn start(app: &App, req: &StartRequest) -> Result<Started, Refused> {
    let version: semver::Version = req
        .version
        .trim()
        .parse()
        .map_err(|e| format!("version {:?}: {e}", req.version))?;
    let store_dir =
        app.options.release_store.as_ref().ok_or(
            "this server has no release store: start it with --store STORE to start rollouts",
        )?;
    let bundle = store_dir.join(format!("{version}{}", fleet_release::bundle::BUNDLE_SUFFIX));
    if !bundle.exists() {
        return Err(format!("release {version} is not in the release store").into());
    }
    let selected = app
        .inventory
        .select(&req.cluster)
        .map_err(|e| format!("cluster {:?}: {e}", req.cluster))?;
    if selected.is_empty() || !req.cluster.contains('/') {
        return Err(format!("cluster {:?}: name it as customer/cluster", req.cluster).into());
    }
    let (selected, skipped) = crate::node::reachable(selected);
    if selected.is_empty() {
        let lines: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{}: {}",
            crate::node::all_skipped(&skipped),
            lines.join("; ")
        )
        .into());
    }
    let overrides = crate::rollout::Overrides {
        canary: req.canary,
        max_unavailable: req.max_unavailable,
        min_healthy_secs: req.min_healthy_secs,
        health_timeout_secs: None,
        smoke_flow: None,
        deadline: None,
    };
    let plans = crate::rollout::plan(&app.inventory, &selected, &overrides)
        .map_err(|e| format!("{e:#}"))?;
    let closed: Vec<crate::rollout::Closed> =
        crate::rollout::closed(&app.inventory, &plans, std::time::SystemTime::now())
            .into_iter()
            .flatten()
            .collect();
    if !req.now && !closed.is_empty() {
        return Err(Refused {
            status: StatusCode::CONFLICT,
            why: closed
                .iter()
                .map(crate::rollout::Closed::refusal)
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let overrode = closed
        .iter()
        .map(crate::rollout::Closed::overridden)
        .collect();
    let (_, key) = crate::rollout::order_key(app.options.order_key.as_deref())
        .map_err(|e| format!("{e:#}"))?;
    let (clusters, _) = crate::rollout::start(
        &app.store,
        crate::rollout::Start {
            inventory: &app.inventory,
            plans,
            version,
            bundle,
            key: &key,
            skip_unstaged: false,
            parallel: 32,
            timeouts: Timeouts::default(),
            progress: false,
        },
    )
    .await
    .map_err(|e| format!("{e:#}"))?;
    let mut ids = Vec::new();
    let mut problems = Vec::new();
    for c in clusters {
        match (c.started, &c.rollout) {
            (true, Some(id)) => ids.push(id.clone()),
            _ => problems.push(c.reason.clone().unwrap_or_else(|| "not started".into())),
        }
    }
    if ids.is_empty() {
        return Err(problems.join("; ").into());
    }
    app.watch_soon.notify_one();
    Ok(Started { ids, overrode })
}

/// `POST /api/rollouts` (JSON: version, cluster, canary, max_unavailable, min_healthy_secs):
/// 201 with the ids, 422 naming why not.
pub async fn start_json(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                "/api/rollouts",
                StatusCode::UNPROCESSABLE_ENTITY,
                &e.body_text(),
            );
        }
    };
    let result = start(&app, &req).await;
    audit_start(&app, &who.0, &req, &result).await;
    match result {
        Ok(s) => (StatusCode::CREATED, Json(json!({ "rollouts": s.ids }))).into_response(),
        Err(r) => refuse("/api/rollouts", r.status, &r.why),
    }
}

/// `POST /rollouts` (the start form): to the rollout's page, or the reason on a page.
pub async fn start_form(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    form: Result<axum::Form<StartRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let axum::Form(req) = match form {
        Ok(f) => f,
        Err(e) => {
            return refuse(
                "/rollouts",
                StatusCode::UNPROCESSABLE_ENTITY,
                &e.body_text(),
            );
        }
    };
    let result = start(&app, &req).await;
    audit_start(&app, &who.0, &req, &result).await;
    match result {
        Ok(s) => {
            Redirect::to(&format!("/rollouts/{}", pages::url_encode(&s.ids[0]))).into_response()
        }
        Err(r) => refuse("/rollouts", r.status, &r.why),
    }
}

async fn audit_start(app: &App, who: &Who, req: &StartRequest, result: &Result<Started, Refused>) {
    let outcome = match result {
        Ok(s) if s.overrode.is_empty() => format!("ok ({})", s.ids.join(", ")),
        Ok(s) => format!(
            "ok ({}); now by web:{}: {}",
            s.ids.join(", "),
            caller_name(who),
            s.overrode.join("; ")
        ),
        Err(r) => format!("failed: {}", r.why),
    };
    let now = if req.now { " now" } else { "" };
    app.audit_web(
        &caller_name(who),
        "rollout start",
        &format!("{} {}{now}", req.version, req.cluster),
        &outcome,
    )
    .await;
}

/// `POST /api/rollouts/{id}/{action}` (pause, resume, abort, abort-rollback): the control,
/// signed and handed to the targets as `fleet rollout pause` etc. do.
pub async fn control(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let action = match action.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "abort" => Action::Abort,
        "abort-rollback" => Action::AbortRollback,
        other => {
            return refuse(
                "/api/rollouts",
                StatusCode::NOT_FOUND,
                &format!("no action {other:?}: pause, resume, abort or abort-rollback"),
            );
        }
    };
    let word = crate::rollout::action_word(action);
    let sent = match crate::rollout::order_key(app.options.order_key.as_deref()) {
        Ok((_, key)) => crate::rollout::send_control(
            &app.store,
            &app.inventory,
            &id,
            action,
            &key,
            32,
            Timeouts::default(),
            false,
        )
        .await
        .map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("{e:#}")),
    };
    let outcome = match &sent {
        Ok(s) => format!(
            "ok ({} of {} targets took it)",
            s.nodes.iter().filter(|n| n.taken).count(),
            s.nodes.len()
        ),
        Err(why) => format!("failed: {why}"),
    };
    app.audit_web(
        &caller_name(&who.0),
        &format!("rollout {word}"),
        &id,
        &outcome,
    )
    .await;
    match sent {
        Ok(s) => Json(json!({ "rollout": id, "action": word, "nodes": s.nodes })).into_response(),
        Err(why) => refuse("/api/rollouts", StatusCode::CONFLICT, &why),
    }
}

/// Until `stop`: watches every rollout in flight (as `fleet rollout watch` does, recording
/// what the nodes report) and publishes each change the store shows as a `rollout` note.
pub async fn follow(app: Arc<App>, stop: CancellationToken) {
    let mut watchers: tokio::task::JoinSet<String> = tokio::task::JoinSet::new();
    let mut watching: HashSet<String> = HashSet::new();
    let mut last: HashMap<String, Value> = HashMap::new();
    loop {
        if let Ok(all) = app.store.rollouts(false).await {
            let now = crate::store::now_ms();
            for r in all {
                // Ended more than a minute before it was first seen: nothing will change.
                if r.ended_ms.is_some_and(|e| now - e > 60_000) && !last.contains_key(&r.id) {
                    continue;
                }
                if r.in_flight() && r.order.is_some() && watching.insert(r.id.clone()) {
                    let (app, id) = (app.clone(), r.id.clone());
                    watchers.spawn(async move {
                        let settings = crate::rollout::Settings {
                            timeouts: Timeouts::default(),
                            lost_after: Duration::from_secs(600),
                            progress: false,
                        };
                        if let Err(e) = crate::rollout::watch(
                            &app.store,
                            &app.inventory,
                            std::slice::from_ref(&id),
                            settings,
                        )
                        .await
                        {
                            tracing::warn!(rollout = %id, error = %e, "watching a rollout");
                        }
                        id
                    });
                }
                let Ok(outcomes) = app.store.node_outcomes(&r.id).await else {
                    continue;
                };
                let view = shown(&r, &outcomes);
                if last.get(&r.id) != Some(&view) {
                    last.insert(r.id.clone(), view.clone());
                    app.events.publish("rollout", view);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => {
                watchers.abort_all();
                return;
            }
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            () = app.watch_soon.notified() => {}
            Some(Ok(id)) = watchers.join_next(), if !watchers.is_empty() => {
                // A watch that ended early (the store failed) is begun again at the next look.
                watching.remove(&id);
            }
        }
    }
}
