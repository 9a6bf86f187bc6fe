//! The users of `fleet serve` with their roles, their sessions, and API tokens. The store
//! keeps no secret it could leak: a password as its argon2 PHC string, a session id and a
//! token as their sha256 (`crate::serve::auth` makes and checks them). A session or a token
//! past its expiry is never answered, and removing a user ends their sessions.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, now_ms, on_pool};

/// What a user (or a token) may do: viewers see; operators also start, pause, resume and
/// abort rollouts; admins also manage users and tokens. Ordered: each role can do what the
/// ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a role (viewer, operator, admin)"))
    }
}

fn role(text: &str, whose: &str) -> Result<Role, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("the role of {whose}: {e}")))
}

/// A user as listed (never the password's hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// An API token as listed (never its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Token {
    /// The public part of the token, which names it in lists and in `revoke`.
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
}

/// Who a session or a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's name, or `token:<id>` for a token.
    pub name: String,
    pub role: Role,
}

type TokenRow = (
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
);

impl Store {
    /// Adds a user; refused when the name is taken.
    pub async fn add_user(
        &self,
        name: &str,
        role: Role,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let added = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO users (name, role, password_hash, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(name)
            .bind(role.as_str())
            .bind(password_hash)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
        });
        match added {
            Ok(()) => Ok(()),
            Err(e) if super::rollouts::is_unique_violation(&e) => Err(StoreError::UserExists {
                name: name.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT name, role, created_ms, updated_ms FROM users ORDER BY name")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(name, r, created_ms, updated_ms)| {
                Ok(User {
                    role: role(&r, &name)?,
                    name,
                    created_ms,
                    updated_ms,
                })
            })
            .collect()
    }

    /// A user's role and password hash, for a login.
    pub async fn user_credentials(&self, name: &str) -> Result<Option<(Role, String)>, StoreError> {
        let row: Option<(String, String)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT role, password_hash FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        row.map(|(r, hash)| Ok((role(&r, name)?, hash))).transpose()
    }

    /// Sets a user's password and ends every session of theirs. Whether the user exists.
    pub async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool, StoreError> {
        let changed = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query("UPDATE users SET password_hash = $2, updated_ms = $3 WHERE name = $1")
                .bind(name)
                .bind(password_hash)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM sessions WHERE user_name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            changed
        });
        Ok(changed == 1)
    }

    /// Removes a user and their sessions. Whether there was one.
    pub async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        let removed = on_pool!(self, pool => {
            sqlx::query("DELETE FROM users WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(removed == 1)
    }

    /// Records a session of `user` under the hash of its id.
    pub async fn create_session(
        &self,
        id_hash: &str,
        user: &str,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO sessions (id_hash, user_name, created_ms, expires_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(id_hash)
            .bind(user)
            .bind(now_ms())
            .bind(expires_ms)
            .execute(pool)
            .await
            .map(|_| ())?
        });
        Ok(())
    }

    /// Who the session with this id hash stands for, if it exists and has not expired (an
    /// expired one is removed).
    pub async fn session(&self, id_hash: &str) -> Result<Option<Principal>, StoreError> {
        let now = now_ms();
        let row: Option<(String, String, i64)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT u.name, u.role, s.expires_ms FROM sessions s JOIN users u ON u.name = s.user_name WHERE s.id_hash = $1",
            )
            .bind(id_hash)
            .fetch_optional(pool)
            .await?
        });
        match row {
            Some((name, r, expires)) if expires > now => Ok(Some(Principal {
                role: role(&r, &name)?,
                name,
            })),
            Some(_) => {
                self.end_session(id_hash).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Ends a session (logout). Whether there was one.
    pub async fn end_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let ended = on_pool!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(ended == 1)
    }

    /// Records an API token under its public id and the hash of its secret.
    pub async fn create_token(&self, token: &Token, hash: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO api_tokens (id, hash, name, role, created_by, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&token.id)
            .bind(hash)
            .bind(&token.name)
            .bind(token.role.as_str())
            .bind(&token.created_by)
            .bind(token.created_ms)
            .bind(token.expires_ms)
            .execute(pool)
            .await
            .map(|_| ())?
        });
        Ok(())
    }

    /// Who the token with this hash stands for, if it exists and has not expired; notes
    /// when it was last used (to the minute: a token used again within a minute costs no
    /// write).
    pub async fn token(&self, hash: &str) -> Result<Option<Principal>, StoreError> {
        let now = now_ms();
        let row: Option<(String, String, Option<i64>, Option<i64>)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT id, role, expires_ms, last_used_ms FROM api_tokens WHERE hash = $1")
                .bind(hash)
                .fetch_optional(pool)
                .await?
        });
        let Some((id, r, expires, last_used)) = row else {
            return Ok(None);
        };
        if expires.is_some_and(|e| e <= now) {
            return Ok(None);
        }
        if last_used.is_some_and(|t| now - t < 60_000) {
            return Ok(Some(Principal {
                role: role(&r, &id)?,
                name: format!("token:{id}"),
            }));
        }
        on_pool!(self, pool => {
            sqlx::query("UPDATE api_tokens SET last_used_ms = $2 WHERE id = $1")
                .bind(&id)
                .bind(now)
                .execute(pool)
                .await
                .map(|_| ())?
        });
        Ok(Some(Principal {
            role: role(&r, &id)?,
            name: format!("token:{id}"),
        }))
    }

    /// Every API token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<Token>, StoreError> {
        let rows: Vec<TokenRow> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, name, role, created_by, created_ms, expires_ms, last_used_ms FROM api_tokens ORDER BY created_ms, id",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(
                |(id, name, r, created_by, created_ms, expires_ms, last_used_ms)| {
                    Ok(Token {
                        role: role(&r, &id)?,
                        id,
                        name,
                        created_by,
                        created_ms,
                        expires_ms,
                        last_used_ms,
                    })
                },
            )
            .collect()
    }

    /// Revokes a token by its public id. Whether there was one.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let revoked = on_pool!(self, pool => {
            sqlx::query("DELETE FROM api_tokens WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(revoked == 1)
    }
}
