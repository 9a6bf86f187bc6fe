//! Flows and runs in Postgres: definitions, run rows, dispatch (the choice of node under one
//! advisory lock, in the insert's transaction), claims, progress, ends, sweeps. The run's row
//! is the truth: a node claims a run with one atomic state change (`queued` → `running` only
//! if still queued), so no run ever executes twice at once. Every function answers a
//! `RunsError` when Postgres fails. Not the executor (`executor.rs`).

use serde::Serialize;
use sqlx::PgPool;

use super::{RunState, RunsError};
use crate::pipeline::engine::Report;
use crate::pipeline::flow::Flow;
use fleet_inventory::LoadBalancing;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub tenant: String,
    pub flow: String,
    #[sqlx(try_from = "String")]
    pub state: RunState,
    pub node: Option<String>,
    /// The node the run was dispatched to (none: any node).
    pub target_node: Option<String>,
    /// Asked for on `target_node` by name: only that node runs it, it is never handed over.
    pub pinned: bool,
    pub retry_of: Option<i64>,
    pub rows_read: i64,
    pub rows_written: i64,
    pub rows_rejected: i64,
    pub bad_rows: serde_json::Value,
    pub reject_file: Option<String>,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

const RUN_COLUMNS: &str = "id, tenant, flow, state, node, target_node, pinned, retry_of, rows_read, rows_written, rows_rejected, bad_rows, \
    reject_file, error, cancel_requested, created_at, started_at, finished_at";

pub(super) type Db<T> = Result<T, RunsError>;

/// Stores a tenant's flow; `true` when it was new.
pub async fn put_flow(pool: &PgPool, tenant: &str, flow: &Flow) -> Db<bool> {
    let (inserted,): (bool,) = sqlx::query_as(
        "INSERT INTO flows (tenant, name, definition) VALUES ($3, $1, $2)
         ON CONFLICT (tenant, name) DO UPDATE SET definition = EXCLUDED.definition, updated_at = now()
         RETURNING (xmax = 0)",
    )
    .bind(&flow.name)
    .bind(flow.to_json())
    .bind(tenant)
    .fetch_one(pool)
    .await?;
    Ok(inserted)
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct FlowRow {
    pub tenant: String,
    pub name: String,
    pub definition: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The flows of `tenant` (none: every tenant's).
pub async fn list_flows(pool: &PgPool, tenant: Option<&str>) -> Db<Vec<FlowRow>> {
    sqlx::query_as("SELECT tenant, name, definition, created_at, updated_at FROM flows WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, name")
        .bind(tenant)
        .fetch_all(pool)
        .await
        .map_err(RunsError::Database)
}

pub async fn get_flow(pool: &PgPool, tenant: &str, name: &str) -> Db<Option<FlowRow>> {
    sqlx::query_as("SELECT tenant, name, definition, created_at, updated_at FROM flows WHERE tenant = $2 AND name = $1")
        .bind(name)
        .bind(tenant)
        .fetch_optional(pool)
        .await
        .map_err(RunsError::Database)
}

pub async fn delete_flow(pool: &PgPool, tenant: &str, name: &str) -> Db<bool> {
    let done = sqlx::query("DELETE FROM flows WHERE tenant = $2 AND name = $1")
        .bind(name)
        .bind(tenant)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Queues a run of the flow as it is now, for the node `load_balancing` picks among
/// `targets` (name, weight; sorted by name); `None` when there is no such flow. With no
/// targets (Redis unreachable, no live heartbeat) the run is for any node. The choice and the
/// insert happen in one transaction under an advisory lock, so the cursor and the counts every
/// entry node reads are exact.
pub async fn create_run(
    pool: &PgPool,
    tenant: &str,
    flow: &str,
    targets: &[(String, u32)],
    load_balancing: LoadBalancing,
) -> Db<Option<(i64, Option<String>)>> {
    let mut tx = pool.begin().await?;
    let created = create_run_in(&mut tx, tenant, flow, targets, load_balancing).await?;
    tx.commit().await?;
    Ok(created)
}

/// `create_run` inside a transaction of the caller's (the scheduler's fire).
pub async fn create_run_in(
    tx: &mut sqlx::PgConnection,
    tenant: &str,
    flow: &str,
    targets: &[(String, u32)],
    load_balancing: LoadBalancing,
) -> Db<Option<(i64, Option<String>)>> {
    let target = if targets.is_empty() {
        None
    } else {
        lock_dispatch(tx).await?;
        Some(pick(tx, targets, load_balancing).await?)
    };
    let id: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO runs (tenant, flow, definition, target_node) SELECT tenant, name, definition, $2 FROM flows WHERE tenant = $3 AND name = $1 RETURNING id",
    )
    .bind(flow)
    .bind(&target)
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(id.map(|(id,)| (id, target)))
}

/// Queues a run of the flow as it is now for `node` alone (the caller checked that it is a
/// live, non-draining member): only that node claims it, and it is never handed to another
/// one (`sweep` and `redispatch` end it failed instead). Its id; `None` when there is no such
/// flow. Under the dispatch lock, like every change of a run's node.
pub async fn create_pinned_run(
    pool: &PgPool,
    tenant: &str,
    flow: &str,
    node: &str,
) -> Db<Option<i64>> {
    let mut tx = pool.begin().await?;
    lock_dispatch(&mut tx).await?;
    let id: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO runs (tenant, flow, definition, target_node, pinned) SELECT tenant, name, definition, $2, true FROM flows WHERE tenant = $3 AND name = $1 RETURNING id",
    )
    .bind(flow)
    .bind(node)
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id.map(|(id,)| id))
}

/// Serialises dispatch decisions cluster-wide until the transaction ends, so the cursor and
/// the counts each one reads are exact.
async fn lock_dispatch(tx: &mut sqlx::PgConnection) -> Db<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(7133401)")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The shared round-robin cursor's value before this call (it grows by one).
async fn cursor(tx: &mut sqlx::PgConnection) -> Db<u64> {
    let (c,): (i64,) = sqlx::query_as(
        "UPDATE cluster_state SET rr_cursor = rr_cursor + 1 WHERE id = 1 RETURNING rr_cursor - 1",
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(c as u64)
}

async fn pick(
    tx: &mut sqlx::PgConnection,
    targets: &[(String, u32)],
    load_balancing: LoadBalancing,
) -> Db<String> {
    let index = match load_balancing {
        LoadBalancing::RoundRobin => (cursor(tx).await? % targets.len() as u64) as usize,
        LoadBalancing::Weighted => {
            let total: u64 = targets.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
            let mut at = cursor(tx).await? % total;
            targets
                .iter()
                .position(|(_, w)| {
                    let w = u64::from((*w).max(1));
                    if at < w {
                        true
                    } else {
                        at -= w;
                        false
                    }
                })
                .unwrap_or(0)
        }
        LoadBalancing::Random => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(RunsError::Random)?;
            (u64::from_le_bytes(bytes) % targets.len() as u64) as usize
        }
        LoadBalancing::LeastLoaded => {
            let names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
            let loads: Vec<(String, i64)> = sqlx::query_as(
                "SELECT target_node, count(*) FROM runs WHERE state IN ('queued', 'running') AND target_node = ANY($1) GROUP BY target_node",
            )
            .bind(&names)
            .fetch_all(&mut *tx)
            .await?;
            let load = |n: &str| loads.iter().find(|(t, _)| t == n).map_or(0, |(_, c)| *c);
            let least = targets.iter().map(|(n, _)| load(n)).min().unwrap_or(0);
            let tied: Vec<usize> = (0..targets.len())
                .filter(|&i| load(&targets[i].0) == least)
                .collect();
            // Ties go round: with equal loads this is round robin.
            tied[(cursor(tx).await? % tied.len() as u64) as usize]
        }
    };
    Ok(targets[index].0.clone())
}

/// Run `id`, when it is `tenant`'s (none: any tenant's).
pub async fn get_run(pool: &PgPool, id: i64, tenant: Option<&str>) -> Db<Option<RunRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
    .map_err(RunsError::Database)
}

/// The newest runs of `tenant` (none: every tenant's), of `flow` and in `state` if given.
pub async fn list_runs(
    pool: &PgPool,
    tenant: Option<&str>,
    flow: Option<&str>,
    state: Option<RunState>,
    limit: i64,
) -> Db<Vec<RunRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE ($1::text IS NULL OR flow = $1) AND ($2::text IS NULL OR state = $2)
           AND ($4::text IS NULL OR tenant = $4)
         ORDER BY id DESC LIMIT $3"
    )))
    .bind(flow)
    .bind(state.map(RunState::as_str))
    .bind(limit)
    .bind(tenant)
    .fetch_all(pool)
    .await
    .map_err(RunsError::Database)
}

/// What asking to cancel did.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    /// It was queued and is now canceled.
    Canceled,
    /// It is running: it stops at its next batch.
    Requested,
    /// It had already ended, in this state.
    AlreadyEnded(RunState),
    NotFound,
}

/// Cancels run `id` when it is `tenant`'s (none: any tenant's).
pub async fn cancel_run(pool: &PgPool, id: i64, tenant: Option<&str>) -> Db<Cancel> {
    let row: Option<(String,)> = sqlx::query_as(
        "UPDATE runs SET
            state = CASE WHEN state = 'queued' THEN 'canceled' ELSE state END,
            finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
            cancel_requested = cancel_requested OR state IN ('queued', 'running')
         WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)
         RETURNING (SELECT state FROM runs WHERE id = $1)",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Cancel::NotFound,
        Some((before,)) => match before
            .parse::<RunState>()
            .map_err(|e| RunsError::Database(sqlx::Error::Decode(Box::new(e))))?
        {
            RunState::Queued => Cancel::Canceled,
            RunState::Running => Cancel::Requested,
            ended => Cancel::AlreadyEnded(ended),
        },
    })
}

/// A run's limit of runs of its flow running at once, cluster-wide, from the definition it
/// carries: its `concurrency`, else 1 for a scheduled flow (definitions stored before the
/// option existed included), else none.
const CONCURRENCY: &str =
    "coalesce((definition->>'concurrency')::int, CASE WHEN definition ? 'schedule' THEN 1 END)";

/// How many times a claim looks again after losing a race for a flow's last place.
const CLAIM_ATTEMPTS: usize = 3;

/// The tenants' limits of running runs, cluster-wide (`[tenants.NAME] max_running_flows`),
/// as the claim passes them to Postgres; a tenant not listed has no limit.
#[derive(Debug, Clone, Default)]
pub struct TenantLimits {
    names: Vec<String>,
    limits: Vec<i32>,
}

impl TenantLimits {
    pub fn new<'a>(limits: impl IntoIterator<Item = (&'a str, usize)>) -> TenantLimits {
        let (names, limits) = limits
            .into_iter()
            .map(|(n, l)| (n.to_owned(), i32::try_from(l).unwrap_or(i32::MAX)))
            .unzip();
        TenantLimits { names, limits }
    }

    fn of(&self, tenant: &str) -> Option<i32> {
        let i = self.names.iter().position(|n| n == tenant)?;
        Some(self.limits[i])
    }
}

/// A claimed run: its id, tenant, flow definition and claim epoch.
pub type Claimed = (i64, String, serde_json::Value, i64);

/// Claims the oldest queued run for `node` (dispatched to it, or to any node; with
/// `pinned_only`, a node on probation, only one pinned to it) whose flow is below its
/// concurrency limit and whose tenant is below its own, if any. The limits
/// hold cluster-wide: in the claim's transaction, a run of a limited flow (or tenant) takes
/// the flow's (or tenant's) advisory lock and counts its running runs afresh before it
/// becomes `running`, so two nodes claiming at once cannot both take the last place; a tenant
/// at its limit leaves its runs queued and the next tenant's run is claimed.
pub(super) async fn claim(
    pool: &PgPool,
    node: &str,
    pinned_only: bool,
    tenants: &TenantLimits,
) -> Db<Option<Claimed>> {
    for _ in 0..CLAIM_ATTEMPTS {
        let mut tx = pool.begin().await?;
        let candidate: Option<(i64, String, String, Option<i32>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, tenant, flow, {CONCURRENCY} FROM runs q
             WHERE state = 'queued' AND (target_node = $1 OR target_node IS NULL) AND (pinned OR NOT $2)
               AND ({CONCURRENCY} IS NULL
                    OR (SELECT count(*) FROM runs r WHERE r.tenant = q.tenant AND r.flow = q.flow AND r.state = 'running') < {CONCURRENCY})
               AND (NOT q.tenant = ANY($3)
                    OR (SELECT count(*) FROM runs r WHERE r.tenant = q.tenant AND r.state = 'running')
                       < (SELECT l FROM unnest($3::text[], $4::int[]) AS t(n, l) WHERE n = q.tenant))
             ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1"
        )))
        .bind(node)
        .bind(pinned_only)
        .bind(&tenants.names)
        .bind(&tenants.limits)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((id, tenant, flow, limit)) = candidate else {
            return Ok(None);
        };
        // Claims of this flow (tenant) queue here until the one before commits; the count
        // below, a new statement, then sees its run.
        if let Some(limit) = limit {
            sqlx::query("SELECT pg_advisory_xact_lock(7133402, hashtext($1 || '/' || $2))")
                .bind(&tenant)
                .bind(&flow)
                .execute(&mut *tx)
                .await?;
            let (running,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM runs WHERE tenant = $1 AND flow = $2 AND state = 'running'",
            )
            .bind(&tenant)
            .bind(&flow)
            .fetch_one(&mut *tx)
            .await?;
            if running >= i64::from(limit) {
                // Another node took the last place meanwhile: look again.
                continue;
            }
        }
        if let Some(limit) = tenants.of(&tenant) {
            sqlx::query("SELECT pg_advisory_xact_lock(7133403, hashtext($1))")
                .bind(&tenant)
                .execute(&mut *tx)
                .await?;
            let (running,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM runs WHERE tenant = $1 AND state = 'running'")
                    .bind(&tenant)
                    .fetch_one(&mut *tx)
                    .await?;
            if running >= i64::from(limit) {
                continue;
            }
        }
        let claimed = sqlx::query_as(
            "UPDATE runs SET state = 'running', node = $2, started_at = now(), claim_epoch = claim_epoch + 1
             WHERE id = $1 AND state = 'queued'
             RETURNING id, tenant, definition, claim_epoch",
        )
        .bind(id)
        .bind(node)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(claimed);
    }
    Ok(None)
}

/// Queued runs and running runs per node, for `/api/cluster`: `tenant`'s (none: all).
pub async fn queue_depths(
    pool: &PgPool,
    tenant: Option<&str>,
) -> Db<Vec<(Option<String>, i64, i64)>> {
    sqlx::query_as(
        "SELECT coalesce(target_node, node), count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running')
         FROM runs WHERE state IN ('queued', 'running') AND ($1::text IS NULL OR tenant = $1) GROUP BY 1 ORDER BY 1",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
    .map_err(RunsError::Database)
}

/// Records a running run's counts; whether a cancel was asked, `None` when the run no longer
/// runs under this claim (it was handed over).
pub(super) async fn progress(
    pool: &PgPool,
    id: i64,
    epoch: i64,
    report: &Report,
) -> Db<Option<bool>> {
    let cancel: Option<(bool,)> = sqlx::query_as(
        "UPDATE runs SET rows_read = $2, rows_written = $3, rows_rejected = $4 WHERE id = $1 AND state = 'running' AND claim_epoch = $5 RETURNING cancel_requested",
    )
    .bind(id)
    .bind(report.counts.read as i64)
    .bind(report.counts.written as i64)
    .bind(report.counts.rejected as i64)
    .bind(epoch)
    .fetch_optional(pool)
    .await?;
    Ok(cancel.map(|(c,)| c))
}

pub(super) async fn finish(
    pool: &PgPool,
    id: i64,
    epoch: i64,
    state: RunState,
    error: Option<&str>,
    report: &Report,
) -> Db<()> {
    sqlx::query(
        "UPDATE runs SET state = $2, error = $3, rows_read = $4, rows_written = $5, rows_rejected = $6,
            bad_rows = $7, reject_file = $8, finished_at = now()
         WHERE id = $1 AND claim_epoch = $9
           AND (state = 'running' OR (state = 'succeeded' AND $2 = 'succeeded'))",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(error)
    .bind(report.counts.read as i64)
    .bind(report.counts.written as i64)
    .bind(report.counts.rejected as i64)
    .bind(serde_json::to_value(&report.bad_rows).unwrap_or_default())
    .bind(&report.reject_file)
    .bind(epoch)
    .execute(pool)
    .await?;
    Ok(())
}

/// Nodes that have queued or running runs.
pub async fn nodes_with_work(pool: &PgPool) -> Db<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT n FROM (
            SELECT node AS n FROM runs WHERE state = 'running'
            UNION SELECT target_node FROM runs WHERE state = 'queued'
         ) w WHERE n IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(n,)| n).collect())
}

/// What a sweep did.
#[derive(Debug, Default, Serialize)]
pub struct Swept {
    pub interrupted: Vec<i64>,
    /// New runs retrying interrupted ones, and the node each went to.
    pub retries: Vec<(i64, String)>,
    /// Queued runs sent to another node.
    pub redispatched: Vec<(i64, String)>,
    /// Queued runs pinned to a node that went away: they ended failed.
    pub failed_pinned: Vec<i64>,
}

/// The runs of nodes that stopped sending heartbeats: running ones become `interrupted` (and
/// are retried on a live node when their flow allows it and they were not pinned), queued
/// ones go to a live node (pinned ones end failed). One
/// transaction; each run changes state once whoever sweeps, so concurrent sweeps cannot
/// double anything.
pub async fn sweep(
    pool: &PgPool,
    dead: &[String],
    live: &[(String, u32)],
    load_balancing: LoadBalancing,
) -> Db<Swept> {
    let mut tx = pool.begin().await?;
    lock_dispatch(&mut tx).await?;
    let mut swept = Swept::default();
    let interrupted: Vec<(i64, String, String, serde_json::Value, i32, bool)> = sqlx::query_as(
        "UPDATE runs SET state = 'interrupted', finished_at = now(),
                error = 'node ' || node || ' stopped sending heartbeats while the run was running'
         WHERE state = 'running' AND node = ANY($1)
         RETURNING id, tenant, flow, definition, attempt, pinned",
    )
    .bind(dead)
    .fetch_all(&mut *tx)
    .await?;
    for (id, tenant, flow, definition, attempt, pinned) in interrupted {
        swept.interrupted.push(id);
        let retries = definition
            .get("retries")
            .and_then(|r| r.as_i64())
            .unwrap_or(0);
        // A pinned run was asked of its node: another node running it would not answer that.
        if pinned || i64::from(attempt) > retries || live.is_empty() {
            continue;
        }
        let target = pick(&mut tx, live, load_balancing).await?;
        let (retry,): (i64,) = sqlx::query_as(
            "INSERT INTO runs (tenant, flow, definition, target_node, retry_of, attempt) VALUES ($6, $1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(&flow)
        .bind(&definition)
        .bind(&target)
        .bind(id)
        .bind(attempt + 1)
        .bind(&tenant)
        .fetch_one(&mut *tx)
        .await?;
        swept.retries.push((retry, target));
    }
    swept.failed_pinned = fail_pinned_in(
        &mut tx,
        dead,
        "stopped sending heartbeats before the run, pinned to it, started",
    )
    .await?;
    swept.redispatched = redispatch_in(&mut tx, dead, live, load_balancing).await?;
    tx.commit().await?;
    Ok(swept)
}

/// What a drain's hand-back did.
#[derive(Debug, Default)]
pub struct HandedBack {
    /// Queued runs sent to another node, and the node each went to.
    pub moved: Vec<(i64, String)>,
    /// Queued runs pinned to a drained node: they ended failed.
    pub failed_pinned: Vec<i64>,
}

/// Sends the queued runs of the drained nodes `from` to the `live` ones (nothing when none is
/// live); those pinned to them end failed, whether or not another node is live.
pub async fn redispatch(
    pool: &PgPool,
    from: &[String],
    live: &[(String, u32)],
    load_balancing: LoadBalancing,
) -> Db<HandedBack> {
    let mut tx = pool.begin().await?;
    lock_dispatch(&mut tx).await?;
    let failed_pinned = fail_pinned_in(
        &mut tx,
        from,
        "was drained before the run, pinned to it, started",
    )
    .await?;
    let moved = redispatch_in(&mut tx, from, live, load_balancing).await?;
    tx.commit().await?;
    Ok(HandedBack {
        moved,
        failed_pinned,
    })
}

/// Ends failed the queued runs pinned to nodes `from`, the error `node NAME <what>`.
async fn fail_pinned_in(tx: &mut sqlx::PgConnection, from: &[String], what: &str) -> Db<Vec<i64>> {
    let failed: Vec<(i64,)> = sqlx::query_as(
        "UPDATE runs SET state = 'failed', finished_at = now(), error = 'node ' || target_node || ' ' || $2
         WHERE state = 'queued' AND pinned AND target_node = ANY($1)
         RETURNING id",
    )
    .bind(from)
    .bind(what)
    .fetch_all(&mut *tx)
    .await?;
    Ok(failed.into_iter().map(|(id,)| id).collect())
}

async fn redispatch_in(
    tx: &mut sqlx::PgConnection,
    from: &[String],
    live: &[(String, u32)],
    load_balancing: LoadBalancing,
) -> Db<Vec<(i64, String)>> {
    let mut moved = Vec::new();
    if live.is_empty() {
        return Ok(moved);
    }
    let queued: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM runs WHERE state = 'queued' AND NOT pinned AND target_node = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(from)
    .fetch_all(&mut *tx)
    .await?;
    for (id,) in queued {
        let target = pick(tx, live, load_balancing).await?;
        sqlx::query(
            "UPDATE runs SET target_node = $2 WHERE id = $1 AND state = 'queued' AND NOT pinned",
        )
        .bind(id)
        .bind(&target)
        .execute(&mut *tx)
        .await?;
        moved.push((id, target));
    }
    Ok(moved)
}

/// The newest migration the database has; a node that knows an older one neither claims nor
/// leads (a rolling upgrade runs old and new nodes side by side).
pub async fn database_schema_version(pool: &PgPool) -> Db<i64> {
    let (v,): (Option<i64>,) =
        sqlx::query_as("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    Ok(v.unwrap_or(0))
}

/// Runs left `running` by an earlier life of this node (it crashed or was killed): they end as
/// failed, never stay running.
pub async fn fail_orphans(pool: &PgPool, node: &str) -> Db<u64> {
    let done = sqlx::query(
        "UPDATE runs SET state = 'failed', error = 'the node restarted while the run was running', finished_at = now()
         WHERE state = 'running' AND node = $1",
    )
    .bind(node)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
