//! `fleet serve`: the controller as a service. The route table (`routes.rs`, which also makes
//! the OpenAPI document), the guard every route goes through with logins, sessions, CSRF and
//! the login rate limit (`session.rs`), the credentials (`auth.rs`, shared with `fleet user`
//! and `fleet token`), the status collector (`collect.rs`) and what a node shows (`view.rs`),
//! live updates (`events.rs`), the pages (`pages.rs` renders them, templates in `templates/`,
//! the script in `static/`; `nodes.rs`, `rollouts.rs`, `releases.rs`, `audit.rs` serve them)
//! and the JSON API (`api.rs` and the same modules); HTTPS from PEM files (`fleet_tls`). Every
//! login and every change is an audit row, `who` being `web:<user>`.

mod api;
mod audit;
pub mod auth;
pub mod collect;
mod events;
mod nodes;
mod pages;
mod releases;
mod rollouts;
mod routes;
mod session;
mod view;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_inventory::Inventory;

pub use routes::{Access, RouteSpec, router, routes};

use crate::store::{AuditEntry, Store, now_ms};

/// How `fleet serve` serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Cookies marked `Secure` (served over TLS, or behind a proxy that is).
    pub secure_cookies: bool,
    /// Origins besides the server's own whose state-changing requests are let through (the
    /// public origin of a reverse proxy: `https://fleet.example.com`).
    pub trusted_origins: Vec<String>,
    /// How long a session lasts after its login.
    pub session_ttl: Duration,
    /// A node's status older than this shows as `stale` (three collection intervals).
    pub stale_after: Duration,
    /// The release store rollouts are started from (none: the web cannot start one).
    pub release_store: Option<std::path::PathBuf>,
    /// The order key's file (none: `$FLEET_ORDER_KEY`, else `order.key` in the data
    /// directory, as `fleet rollout` finds it).
    pub order_key: Option<std::path::PathBuf>,
    /// Serve over TLS with this configuration (`fleet_tls::server_config`); none: plain HTTP.
    pub tls: Option<Arc<fleet_tls::ServerConfig>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            secure_cookies: false,
            trusted_origins: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
            stale_after: Duration::from_secs(90),
            release_store: None,
            order_key: None,
            tls: None,
        }
    }
}

/// What every handler shares.
pub struct App {
    pub store: Store,
    pub inventory: Arc<Inventory>,
    pub options: ServeOptions,
    limiter: session::Limiter,
    /// Nodes whose status is wanted now (`collect_now`), and the collector's wake-up.
    collect_requests: Mutex<Vec<String>>,
    collect_wake: tokio::sync::Notify,
    /// What the collector last heard of each node, kept here so that a page reads memory,
    /// not the store (the store keeps it durably; `reload` reads it back).
    heard: std::sync::RwLock<std::collections::HashMap<String, crate::store::NodeSnapshot>>,
    /// Live updates for the pages (`events.rs`).
    events: events::Hub,
    /// Pokes the rollout follower (a rollout was just started).
    watch_soon: tokio::sync::Notify,
    /// The server's shutdown: live streams end with it.
    stop: tokio_util::sync::CancellationToken,
}

/// Serves `store` and `inventory` on `listener`, collecting the nodes' status, until
/// `shutdown`; then the collector stops and requests in flight finish.
pub async fn serve(
    store: Store,
    inventory: Arc<Inventory>,
    options: ServeOptions,
    collect: collect::CollectOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = App::new(store, inventory.clone(), options);
    if let Err(e) = app.reload().await {
        tracing::error!(error = %e, "reading what was heard of the nodes: starting without it");
    }
    let stop = app.stop.clone();
    let collector = tokio::spawn(collect::run(app.clone(), inventory, collect, stop.clone()));
    let follower = tokio::spawn(rollouts::follow(app.clone(), stop.clone()));
    let shutdown = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    };
    let served = match app.options.tls.clone() {
        Some(config) => fleet_tls::serve(router(app), listener, config, shutdown).await,
        None => {
            axum::serve(
                listener,
                router(app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
    };
    stop.cancel();
    let _ = collector.await;
    let _ = follower.await;
    served
}

impl App {
    pub fn new(store: Store, inventory: Arc<Inventory>, options: ServeOptions) -> Arc<App> {
        Arc::new(App {
            store,
            inventory,
            options,
            limiter: session::Limiter::default(),
            collect_requests: Mutex::new(Vec::new()),
            collect_wake: tokio::sync::Notify::new(),
            heard: Default::default(),
            events: events::Hub::default(),
            watch_soon: tokio::sync::Notify::new(),
            stop: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Asks the collector for `node`'s status now (at once, unless an ask of it is under
    /// way).
    pub fn collect_now(&self, node: &str) {
        self.collect_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(node.to_owned());
        self.collect_wake.notify_one();
    }

    /// Reads what the store holds of every node into memory (at the start; tests after they
    /// wrote the store themselves).
    pub async fn reload(&self) -> Result<(), crate::store::StoreError> {
        let snapshots = self.store.node_snapshots().await?;
        *self.heard.write().unwrap_or_else(|e| e.into_inner()) =
            snapshots.into_iter().map(|s| (s.node.clone(), s)).collect();
        Ok(())
    }

    /// What was last heard of every node (a read lock: keep it short).
    fn heard(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, std::collections::HashMap<String, crate::store::NodeSnapshot>>
    {
        self.heard.read().unwrap_or_else(|e| e.into_inner())
    }

    fn take_collect_requests(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .collect_requests
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// The `Set-Cookie` value of a session (`max_age` zero: one that clears it).
    fn cookie(&self, id: &str, max_age: Duration) -> String {
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
            session::COOKIE,
            max_age.as_secs(),
            if self.options.secure_cookies {
                "; Secure"
            } else {
                ""
            }
        )
    }

    /// Appends the audit row of something done through the web (`who` is `web:<user>`);
    /// a row that cannot be written is logged as an error.
    async fn audit_web(&self, user: &str, command: &str, subject: &str, result: &str) {
        let entry = AuditEntry {
            at_ms: now_ms(),
            os_user: format!("web:{user}"),
            key_fingerprints: Vec::new(),
            command: command.to_owned(),
            args: vec![subject.to_owned()],
            nodes: Vec::new(),
            digests: Vec::new(),
            result: result.to_owned(),
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(error = %e, command, "writing the audit row");
        }
    }
}
