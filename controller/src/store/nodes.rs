//! What the controller last heard from each node: its status document (as `fleet status
//! --json` shows it) and, apart, the last failure to reach it, each with when. A node that
//! stops answering keeps its last status; the two times say which is newer.

use serde::Serialize;

use super::{Store, StoreError, now_ms, on_pool};

/// A node's last status and last failure, as kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeSnapshot {
    pub node: String,
    /// When the status was taken, and the status.
    pub status: Option<(i64, serde_json::Value)>,
    /// When reaching the node last failed, and why.
    pub error: Option<(i64, String)>,
}

impl Store {
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

    /// Records why `node` could not be reached just now.
    pub async fn save_node_error(&self, node: &str, error: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO node_errors (node, at_ms, error) VALUES ($1, $2, $3)
                 ON CONFLICT (node) DO UPDATE SET at_ms = excluded.at_ms, error = excluded.error",
            )
            .bind(node)
            .bind(now_ms())
            .bind(error)
            .execute(pool)
            .await
            .map(|_| ())?
        });
        Ok(())
    }

    /// Every node the store has heard of or failed to reach, by name.
    pub async fn node_snapshots(&self) -> Result<Vec<NodeSnapshot>, StoreError> {
        type Row = (
            String,
            Option<i64>,
            Option<String>,
            Option<i64>,
            Option<String>,
        );
        let rows: Vec<Row> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT n.node, s.at_ms, s.status, e.at_ms, e.error
                 FROM (SELECT node FROM node_status UNION SELECT node FROM node_errors) n
                 LEFT JOIN node_status s ON s.node = n.node
                 LEFT JOIN node_errors e ON e.node = n.node
                 ORDER BY n.node",
            )
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(node, at, status, error_at, error)| {
                let status = match (at, status) {
                    (Some(at), Some(text)) => Some((
                        at,
                        serde_json::from_str(&text).map_err(|e| {
                            StoreError::Corrupt(format!("the status of {node}: {e}"))
                        })?,
                    )),
                    _ => None,
                };
                Ok(NodeSnapshot {
                    error: error_at.zip(error),
                    status,
                    node,
                })
            })
            .collect()
    }
}
