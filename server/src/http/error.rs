//! The API's one error answer, `AppError`. A refused request (4xx) names the field and the
//! problem: `{error, field[, problems]}`. A failure on this side (5xx) answers a stable,
//! generic `{error, code}` and never its internal text: that detail rides on the response's
//! extensions to `log_failures`, which logs it with the request's method and path and drops
//! it before the answer leaves.

use axum::Json;
use axum::extract::Request;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::cluster::ClusterError;
use crate::runs::RunsError;

/// Why a request got no answer of its own.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request cannot be served as asked (4xx): the message names the problem, `field`
    /// where it is; `problems` lists every problem of a refused definition.
    #[error("{message}")]
    Refused {
        status: StatusCode,
        message: String,
        field: Option<String>,
        problems: Option<Vec<serde_json::Value>>,
    },
    /// The run store failed (Postgres; Redis where a run's node is chosen).
    #[error(transparent)]
    Runs(#[from] RunsError),
    /// Cluster mode failed: Redis (membership, the lease), the leadership's epoch, a drain.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The token store failed (Postgres).
    #[error(transparent)]
    Tokens(#[from] crate::auth::TokensError),
}

/// What a client is told of a failure on this side: status, code and message never change
/// with the cause's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
}

const DATABASE_UNAVAILABLE: Failure = Failure {
    status: StatusCode::SERVICE_UNAVAILABLE,
    code: "database_unavailable",
    message: "the database is unavailable",
};
/// A statement waited for a lock longer than `postgres.lock_timeout_ms` (SQLSTATE 55P03):
/// something else holds what the request needs; asking again later may work.
const DATABASE_BUSY: Failure = Failure {
    status: StatusCode::SERVICE_UNAVAILABLE,
    code: "database_busy",
    message: "the database is busy: a lock the request needs was not granted in time",
};
const REDIS_UNAVAILABLE: Failure = Failure {
    status: StatusCode::SERVICE_UNAVAILABLE,
    code: "redis_unavailable",
    message: "Redis is unavailable",
};
const INTERNAL: Failure = Failure {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    code: "internal_error",
    message: "internal error",
};

/// The internal detail of a 5xx, for `log_failures` only.
#[derive(Debug, Clone)]
struct Detail {
    code: &'static str,
    error: String,
}

impl AppError {
    /// A 4xx with no field (the request as a whole).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AppError::Refused {
            status,
            message: message.into(),
            field: None,
            problems: None,
        }
    }

    /// A 4xx naming the field at fault.
    pub fn field(status: StatusCode, field: &str, message: impl Into<String>) -> Self {
        AppError::Refused {
            status,
            message: message.into(),
            field: Some(field.to_owned()),
            problems: None,
        }
    }

    /// A refused flow definition (422): the first problem as the message and field, and
    /// every problem with its line and column.
    pub fn invalid_flow(e: &fleet_inventory::LoadError) -> Self {
        let problems = e
            .problems()
            .iter()
            .map(|p| {
                json!({ "line": p.line, "column": p.column, "field": p.path, "message": p.message, "hint": p.hint })
            })
            .collect();
        let first = e.problems().first();
        AppError::Refused {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: first
                .map(ToString::to_string)
                .unwrap_or_else(|| "invalid flow".into()),
            field: Some(first.map(|p| p.path.clone()).unwrap_or_default()),
            problems: Some(problems),
        }
    }

    /// A flow that reaches outside its tenant (422): every part, with its field.
    pub fn out_of_bounds(tenant: &str, out: &[crate::auth::tenant::OutOfBounds]) -> Self {
        let problems = out
            .iter()
            .map(|o| json!({ "field": o.field, "message": o.message }))
            .collect();
        AppError::Refused {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!(
                "outside tenant `{tenant}`: {}",
                out.first().map(|o| o.message.as_str()).unwrap_or_default()
            ),
            field: out.first().map(|o| o.field.to_owned()),
            problems: Some(problems),
        }
    }

    /// What the client is told, for a failure on this side; `None` for a refused request.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            AppError::Refused { .. } => None,
            AppError::Runs(e) => Some(runs_failure(e)),
            AppError::Cluster(e) => Some(cluster_failure(e)),
            AppError::Tokens(crate::auth::TokensError::Db(e)) => Some(database_failure(e)),
            AppError::Tokens(_) => Some(INTERNAL),
        }
    }
}

fn runs_failure(e: &RunsError) -> Failure {
    match e {
        RunsError::Database(e) => database_failure(e),
        RunsError::Cluster(e) => cluster_failure(e),
        RunsError::Random(_) => INTERNAL,
    }
}

fn cluster_failure(e: &ClusterError) -> Failure {
    match e {
        ClusterError::RedisTimeout | ClusterError::Redis(_) => REDIS_UNAVAILABLE,
        ClusterError::Database(e) => database_failure(e),
        ClusterError::Runs(e) => runs_failure(e),
    }
}

fn database_failure(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => DATABASE_BUSY,
        _ => DATABASE_UNAVAILABLE,
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Refused {
                status,
                message,
                field,
                problems,
            } => {
                let mut body = serde_json::Map::new();
                body.insert("error".into(), message.into());
                if let Some(field) = field {
                    body.insert("field".into(), field.into());
                }
                if let Some(problems) = problems {
                    body.insert("problems".into(), problems.into());
                }
                (status, Json(serde_json::Value::Object(body))).into_response()
            }
            failed => {
                let failure = failed.failure().unwrap_or(INTERNAL);
                let body = json!({ "error": failure.message, "code": failure.code });
                let mut response = (failure.status, Json(body)).into_response();
                response.extensions_mut().insert(Detail {
                    code: failure.code,
                    error: failed.to_string(),
                });
                response
            }
        }
    }
}

/// Logs the internal detail of every 5xx answer with its request's method and path (the
/// answer itself carries only the generic message and code).
pub async fn log_failures(request: Request, next: Next) -> Response {
    let (method, uri): (Method, Uri) = (request.method().clone(), request.uri().clone());
    let mut response = next.run(request).await;
    if let Some(detail) = response.extensions_mut().remove::<Detail>() {
        tracing::error!(
            method = %method,
            path = uri.path(),
            status = response.status().as_u16(),
            code = detail.code,
            error = %detail.error,
            "request failed"
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: AppError) -> (StatusCode, serde_json::Value, Option<String>) {
        let response = e.into_response();
        let status = response.status();
        let detail = response
            .extensions()
            .get::<Detail>()
            .map(|d| d.error.clone());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let body = serde_json::from_slice(&bytes).expect("JSON");
        (status, body, detail)
    }

    #[tokio::test]
    async fn a_failure_answers_a_code_and_never_its_internal_text() {
        let cases = [
            (
                AppError::Runs(RunsError::Database(sqlx::Error::Protocol(
                    "password authentication failed".into(),
                ))),
                503,
                "database_unavailable",
            ),
            (
                AppError::Runs(RunsError::Cluster(ClusterError::RedisTimeout)),
                503,
                "redis_unavailable",
            ),
            (
                AppError::Cluster(ClusterError::RedisTimeout),
                503,
                "redis_unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let internal = e.to_string();
            let (got, body, detail) = answer(e).await;
            assert_eq!(got.as_u16(), status, "{body}");
            assert_eq!(body["code"], code, "{body}");
            assert_eq!(
                body.as_object().map(|o| o.len()),
                Some(2),
                "only error and code: {body}"
            );
            assert!(!body.to_string().contains(&internal), "{body}");
            assert!(
                !body.to_string().contains("Redis:") && !body.to_string().contains("password"),
                "{body}"
            );
            assert_eq!(
                detail.as_deref(),
                Some(internal.as_str()),
                "kept for the log"
            );
        }
    }

    #[tokio::test]
    async fn a_refusal_names_the_field_and_the_problem() {
        let (status, body, detail) = answer(AppError::field(
            StatusCode::BAD_REQUEST,
            "id",
            "`abc` is not a run id",
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            json!({ "error": "`abc` is not a run id", "field": "id" })
        );
        assert_eq!(detail, None);
        let (_, body, _) = answer(AppError::new(StatusCode::NOT_FOUND, "no such endpoint")).await;
        assert_eq!(body, json!({ "error": "no such endpoint" }));
    }
}
