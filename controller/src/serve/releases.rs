//! The releases in the store `fleet serve` was given (`--store`): version, channel, counter,
//! created, expiry and signers, as `fleet release list` reads them; a bundle that cannot be
//! read is listed with why. A page (`/releases`) and JSON (`/api/releases`).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};

use super::session::{Who, refuse};
use super::{App, pages};

/// The store's releases by counter, and the bundles that could not be read (each with why);
/// `None` when the server has no store.
async fn listed(app: &App) -> Result<Option<(Vec<Value>, Vec<String>)>, String> {
    let Some(store) = app.options.release_store.clone() else {
        return Ok(None);
    };
    let items = tokio::task::spawn_blocking(move || fleet_release::list_store(&store))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the release store: {e}"))?;
    let (mut ok, mut broken) = (Vec::new(), Vec::new());
    for item in items {
        match item {
            Ok(r) => {
                let m = &r.manifest;
                ok.push(json!({
                    "version": m.version, "counter": m.counter, "channel": m.channel,
                    "created": m.created.to_string(), "expires": m.expires.to_string(),
                    "platform": m.platform, "size": r.size, "signed_by": r.signers,
                }));
            }
            Err(e) => broken.push(e.to_string()),
        }
    }
    Ok(Some((ok, broken)))
}

/// `GET /api/releases`.
pub async fn json(State(app): State<Arc<App>>) -> Response {
    match listed(&app).await {
        Ok(Some((releases, broken))) => {
            Json(json!({ "releases": releases, "unreadable": broken })).into_response()
        }
        Ok(None) => refuse(
            "/api/releases",
            StatusCode::NOT_FOUND,
            "this server has no release store (--store)",
        ),
        Err(e) => refuse("/api/releases", StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// `GET /releases`.
pub async fn page(State(app): State<Arc<App>>, who: axum::Extension<Who>) -> Response {
    let Some(caller) = who.0.0.as_ref() else {
        return Redirect::to("/login").into_response();
    };
    match listed(&app).await {
        Ok(found) => pages::releases(caller, found.as_ref()).into_response(),
        Err(e) => refuse("/releases", StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}
