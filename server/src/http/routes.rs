//! The route table: every route with the access it needs. The router is built from it and
//! the tests' route × role × tenant matrix walks it, so no route escapes the gate. A guarded
//! route's handler finds the `Caller` in the request's extensions.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};

use super::AppError;
use crate::auth::{Caller, Refusal, Role};
use crate::node::Node;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the route shows nothing of any tenant (`/health`, `/metrics`).
    Public,
    /// A token with at least this role, a tenant's (acting on its own flows and runs) or the
    /// operator's.
    Tenant(Role),
    /// The operator's token (no tenant) with at least this role: the node and the tokens.
    Operator(Role),
}

/// A route: method, path (axum's pattern) and access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

type Handler = MethodRouter<Arc<Node>>;

/// Every route, its access and its handler.
fn table() -> Vec<(Route, Handler)> {
    use super::*;
    use Access::*;
    let r = |method, path, access, handler| {
        (
            Route {
                method,
                path,
                access,
            },
            handler,
        )
    };
    vec![
        r("POST", "/api/flows", Tenant(Role::Run), post(put_flow)),
        r("GET", "/api/flows", Tenant(Role::Read), get(list_flows)),
        r(
            "GET",
            "/api/flows/{name}",
            Tenant(Role::Read),
            get(get_flow),
        ),
        r(
            "DELETE",
            "/api/flows/{name}",
            Tenant(Role::Run),
            delete(delete_flow),
        ),
        r(
            "POST",
            "/api/flows/{name}/run",
            Tenant(Role::Run),
            post(run_flow),
        ),
        r("GET", "/api/runs", Tenant(Role::Read), get(list_runs)),
        r("GET", "/api/runs/{id}", Tenant(Role::Read), get(get_run)),
        r(
            "POST",
            "/api/runs/{id}/cancel",
            Tenant(Role::Run),
            post(cancel_run),
        ),
        r("GET", "/api/cluster", Tenant(Role::Read), get(cluster)),
        r(
            "GET",
            "/api/tokens",
            Operator(Role::Admin),
            get(tokens::list),
        ),
        r(
            "POST",
            "/api/tokens",
            Operator(Role::Admin),
            post(tokens::create),
        ),
        r(
            "DELETE",
            "/api/tokens/{id}",
            Operator(Role::Admin),
            delete(tokens::revoke),
        ),
        r("POST", "/admin/drain", Operator(Role::Admin), post(drain)),
        r("POST", "/admin/resume", Operator(Role::Admin), post(resume)),
        r("GET", "/health", Public, get(health)),
        r("GET", "/metrics", Public, get(metrics)),
    ]
}

/// Every route and its access, as the router serves them.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The router of `table`: each guarded route behind the gate with its access.
pub fn router(app: Arc<Node>) -> Router<Arc<Node>> {
    let mut router = Router::new();
    for (route, handler) in table() {
        let handler = match route.access {
            Access::Public => handler,
            access => handler.route_layer(axum::middleware::from_fn_with_state(
                (app.clone(), access),
                guard,
            )),
        };
        router = router.route(route.path, handler);
    }
    router
}

/// Lets the request through with its `Caller` when the access allows it.
async fn guard(
    State((app, access)): State<(Arc<Node>, Access)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let secure = request.extensions().get::<fleet_tls::Secure>().is_some();
    match admit(&app, access, peer, secure, request.headers()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    }
}

/// The caller, when `access` lets it in; else the refusal (401 who are you, 403 not this,
/// 429 too many failures).
pub async fn admit(
    app: &Node,
    access: Access,
    peer: SocketAddr,
    secure: bool,
    headers: &HeaderMap,
) -> Result<Caller, Response> {
    let needed = match access {
        Access::Public => Role::Read,
        Access::Tenant(role) | Access::Operator(role) => role,
    };
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let caller = match app.gate.identify(&app.pool, peer, secure, given).await {
        Ok(caller) => caller,
        Err(refusal) => return Err(refused(refusal)),
    };
    if caller.role < needed {
        return Err(AppError::field(
            StatusCode::FORBIDDEN,
            "authorization",
            format!(
                "token {} has the role `{}`; this needs `{needed}`",
                caller.token, caller.role
            ),
        )
        .into_response());
    }
    if matches!(access, Access::Operator(_)) && caller.tenant.is_some() {
        return Err(AppError::field(
            StatusCode::FORBIDDEN,
            "authorization",
            format!(
                "token {} is a tenant's: this needs the operator's",
                caller.token
            ),
        )
        .into_response());
    }
    Ok(caller)
}

fn refused(refusal: Refusal) -> Response {
    let message = refusal.to_string();
    match refusal {
        Refusal::Missing | Refusal::Invalid => {
            let mut r =
                AppError::field(StatusCode::UNAUTHORIZED, "authorization", message).into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
        Refusal::Limited(_, secs) => {
            let mut r = AppError::new(StatusCode::TOO_MANY_REQUESTS, message).into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            r
        }
        Refusal::PlainCluster => {
            AppError::field(StatusCode::FORBIDDEN, "authorization", message).into_response()
        }
        Refusal::Store(e) => AppError::Tokens(e).into_response(),
    }
}
