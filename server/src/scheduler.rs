//! Leadership for the cluster's scheduler: a Redis lease (`SET NX PX` with a random token,
//! renewed and released only through compare-and-set scripts) plus a fencing epoch in Postgres
//! that grows with every grant. A node that cannot renew in time, or notices it slept past the
//! TTL, steps down before doing anything else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::api::App;

/// The lease this node holds.
#[derive(Debug, Clone)]
pub struct Lease {
    pub token: String,
    pub epoch: i64,
    renewed: Instant,
}

#[derive(Default)]
pub struct Leadership {
    lease: Mutex<Option<Lease>>,
}

impl Leadership {
    /// The lease, if this node leads now.
    pub async fn current(&self) -> Option<Lease> {
        self.lease.lock().await.clone()
    }

    /// Gives the lease up at once (drain, shutdown).
    pub async fn step_down(&self, app: &App) {
        if let Some(lease) = self.lease.lock().await.take() {
            let _ = app.membership.release_lease(&lease.token).await;
            tracing::info!(epoch = lease.epoch, "gave up the scheduler's leadership");
        }
    }
}

/// A new grant's epoch: one more than any before, durably.
async fn grant(pool: &sqlx::PgPool, node: &str) -> Result<i64, String> {
    let (epoch,): (i64,) = sqlx::query_as(
        "UPDATE leadership SET epoch = epoch + 1, node = $1, granted_at = now() WHERE id = 1 RETURNING epoch",
    )
    .bind(node)
    .fetch_one(pool)
    .await
    .map_err(|e| crate::db::describe(&e))?;
    Ok(epoch)
}

/// The latest grant: its epoch and node.
pub async fn latest_grant(pool: &sqlx::PgPool) -> Result<(i64, Option<String>), String> {
    sqlx::query_as("SELECT epoch, node FROM leadership WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(|e| crate::db::describe(&e))
}

fn token(node: &str) -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{node}:{hex}")
}

/// Takes, keeps and gives up the lease, every `renew` interval, until the task is stopped.
pub async fn lead(app: Arc<App>) {
    let (ttl, renew) = (
        app.config.cluster.leader_ttl(),
        app.config.cluster.leader_renew(),
    );
    loop {
        let eligible = !app.executor.draining() && app.executor.schema_is_current().await;
        {
            let mut slot = app.leadership.lease.lock().await;
            match slot.as_mut() {
                Some(lease) if !eligible => {
                    let _ = app.membership.release_lease(&lease.token).await;
                    *slot = None;
                }
                // Asleep past the TTL (a stopped process, a stall): someone else may lead.
                Some(lease) if lease.renewed.elapsed() >= ttl => {
                    tracing::warn!(
                        epoch = lease.epoch,
                        "the lease ran out before it was renewed: stepping down"
                    );
                    *slot = None;
                }
                Some(lease) => match app.membership.renew_lease(&lease.token, ttl).await {
                    Ok(true) => lease.renewed = Instant::now(),
                    Ok(false) | Err(_) => {
                        tracing::warn!(
                            epoch = lease.epoch,
                            "the lease could not be renewed: stepping down"
                        );
                        *slot = None;
                    }
                },
                None if eligible => {
                    let t = token(&app.config.node);
                    let asked = Instant::now();
                    if let Ok(true) = app.membership.acquire_lease(&t, ttl).await {
                        match grant(&app.pool, &app.config.node).await {
                            Ok(epoch) => {
                                tracing::info!(epoch, "leads the scheduler");
                                *slot = Some(Lease {
                                    token: t,
                                    epoch,
                                    renewed: asked,
                                });
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "recording the grant");
                                let _ = app.membership.release_lease(&t).await;
                            }
                        }
                    }
                }
                None => {}
            }
        }
        tokio::time::sleep(renew.min(Duration::from_millis(500))).await;
    }
}
