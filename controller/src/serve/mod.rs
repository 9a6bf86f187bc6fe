//! `fleet serve`: the controller as a service (being built). So far: the route table
//! (`routes.rs`), the guard every route goes through with logins, sessions, CSRF and the
//! login rate limit (`session.rs`), the credentials (`auth.rs`, shared with `fleet user` and
//! `fleet token`), the pages (`pages.rs`, templates in `templates/`) and the JSON API
//! (`api.rs`). Every login and every change is an audit row, `who` being `web:<user>`.

mod api;
pub mod auth;
mod pages;
mod routes;
mod session;

use std::sync::Arc;
use std::time::Duration;

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
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            secure_cookies: false,
            trusted_origins: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// What every handler shares.
pub struct App {
    pub store: Store,
    pub options: ServeOptions,
    limiter: session::Limiter,
}

/// Serves `store` on `listener` until `shutdown`, then lets requests in flight finish.
pub async fn serve(
    store: Store,
    options: ServeOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = App::new(store, options);
    axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

impl App {
    pub fn new(store: Store, options: ServeOptions) -> Arc<App> {
        Arc::new(App {
            store,
            options,
            limiter: session::Limiter::default(),
        })
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
