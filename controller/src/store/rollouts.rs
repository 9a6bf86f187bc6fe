//! Rollouts and their per-node outcomes. A rollout in flight holds
//! its cluster (a unique index over the clusters of rollouts not ended): a second one is
//! refused naming the first, and the claim ends with the rollout itself, so it cannot go
//! stale. A rollout keeps its targets and the signed order handed to them, so a controller
//! that starts afresh can watch it. The outcomes are what the agents reported (`committed`,
//! `rolled_back`, ...), with the step, the reason and when. The order sequence is one counter
//! for every order and control this store's controllers sign.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, now_ms, on_pool};

/// A rollout as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    /// `customer/cluster`.
    pub cluster: String,
    pub version: String,
    /// `running` while in flight, then `committed`, `failed` or `aborted`.
    pub state: String,
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
    /// The nodes it upgrades: those claimed at the start, then those its order names.
    pub targets: Vec<String>,
    /// The signed order handed to the targets (`None` until it was signed).
    pub order: Option<String>,
    /// Why it ended so (or why it did not start).
    pub reason: Option<String>,
    /// The last control handed out that a node took (`pause`, `resume`, `abort`,
    /// `abort_rollback`), if any.
    pub last_control: Option<String>,
}

type RolloutRow = (
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

const ROLLOUT_COLUMNS: &str = "id, cluster, version, state, created_ms, ended_ms, targets, order_document, reason, last_control";

impl Rollout {
    fn from_row(row: RolloutRow) -> Result<Rollout, StoreError> {
        let (
            id,
            cluster,
            version,
            state,
            created_ms,
            ended_ms,
            targets,
            order,
            reason,
            last_control,
        ) = row;
        let targets = serde_json::from_str(&targets)
            .map_err(|e| StoreError::Corrupt(format!("the targets of rollout {id}: {e}")))?;
        Ok(Rollout {
            id,
            cluster,
            version,
            state,
            created_ms,
            ended_ms,
            targets,
            order,
            reason,
            last_control,
        })
    }

    /// Whether it is still in flight (holding its cluster).
    pub fn in_flight(&self) -> bool {
        self.ended_ms.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct NodeOutcome {
    pub node: String,
    pub outcome: Option<String>,
    pub step: Option<String>,
    pub reason: Option<String>,
    pub updated_ms: i64,
    /// When the node's upgrade step began and ended, as the node reported.
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

impl Store {
    /// Records a new rollout in flight on `cluster` with the nodes it means to upgrade;
    /// refused while another one is.
    pub async fn start_rollout(
        &self,
        id: &str,
        cluster: &str,
        version: &str,
        targets: &[String],
    ) -> Result<Rollout, StoreError> {
        let rollout = Rollout {
            id: id.to_owned(),
            cluster: cluster.to_owned(),
            version: version.to_owned(),
            state: "running".into(),
            created_ms: now_ms(),
            ended_ms: None,
            targets: targets.to_vec(),
            order: None,
            reason: None,
            last_control: None,
        };
        let targets = serde_json::to_string(targets).expect("a list of names serializes");
        let inserted = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO rollouts (id, cluster, version, state, created_ms, targets) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&rollout.id)
            .bind(&rollout.cluster)
            .bind(&rollout.version)
            .bind(&rollout.state)
            .bind(rollout.created_ms)
            .bind(&targets)
            .execute(pool)
            .await
            .map(|_| ())
        });
        match inserted {
            Ok(_) => Ok(rollout),
            Err(e) if is_unique_violation(&e) => {
                if self.rollout(id).await?.is_some() {
                    return Err(StoreError::RolloutExists { id: id.to_owned() });
                }
                let first = self
                    .rollout_in_flight(cluster)
                    .await?
                    .map_or_else(|| "(ended meanwhile: try again)".to_owned(), |r| r.id);
                Err(StoreError::RolloutInFlight {
                    cluster: cluster.to_owned(),
                    rollout: first,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records the signed order of a rollout in flight and the targets it names (refused once
    /// the rollout ended: then no order of it may be handed out).
    pub async fn set_rollout_order(
        &self,
        id: &str,
        targets: &[String],
        document: &str,
    ) -> Result<(), StoreError> {
        let targets = serde_json::to_string(targets).expect("a list of names serializes");
        let updated = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE rollouts SET targets = $1, order_document = $2 WHERE id = $3 AND ended_ms IS NULL",
            )
            .bind(&targets)
            .bind(document)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if updated == 0 {
            return Err(StoreError::RolloutEnded { id: id.to_owned() });
        }
        Ok(())
    }

    /// Records the last control of a rollout in flight that a node took (`abort_rollback`...);
    /// false once the rollout ended.
    pub async fn set_rollout_control(&self, id: &str, control: &str) -> Result<bool, StoreError> {
        let updated = on_pool!(self, pool => {
            sqlx::query("UPDATE rollouts SET last_control = $1 WHERE id = $2 AND ended_ms IS NULL")
                .bind(control)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(updated > 0)
    }

    /// The rollout in flight on `cluster`, if any.
    pub async fn rollout_in_flight(&self, cluster: &str) -> Result<Option<Rollout>, StoreError> {
        let sql = format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE cluster = $1 AND ended_ms IS NULL"
        );
        let row: Option<RolloutRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(cluster)
                .fetch_optional(pool)
                .await?
        });
        row.map(Rollout::from_row).transpose()
    }

    pub async fn rollout(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        let sql = format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1");
        let row: Option<RolloutRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.map(Rollout::from_row).transpose()
    }

    /// Rollouts, newest first: those in flight only, or all of them.
    pub async fn rollouts(&self, in_flight_only: bool) -> Result<Vec<Rollout>, StoreError> {
        let filter = if in_flight_only {
            "WHERE ended_ms IS NULL "
        } else {
            ""
        };
        let sql = format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts {filter}ORDER BY created_ms DESC, id DESC"
        );
        let rows: Vec<RolloutRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(pool).await?
        });
        rows.into_iter().map(Rollout::from_row).collect()
    }

    /// Ends a rollout with its final state and why; its cluster is free again. False when it
    /// had ended already (the first end stands).
    pub async fn end_rollout(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let updated = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE rollouts SET state = $1, ended_ms = $2, reason = $3 WHERE id = $4 AND ended_ms IS NULL",
            )
            .bind(state)
            .bind(now_ms())
            .bind(reason)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(updated > 0)
    }

    /// The next order sequence: above every one this store handed out before, and never below
    /// the current time in unix milliseconds, so that a controller whose store was replaced
    /// still signs above what the nodes accepted. One statement: concurrent takers, in this
    /// process or another, never get the same number.
    pub async fn next_sequence(&self) -> Result<u64, StoreError> {
        let (value,): (i64,) = on_pool!(self, pool => {
            sqlx::query_as(
                "UPDATE order_sequence SET value = CASE WHEN value + 1 > $1 THEN value + 1 ELSE $1 END
                 WHERE id = 1 RETURNING value",
            )
            .bind(now_ms())
            .fetch_one(pool)
            .await?
        });
        u64::try_from(value)
            .map_err(|_| StoreError::Corrupt(format!("the order sequence is {value}")))
    }

    /// Records what a node of a rollout reported (replacing its earlier report).
    pub async fn set_node_outcome(
        &self,
        rollout: &str,
        outcome: &NodeOutcome,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO rollout_nodes (rollout_id, node, outcome, step, reason, updated_ms, started_ms, ended_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (rollout_id, node) DO UPDATE SET outcome = excluded.outcome, step = excluded.step,
                 reason = excluded.reason, updated_ms = excluded.updated_ms, started_ms = excluded.started_ms,
                 ended_ms = excluded.ended_ms",
            )
            .bind(rollout)
            .bind(&outcome.node)
            .bind(&outcome.outcome)
            .bind(&outcome.step)
            .bind(&outcome.reason)
            .bind(outcome.updated_ms)
            .bind(outcome.started_ms)
            .bind(outcome.ended_ms)
            .execute(pool)
            .await
            .map(|_| ())?
        });
        Ok(())
    }

    /// The nodes of a rollout with their last reports, by name.
    pub async fn node_outcomes(&self, rollout: &str) -> Result<Vec<NodeOutcome>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT node, outcome, step, reason, updated_ms, started_ms, ended_ms FROM rollout_nodes WHERE rollout_id = $1 ORDER BY node",
            )
            .bind(rollout)
            .fetch_all(pool)
            .await?
        }))
    }
}
