//! The daemon's configuration: `config/agent.toml` (rendered by `fleet provision` from
//! `templates/agent.toml.j2`), plus the three things it takes from the server's own config so
//! the two can never disagree: the address the server listens on (for `/health` and the drain),
//! the cluster's Redis key prefix, and the admin token of `/admin/*`. Secrets (the Redis URL,
//! the token) come from files and are never displayed: `Debug` hides them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Layout;

/// Largest config or secret file read (a device or FIFO named by mistake is not read forever).
const FILE_CAP: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not readable, or larger than the cap (the message names the file).
    #[error("{0}")]
    Read(fleet_release::ReleaseError),
    #[error("{}: {error}", path.display())]
    Parse { path: PathBuf, error: String },
    #[error("{}: {key}: {problem}", path.display())]
    Value {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    node: String,
    #[serde(default)]
    customer: Option<String>,
    #[serde(default)]
    cluster: Option<String>,
    node_root: PathBuf,
    /// Rendered for people reading the file; the agent always reads `<root>/trust/root.json`.
    #[serde(default)]
    #[allow(dead_code)]
    trust_root: Option<PathBuf>,
    #[serde(default)]
    redis_url_file: Option<PathBuf>,
    #[serde(default)]
    server_config: Option<PathBuf>,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    rollout: Rollout,
    #[serde(default)]
    supervise: Supervise,
}

/// `[rollout]`: the health gate of the per-node upgrade step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rollout {
    /// Read by the rolling upgrade (the cluster's agents); the step on one node ignores it.
    pub max_unavailable: u32,
    /// The new server must answer `/health` without a miss for this long...
    pub min_healthy_secs: u64,
    /// ...within this long after it was started, or the step rolls back.
    pub health_timeout_secs: u64,
    /// A rollout's upgrade slot is a lease of this long, renewed every third of it; an agent
    /// that could not renew it within this long stops acting on it.
    pub slot_ttl_ms: u64,
    /// How often the daemon looks at the rollouts it takes part in.
    pub poll_ms: u64,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            max_unavailable: 1,
            min_healthy_secs: 10,
            health_timeout_secs: 120,
            slot_ttl_ms: 10_000,
            poll_ms: 200,
        }
    }
}

/// `[supervise]`: how the server is watched, stopped and reported.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Supervise {
    /// After SIGTERM, how long the server may take to exit before SIGKILL.
    pub stop_grace_secs: u64,
    /// How long the upgrade step lets the server drain before it stops it anyway.
    pub drain_deadline_secs: u64,
    pub health_interval_ms: u64,
    /// One `/health` request that takes longer has failed.
    pub health_check_timeout_ms: u64,
    /// A started server not healthy after this long is `unhealthy`, no longer `starting`.
    pub start_timeout_secs: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_ttl_ms: u64,
    /// `logs/etl-server.log` is rotated past this size...
    pub log_max_bytes: u64,
    /// ...keeping this many older files (`.1` the newest).
    pub log_keep: u32,
}

impl Default for Supervise {
    fn default() -> Self {
        Self {
            stop_grace_secs: 30,
            drain_deadline_secs: 300,
            health_interval_ms: 1000,
            health_check_timeout_ms: 2000,
            start_timeout_secs: 60,
            heartbeat_interval_ms: 2000,
            heartbeat_ttl_ms: 10_000,
            log_max_bytes: 10 << 20,
            log_keep: 3,
        }
    }
}

impl Supervise {
    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_secs)
    }
    pub fn drain_deadline(&self) -> Duration {
        Duration::from_secs(self.drain_deadline_secs)
    }
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }
    pub fn health_check_timeout(&self) -> Duration {
        Duration::from_millis(self.health_check_timeout_ms)
    }
    pub fn start_timeout(&self) -> Duration {
        Duration::from_secs(self.start_timeout_secs)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    pub fn heartbeat_ttl(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ttl_ms)
    }
}

/// What the server's config says that the daemon needs (`listen`, `redis_prefix`, the admin
/// token); every other key is the server's business.
#[derive(Debug, Default, Deserialize)]
struct ServerFile {
    listen: Option<String>,
    redis_prefix: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
}

/// The daemon's settings, read and checked once at start.
#[derive(Clone)]
pub struct DaemonConfig {
    pub node: String,
    pub customer: Option<String>,
    pub cluster: Option<String>,
    pub layout: Layout,
    /// The server's config file, passed to it as `--config`.
    pub server_config: PathBuf,
    /// Where the server answers (`listen` of its config): `/health`, `/api/cluster`, drain.
    pub server_listen: SocketAddr,
    /// Holds a password: never displayed. `None`: no heartbeats (said in `status`).
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// The bearer token of the server's `/admin/*`: never displayed.
    pub admin_token: Option<String>,
    /// Prometheus text is served here (`None`: not served).
    pub metrics_listen: Option<SocketAddr>,
    pub rollout: Rollout,
    pub supervise: Supervise,
}

impl std::fmt::Debug for DaemonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonConfig")
            .field("node", &self.node)
            .field("root", &self.layout.root())
            .field("server_config", &self.server_config)
            .field("server_listen", &self.server_listen)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "(secret)"))
            .field("redis_prefix", &self.redis_prefix)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "(secret)"),
            )
            .field("metrics_listen", &self.metrics_listen)
            .field("rollout", &self.rollout)
            .field("supervise", &self.supervise)
            .finish()
    }
}

impl DaemonConfig {
    /// The agent config of the node root `root`: `root/config/agent.toml`.
    pub fn path(root: &Path) -> PathBuf {
        root.join("config").join("agent.toml")
    }

    /// Reads `root/config/agent.toml`, the server config it names (default
    /// `root/config/server.toml`) and the secret files they name.
    pub fn load(root: &Path) -> Result<Self, ConfigError> {
        let path = Self::path(root);
        let file: File = toml::from_str(&read_capped(&path)?).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            error: e.message().to_owned(),
        })?;
        let value = |key: &'static str, problem: String| ConfigError::Value {
            path: path.clone(),
            key,
            problem,
        };
        if file.node.trim().is_empty() {
            return Err(value("node", "is empty".into()));
        }
        if file.node_root != root {
            return Err(value(
                "node_root",
                format!(
                    "is {}, but this agent runs for {}",
                    file.node_root.display(),
                    root.display()
                ),
            ));
        }
        let check = &file.supervise;
        for (key, v) in [
            ("supervise.health_interval_ms", check.health_interval_ms),
            (
                "supervise.health_check_timeout_ms",
                check.health_check_timeout_ms,
            ),
            (
                "supervise.heartbeat_interval_ms",
                check.heartbeat_interval_ms,
            ),
            ("supervise.log_max_bytes", check.log_max_bytes),
            ("rollout.slot_ttl_ms", file.rollout.slot_ttl_ms),
            ("rollout.poll_ms", file.rollout.poll_ms),
        ] {
            if v == 0 {
                return Err(value(key, "must be above 0".into()));
            }
        }
        if check.heartbeat_ttl_ms < 2 * check.heartbeat_interval_ms {
            return Err(value(
                "supervise.heartbeat_ttl_ms",
                "must be at least twice heartbeat_interval_ms".into(),
            ));
        }
        let metrics_listen = match &file.metrics_listen {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.parse().map_err(|_| {
                value(
                    "metrics_listen",
                    format!("`{s}` is not an address:port like 127.0.0.1:9464"),
                )
            })?),
        };
        let redis_url = match &file.redis_url_file {
            None => None,
            Some(secret) => Some(read_secret(secret)?),
        };
        let server_config = file
            .server_config
            .clone()
            .unwrap_or_else(|| root.join("config").join("server.toml"));
        let server: ServerFile =
            toml::from_str(&read_capped(&server_config)?).map_err(|e| ConfigError::Parse {
                path: server_config.clone(),
                error: e.message().to_owned(),
            })?;
        let listen = server.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let server_listen = listen.parse().map_err(|_| ConfigError::Value {
            path: server_config.clone(),
            key: "listen",
            problem: format!("`{listen}` is not an address:port"),
        })?;
        let admin_token = match (server.admin_token, &server.admin_token_file) {
            (Some(token), _) => Some(token),
            (None, Some(secret)) => Some(read_secret(secret)?),
            (None, None) => None,
        };
        Ok(Self {
            node: file.node,
            customer: file.customer,
            cluster: file.cluster,
            layout: Layout::new(root),
            server_config,
            server_listen,
            redis_url,
            redis_prefix: server.redis_prefix.unwrap_or_else(|| "fleet:".into()),
            admin_token,
            metrics_listen,
            rollout: file.rollout,
            supervise: file.supervise,
        })
    }
}

fn read_capped(path: &Path) -> Result<String, ConfigError> {
    let bytes = fleet_release::trust::read_capped(path, FILE_CAP, "config or secret file")
        .map_err(ConfigError::Read)?;
    String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
        path: path.to_owned(),
        error: "not UTF-8 text".into(),
    })
}

/// A secret file's content, trimmed; its text never reaches an error.
fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let text = read_capped(path)?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(ConfigError::Value {
            path: path.to_owned(),
            key: "(secret file)",
            problem: "is empty".into(),
        });
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, agent: &str, server: &str) {
        std::fs::create_dir_all(root.join("config/secrets")).expect("dirs");
        std::fs::write(root.join("config/agent.toml"), agent).expect("agent.toml");
        std::fs::write(root.join("config/server.toml"), server).expect("server.toml");
    }

    #[test]
    fn reads_the_agent_config_and_what_it_needs_of_the_servers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("config/secrets")).expect("dirs");
        std::fs::write(
            root.join("config/secrets/redis_url"),
            "redis://:hunter2@127.0.0.1:6379/0\n",
        )
        .expect("secret");
        std::fs::write(
            root.join("config/secrets/admin_token"),
            "0123456789abcdef0123\n",
        )
        .expect("secret");
        let agent = format!(
            "node = \"n1\"\nnode_root = {root:?}\nredis_url_file = {redis:?}\nmetrics_listen = \"127.0.0.1:9464\"\n[rollout]\nmin_healthy_secs = 3\n[supervise]\nstop_grace_secs = 5\n",
            root = root.display().to_string(),
            redis = root.join("config/secrets/redis_url").display().to_string(),
        );
        let server = format!(
            "node = \"n1\"\nlisten = \"127.0.0.5:8080\"\nredis_prefix = \"t:\"\nadmin_token_file = {t:?}\nshared_storage = \"/x\"\n",
            t = root
                .join("config/secrets/admin_token")
                .display()
                .to_string()
        );
        write(root, &agent, &server);
        let config = DaemonConfig::load(root).expect("loads");
        assert_eq!(config.node, "n1");
        assert_eq!(config.server_listen.to_string(), "127.0.0.5:8080");
        assert_eq!(config.redis_prefix, "t:");
        assert_eq!(config.admin_token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(config.rollout.min_healthy_secs, 3);
        assert_eq!(config.rollout.health_timeout_secs, 120, "a default");
        assert_eq!(config.supervise.stop_grace_secs, 5);
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("0123456789abcdef"),
            "{shown}"
        );
    }

    #[test]
    fn a_bad_file_names_the_file_and_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let server = "node = \"n1\"\nshared_storage = \"/x\"\n";
        let r = root.display().to_string();
        for (agent, wanted) in [
            (
                format!("node = \"n1\"\nnode_root = {r:?}\nbogus = 1\n"),
                "unknown field `bogus`",
            ),
            (
                "node = \"n1\"\nnode_root = \"/elsewhere\"\n".to_string(),
                "node_root: is /elsewhere",
            ),
            (
                format!("node = \"n1\"\nnode_root = {r:?}\nmetrics_listen = \"nine\"\n"),
                "metrics_listen: `nine` is not an address",
            ),
            (
                format!("node = \"n1\"\nnode_root = {r:?}\n[supervise]\nheartbeat_ttl_ms = 10\n"),
                "supervise.heartbeat_ttl_ms: must be at least twice",
            ),
        ] {
            write(root, &agent, server);
            let err = DaemonConfig::load(root).expect_err("refused").to_string();
            assert!(err.contains("agent.toml"), "{err}");
            assert!(err.contains(wanted), "{err} lacks {wanted}");
        }
    }
}
