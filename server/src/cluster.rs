//! Cluster membership: each node publishes a heartbeat in Redis (a key per node with a short
//! TTL, and a set of names); the active nodes are those with a live heartbeat that are not
//! draining. Redis is coordination only: when it is down, a node runs what it is asked to run.

use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

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
}

/// How a run request picks the node that executes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    RoundRobin,
    LeastLoaded,
    Random,
    Weighted,
}

impl LoadBalancing {
    pub const NAMES: &'static [&'static str] =
        &["round_robin", "least_loaded", "random", "weighted"];

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "round_robin" => Self::RoundRobin,
            "least_loaded" => Self::LeastLoaded,
            "random" => Self::Random,
            "weighted" => Self::Weighted,
            _ => return None,
        })
    }
}

pub struct Membership {
    client: redis::Client,
    conn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    prefix: String,
    ttl: Duration,
}

fn redis_error(e: redis::RedisError) -> String {
    format!(
        "Redis: {}",
        fleet_inventory::mask_url_password(&e.to_string())
    )
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

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A connection, made again after a failure (Redis restarted, say).
    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(
            Duration::from_secs(2),
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| "Redis: no answer within 2 s".to_owned())?
        .map_err(redis_error)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn forget_conn(&self) {
        *self.conn.lock().await = None;
    }

    fn member_key(&self, node: &str) -> String {
        format!("{}member:{node}", self.prefix)
    }

    /// Publishes `me` for one TTL.
    pub async fn beat(&self, me: &Member) -> Result<(), String> {
        let result = async {
            let mut c = self.conn().await?;
            let json = serde_json::to_string(me).map_err(|e| e.to_string())?;
            let ttl = self.ttl.as_millis() as u64;
            let _: () = redis::pipe()
                .set_options(
                    self.member_key(&me.node),
                    json,
                    redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(ttl)),
                )
                .ignore()
                .sadd(format!("{}members", self.prefix), &me.node)
                .ignore()
                .query_async(&mut c)
                .await
                .map_err(redis_error)?;
            Ok::<(), String>(())
        }
        .await;
        if result.is_err() {
            self.forget_conn().await;
        }
        result
    }

    /// Every node with a live heartbeat, by name.
    pub async fn members(&self) -> Result<Vec<Member>, String> {
        let result = async {
            let mut c = self.conn().await?;
            let mut names: Vec<String> = c
                .smembers(format!("{}members", self.prefix))
                .await
                .map_err(redis_error)?;
            names.sort();
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = names.iter().map(|n| self.member_key(n)).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .map_err(redis_error)?;
            Ok(values
                .into_iter()
                .flatten()
                .filter_map(|v| serde_json::from_str::<Member>(&v).ok())
                .collect())
        }
        .await;
        if result.is_err() {
            self.forget_conn().await;
        }
        result
    }

    /// Takes the lock `name` for `ttl` unless another holder has it; `false` on any doubt.
    pub async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> bool {
        let Ok(mut c) = self.conn().await else {
            return false;
        };
        let got: Result<Option<String>, _> = redis::cmd("SET")
            .arg(format!("{}lock:{name}", self.prefix))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut c)
            .await;
        match got {
            Ok(v) => v.is_some(),
            Err(_) => {
                self.forget_conn().await;
                false
            }
        }
    }

    fn lease_key(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// Takes the leader lease for `ttl` if nobody holds it.
    pub async fn acquire_lease(&self, token: &str, ttl: Duration) -> Result<bool, String> {
        let result = async {
            let mut c = self.conn().await?;
            let got: Option<String> = redis::cmd("SET")
                .arg(self.lease_key())
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(redis_error)?;
            Ok(got.is_some())
        }
        .await;
        if result.is_err() {
            self.forget_conn().await;
        }
        result
    }

    /// Extends the lease only if `token` still holds it (compare and set, in one script).
    pub async fn renew_lease(&self, token: &str, ttl: Duration) -> Result<bool, String> {
        self.lease_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end",
            token,
            ttl.as_millis() as u64,
        )
        .await
    }

    /// Gives the lease up only if `token` holds it.
    pub async fn release_lease(&self, token: &str) -> Result<bool, String> {
        self.lease_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
            token,
            0,
        )
        .await
    }

    async fn lease_script(&self, script: &str, token: &str, ttl_ms: u64) -> Result<bool, String> {
        let result = async {
            let mut c = self.conn().await?;
            let n: i64 = redis::cmd("EVAL")
                .arg(script)
                .arg(1)
                .arg(self.lease_key())
                .arg(token)
                .arg(ttl_ms)
                .query_async(&mut c)
                .await
                .map_err(redis_error)?;
            Ok(n == 1)
        }
        .await;
        if result.is_err() {
            self.forget_conn().await;
        }
        result
    }

    /// Who holds the lease now (its token starts with the node's name).
    pub async fn lease_holder(&self) -> Result<Option<String>, String> {
        let mut c = self.conn().await?;
        c.get(self.lease_key()).await.map_err(redis_error)
    }

    fn wake_channel(&self, node: &str) -> String {
        format!("{}wake:{node}", self.prefix)
    }

    /// Tells `node` a run was dispatched to it (it would also find it at its next poll).
    pub async fn wake(&self, node: &str) {
        if let Ok(mut c) = self.conn().await {
            let published: Result<i64, _> = c.publish(self.wake_channel(node), "run").await;
            if published.is_err() {
                self.forget_conn().await;
            }
        }
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

    pub async fn ping(&self) -> Result<(), String> {
        let result = async {
            let mut c = self.conn().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map_err(redis_error)
                .map(|_| ())
        }
        .await;
        if result.is_err() {
            self.forget_conn().await;
        }
        result
    }
}
