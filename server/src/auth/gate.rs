//! The gate every request but `/health` and `/metrics` passes: who the caller is (a bearer
//! token: the node's configured admin or cluster token, or a token of the database; or, when
//! the transition option allows it, a tokenless request from loopback), limited by client
//! address once it has failed too often. Database tokens checked once are trusted for
//! `auth.cache_secs` (their digest compared again on every use), so a request costs no
//! database round trip and a revocation reaches every node within that time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{Caller, Role, TokenStore, TokensError, parse_presented, same_digest};
use crate::config::Config;

/// The id a configured token is known by (in logs and refusals; never its text).
pub const ADMIN_TOKEN_ID: &str = "admin_token";
pub const CLUSTER_TOKEN_ID: &str = "cluster_token";
pub const LOOPBACK_ID: &str = "tokenless-loopback";

/// Why a caller was not let in.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("this needs a bearer token (Authorization: Bearer …)")]
    Missing,
    #[error("the bearer token is not valid (unknown, revoked or expired)")]
    Invalid,
    #[error("too many failed attempts from {0}: try again in {1} s")]
    Limited(IpAddr, u64),
    #[error("node-to-node calls need TLS on this cluster (cluster.require_tls)")]
    PlainCluster,
    #[error(transparent)]
    Store(#[from] TokensError),
}

struct Cached {
    digest: [u8; 32],
    caller: Caller,
    until: Instant,
}

/// The failed attempts of one client address in the current minute.
struct Failures {
    since: Instant,
    count: u32,
}

const WINDOW: Duration = Duration::from_secs(60);
/// More addresses than this in the failure table: the stale ones are dropped.
const MAX_TRACKED: usize = 10_000;

pub struct Gate {
    admin: Option<[u8; 32]>,
    cluster: Option<[u8; 32]>,
    tokenless_loopback: bool,
    require_tls: bool,
    per_minute: u32,
    cache_for: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

fn digest(text: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes()).into()
}

impl Gate {
    pub fn new(config: &Config) -> Gate {
        Gate {
            admin: config.admin_token.as_deref().map(digest),
            cluster: config.cluster_token.as_deref().map(digest),
            tokenless_loopback: config.allow_tokenless_loopback,
            require_tls: config.cluster.require_tls,
            per_minute: config.auth.failed_attempts_per_minute,
            cache_for: Duration::from_secs(config.auth.cache_secs),
            cache: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Who the request is: `authorization` is its header's value, if any; `secure` whether it
    /// came over TLS.
    pub async fn identify(
        &self,
        pool: &PgPool,
        peer: SocketAddr,
        secure: bool,
        authorization: Option<&[u8]>,
    ) -> Result<Caller, Refusal> {
        let ip = peer.ip();
        if let Some(wait) = self.limited(ip) {
            return Err(Refusal::Limited(ip, wait));
        }
        let Some(value) = authorization else {
            if self.tokenless_loopback && ip.is_loopback() {
                return Ok(Caller {
                    token: LOOPBACK_ID.into(),
                    role: Role::Run,
                    tenant: None,
                    expires_at: None,
                });
            }
            self.failed(ip);
            return Err(Refusal::Missing);
        };
        let presented = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(presented) = presented else {
            self.failed(ip);
            return Err(Refusal::Invalid);
        };
        // The configured tokens: both compared, in constant time, whatever matches.
        let given = digest(presented);
        let is = |t: &Option<[u8; 32]>| t.as_ref().is_some_and(|t| same_digest(t, &given));
        let (admin, cluster) = (is(&self.admin), is(&self.cluster));
        if admin {
            return Ok(Caller {
                token: ADMIN_TOKEN_ID.into(),
                role: Role::Admin,
                tenant: None,
                expires_at: None,
            });
        }
        if cluster {
            if self.require_tls && !secure {
                return Err(Refusal::PlainCluster);
            }
            return Ok(Caller {
                token: CLUSTER_TOKEN_ID.into(),
                role: Role::Read,
                tenant: None,
                expires_at: None,
            });
        }
        let Some((id, secret)) = parse_presented(presented) else {
            self.failed(ip);
            return Err(Refusal::Invalid);
        };
        if let Some(caller) = self.cached(&id, &secret) {
            return Ok(caller);
        }
        match TokenStore::new(pool)
            .authenticate(presented, chrono::Utc::now())
            .await?
        {
            Some(caller) => {
                self.remember(&id, secret, &caller);
                Ok(caller)
            }
            None => {
                self.failed(ip);
                Err(Refusal::Invalid)
            }
        }
    }

    /// Forgets a token checked before (it was revoked through this node).
    pub fn forget(&self, id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(id);
        }
    }

    fn cached(&self, id: &str, secret: &[u8; 32]) -> Option<Caller> {
        let cache = self.cache.lock().ok()?;
        let hit = cache.get(id)?;
        (hit.until > Instant::now() && same_digest(&hit.digest, secret)).then(|| hit.caller.clone())
    }

    fn remember(&self, id: &str, secret: [u8; 32], caller: &Caller) {
        if self.cache_for.is_zero() {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        // Trusted no longer than the token lives.
        let lives = match caller.expires_at {
            None => self.cache_for,
            Some(at) => match (at - chrono::Utc::now()).to_std() {
                Ok(left) => left.min(self.cache_for),
                Err(_) => return,
            },
        };
        if cache.len() >= MAX_TRACKED {
            cache.retain(|_, c| c.until > now);
        }
        cache.insert(
            id.to_owned(),
            Cached {
                digest: secret,
                caller: caller.clone(),
                until: now + lives,
            },
        );
    }

    /// Seconds until `ip` may try again, when it has used up its failed attempts.
    fn limited(&self, ip: IpAddr) -> Option<u64> {
        let failures = self.failures.lock().ok()?;
        let f = failures.get(&ip)?;
        let left = WINDOW.checked_sub(f.since.elapsed())?;
        (f.count >= self.per_minute).then(|| left.as_secs().max(1))
    }

    fn failed(&self, ip: IpAddr) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        let now = Instant::now();
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, f| now.duration_since(f.since) < WINDOW);
        }
        let f = failures.entry(ip).or_insert(Failures {
            since: now,
            count: 0,
        });
        if now.duration_since(f.since) >= WINDOW {
            *f = Failures {
                since: now,
                count: 0,
            };
        }
        f.count = f.count.saturating_add(1);
        if f.count == self.per_minute {
            tracing::warn!(client = %ip, "too many failed authentication attempts: refused for a minute");
        }
    }
}
