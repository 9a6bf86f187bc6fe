//! One process per node name: a session-level Postgres advisory lock keyed by the node's name,
//! held on a connection of its own (not the pool's) for the server's whole life, taken before
//! anything else touches the database (migrations, the sweep of runs an earlier life left
//! running). A second process with the same name is refused at start, naming the holder. Not
//! the pool (`db.rs`).

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::ServerError;

/// How often the lock's connection is checked (and, once lost, the lock asked for again).
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long connecting the lock's session may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// The lock's key: 64 bits of the md5 of the name, so that distinct names do not collide.
const KEY: &str = "('x' || left(md5('fleet etl-server node ' || $1), 16))::bit(64)::bigint";

/// The node name, held.
pub struct NodeLock {
    url: String,
    node: String,
    /// This process's `application_name` on the lock's session: how the holder is named.
    me: String,
    /// `None` while the session is lost and the lock not taken again.
    conn: Option<PgConnection>,
}

impl NodeLock {
    /// Takes the lock of `node`, or refuses with `ServerError::NodeTaken` naming the process
    /// that holds it.
    pub async fn take(url: &str, node: &str) -> Result<NodeLock, ServerError> {
        let id = crate::random_hex::<4>().unwrap_or_default();
        let mut lock = NodeLock {
            url: url.to_owned(),
            node: node.to_owned(),
            me: format!("etl-server pid={} id={id}", std::process::id()),
            conn: None,
        };
        // A holder that cannot be named may have let go between the two queries: ask again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match lock.try_take().await? {
                Taken::Yes => return Ok(lock),
                Taken::No(None) if attempts < 3 => {}
                Taken::No(holder) => return Err(lock.taken(holder)),
            }
        }
    }

    fn taken(&self, holder: Option<String>) -> ServerError {
        ServerError::NodeTaken {
            node: self.node.clone(),
            holder: holder.unwrap_or_else(|| "a session that could not be identified".to_owned()),
        }
    }

    /// One attempt on a new session: the lock, or who holds it.
    async fn try_take(&mut self) -> Result<Taken, ServerError> {
        let options = PgConnectOptions::from_str(&self.url)
            .map_err(ServerError::Connect)?
            .application_name(&self.me)
            // The server notices a vanished client (its host died) within about 25 s, so the
            // lock does not outlive it for the kernel's two hours.
            .options([
                ("tcp_keepalives_idle", 10),
                ("tcp_keepalives_interval", 5),
                ("tcp_keepalives_count", 3),
            ]);
        let mut conn = tokio::time::timeout(CONNECT_WITHIN, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                ServerError::Connect(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", CONNECT_WITHIN.as_secs()),
                )))
            })?
            .map_err(ServerError::Connect)?;
        let (got,): (bool,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT pg_try_advisory_lock({KEY})"
        )))
        .bind(&self.node)
        .fetch_one(&mut conn)
        .await
        .map_err(ServerError::Connect)?;
        if got {
            self.conn = Some(conn);
            return Ok(Taken::Yes);
        }
        let holder: Option<Holder> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT a.application_name, host(a.client_addr),
                        to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"'), a.pid
                 FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND l.classid = (({KEY} >> 32) & 4294967295)::oid
                   AND l.objid = ({KEY} & 4294967295)::oid
                 LIMIT 1"
            )))
            .bind(&self.node)
            .fetch_optional(&mut conn)
            .await
            .map_err(ServerError::Connect)?;
        let _ = conn.close().await;
        Ok(Taken::No(holder.map(|(app, addr, since, pid)| {
            let mut who = match app.filter(|a| !a.is_empty()) {
                Some(app) => format!("`{app}`"),
                None => "a session".to_owned(),
            };
            who.push_str(&format!(", Postgres backend {pid}"));
            if let Some(addr) = addr {
                who.push_str(&format!(", connected from {addr}"));
            }
            if let Some(since) = since {
                who.push_str(&format!(" since {since}"));
            }
            who
        })))
    }

    /// Keeps the lock until `stop`, then hands it back for `release` (runs may still be
    /// ending). Every `CHECK_EVERY` the session is checked; once lost (Postgres restarted, the
    /// network cut), the lock is asked for again on a new session. `Err` when another process
    /// took the name meanwhile: `stop` is cancelled, so this server shuts down.
    pub async fn hold(mut self, stop: CancellationToken) -> Result<NodeLock, ServerError> {
        loop {
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                () = stop.cancelled() => return Ok(self),
            }
            if let Some(conn) = self.conn.as_mut() {
                // A cut network may not answer at all: no answer in time counts as lost.
                if let Ok(Ok(())) = tokio::time::timeout(CONNECT_WITHIN, conn.ping()).await {
                    continue;
                }
                tracing::warn!(node = %self.node, "the session holding the node name was lost: taking it again");
                self.conn = None;
            }
            match self.try_take().await {
                Ok(Taken::Yes) => tracing::info!(node = %self.node, "holds the node name again"),
                // Our own lost session, not gone yet (or a holder that let go): ask again.
                Ok(Taken::No(None)) => {}
                Ok(Taken::No(Some(holder))) if holder.starts_with(&format!("`{}`", self.me)) => {}
                Ok(Taken::No(holder)) => {
                    let e = self.taken(holder);
                    tracing::error!(error = %e, "another process took the node name: shutting down");
                    stop.cancel();
                    return Err(e);
                }
                Err(e) => tracing::warn!(error = %e, "taking the node name again"),
            }
        }
    }

    /// Gives the name up (closing the session releases the lock).
    pub async fn release(self) {
        if let Some(conn) = self.conn {
            let _ = conn.close().await;
        }
    }
}

/// A holder's session: application name, client address, start time, backend pid.
type Holder = (Option<String>, Option<String>, Option<String>, i32);

enum Taken {
    Yes,
    /// Held by another session: who, when it can be told.
    No(Option<String>),
}
