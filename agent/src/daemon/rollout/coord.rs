//! The rollout's keys in the cluster's Redis, and the scripts that grant, renew and give back
//! upgrade slots. Everything read here is coordination, never trust: an order or control read
//! from Redis is verified by the node itself before it counts (`orders::accept_*`), a progress
//! entry only tells where another node says it is, and every value is size-capped and parsed
//! defensively (a value that does not parse is ignored, and logged).
//!
//! Keys, under `<prefix>rollout:<id>:`: `order` and `control` (the signed documents, as the
//! agents took them), `epoch` (the fencing counter), `slot:<node>` (a lease: the epoch it was
//! granted with, with a TTL), `busy:<node>` (the node is out of service for the rollout: set
//! with the grant, cleared when the node's step ended; no TTL, so an agent that dies mid-step
//! keeps its node counted as out of service), `progress` (a hash: node → its `NodeProgress`),
//! `failed` (the failure flag: no slot is granted once it is set). Each key but a slot expires
//! [`KEEP`] (7 days, written out in the scripts) after its last write.

use std::collections::HashMap;
use std::time::Duration;

use fleet_proto::{NodeProgress, NodeReport};

/// One connection attempt or command waits at most this long.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// A rollout's keys are dropped this long after their last write.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// A scan for heartbeats or published orders stops after this many keys.
const SCAN_CAP: usize = 10_000;
/// A rollout's progress hash with more entries than this is not read.
const HASH_CAP: usize = 10_000;
/// A progress entry or failure flag larger than this is ignored.
const VALUE_CAP: usize = 16 << 10;

/// Grants `node` a slot when fewer than `max` nodes are out of service: the rollout's slot
/// holders and busy nodes (other than `node`) and the nodes the caller saw down. One script,
/// so two agents asking at once cannot both take the last slot. With phase `up`, nothing is
/// granted once the failure flag is set.
const GRANT: &str = r"
local base, node, ttl, max, nseq, phase = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if phase == 'up' and redis.call('EXISTS', base .. 'failed') == 1 then
  return {0, 'halted'}
end
local out, count = {}, 0
local function mark(n)
  if n ~= node and not out[n] then out[n] = true; count = count + 1 end
end
for i = 1, nseq do
  local n = ARGV[6 + i]
  if redis.call('EXISTS', base .. 'slot:' .. n) == 1 or redis.call('EXISTS', base .. 'busy:' .. n) == 1 then mark(n) end
end
for i = 7 + nseq, #ARGV do mark(ARGV[i]) end
if count >= max then
  local names = {}
  for n, _ in pairs(out) do table.insert(names, n) end
  table.sort(names)
  return {0, table.concat(names, ', ')}
end
local epoch = redis.call('INCR', base .. 'epoch')
redis.call('PEXPIRE', base .. 'epoch', 604800000)
redis.call('SET', base .. 'slot:' .. node, epoch, 'PX', ttl)
redis.call('SET', base .. 'busy:' .. node, epoch, 'PX', 604800000)
return {epoch, ''}
";

/// Extends `node`'s slot only while it holds it with `epoch`.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end
";

/// Gives back `node`'s slot and busy mark, each only when it carries `epoch`.
const RELEASE: &str = r"
for i = 1, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 1
";

/// Raises the epoch to at least `ARGV[1]` (a Redis restarted empty learns it from the agents).
const SEED_EPOCH: &str = r"
local now = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if now < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 1
";

/// What a grant answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Granted(u64),
    /// The failure flag is set.
    Halted,
    /// `max_unavailable` nodes are out of service: these.
    Full(String),
}

/// One rollout's keys on one connection.
pub struct Coord {
    conn: redis::aio::MultiplexedConnection,
    base: String,
    prefix: String,
}

type R<T> = Result<T, String>;

async fn query<T: redis::FromRedisValue>(
    conn: &mut redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
) -> R<T> {
    tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(conn))
        .await
        .map_err(|_| format!("Redis gave no answer within {} s", REDIS_TIMEOUT.as_secs()))?
        .map_err(|e| format!("Redis: {e}"))
}

/// Opens a connection (the URL holds a password: errors never repeat it).
pub async fn connect(client: &redis::Client) -> R<redis::aio::MultiplexedConnection> {
    tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| {
            format!(
                "no connection to Redis within {} s",
                REDIS_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("Redis: {e}"))
}

/// A string value only when it is at most ARGV[1] bytes: `{length, value}`, `{-1, ''}` when
/// there is none (a larger one never leaves Redis).
const GET_CAPPED: &str = r"
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[1]) then return {n, ''} end
local v = redis.call('GET', KEYS[1])
if not v then return {-1, ''} end
return {n, v}
";

/// A hash's entries whose field is at most 256 bytes and value at most ARGV[1] bytes; an
/// error when it holds more than ARGV[2] entries.
const HASH_CAPPED: &str = r"
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[2]) then
  return redis.error_reply('the hash ' .. KEYS[1] .. ' holds too many entries')
end
local out = {}
for _, k in ipairs(redis.call('HKEYS', KEYS[1])) do
  if #k <= 256 and redis.call('HSTRLEN', KEYS[1], k) <= tonumber(ARGV[1]) then
    table.insert(out, k)
    table.insert(out, redis.call('HGET', KEYS[1], k))
  end
end
return out
";

/// `key`'s value when it is at most `cap` bytes; a larger one is left in Redis (and logged).
async fn get_capped(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    cap: usize,
) -> R<Option<Vec<u8>>> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(GET_CAPPED).arg(1).arg(key).arg(cap);
    let (len, value): (i64, Vec<u8>) = query(conn, &cmd).await?;
    if len < 0 {
        return Ok(None);
    }
    if usize::try_from(len).map_or(true, |l| l > cap) {
        tracing::warn!(key, bytes = len, "a value in Redis is too large: ignored");
        return Ok(None);
    }
    Ok(Some(value))
}

/// The keys matching `pattern` (SCAN, at most [`SCAN_CAP`] of them).
async fn scan(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> R<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500);
        let (next, batch): (u64, Vec<String>) = query(conn, &cmd).await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 || keys.len() >= SCAN_CAP {
            return Ok(keys);
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Coord {
    pub fn new(conn: redis::aio::MultiplexedConnection, prefix: &str, rollout: &str) -> Self {
        Coord {
            conn,
            base: format!("{prefix}rollout:{rollout}:"),
            prefix: prefix.to_owned(),
        }
    }

    /// Goes on over a new connection (after the old one failed).
    pub fn reconnected(&mut self, conn: redis::aio::MultiplexedConnection) {
        self.conn = conn;
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }

    async fn q<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> R<T> {
        query(&mut self.conn, cmd).await
    }

    /// Asks for a slot for `node`; see [`GRANT`].
    pub async fn grant(
        &mut self,
        node: &str,
        ttl: Duration,
        max: u32,
        sequence: &[String],
        down: &[String],
        phase_up: bool,
    ) -> R<Grant> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(GRANT)
            .arg(0)
            .arg(&self.base)
            .arg(node)
            .arg(ms(ttl))
            .arg(max)
            .arg(sequence.len())
            .arg(if phase_up { "up" } else { "back" });
        for n in sequence {
            cmd.arg(n);
        }
        for n in down {
            cmd.arg(n);
        }
        let (epoch, text): (i64, String) = self.q(&cmd).await?;
        Ok(match (u64::try_from(epoch), text.as_str()) {
            (Ok(e), _) if e > 0 => Grant::Granted(e),
            (_, "halted") => Grant::Halted,
            _ => Grant::Full(text),
        })
    }

    /// Extends the slot; false when `node` no longer holds it with `epoch`.
    pub async fn renew(&mut self, node: &str, epoch: u64, ttl: Duration) -> R<bool> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RENEW)
            .arg(1)
            .arg(self.key(&format!("slot:{node}")))
            .arg(epoch)
            .arg(ms(ttl));
        Ok(self.q::<i64>(&cmd).await? == 1)
    }

    /// Gives the slot and the busy mark back.
    pub async fn release(&mut self, node: &str, epoch: u64) -> R<()> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE)
            .arg(2)
            .arg(self.key(&format!("slot:{node}")))
            .arg(self.key(&format!("busy:{node}")))
            .arg(epoch);
        self.q::<i64>(&cmd).await.map(|_| ())
    }

    /// Raises the epoch to `epoch` if it is below.
    pub async fn seed_epoch(&mut self, epoch: u64) -> R<()> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SEED_EPOCH)
            .arg(1)
            .arg(self.key("epoch"))
            .arg(epoch)
            .arg(ms(KEEP));
        self.q::<i64>(&cmd).await.map(|_| ())
    }

    async fn get_capped(&mut self, name: &str, cap: usize) -> R<Option<String>> {
        let key = self.key(name);
        Ok(get_capped(&mut self.conn, &key, cap)
            .await?
            .and_then(|v| String::from_utf8(v).ok()))
    }

    async fn set(&mut self, name: &str, value: &str) -> R<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(name)).arg(value).arg("PX").arg(ms(KEEP));
        self.q::<()>(&cmd).await
    }

    /// The signed order document as published (unverified).
    pub async fn order(&mut self) -> R<Option<String>> {
        self.get_capped("order", fleet_release::order::ORDER_CAP as usize)
            .await
    }

    pub async fn publish_order(&mut self, document: &str) -> R<()> {
        self.set("order", document).await
    }

    /// The signed control document as published (unverified).
    pub async fn control(&mut self) -> R<Option<String>> {
        self.get_capped("control", fleet_release::order::ORDER_CAP as usize)
            .await
    }

    pub async fn publish_control(&mut self, document: &str) -> R<()> {
        self.set("control", document).await
    }

    /// The failure flag, if raised.
    pub async fn failed(&mut self) -> R<Option<String>> {
        self.get_capped("failed", VALUE_CAP).await
    }

    /// Raises the failure flag unless it is up already (the first failure keeps its words).
    pub async fn raise_failed(&mut self, text: &str) -> R<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key("failed"))
            .arg(text)
            .arg("NX")
            .arg("PX")
            .arg(ms(KEEP));
        self.q::<Option<String>>(&cmd).await.map(|_| ())
    }

    pub async fn publish_progress(&mut self, progress: &NodeProgress) -> R<()> {
        let value = serde_json::to_string(progress).map_err(|e| e.to_string())?;
        let key = self.key("progress");
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg(&progress.node)
            .arg(value)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ms(KEEP))
            .ignore();
        tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(&mut self.conn))
            .await
            .map_err(|_| format!("Redis gave no answer within {} s", REDIS_TIMEOUT.as_secs()))?
            .map_err(|e| format!("Redis: {e}"))
    }

    /// Every node's published progress; entries that are too large or do not parse, or whose
    /// node field disagrees with their key, are left out (and logged).
    pub async fn progress(&mut self) -> R<HashMap<String, NodeProgress>> {
        let key = self.key("progress");
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(HASH_CAPPED)
            .arg(1)
            .arg(&key)
            .arg(VALUE_CAP)
            .arg(HASH_CAP);
        let all: HashMap<String, Vec<u8>> = self.q(&cmd).await?;
        let mut out = HashMap::new();
        for (node, value) in all {
            let parsed = (value.len() <= VALUE_CAP)
                .then(|| serde_json::from_slice::<NodeProgress>(&value).ok())
                .flatten()
                .filter(|p| p.node == node);
            match parsed {
                Some(p) => {
                    out.insert(node, p);
                }
                None => tracing::warn!(
                    key,
                    node,
                    "a progress entry in Redis does not read: ignored"
                ),
            }
        }
        Ok(out)
    }

    /// The heartbeats of every node of the cluster that has one (`<prefix>agent:*`), plus
    /// `None` for each of `expected` that has none.
    pub async fn heartbeats(
        &mut self,
        expected: &[String],
    ) -> R<HashMap<String, Option<NodeReport>>> {
        let keys = scan(&mut self.conn, &format!("{}agent:*", self.prefix)).await?;
        let strip = format!("{}agent:", self.prefix);
        let mut out: HashMap<String, Option<NodeReport>> =
            expected.iter().map(|n| (n.clone(), None)).collect();
        for key in keys {
            let Some(node) = key.strip_prefix(&strip) else {
                continue;
            };
            let report = get_capped(&mut self.conn, &key, 256 << 10)
                .await?
                .and_then(|v| serde_json::from_slice::<NodeReport>(&v).ok());
            out.insert(node.to_owned(), report);
        }
        Ok(out)
    }

    /// The ids of the rollouts with an order published under this prefix.
    pub async fn published_rollouts(
        conn: &mut redis::aio::MultiplexedConnection,
        prefix: &str,
    ) -> R<Vec<String>> {
        let mut ids = Vec::new();
        for key in scan(conn, &format!("{prefix}rollout:*:order")).await? {
            if let Some(id) = key
                .strip_prefix(&format!("{prefix}rollout:"))
                .and_then(|k| k.strip_suffix(":order"))
                .filter(|id| fleet_proto::is_rollout_id(id))
            {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }
}
