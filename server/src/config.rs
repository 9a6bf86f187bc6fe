//! The server's configuration file (TOML, rendered by `fleet provision` from
//! `templates/server.toml.j2`). Connection URLs hold passwords: they come from files beside the
//! config (`*_url_file`) or inline, and are never printed. A file that cannot be used is a
//! `ConfigError`: the file, and a `ConfigProblem` naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use fleet_inventory::LoadBalancing;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    node: String,
    #[serde(default = "default_listen")]
    listen: String,
    shared_storage: PathBuf,
    #[serde(default)]
    load_balancing: Option<String>,
    #[serde(default)]
    weight: Option<u32>,
    postgres_url: Option<String>,
    postgres_url_file: Option<PathBuf>,
    redis_url: Option<String>,
    redis_url_file: Option<PathBuf>,
    #[serde(default)]
    redis_prefix: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    cluster_token: Option<String>,
    cluster_token_file: Option<PathBuf>,
    #[serde(default)]
    allow_tokenless_loopback: bool,
    #[serde(default)]
    plain_http_on_network: bool,
    listen_tls: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_ca_file: Option<PathBuf>,
    #[serde(default)]
    auth: AuthSettings,
    #[serde(default)]
    tenants: BTreeMap<String, TenantSettings>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    cluster: ClusterSettings,
    #[serde(default)]
    postgres: PostgresSettings,
    #[serde(default)]
    sources: BTreeMap<String, SourceFile>,
}

/// `[postgres]`: limits every session of the server's own pool sets at connect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// A statement waiting longer than this for a lock fails (`lock_timeout`).
    pub lock_timeout_ms: u64,
    /// A session idle inside a transaction longer than this is ended by Postgres
    /// (`idle_in_transaction_session_timeout`). A table destination's transaction waits for
    /// the source between batches, so this is also the longest such wait.
    pub idle_in_transaction_timeout_ms: u64,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            lock_timeout_ms: 10_000,
            idle_in_transaction_timeout_ms: 600_000,
        }
    }
}

/// `[sources.NAME]`: a Postgres connection flows' sources may read through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    url: Option<String>,
    url_file: Option<PathBuf>,
    /// Read the server's own database (`postgres_url`): an explicit choice, never a default.
    #[serde(default)]
    server_database: bool,
    #[serde(default = "default_statement_timeout_ms")]
    statement_timeout_ms: u64,
}

fn default_statement_timeout_ms() -> u64 {
    300_000
}

/// A connection a Postgres source reads through (`[sources.NAME]`): each run opens a session
/// of its own on it and closes it at the run's end.
#[derive(Clone)]
pub struct SourceConnection {
    /// Holds a password: never displayed.
    pub url: String,
    /// Every statement of the source's session is stopped by Postgres after this long.
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for SourceConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceConnection")
            .field("url", &"(secret)")
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// How long the scheduler's lease lives without a renewal.
    pub leader_ttl_ms: u64,
    /// How often the leader renews it (the TTL must be at least three of these).
    pub leader_renew_ms: u64,
    /// Node-to-node calls go over TLS only: this node calls its peers at their `listen_tls`
    /// (their certificates checked against `tls_ca_file`) and refuses the cluster token over
    /// plain HTTP.
    pub require_tls: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            leader_ttl_ms: 6000,
            leader_renew_ms: 2000,
            require_tls: false,
        }
    }
}

/// `[auth]`: how the API treats callers that fail to prove who they are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Failed attempts (a missing, malformed, unknown, revoked or expired token) one client
    /// address may make in a minute; beyond them it is answered 429 until the minute ends.
    pub failed_attempts_per_minute: u32,
    /// How long a checked database token is trusted without asking Postgres again: a
    /// revocation reaches every node within this time.
    pub cache_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            failed_attempts_per_minute: 20,
            cache_secs: 5,
        }
    }
}

/// `[tenants.NAME]`: a tenant of a shared cluster (the inventory's customers on it, written
/// by `fleet provision`). Tokens are made only for configured tenants (and `default`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// The tenant's runs running at once, cluster-wide; none: `limits.max_running_flows`.
    pub max_running_flows: Option<usize>,
    /// The `[sources.NAME]` connections its flows may read through (none by default).
    #[serde(default)]
    pub sources: Vec<String>,
}

/// A tenant's settings as the server uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its runs running at once, cluster-wide (none: no limit, the `default` tenant's unless
    /// configured).
    pub max_running_flows: Option<usize>,
    /// The connections its flows may read through (none: all, the `default` tenant's unless
    /// configured).
    pub sources: Option<Vec<String>>,
}

/// HTTPS: `listen_tls` with `tls_cert_file` and `tls_key_file` (PEM); `tls_ca_file` is what
/// peers' certificates are checked against in node-to-node calls.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
}

impl ClusterSettings {
    pub fn leader_ttl(&self) -> Duration {
        Duration::from_millis(self.leader_ttl_ms)
    }
    pub fn leader_renew(&self) -> Duration {
        Duration::from_millis(self.leader_renew_ms)
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Runs this node executes at once.
    pub max_running_flows: usize,
    /// On SIGTERM, how long running flows may go on before they are stopped.
    pub shutdown_grace_secs: u64,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_running_flows: 4,
            shutdown_grace_secs: 30,
            max_body_bytes: 1 << 20,
        }
    }
}

/// A loaded configuration, secrets read.
#[derive(Clone)]
pub struct Config {
    pub node: String,
    pub listen: SocketAddr,
    pub shared_storage: PathBuf,
    pub postgres_url: String,
    pub redis_url: String,
    /// Prefix of every Redis key this server writes (tests give each its own).
    pub redis_prefix: String,
    pub limits: Limits,
    pub cluster: ClusterSettings,
    pub load_balancing: LoadBalancing,
    pub weight: u32,
    /// A token for the operator with the `admin` role, from the node's secret files (the
    /// agent's drain and resume); none: only database tokens have that role.
    pub admin_token: Option<String>,
    /// The token nodes of the cluster present to each other (`read`, every tenant).
    pub cluster_token: Option<String>,
    /// For a transition after an upgrade: requests from loopback without a token are the
    /// operator's, with the `run` role (never `admin`). Off unless set.
    pub allow_tokenless_loopback: bool,
    /// HTTPS on a second listener; none: plain HTTP only.
    pub tls: Option<TlsSettings>,
    pub auth: AuthSettings,
    /// The configured tenants (`default` among them, with its own settings or none).
    pub tenants: BTreeMap<String, Tenant>,
    /// Settings of every session of the server's own pool.
    pub postgres: PostgresSettings,
    /// The connections Postgres sources may name, by name.
    pub sources: BTreeMap<String, SourceConnection>,
    /// The release this server was started from, as its agent says in `FLEET_RELEASE` (read
    /// once by `main`, never from the file); shown in `/health` and the node's heartbeat.
    pub release: Option<String>,
    /// Whether this server starts on probation, as its agent says with `FLEET_PROBATION=1`
    /// (read once by `main`, never from the file): a live member that takes only the runs
    /// pinned to it and does not run for scheduler leader until `/admin/resume` lifts it
    /// (the agent does when the upgrade step that started it ends).
    pub probation: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("node", &self.node)
            .field("listen", &self.listen)
            .field("shared_storage", &self.shared_storage)
            .field("postgres_url", &"(secret)")
            .field("redis_url", &"(secret)")
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "(secret)"),
            )
            .field(
                "cluster_token",
                &self.cluster_token.as_ref().map(|_| "(secret)"),
            )
            .field("allow_tokenless_loopback", &self.allow_tokenless_loopback)
            .field("tls", &self.tls)
            .field("tenants", &self.tenants)
            .field("limits", &self.limits)
            .field("postgres", &self.postgres)
            .field("sources", &self.sources)
            .field("release", &self.release)
            .field("probation", &self.probation)
            .finish_non_exhaustive()
    }
}

/// Why a configuration file cannot be used: the file, then the problem.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", .path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub problem: ConfigProblem,
}

/// What is wrong in a configuration file, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// The file cannot be read.
    #[error("{0}")]
    Read(std::io::Error),
    /// Not TOML, an unknown key, a value of the wrong type (toml's text, with its place).
    #[error("{}", .0.to_string().trim_end())]
    Syntax(toml::de::Error),
    #[error("give `{key}` or `{key}_file`, not both")]
    SecretTwice { key: String },
    /// The file a `*_file` key names cannot be read.
    #[error("{key}_file {}: {error}", .file.display())]
    SecretFile {
        key: String,
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("missing `{key}` (or `{key}_file`)")]
    Missing { key: String },
    /// A `[sources.NAME]` whose name could not be written in a flow.
    #[error(
        "sources.{given:?} is not a valid connection name ({})",
        fleet_inventory::NAME_HINT
    )]
    SourceName { given: String },
    /// A source connection must say where it connects, one way only.
    #[error(
        "sources.{name}: give exactly one of `url`, `url_file` or `server_database = true` (the server's own database)"
    )]
    SourceUrl { name: String },
    #[error("sources.{name}.statement_timeout_ms must be at least 1")]
    ZeroStatementTimeout { name: String },
    #[error("postgres.{key} must be at least 1")]
    ZeroPostgresTimeout { key: &'static str },
    /// The node's name is used in Redis keys, lease tokens (`node:token`) and logs.
    #[error(
        "node {given:?} is not a valid node name ({})",
        fleet_inventory::NAME_HINT
    )]
    NodeName { given: String },
    #[error("listen `{given}` is not an address:port")]
    Listen { given: String },
    #[error("load_balancing `{given}` is not one of {}", load_balancing_names())]
    LoadBalancing { given: String },
    #[error("weight must be at least 1")]
    ZeroWeight,
    #[error(
        "cluster.leader_ttl_ms ({ttl_ms}) must be at least three times cluster.leader_renew_ms ({renew_ms}), which must not be 0"
    )]
    LeaderTiming { ttl_ms: u64, renew_ms: u64 },
    #[error("limits.max_running_flows must be at least 1")]
    ZeroMaxRunningFlows,
    #[error("{key} must have at least 16 characters")]
    ShortToken { key: &'static str },
    /// Plain HTTP on an address others can reach needs saying so.
    #[error(
        "listen `{given}` is not a loopback address: serve the network with listen_tls (and tls_cert_file, tls_key_file), or set plain_http_on_network = true"
    )]
    PlainOnNetwork { given: String },
    #[error("listen_tls `{given}` is not an address:port")]
    ListenTls { given: String },
    #[error("listen_tls needs tls_cert_file and tls_key_file")]
    TlsFiles,
    #[error("tls_cert_file, tls_key_file and tls_ca_file mean nothing without listen_tls")]
    TlsWithoutListen,
    #[error("cluster.require_tls needs listen_tls and tls_ca_file")]
    RequireTls,
    #[error(
        "tenants.{given:?} is not a tenant name ({})",
        fleet_inventory::TENANT_NAME_HINT
    )]
    TenantName { given: String },
    #[error(
        "tenants.{tenant}.sources names `{connection}`, which is not a [sources.NAME] of this config"
    )]
    TenantSource { tenant: String, connection: String },
    #[error("tenants.{tenant}.max_running_flows must be at least 1")]
    ZeroTenantRunning { tenant: String },
    #[error("auth.failed_attempts_per_minute must be at least 1")]
    ZeroFailedAttempts,
}

/// Whether plain HTTP on `addr` stays on this machine.
fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

fn load_balancing_names() -> String {
    let names: Vec<&str> = LoadBalancing::ALL.iter().map(|a| a.as_str()).collect();
    names.join(", ")
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            problem: ConfigProblem::Read(e),
        })?;
        Config::parse(&text, path)
    }

    /// `path` names the file in errors and anchors relative `*_file` paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let at = |problem: ConfigProblem| ConfigError {
            path: path.to_owned(),
            problem,
        };
        let file: File = toml::from_str(text).map_err(|e| at(ConfigProblem::Syntax(e)))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let secret = |inline: Option<String>,
                      file: Option<PathBuf>,
                      key: &str|
         -> Result<String, ConfigError> {
            let key = key.to_owned();
            match (inline, file) {
                (Some(_), Some(_)) => Err(at(ConfigProblem::SecretTwice { key })),
                (Some(v), None) => Ok(v),
                (None, Some(f)) => {
                    let f = base.join(f);
                    let v = std::fs::read_to_string(&f).map_err(|error| {
                        at(ConfigProblem::SecretFile {
                            key,
                            file: f.clone(),
                            error,
                        })
                    })?;
                    Ok(v.trim().to_owned())
                }
                (None, None) => Err(at(ConfigProblem::Missing { key })),
            }
        };
        if !fleet_inventory::is_name(&file.node) {
            return Err(at(ConfigProblem::NodeName {
                given: file.node.clone(),
            }));
        }
        let listen = file.listen.parse().map_err(|_| {
            at(ConfigProblem::Listen {
                given: file.listen.clone(),
            })
        })?;
        let load_balancing = match file.load_balancing.as_deref() {
            None => LoadBalancing::default(),
            Some(name) => name.parse().map_err(|()| {
                at(ConfigProblem::LoadBalancing {
                    given: name.to_owned(),
                })
            })?,
        };
        if file.weight == Some(0) {
            return Err(at(ConfigProblem::ZeroWeight));
        }
        let c = &file.cluster;
        if c.leader_renew_ms == 0 || c.leader_ttl_ms < 3 * c.leader_renew_ms {
            return Err(at(ConfigProblem::LeaderTiming {
                ttl_ms: c.leader_ttl_ms,
                renew_ms: c.leader_renew_ms,
            }));
        }
        if file.limits.max_running_flows == 0 {
            return Err(at(ConfigProblem::ZeroMaxRunningFlows));
        }
        // A secret that may be left out: none when neither form is given.
        let optional =
            |inline: &Option<String>, file: &Option<PathBuf>, key: &str| match (inline, file) {
                (None, None) => Ok(None),
                _ => secret(inline.clone(), file.clone(), key).map(Some),
            };
        let admin_token = optional(&file.admin_token, &file.admin_token_file, "admin_token")?;
        let cluster_token = optional(
            &file.cluster_token,
            &file.cluster_token_file,
            "cluster_token",
        )?;
        for (key, token) in [
            ("admin_token", &admin_token),
            ("cluster_token", &cluster_token),
        ] {
            if token.as_ref().is_some_and(|t| t.len() < 16) {
                return Err(at(ConfigProblem::ShortToken { key }));
            }
        }
        if !file.plain_http_on_network && !is_loopback(&listen) {
            return Err(at(ConfigProblem::PlainOnNetwork {
                given: file.listen.clone(),
            }));
        }
        let tls = match (&file.listen_tls, &file.tls_cert_file, &file.tls_key_file) {
            (None, None, None) if file.tls_ca_file.is_none() => None,
            (None, _, _) => return Err(at(ConfigProblem::TlsWithoutListen)),
            (Some(given), Some(cert), Some(key)) => Some(TlsSettings {
                listen: given.parse().map_err(|_| {
                    at(ConfigProblem::ListenTls {
                        given: given.clone(),
                    })
                })?,
                cert_file: base.join(cert),
                key_file: base.join(key),
                ca_file: file.tls_ca_file.as_ref().map(|f| base.join(f)),
            }),
            (Some(_), _, _) => return Err(at(ConfigProblem::TlsFiles)),
        };
        if file.cluster.require_tls && tls.as_ref().is_none_or(|t| t.ca_file.is_none()) {
            return Err(at(ConfigProblem::RequireTls));
        }
        if file.auth.failed_attempts_per_minute == 0 {
            return Err(at(ConfigProblem::ZeroFailedAttempts));
        }
        let mut tenants = BTreeMap::new();
        for (name, t) in &file.tenants {
            if !fleet_inventory::is_tenant_name(name) {
                return Err(at(ConfigProblem::TenantName {
                    given: name.clone(),
                }));
            }
            if let Some(unknown) = t.sources.iter().find(|s| !file.sources.contains_key(*s)) {
                return Err(at(ConfigProblem::TenantSource {
                    tenant: name.clone(),
                    connection: unknown.clone(),
                }));
            }
            if t.max_running_flows == Some(0) {
                return Err(at(ConfigProblem::ZeroTenantRunning {
                    tenant: name.clone(),
                }));
            }
            tenants.insert(
                name.clone(),
                Tenant {
                    max_running_flows: Some(
                        t.max_running_flows.unwrap_or(file.limits.max_running_flows),
                    ),
                    sources: Some(t.sources.clone()),
                },
            );
        }
        tenants
            .entry(crate::auth::DEFAULT_TENANT.to_owned())
            .or_insert(Tenant {
                max_running_flows: None,
                sources: None,
            });
        let p = &file.postgres;
        for (key, ms) in [
            ("lock_timeout_ms", p.lock_timeout_ms),
            (
                "idle_in_transaction_timeout_ms",
                p.idle_in_transaction_timeout_ms,
            ),
        ] {
            if ms == 0 {
                return Err(at(ConfigProblem::ZeroPostgresTimeout { key }));
            }
        }
        let postgres_url = secret(file.postgres_url, file.postgres_url_file, "postgres_url")?;
        let mut sources = BTreeMap::new();
        for (name, s) in file.sources {
            if !fleet_inventory::is_name(&name) {
                return Err(at(ConfigProblem::SourceName { given: name }));
            }
            let url = match (s.server_database, s.url.is_some() || s.url_file.is_some()) {
                (true, false) => postgres_url.clone(),
                (false, true) => secret(s.url, s.url_file, &format!("sources.{name}.url"))?,
                _ => return Err(at(ConfigProblem::SourceUrl { name })),
            };
            if s.statement_timeout_ms == 0 {
                return Err(at(ConfigProblem::ZeroStatementTimeout { name }));
            }
            let statement_timeout = Duration::from_millis(s.statement_timeout_ms);
            sources.insert(
                name,
                SourceConnection {
                    url,
                    statement_timeout,
                },
            );
        }
        Ok(Config {
            admin_token,
            cluster_token,
            allow_tokenless_loopback: file.allow_tokenless_loopback,
            tls,
            auth: file.auth,
            tenants,
            postgres_url,
            postgres: file.postgres,
            sources,
            redis_url: secret(file.redis_url, file.redis_url_file, "redis_url")?,
            redis_prefix: file.redis_prefix.unwrap_or_else(|| "fleet:".into()),
            node: file.node,
            listen,
            shared_storage: base.join(file.shared_storage),
            limits: file.limits,
            cluster: file.cluster,
            load_balancing,
            weight: file.weight.unwrap_or(1),
            release: None,
            probation: false,
        })
    }

    /// A tenant's settings: its own when configured, else none (a tenant nobody configured
    /// has no tokens, so nothing of its own).
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.limits.shutdown_grace_secs)
    }
}
