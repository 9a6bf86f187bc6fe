//! Cluster membership: each node publishes a heartbeat in Redis (a key per node with a short
//! TTL, and a set of names); the active nodes are those with a live heartbeat that are not
//! draining. Redis is coordination only: when it is down, a node runs what it is asked to run.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::error::{ClusterError, REDIS_CONNECT_TIMEOUT};

/// What a node says of itself in its heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub node: String,
    pub version: String,
    pub schema_version: i64,
    pub started: String,
    pub running: usize,
    pub draining: bool,
    pub weight: u32,
    pub listen: String,
    /// The release the node's agent started this server from (`FLEET_RELEASE`); none for a
    /// server started by hand, and in heartbeats of servers that predate the field.
    #[serde(default)]
    pub release: Option<String>,
    /// On probation (`Config::probation`): a member that takes only runs pinned to it and
    /// does not lead; false in heartbeats of servers that predate the field.
    #[serde(default)]
    pub probation: bool,
    /// The HTTPS address (`listen_tls`), if the node serves one: where node-to-node calls go
    /// when the cluster requires TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_tls: Option<String>,
}

pub struct Membership {
    client: redis::Client,
    conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    prefix: String,
    ttl: Duration,
}

impl Membership {
    pub fn new(client: redis::Client, prefix: String, ttl: Duration) -> Self {
        Self {
            client,
            conn: Mutex::new(None),
            prefix,
            ttl,
        }
    }

    /// A connection, made again after a failure (Redis restarted, say).
    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, ClusterError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(
            REDIS_CONNECT_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| ClusterError::RedisTimeout)??;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs one command; a failed one drops the connection, so the next call makes a new one
    /// (Redis restarted, say).
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        let mut c = self.conn().await?;
        let result = cmd.query_async(&mut c).await.map_err(ClusterError::from);
        if result.is_err() {
            *self.conn.lock().await = None;
        }
        result
    }

    /// `SET key value NX PX ttl`: whether it was set.
    async fn set_if_absent(
        &self,
        key: String,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        Ok(self.query::<Option<String>>(&cmd).await?.is_some())
    }

    fn member_key(&self, node: &str) -> String {
        format!("{}member:{node}", self.prefix)
    }

    /// Publishes `me` for one TTL.
    pub async fn beat(&self, me: &Member) -> Result<(), ClusterError> {
        let json = serde_json::to_string(me).expect("a Member always encodes as JSON");
        let mut set = redis::cmd("SET");
        set.arg(self.member_key(&me.node))
            .arg(json)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64);
        self.query::<()>(&set).await?;
        let mut add = redis::cmd("SADD");
        add.arg(format!("{}members", self.prefix)).arg(&me.node);
        self.query::<()>(&add).await
    }

    /// Every node with a live heartbeat, by name.
    pub async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        let mut names: Vec<String> = self
            .query(redis::cmd("SMEMBERS").arg(format!("{}members", self.prefix)))
            .await?;
        names.sort();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| self.member_key(n)).collect();
        let values: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str::<Member>(&v).ok())
            .collect())
    }

    /// Takes the lock `name` for `ttl` unless another holder has it; `false` on any doubt.
    pub async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> bool {
        self.set_if_absent(format!("{}lock:{name}", self.prefix), holder, ttl)
            .await
            .unwrap_or(false)
    }

    fn lease_key(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// Takes the leader lease for `ttl` if nobody holds it.
    pub async fn acquire_lease(&self, token: &str, ttl: Duration) -> Result<bool, ClusterError> {
        self.set_if_absent(self.lease_key(), token, ttl).await
    }

    /// Extends the lease only if `token` still holds it (compare and set, in one script).
    pub async fn renew_lease(&self, token: &str, ttl: Duration) -> Result<bool, ClusterError> {
        self.lease_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end",
            token,
            ttl.as_millis() as u64,
        )
        .await
    }

    /// Gives the lease up only if `token` holds it.
    pub async fn release_lease(&self, token: &str) -> Result<bool, ClusterError> {
        self.lease_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
            token,
            0,
        )
        .await
    }

    async fn lease_script(
        &self,
        script: &str,
        token: &str,
        ttl_ms: u64,
    ) -> Result<bool, ClusterError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script)
            .arg(1)
            .arg(self.lease_key())
            .arg(token)
            .arg(ttl_ms);
        Ok(self.query::<i64>(&cmd).await? == 1)
    }

    /// Who holds the lease now (its token starts with the node's name).
    pub async fn lease_holder(&self) -> Result<Option<String>, ClusterError> {
        self.query(redis::cmd("GET").arg(self.lease_key())).await
    }

    fn wake_channel(&self, node: &str) -> String {
        format!("{}wake:{node}", self.prefix)
    }

    /// Tells `node` a run was dispatched to it (it would also find it at its next poll).
    pub async fn wake(&self, node: &str) {
        let _ = self
            .query::<i64>(
                redis::cmd("PUBLISH")
                    .arg(self.wake_channel(node))
                    .arg("run"),
            )
            .await;
    }

    /// Calls `poke` whenever a run is dispatched to `node`, until the task is stopped;
    /// subscribes again after Redis goes away.
    pub async fn listen_wakes(&self, node: &str, poke: impl Fn()) {
        use futures_util::StreamExt;
        loop {
            if let Ok(mut pubsub) = self.client.get_async_pubsub().await
                && pubsub.subscribe(self.wake_channel(node)).await.is_ok()
            {
                let mut messages = pubsub.on_message();
                while messages.next().await.is_some() {
                    poke();
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub async fn ping(&self) -> Result<(), ClusterError> {
        self.query::<String>(&redis::cmd("PING")).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heartbeat written by a server that predates `release` still reads (an unreadable one
    /// would drop that node from the members during an upgrade).
    #[test]
    fn an_older_heartbeat_without_release_still_reads() {
        let old = r#"{"node":"n1","version":"0.1.0","schema_version":3,"started":"2026-01-01T00:00:00Z","running":0,"draining":false,"weight":1,"listen":"127.0.0.1:8080"}"#;
        let m: Member = serde_json::from_str(old).expect("reads");
        assert_eq!(m.release, None);
        let new = serde_json::to_string(&Member {
            release: Some("1.2.0".into()),
            probation: false,
            ..m
        })
        .expect("json");
        assert!(new.contains(r#""release":"1.2.0""#), "{new}");
    }
}
