//! Leadership for the cluster's scheduler: a Redis lease (`SET NX PX` with a random token,
//! renewed and released only through compare-and-set scripts) plus a fencing epoch in Postgres
//! that grows with every grant. The lease lasts a TTL from when its last renewal was sent: a
//! renewal Redis refuses (another token holds the key) ends it at once; one without an answer
//! (a slow or unreachable Redis) is tried again, and the lease ends only when its TTL runs out
//! (a node that slept past the TTL steps down before doing anything else). Schedules are due by
//! the database's clock. No Redis call is made inside a transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::error::ClusterError;
use crate::node::Node;

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
    pub async fn step_down(&self, app: &Node) {
        if let Some(lease) = self.lease.lock().await.take() {
            let _ = app.membership.release_lease(&lease.token).await;
            tracing::info!(epoch = lease.epoch, "gave up the scheduler's leadership");
        }
    }
}

/// A new grant's epoch: one more than any before, durably.
async fn grant(pool: &sqlx::PgPool, node: &str) -> Result<i64, ClusterError> {
    let (epoch,): (i64,) = sqlx::query_as(
        "UPDATE leadership SET epoch = epoch + 1, node = $1, granted_at = now() WHERE id = 1 RETURNING epoch",
    )
    .bind(node)
    .fetch_one(pool)
    .await?;
    Ok(epoch)
}

/// The latest grant: its epoch and node.
pub async fn latest_grant(pool: &sqlx::PgPool) -> Result<(i64, Option<String>), ClusterError> {
    Ok(
        sqlx::query_as("SELECT epoch, node FROM leadership WHERE id = 1")
            .fetch_one(pool)
            .await?,
    )
}

fn token(node: &str) -> String {
    format!("{node}:{}", crate::random_hex::<16>().unwrap_or_default())
}

/// Takes, keeps and gives up the lease, every `renew` interval, until the shutdown, when it
/// gives the lease up.
pub async fn lead(app: Arc<Node>) {
    let (ttl, renew) = (
        app.config.cluster.leader_ttl(),
        app.config.cluster.leader_renew(),
    );
    loop {
        let eligible = !app.executor.draining()
            && !app.executor.on_probation()
            && app.executor.schema_is_current().await;
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
                Some(lease) if lease.renewed.elapsed() < renew => {}
                Some(lease) => {
                    // Redis counts the TTL from when it handles the renewal, after it was sent.
                    let asked = Instant::now();
                    match app.membership.renew_lease(&lease.token, ttl).await {
                        Ok(true) => lease.renewed = asked,
                        Ok(false) => {
                            tracing::warn!(
                                epoch = lease.epoch,
                                "the lease is no longer ours: stepping down"
                            );
                            *slot = None;
                        }
                        // No answer is not a refusal: the lease still holds until its TTL
                        // runs out (checked above), and the renewal is tried again.
                        Err(e) => tracing::warn!(
                            epoch = lease.epoch,
                            error = %e,
                            "the lease could not be renewed yet"
                        ),
                    }
                }
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
        let lease = app.leadership.current().await;
        if let Some(lease) = lease
            && lease.renewed.elapsed() < ttl
        {
            match fire_due(&app, &lease).await {
                Ok(()) => {}
                Err(Fire::Fenced) => {
                    tracing::warn!(
                        epoch = lease.epoch,
                        "a newer leader was granted: stepping down"
                    );
                    *app.leadership.lease.lock().await = None;
                }
                Err(Fire::Failed(e)) => tracing::warn!(error = %e, "evaluating schedules"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(renew.min(Duration::from_millis(200))) => {}
            () = app.stop.cancelled() => {
                // Leadership goes at once, so another node schedules without waiting for the TTL.
                app.leadership.step_down(&app).await;
                return;
            }
        }
    }
}

enum Fire {
    /// The epoch in Postgres is not ours any more.
    Fenced,
    Failed(ClusterError),
}

impl From<ClusterError> for Fire {
    fn from(e: ClusterError) -> Self {
        Fire::Failed(e)
    }
}

impl From<sqlx::Error> for Fire {
    fn from(e: sqlx::Error) -> Self {
        Fire::Failed(e.into())
    }
}

impl From<crate::runs::RunsError> for Fire {
    fn from(e: crate::runs::RunsError) -> Self {
        Fire::Failed(e.into())
    }
}

type Time = chrono::DateTime<chrono::Utc>;
/// A flow with a schedule: tenant, name, definition, last change, last fire, and the
/// database's `now()`.
type ScheduledFlow = (String, String, serde_json::Value, Time, Option<Time>, Time);

/// A fire time more than this late is "missed" under `misfire: skip`.
const ON_TIME: Duration = Duration::from_secs(2);

/// Fires every flow whose schedule is due by the database's clock (its `now()`, not this
/// process's), each fire time at most once cluster-wide. Redis (the lease's holder, the
/// members to dispatch to) is read before each fire's transaction and woken after its commit.
async fn fire_due(app: &Node, lease: &Lease) -> Result<(), Fire> {
    let flows: Vec<ScheduledFlow> =
        sqlx::query_as(
            "SELECT f.tenant, f.name, f.definition, f.updated_at,
                    (SELECT max(fire_time) FROM schedule_fires s WHERE s.tenant = f.tenant AND s.flow = f.name), now()
             FROM flows f WHERE f.definition ? 'schedule'",
        )
        .fetch_all(&app.pool)
        .await?;
    for (tenant, name, definition, updated, last, now) in flows {
        let Ok(flow) = crate::pipeline::flow::Flow::parse(&definition.to_string(), &name) else {
            continue;
        };
        let Some(Ok(cron)) = flow
            .schedule
            .as_deref()
            .map(crate::pipeline::flow::parse_schedule)
        else {
            continue;
        };
        // The latest fire time after the last fire (or the flow's last change) that is due.
        let start = last.unwrap_or(updated).max(updated);
        let Some(due) = cron
            .iter_after(start)
            .take(100_000)
            .take_while(|t| *t <= now)
            .last()
        else {
            continue;
        };
        let late = (now - due).to_std().unwrap_or_default();
        let run = match flow.misfire {
            crate::pipeline::flow::Misfire::Skip => late <= ON_TIME,
            crate::pipeline::flow::Misfire::Coalesce { grace_secs } => {
                late <= Duration::from_secs(grace_secs)
            }
        };
        // Re-checked now, not when the timer was armed: the lease is still ours...
        let holder = app.membership.lease_holder().await?;
        if holder.as_deref() != Some(lease.token.as_str()) {
            return Err(Fire::Fenced);
        }
        // The nodes to dispatch to, read before the transaction: it holds the leadership's
        // row (and the dispatch lock), and no Redis call may hold them.
        let targets = match run {
            true => app.targets().await.unwrap_or_default(),
            false => Vec::new(),
        };
        // ...and, in the transaction that records the fire, so is the epoch.
        let mut tx = app.pool.begin().await?;
        let (epoch,): (i64,) =
            sqlx::query_as("SELECT epoch FROM leadership WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        if epoch != lease.epoch {
            return Err(Fire::Fenced);
        }
        let inserted = sqlx::query(
            "INSERT INTO schedule_fires (tenant, flow, fire_time, epoch, node, skipped) VALUES ($6, $1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&name)
        .bind(due)
        .bind(lease.epoch)
        .bind(&app.config.node)
        .bind(!run)
        .bind(&tenant)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1
            && run
            && let Some((id, target)) = crate::runs::create_run_in(
                &mut tx,
                &tenant,
                &name,
                &targets,
                app.config.load_balancing,
            )
            .await?
        {
            sqlx::query(
                "UPDATE schedule_fires SET run_id = $3 WHERE tenant = $4 AND flow = $1 AND fire_time = $2",
            )
            .bind(&name)
            .bind(due)
            .bind(id)
            .bind(&tenant)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(%tenant, flow = %name, fire_time = %due, run = id, "scheduled run");
            match target {
                Some(node) if node != app.config.node => app.membership.wake(&node).await,
                _ => app.executor.poke(),
            }
            continue;
        }
        tx.commit().await?;
    }
    Ok(())
}
