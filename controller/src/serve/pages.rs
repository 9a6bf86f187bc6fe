//! The server-rendered pages of `fleet serve` (minijinja; the templates are compiled into the
//! binary from `templates/`, every name ends in `.html`, so every value is HTML-escaped).

use axum::http::StatusCode;
use axum::response::Html;
use minijinja::{Environment, context};

use super::session::Caller;

fn environment() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in [
            ("layout.html", include_str!("templates/layout.html")),
            ("login.html", include_str!("templates/login.html")),
            ("message.html", include_str!("templates/message.html")),
            ("overview.html", include_str!("templates/overview.html")),
            ("audit.html", include_str!("templates/audit.html")),
            ("rollouts.html", include_str!("templates/rollouts.html")),
            ("rollout.html", include_str!("templates/rollout.html")),
            ("cluster.html", include_str!("templates/cluster.html")),
            ("node.html", include_str!("templates/node.html")),
            ("releases.html", include_str!("templates/releases.html")),
            ("users.html", include_str!("templates/users.html")),
        ] {
            env.add_template(name, text)
                .expect("the compiled-in templates parse");
        }
        env
    })
}

/// A page, or 500 when its template fails (logged).
fn render(name: &str, ctx: minijinja::Value) -> (StatusCode, Html<String>) {
    match environment().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => (StatusCode::OK, Html(html)),
        Err(e) => {
            tracing::error!(template = name, error = %e, "rendering a page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(
                    "<!doctype html><title>Fleet</title><p>This page could not be rendered.</p>"
                        .into(),
                ),
            )
        }
    }
}

/// The caller as the layout shows it.
fn user(caller: Option<&Caller>) -> (minijinja::Value, Option<String>) {
    match caller {
        Some(c) => (
            context! { name => c.principal.name.clone(), role => c.principal.role.as_str() },
            c.session.as_ref().map(|(_, csrf)| csrf.clone()),
        ),
        None => (minijinja::Value::from(()), None),
    }
}

pub fn login(next: &str, error: Option<&str>) -> (StatusCode, Html<String>) {
    render("login.html", context! { next, error })
}

pub fn message(status: StatusCode, message: &str) -> Html<String> {
    render(
        "message.html",
        context! { status => status.to_string(), message },
    )
    .1
}

/// Percent-encodes everything but unreserved characters (a query value or a path segment).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The filters of the overview, all in the URL.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    #[serde(default)]
    customer: String,
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    page: Option<usize>,
}

/// Nodes on one page of the overview.
const PAGE: usize = 50;

/// States that need no one's attention.
fn calm(state: &str) -> bool {
    matches!(state, "healthy" | "starting" | "draining")
}

/// `GET /`: counts by state and version over the whole fleet, the rollouts in flight, and
/// one page of the nodes the filters select, those needing attention first.
pub async fn overview(
    axum::extract::State(app): axum::extract::State<std::sync::Arc<super::App>>,
    who: axum::Extension<super::session::Who>,
    query: Result<axum::extract::Query<OverviewQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(caller) = who.0.0.as_ref() else {
        return axum::response::Redirect::to("/login").into_response();
    };
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                message(StatusCode::BAD_REQUEST, &e.body_text()),
            )
                .into_response();
        }
    };
    let rollouts = match app.store.rollouts(true).await {
        Ok(r) => r,
        Err(e) => return super::session::store_down("/", &e),
    };
    let now = crate::store::now_ms();
    // Every node's state and version from memory; a whole view only for the rows shown.
    // Held to the end (no await below): the rows borrow from it.
    let heard = app.heard();
    // Each customer's clusters: nodes, and those needing attention.
    let mut clusters = std::collections::BTreeMap::<(&str, &str), (usize, usize)>::new();
    let (total, nodes, by_state, by_version) = {
        let mut by_state = std::collections::BTreeMap::<String, usize>::new();
        let mut by_version = std::collections::BTreeMap::<String, usize>::new();
        let mut selected: Vec<(bool, &str, &fleet_inventory::Node)> = Vec::new();
        for n in app.inventory.nodes() {
            let h = heard.get(&n.name);
            let state = super::view::state(h, now, app.options.stale_after);
            let active = h
                .and_then(|h| h.status.as_ref())
                .and_then(|(_, st)| st["active"].as_str())
                .unwrap_or("none");
            *by_version.entry(active.to_owned()).or_default() += 1;
            let keep = super::view::selected(n, &q.customer, &q.cluster, &q.q)
                && (q.state.is_empty() || state == q.state);
            let counts = clusters
                .entry((n.customer.as_str(), n.cluster.as_str()))
                .or_default();
            counts.0 += 1;
            counts.1 += usize::from(!calm(&state));
            if keep {
                selected.push((calm(&state), n.name.as_str(), n));
            }
            *by_state.entry(state).or_default() += 1;
        }
        selected.sort_by_key(|(calm, name, _)| (*calm, *name));
        let total = selected.len();
        let pages = total.div_ceil(PAGE).max(1);
        let page = q.page.unwrap_or(1).clamp(1, pages);
        let nodes: Vec<super::view::NodeView<'_>> = selected
            .into_iter()
            .skip((page - 1) * PAGE)
            .take(PAGE)
            .map(|(_, _, n)| super::view::row(n, heard.get(&n.name), now, app.options.stale_after))
            .collect();
        (total, nodes, by_state, by_version)
    };
    let pages = total.div_ceil(PAGE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let mut customers: Vec<String> = app
        .inventory
        .customers()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    customers.sort_unstable();
    let filters = [
        ("customer", q.customer.as_str()),
        ("cluster", q.cluster.as_str()),
        ("q", q.q.as_str()),
        ("state", q.state.as_str()),
    ];
    let (user, csrf) = user(Some(caller));
    render(
        "overview.html",
        context! {
            user, csrf,
            live => true,
            stale_ms => u64::try_from(app.options.stale_after.as_millis()).unwrap_or(u64::MAX),
            by_state => minijinja::value::Serde(&by_state.into_iter().collect::<Vec<_>>()),
            by_version => minijinja::value::Serde(&by_version.into_iter().collect::<Vec<_>>()),
            clusters => clusters
                .iter()
                .map(|((customer, cluster), (nodes, attention))| context! {
                    customer => *customer,
                    cluster => *cluster,
                    link => format!("/clusters/{}/{}", url_encode(customer), url_encode(cluster)),
                    nodes => *nodes,
                    attention => *attention,
                })
                .collect::<Vec<_>>(),
            rollouts => rollouts.iter().map(|r| context! { id => r.id.clone(), cluster => r.cluster.clone(), version => r.version.clone() }).collect::<Vec<_>>(),
            customers,
            filter => minijinja::value::Serde(&q),
            nodes => minijinja::value::Serde(&nodes), total, page, pages,
            prev => (page > 1).then(|| link("/", &filters, Some(page - 1))),
            next => (page < pages).then(|| link("/", &filters, Some(page + 1))),
        },
    )
    .into_response()
}

/// `GET /static/fleet.js`: the pages' one script, compiled in.
pub async fn script() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/fleet.js"),
    )
        .into_response()
}

/// A time in the pages: RFC 3339 to the second, UTC.
pub fn when(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The query string of `filters` (empty ones left out) and `page`.
fn link(base: &str, filters: &[(&str, &str)], page: Option<usize>) -> String {
    let mut parts: Vec<String> = filters
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect();
    if let Some(p) = page {
        parts.push(format!("page={p}"));
    }
    if parts.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", parts.join("&"))
    }
}

/// The audit page: one page of `rows` (already filtered, newest first).
pub fn audit(
    caller: &Caller,
    q: &super::audit::AuditQuery,
    rows: &[crate::store::AuditRow],
    per_page: usize,
) -> (StatusCode, Html<String>) {
    let filter = serde_json::to_value(q).unwrap_or_default();
    let f = |k: &str| filter[k].as_str().unwrap_or("").to_owned();
    let (command, user_f, since) = (f("command"), f("user"), f("since"));
    let filters = [
        ("command", command.as_str()),
        ("user", user_f.as_str()),
        ("since", since.as_str()),
    ];
    let total = rows.len();
    let pages = total.div_ceil(per_page).max(1);
    let page = filter["page"]
        .as_u64()
        .map_or(1, |p| p as usize)
        .clamp(1, pages);
    let shown: Vec<minijinja::Value> = rows
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| {
            context! {
                id => r.id,
                when => when(r.entry.at_ms),
                user => r.entry.os_user.clone(),
                command => r.entry.command.clone(),
                args => r.entry.args.join(" "),
                nodes => super::audit::nodes_text(&r.entry),
                result => r.entry.result.clone(),
            }
        })
        .collect();
    let (user, csrf) = user(Some(caller));
    render(
        "audit.html",
        context! {
            user, csrf,
            filter => context! { command => command.clone(), user => user_f.clone(), since => since.clone() },
            rows => shown, total, page, pages,
            csv => link("/audit.csv", &filters, None),
            prev => (page > 1).then(|| link("/audit", &filters, Some(page - 1))),
            next => (page < pages).then(|| link("/audit", &filters, Some(page + 1))),
        },
    )
}

/// The rollouts page: the list (in flight first) and, for operators when the server has a
/// release store, the start form.
pub fn rollouts(
    caller: &Caller,
    all: &[crate::store::Rollout],
    clusters: &[String],
    has_store: bool,
) -> (StatusCode, Html<String>) {
    let rows: Vec<minijinja::Value> = all
        .iter()
        .map(|r| {
            context! {
                id => r.id.clone(),
                link => format!("/rollouts/{}", url_encode(&r.id)),
                cluster => r.cluster.clone(),
                version => r.version.clone(),
                state => r.state.clone(),
                created => when(r.created_ms),
                reason => r.reason.clone(),
            }
        })
        .collect();
    let can_start = has_store && caller.principal.role >= crate::store::Role::Operator;
    let (user, csrf) = user(Some(caller));
    render(
        "rollouts.html",
        context! { user, csrf, rollouts => rows, clusters => clusters.to_vec(), can_start },
    )
}

/// A rollout's page: each target's outcome and step, live; the controls for operators.
pub fn rollout(
    caller: &Caller,
    view: &serde_json::Value,
    stale_after: std::time::Duration,
) -> (StatusCode, Html<String>) {
    let time = |v: &serde_json::Value| v.as_i64().map(when);
    let nodes: Vec<minijinja::Value> = view["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            context! {
                node => n["node"].as_str().unwrap_or("?").to_owned(),
                outcome => n["outcome"].as_str().map(str::to_owned),
                step => n["step"].as_str().map(str::to_owned),
                reason => n["reason"].as_str().map(str::to_owned),
                started => time(&n["started_ms"]),
                ended => time(&n["ended_ms"]),
            }
        })
        .collect();
    let s = |k: &str| view[k].as_str().map(str::to_owned);
    let r = context! {
        id => s("id"), cluster => s("cluster"), version => s("version"), state => s("state"),
        reason => s("reason"), last_control => s("last_control"),
        in_flight => view["in_flight"].as_bool().unwrap_or(false),
        nodes,
    };
    let can_act = caller.principal.role >= crate::store::Role::Operator;
    let (user, csrf) = user(Some(caller));
    render(
        "rollout.html",
        context! {
            user, csrf, r, can_act,
            live => true,
            stale_ms => u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX),
            rollout_id => s("id"),
        },
    )
}

/// An age as the pages say it.
fn age(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) if ms < 120_000 => format!("{} s ago", ms.max(0) / 1000),
        Some(ms) if ms < 7_200_000 => format!("{} min ago", ms / 60_000),
        Some(ms) => format!("{} h ago", ms / 3_600_000),
    }
}

/// Bytes as the pages say them.
fn bytes(b: Option<u64>) -> String {
    match b {
        None => "—".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        Some(b) => format!("{} MiB", b >> 20),
    }
}

/// A node's view with the words a row shows.
fn node_row(v: &super::view::NodeView<'_>) -> minijinja::Value {
    let staged: Vec<&str> = v
        .staged
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    context! {
        name => v.name,
        link => v.page.as_str(),
        customer => v.customer,
        cluster => v.cluster,
        mode => minijinja::value::Serde(&v.mode),
        state => v.state.as_str(),
        reported_ms => v.reported_ms,
        active => v.active.as_str(),
        staged => if staged.is_empty() { "—".to_owned() } else { staged.join(", ") },
        server_release => v.server_release.as_str(),
        restarts => v.restarts.as_u64(),
        heartbeat => v.heartbeat_age_ms.as_i64().map_or_else(|| "—".to_owned(), |a| age(Some(a))),
        free => bytes(v.free_bytes.as_u64()),
        rollout => v.step.as_str(),
        age => age(v.age_ms),
        error => v.error,
        error_when => v.error_ms.map(when),
    }
}

/// A cluster's page.
pub fn cluster(
    caller: &Caller,
    key: &str,
    nodes: &[super::view::NodeView<'_>],
    rollout: Option<&serde_json::Value>,
    stale_after: std::time::Duration,
) -> (StatusCode, Html<String>) {
    let rows: Vec<minijinja::Value> = nodes.iter().map(node_row).collect();
    let rollout = rollout.map(|r| {
        let id = r["id"].as_str().unwrap_or("?");
        context! {
            id => id,
            link => format!("/rollouts/{}", url_encode(id)),
            version => r["version"].as_str(),
            state => r["state"].as_str(),
        }
    });
    let (user, csrf) = user(Some(caller));
    render(
        "cluster.html",
        context! {
            user, csrf, cluster => key, nodes => rows, rollout,
            live => true,
            stale_ms => u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX),
        },
    )
}

/// A node's page.
pub fn node(
    caller: &Caller,
    view: &super::view::NodeView<'_>,
    status: Option<&serde_json::Value>,
    changes: &[crate::store::AuditRow],
    history: &[(crate::store::Rollout, Option<crate::store::NodeOutcome>)],
    stale_after: std::time::Duration,
) -> (StatusCode, Html<String>) {
    let d = |k: &str| {
        status
            .and_then(|s| s["daemon"][k].as_str())
            .map(str::to_owned)
    };
    let labels: Vec<String> = view
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let history: Vec<minijinja::Value> = history
        .iter()
        .map(|(r, o)| {
            context! {
                id => r.id.clone(),
                link => format!("/rollouts/{}", url_encode(&r.id)),
                version => r.version.clone(),
                outcome => o.as_ref().and_then(|o| o.outcome.clone()),
                step => o.as_ref().and_then(|o| o.step.clone()),
                reason => o.as_ref().and_then(|o| o.reason.clone()),
                when => when(r.created_ms),
            }
        })
        .collect();
    let cluster_link = view.cluster_page.clone();
    let node = view.name;
    let changes: Vec<minijinja::Value> = changes
        .iter()
        .map(|r| {
            let here = r
                .entry
                .nodes
                .iter()
                .find(|(n, _)| n == node)
                .map(|(_, res)| res.clone());
            context! {
                when => when(r.entry.at_ms),
                user => r.entry.os_user.clone(),
                command => r.entry.args.join(" "),
                result => here,
            }
        })
        .collect();
    let (user, csrf) = user(Some(caller));
    render(
        "node.html",
        context! {
            user, csrf, n => node_row(view), cluster_link,
            labels => labels.join(", "),
            previous => status.and_then(|s| s["previous"].as_str()).map(str::to_owned),
            last_exit => d("last_exit"), health_error => d("health_error"),
            step => d("step"), last_step => d("last_step"),
            history, changes,
            live => true,
            stale_ms => u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX),
        },
    )
}

/// The releases page (`found`: the store's releases and its unreadable bundles; none: no
/// store).
pub fn releases(
    caller: &Caller,
    found: Option<&(Vec<serde_json::Value>, Vec<String>)>,
) -> (StatusCode, Html<String>) {
    let rows: Vec<minijinja::Value> = found
        .map(|(ok, _)| ok.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let signers: Vec<String> = r["signed_by"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|k| k.as_str().map_or_else(|| k.to_string(), str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            context! {
                version => r["version"].as_str(), channel => r["channel"].as_str(),
                counter => r["counter"].as_u64(), created => r["created"].as_str(),
                expires => r["expires"].as_str(), platform => r["platform"].as_str(),
                size => bytes(r["size"].as_u64()), signers => signers.join(", "),
            }
        })
        .collect();
    let unreadable = found.map(|(_, b)| b.clone()).unwrap_or_default();
    let (user, csrf) = user(Some(caller));
    render(
        "releases.html",
        context! { user, csrf, has_store => found.is_some(), releases => rows, unreadable },
    )
}

/// The users page (admins).
pub fn users(caller: &Caller, users: &[crate::store::User]) -> (StatusCode, Html<String>) {
    let rows: Vec<minijinja::Value> = users
        .iter()
        .map(|u| {
            context! {
                name => u.name.clone(),
                role => u.role.as_str(),
                created => when(u.created_ms),
                updated => when(u.updated_ms),
                remove => format!("/users/{}/remove", url_encode(&u.name)),
            }
        })
        .collect();
    let (user, csrf) = user(Some(caller));
    render("users.html", context! { user, csrf, users => rows })
}
