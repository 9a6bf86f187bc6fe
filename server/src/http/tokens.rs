//! `/api/tokens`: the operator's admin lists, makes and revokes API tokens (as
//! `etl-server token` does on a node). A made token's text is in the answer to its creation
//! and nowhere else.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::{ApiResult, AppError, Shared};
use crate::auth::{Caller, Role, TokenStore, TokensError, parse_duration};

pub(super) async fn list(State(app): Shared) -> ApiResult {
    let tokens = TokenStore::new(&app.pool).list().await?;
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    role: String,
    tenant: Option<String>,
    expires_in: Option<String>,
}

pub(super) async fn create(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> ApiResult {
    let asked: NewToken = serde_json::from_slice(&body)
        .map_err(|e| AppError::field(StatusCode::BAD_REQUEST, "body", e.to_string()))?;
    let role = Role::parse(&asked.role).ok_or_else(|| {
        AppError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "role",
            format!("`{}` is not a role (read, run, admin)", asked.role),
        )
    })?;
    if let Some(t) = &asked.tenant
        && app.config.tenant(t).is_none()
    {
        return Err(AppError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            "tenant",
            format!("tenant `{t}` is not configured on this node ([tenants.{t}])"),
        ));
    }
    let expires_at = match &asked.expires_in {
        None => None,
        Some(d) => Some(
            parse_duration(d)
                .and_then(|d| chrono::Duration::from_std(d).ok())
                .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                .ok_or_else(|| {
                    AppError::field(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "expires_in",
                        format!("`{d}` is not a duration such as 30d, 12h, 90m or 3600s"),
                    )
                })?,
        ),
    };
    let (token, row) = TokenStore::new(&app.pool)
        .create(role, asked.tenant.as_deref(), &caller.token, expires_at)
        .await?;
    tracing::info!(token = %row.id, role = %row.role, by = %caller.token, "token made");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token.text, "details": row })),
    )
        .into_response())
}

pub(super) async fn revoke(
    State(app): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult {
    match TokenStore::new(&app.pool).revoke(&id).await {
        Ok(row) => {
            app.gate.forget(&row.id);
            tracing::info!(token = %row.id, by = %caller.token, "token revoked");
            Ok(Json(json!({ "details": row })).into_response())
        }
        // The id is not repeated: a token's whole text given by mistake stays out of it.
        Err(TokensError::NotFound(_)) => Err(AppError::field(
            StatusCode::NOT_FOUND,
            "id",
            "no such token",
        )),
        Err(e) => Err(e.into()),
    }
}
