//! The node's shared state: its config, its Postgres pool, its place in the cluster, its
//! executor, its leadership, and the server's one shutdown token and task tracker, handed to
//! every part (HTTP handlers, cluster loops). Not a subsystem of its own: it holds the parts,
//! it does not act.

use std::sync::Arc;

use crate::config::Config;
use crate::runs::{self, Executor, RunsError};

pub struct Node {
    pub config: Config,
    pub pool: sqlx::PgPool,
    pub membership: Arc<crate::cluster::Membership>,
    pub executor: Arc<Executor>,
    pub started: String,
    pub leadership: crate::cluster::scheduler::Leadership,
    /// The address the server listens on, as bound (what other nodes call).
    pub listen: String,
    /// The HTTPS address, as bound, when `listen_tls` is set.
    pub listen_tls: Option<String>,
    /// Who each request is (`auth::Gate`).
    pub gate: crate::auth::Gate,
    /// The TLS client of node-to-node calls (`tls_ca_file`), when configured.
    pub peer_tls: Option<Arc<fleet_tls::ClientConfig>>,
    /// The server's one shutdown: every loop selects on it.
    pub stop: tokio_util::sync::CancellationToken,
    /// Every task the server spawns; shutdown waits for them.
    pub tasks: tokio_util::task::TaskTracker,
    /// The drain in progress or done, if any (`cluster::drain`).
    pub drain: crate::cluster::DrainState,
    /// Held while a heartbeat is made and sent (`beat`), so one made before a change (drain,
    /// resume) never lands after the one that publishes it.
    pub beating: tokio::sync::Mutex<()>,
}

impl Node {
    /// This node's heartbeat as it is now.
    pub fn me(&self) -> crate::cluster::Member {
        crate::cluster::Member {
            node: self.config.node.clone(),
            version: crate::VERSION.to_owned(),
            schema_version: crate::db::schema_version(),
            started: self.started.clone(),
            running: self.executor.running(),
            draining: self.executor.draining(),
            weight: self.config.weight,
            listen: self.listen.clone(),
            listen_tls: self.listen_tls.clone(),
            release: self.config.release.clone(),
            probation: self.executor.on_probation(),
        }
    }

    /// Publishes this node's heartbeat as it is now; beats are sent one at a time.
    pub async fn beat(&self) -> Result<(), crate::cluster::ClusterError> {
        let _one = self.beating.lock().await;
        self.membership.beat(&self.me()).await
    }

    /// The nodes that take runs, with their weights: a live heartbeat, not draining, not on
    /// probation, and the database's schema. `Err` when membership cannot be read (Redis is down:
    /// `RunsError::Cluster`) or the database's schema cannot.
    pub(crate) async fn targets(&self) -> Result<Vec<(String, u32)>, RunsError> {
        let members = self
            .membership
            .members()
            .await
            .map_err(RunsError::Cluster)?;
        let schema = runs::database_schema_version(&self.pool).await?;
        Ok(members
            .into_iter()
            .filter(|m| !m.draining && !m.probation && m.schema_version >= schema)
            .map(|m| (m.node, m.weight))
            .collect())
    }

    /// The targets other than this node.
    pub(crate) async fn others(&self) -> Vec<(String, u32)> {
        let mut t = self.targets().await.unwrap_or_default();
        t.retain(|(n, _)| *n != self.config.node);
        t
    }
}
