//! The `api_tokens` table: making, listing, revoking and checking tokens. Only the sha256 of
//! a token's secret is stored; a presented token is looked up by its public id and its digest
//! compared in constant time; a revoked or expired token is refused like an unknown one.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{NewToken, Role, parse_presented, same_digest};

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("the token store: {}", crate::db::describe(.0))]
    Db(#[from] sqlx::Error),
    #[error("no random bytes for a token: {0}")]
    Random(getrandom::Error),
    #[error("tenant {0:?} is not a tenant name ({hint})", hint = fleet_inventory::TENANT_NAME_HINT)]
    Tenant(String),
    #[error("no token {0}")]
    NotFound(String),
}

/// A token as listed: everything but its secret.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub role: String,
    pub tenant: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What is checked of a presented token.
#[derive(sqlx::FromRow)]
struct StoredToken {
    secret_sha256: Vec<u8>,
    role: String,
    tenant: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// Who a valid token says the request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token: String,
    pub role: Role,
    /// `None`: the operator's token, for every tenant.
    pub tenant: Option<String>,
    /// When a database token stops being valid (none: never, or a configured token).
    pub expires_at: Option<DateTime<Utc>>,
}

pub struct TokenStore<'a> {
    pool: &'a PgPool,
}

impl<'a> TokenStore<'a> {
    pub fn new(pool: &'a PgPool) -> Self {
        Self { pool }
    }

    /// Makes a token; its text is in the answer and nowhere else.
    pub async fn create(
        &self,
        role: Role,
        tenant: Option<&str>,
        created_by: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(NewToken, TokenRow), TokensError> {
        if let Some(t) = tenant
            && !fleet_inventory::is_tenant_name(t)
        {
            return Err(TokensError::Tenant(t.to_owned()));
        }
        let token = NewToken::generate().map_err(TokensError::Random)?;
        let row = sqlx::query_as::<_, TokenRow>(
            "INSERT INTO api_tokens (id, secret_sha256, role, tenant, created_by, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, role, tenant, created_by, created_at, last_used_at, expires_at, revoked_at",
        )
        .bind(&token.id)
        .bind(&token.secret_sha256[..])
        .bind(role.as_str())
        .bind(tenant)
        .bind(created_by)
        .bind(expires_at)
        .fetch_one(self.pool)
        .await?;
        Ok((token, row))
    }

    /// Every token, oldest first.
    pub async fn list(&self) -> Result<Vec<TokenRow>, TokensError> {
        Ok(sqlx::query_as::<_, TokenRow>(
            "SELECT id, role, tenant, created_by, created_at, last_used_at, expires_at, revoked_at
             FROM api_tokens ORDER BY created_at, id",
        )
        .fetch_all(self.pool)
        .await?)
    }

    /// Revokes token `id` (its public id); revoking it again changes nothing.
    pub async fn revoke(&self, id: &str) -> Result<TokenRow, TokensError> {
        sqlx::query_as::<_, TokenRow>(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
             RETURNING id, role, tenant, created_by, created_at, last_used_at, expires_at, revoked_at",
        )
        .bind(id)
        .fetch_optional(self.pool)
        .await?
        .ok_or_else(|| TokensError::NotFound(id.to_owned()))
    }

    /// The caller a presented token names, when it is a live token: known, its secret's
    /// digest equal, not revoked, not expired at `now`. Marks it used (at most once a minute).
    pub async fn authenticate(
        &self,
        presented: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Caller>, TokensError> {
        let Some((id, digest)) = parse_presented(presented) else {
            return Ok(None);
        };
        let row = sqlx::query_as::<_, StoredToken>(
            "SELECT secret_sha256, role, tenant, expires_at, revoked_at FROM api_tokens WHERE id = $1",
        )
        .bind(&id)
        .fetch_optional(self.pool)
        .await?;
        let Some(StoredToken {
            secret_sha256: stored,
            role,
            tenant,
            expires_at,
            revoked_at,
        }) = row
        else {
            return Ok(None);
        };
        let live = same_digest(&stored, &digest)
            && revoked_at.is_none()
            && expires_at.is_none_or(|t| now < t);
        let Some(role) = Role::parse(&role).filter(|_| live) else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $2
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2 - interval '1 minute')",
        )
        .bind(&id)
        .bind(now)
        .execute(self.pool)
        .await?;
        Ok(Some(Caller {
            token: id,
            role,
            tenant,
            expires_at,
        }))
    }
}
