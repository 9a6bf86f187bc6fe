//! Rollouts and their per-node outcomes, and node status snapshots. A rollout in flight holds
//! its cluster (a unique index over the clusters of rollouts not ended): a second one is
//! refused naming the first, and the claim ends with the rollout itself, so it cannot go
//! stale. The outcomes are what the agents reported (`committed`, `rolled_back`, ...), with the
//! step, the reason and when.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, now_ms, on_pool};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Rollout {
    pub id: String,
    pub cluster: String,
    pub version: String,
    pub state: String,
    pub created_ms: i64,
    pub ended_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct NodeOutcome {
    pub node: String,
    pub outcome: Option<String>,
    pub step: Option<String>,
    pub reason: Option<String>,
    pub updated_ms: i64,
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

impl Store {
    /// Records a new rollout in flight on `cluster`; refused while another one is.
    pub async fn start_rollout(
        &self,
        id: &str,
        cluster: &str,
        version: &str,
    ) -> Result<Rollout, StoreError> {
        let rollout = Rollout {
            id: id.to_owned(),
            cluster: cluster.to_owned(),
            version: version.to_owned(),
            state: "running".into(),
            created_ms: now_ms(),
            ended_ms: None,
        };
        let inserted = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO rollouts (id, cluster, version, state, created_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&rollout.id)
            .bind(&rollout.cluster)
            .bind(&rollout.version)
            .bind(&rollout.state)
            .bind(rollout.created_ms)
            .execute(pool)
            .await
            .map(|_| ())
        });
        match inserted {
            Ok(_) => Ok(rollout),
            Err(e) if is_unique_violation(&e) => {
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

    /// The rollout in flight on `cluster`, if any.
    pub async fn rollout_in_flight(&self, cluster: &str) -> Result<Option<Rollout>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, cluster, version, state, created_ms, ended_ms FROM rollouts WHERE cluster = $1 AND ended_ms IS NULL",
            )
            .bind(cluster)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn rollout(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, cluster, version, state, created_ms, ended_ms FROM rollouts WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Ends a rollout with its final state; its cluster is free again.
    pub async fn end_rollout(&self, id: &str, state: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE rollouts SET state = $1, ended_ms = $2 WHERE id = $3 AND ended_ms IS NULL")
                .bind(state)
                .bind(now_ms())
                .bind(id)
                .execute(pool)
                .await
                .map(|_| ())?
        });
        Ok(())
    }

    /// Records what a node of a rollout reported (replacing its earlier report).
    pub async fn set_node_outcome(
        &self,
        rollout: &str,
        outcome: &NodeOutcome,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO rollout_nodes (rollout_id, node, outcome, step, reason, updated_ms) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (rollout_id, node) DO UPDATE SET outcome = excluded.outcome, step = excluded.step,
                 reason = excluded.reason, updated_ms = excluded.updated_ms",
            )
            .bind(rollout)
            .bind(&outcome.node)
            .bind(&outcome.outcome)
            .bind(&outcome.step)
            .bind(&outcome.reason)
            .bind(outcome.updated_ms)
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
                "SELECT node, outcome, step, reason, updated_ms FROM rollout_nodes WHERE rollout_id = $1 ORDER BY node",
            )
            .bind(rollout)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Keeps the latest status document of `node` (as `fleet status --json` shows it).
    pub async fn save_node_status(
        &self,
        node: &str,
        status: &serde_json::Value,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO node_status (node, at_ms, status) VALUES ($1, $2, $3)
                 ON CONFLICT (node) DO UPDATE SET at_ms = excluded.at_ms, status = excluded.status",
            )
            .bind(node)
            .bind(now_ms())
            .bind(status.to_string())
            .execute(pool)
            .await
            .map(|_| ())?
        });
        Ok(())
    }

    /// The last saved status of `node` and when it was saved.
    pub async fn node_status(
        &self,
        node: &str,
    ) -> Result<Option<(i64, serde_json::Value)>, StoreError> {
        let row: Option<(i64, String)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT at_ms, status FROM node_status WHERE node = $1")
                .bind(node)
                .fetch_optional(pool)
                .await?
        });
        row.map(|(at, text)| {
            serde_json::from_str(&text)
                .map(|v| (at, v))
                .map_err(|e| StoreError::Corrupt(format!("the status of {node}: {e}")))
        })
        .transpose()
    }
}
