//! A Postgres database of its own per test, created on the shared Postgres at 127.0.0.1:5432
//! (user `postgres`, trust authentication) and dropped with it; not a Postgres server: when none
//! answers, the test fails with how to start one.

use crate::unique::unique_name;

/// The maintenance database tests connect to for creating and dropping theirs.
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Longest name Postgres keeps whole; a longer one would be cut and the URL would miss it.
const MAX_NAME_BYTES: usize = 63;

/// A database that exists for one test and is dropped (with its connections) after it.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Creates `etl_LABEL_…`; panics, saying how to start Postgres, when it cannot connect.
    pub async fn new(label: &str) -> TestDb {
        let name = unique_name(&format!("etl_{label}"));
        assert!(
            name.len() <= MAX_NAME_BYTES,
            "database name `{name}` is longer than {MAX_NAME_BYTES} bytes: shorten the label"
        );
        let admin = sqlx::PgPool::connect(POSTGRES_ADMIN_URL)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Postgres at 127.0.0.1:5432 (user postgres, trust auth) is needed: {e}; start it with \
                     `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
                )
            });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        TestDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime: a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = sqlx::PgPool::connect(POSTGRES_ADMIN_URL).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_test_databases_have_different_names_and_are_dropped() {
        let (a, b) = (TestDb::new("helper").await, TestDb::new("helper").await);
        assert_ne!(a.name, b.name);
        assert!(a.name.starts_with("etl_helper_"), "{}", a.name);
        let pool = a.pool().await;
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool)
            .await
            .expect("query");
        assert_eq!(one, 1);
        pool.close().await;
        let name = a.name.clone();
        drop(a);
        let admin = sqlx::PgPool::connect(POSTGRES_ADMIN_URL)
            .await
            .expect("admin");
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&admin)
            .await
            .expect("query");
        assert_eq!(left, 0, "{name} was dropped");
        admin.close().await;
    }
}
