//! Command-line definitions (clap): the commands, their arguments and help. Not what the
//! commands do (`commands`) and not the printing (`cli/mod.rs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Fleet: build signed releases and push them over SSH to the nodes of your customers.
#[derive(Debug, Parser)]
#[command(name = "fleet", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print the result as one JSON document on stdout (errors too), for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log level on stderr: error, warn, info, debug or trace (or set FLEET_LOG).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<tracing::Level>,
    /// Write logs on stderr as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// The controller's state (audit log, rollouts): a SQLite file, or a postgres:// URL
    /// [default: $FLEET_STATE, else state.db in $FLEET_DATA_DIR, $XDG_DATA_HOME/fleet or
    /// ~/.local/share/fleet].
    #[arg(long, global = true, value_name = "PATH|URL")]
    pub state: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The audit log: every command that changed nodes (provision, push, activate,
    /// rollback, rollout start, pause, resume, abort): who, with which key, what, where,
    /// which release, when, the result.
    Audit(AuditArgs),
    /// Check and list the inventory: the YAML file describing customers, clusters and nodes.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Enrol node host keys into known_hosts (the only step that ever trusts a host key).
    #[command(subcommand)]
    Hosts(HostsCommand),
    /// Bootstrap nodes through the bootstrap account: node layout, fleet-agent, trust root,
    /// and the deploy key restricted to the agent. Idempotent; --check shows what would change.
    Provision {
        #[command(flatten)]
        nodes: NodeArgs,
        /// The trust root document the nodes will pin (trust/root.json).
        #[arg(long, value_name = "ROOT.json")]
        trust: PathBuf,
        /// The fleet-agent binary to install (default: `fleet-agent` beside this `fleet`).
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Show what would change, change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Stage release VERSION on the nodes: the bundle streams to each node's agent, which
    /// verifies it before anything changes. A node that has it already is left alone.
    Push {
        /// The release version.
        version: semver::Version,
        #[command(flatten)]
        nodes: NodeArgs,
        /// The release store holding VERSION.bundle.
        #[arg(long, value_name = "STORE")]
        store: PathBuf,
    },
    /// Switch the nodes to staged release VERSION (the replaced one becomes `previous`). Where
    /// an agent daemon runs, it drains, restarts and health-gates the server, and switches
    /// back when the new release fails.
    Activate {
        /// The release version.
        version: semver::Version,
        #[command(flatten)]
        nodes: NodeArgs,
        /// Allow activating a release older than the active one.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Switch the nodes back to their previous release (through the upgrade step where an
    /// agent daemon runs).
    Rollback {
        #[command(flatten)]
        nodes: NodeArgs,
    },
    /// Show each node: its agent daemon, the server it supervises (state, pid, health,
    /// restarts), the heartbeat's age, active and staged releases, free disk. --json adds the
    /// previous release, the host key and every field of the daemon's report.
    Status {
        #[command(flatten)]
        nodes: NodeArgs,
    },
    /// Generate ed25519 key pairs (root, release and order keys).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create, sign, rotate and check trust roots: the document naming the keys nodes accept.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Build, verify and list signed release bundles.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// The install script and offline bundles for nodes we cannot reach: customers install
    /// and update a node with `install.sh`, which hands each signed release to the node's
    /// agent (verified against the trust root pinned at the first install, as for a push).
    #[command(subcommand)]
    Installer(InstallerCommand),
    /// Rolling upgrades: stage a release on a cluster's nodes and hand them a signed order;
    /// their agents upgrade them node by node (drain, switch, health gate, roll back on
    /// failure) through the cluster's Redis, while the controller watches.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// The users of `fleet serve` and their roles: viewers see; operators also start, pause,
    /// resume and abort rollouts; admins also manage users. Kept in the state store.
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens for `fleet serve`'s JSON API (`Authorization: Bearer <token>`), each with a
    /// role. Only a hash is kept: a token is shown once, when it is created.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run the controller as a service: the web dashboard (live over Server-Sent Events) and
    /// the JSON API, the nodes' status collected over SSH, rollouts started and controlled
    /// from the browser. Serves HTTP on --listen until SIGTERM or Ctrl-C, then lets requests
    /// in flight finish. Users come from `fleet user`, API tokens from `fleet token`. HTTPS
    /// with --tls-cert and --tls-key, or keep it on loopback behind a TLS proxy
    /// (--trusted-origin, --secure-cookies).
    Serve {
        /// The inventory YAML file: the nodes whose status is collected and shown.
        #[arg(short, long, value_name = "FILE")]
        inventory: PathBuf,
        /// Ask each node for its status this often (over SSH, like `fleet status`); a node
        /// that fails is asked again after a growing wait, at most 5 minutes.
        #[arg(long, default_value = "30s", value_name = "DURATION")]
        collect_every: humantime::Duration,
        /// Ask at most this many nodes at once.
        #[arg(long, default_value_t = 32, value_name = "N")]
        collect_parallel: usize,
        /// The release store rollouts started from the browser take their bundles from
        /// (without it the web cannot start one).
        #[arg(long, value_name = "STORE")]
        store: Option<PathBuf>,
        /// The order key that signs the rollouts and controls started from the browser
        /// [default: $FLEET_ORDER_KEY, else order.key in the data directory].
        #[arg(long, value_name = "PATH")]
        order_key: Option<PathBuf>,
        /// The address to serve on; keep it on loopback unless a TLS proxy fronts it.
        #[arg(long, default_value = "127.0.0.1:8700", value_name = "ADDR:PORT")]
        listen: std::net::SocketAddr,
        /// Mark session cookies Secure (when a TLS proxy fronts the server; implied by
        /// --tls-cert).
        #[arg(long)]
        secure_cookies: bool,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// An origin besides the server's own whose forms and API calls are accepted (the
        /// public address of a reverse proxy: https://fleet.example.com). Repeatable.
        #[arg(long, value_name = "ORIGIN")]
        trusted_origin: Vec<String>,
        /// How long a session lasts after its login (12h, 7d).
        #[arg(long, default_value = "12h", value_name = "DURATION")]
        session_ttl: humantime::Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user. The password is asked twice on the terminal, or read from the first line
    /// of stdin (`printf '%s\n' "$PW" | fleet user add ...`); never from the command line.
    Add {
        /// 1 to 64 ASCII letters, digits, '.', '_' or '-'.
        name: String,
        /// viewer, operator or admin.
        #[arg(long, value_parser = super::users::parse_role)]
        role: crate::store::Role,
    },
    /// List the users and their roles.
    List,
    /// Remove a user; their sessions end.
    Remove { name: String },
    /// Set a user's password (asked like `add`); their sessions end.
    Passwd { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once).
    Create {
        /// viewer, operator or admin.
        #[arg(long, value_parser = super::users::parse_role)]
        role: crate::store::Role,
        /// What it is for, shown in `list`.
        #[arg(long)]
        name: Option<String>,
        /// It stops working this long after now (90d, 12h); default: never.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List the tokens (id, name, role, creator, expiry, last use; never the token).
    List,
    /// Revoke a token by its id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Validate an inventory file, reporting every problem with its file:line:column.
    Check {
        /// The inventory YAML file.
        #[arg(short, long, value_name = "FILE")]
        inventory: PathBuf,
    },
    /// List nodes with their resolved settings, one per line (secrets masked), each with its
    /// customer's mode and how a release reaches it (`push=`: over SSH by us; over SSH, in
    /// its cluster's maintenance windows; never: an offline bundle for an airgapped customer).
    List {
        /// The inventory YAML file.
        #[arg(short, long, value_name = "FILE")]
        inventory: PathBuf,
        /// Select nodes: names, CUSTOMER, CUSTOMER/CLUSTER, globs (acme-*), labels
        /// (region=eu-west-2); commas for union, a leading ! to exclude.
        #[arg(short, long, value_name = "PATTERN")]
        limit: Option<String>,
    },
}

/// Which nodes, how many at once, how long to wait.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The inventory YAML file.
    #[arg(short, long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// Select nodes (see `fleet inventory list --help`). An airgapped customer's nodes are
    /// skipped whatever is selected: never contacted, each named on a `skipped` line; when
    /// only those are selected, nothing is done and the command fails.
    #[arg(short, long, value_name = "PATTERN")]
    pub limit: Option<String>,
    /// How many nodes to work on at once.
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub parallel: u32,
    /// Seconds to wait for each node to connect.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
    /// Seconds to wait for each command on a node [default: 600; 1800 for activate and
    /// rollback, which an agent daemon answers after draining, restarting and health-gating
    /// the server].
    #[arg(long, value_name = "SECS")]
    pub command_timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rolling upgrade to VERSION on each cluster of the selected nodes (one rollout
    /// per cluster): claim the cluster (one rollout in flight per cluster), stage VERSION on
    /// every target (nothing running changes), sign the order with the order key and hand it
    /// to every target, then watch until every target has an outcome. Exit 0 only when every
    /// target committed (with --detach: when every target took its order). A customer_managed
    /// cluster outside its maintenance windows waits for the next one (see --now); an
    /// airgapped customer's nodes are skipped, never contacted.
    Start(RolloutStart),
    /// Show one rollout: the state store's record and, with -i, each target's progress as the
    /// nodes report it now (exit 0 only when every target committed). Without ID: the
    /// rollouts in flight.
    Status {
        /// The rollout's id (see `fleet rollout list`).
        id: Option<String>,
        /// The inventory, to ask the targets (without it: the state store's record only).
        #[arg(short, long, value_name = "FILE")]
        inventory: Option<PathBuf>,
        /// Seconds to wait for each node to connect.
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        connect_timeout: u64,
    },
    /// Follow a rollout until every target has an outcome: a line per change, then a summary
    /// table; records the outcomes and ends the rollout in the state store. Picks up a
    /// rollout another controller started (or one whose controller stopped). Ctrl-C stops
    /// watching; the rollout goes on. Exit 0 only when every target committed.
    Watch {
        /// The rollout's id.
        id: String,
        #[command(flatten)]
        reach: ReachArgs,
        /// Seconds after which a target without an outcome that nobody heard of (it cannot
        /// be reached, and the others' reports say nothing new of it) is `lost`.
        #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        lost_after: u64,
    },
    /// Every rollout in the state store, newest first.
    List,
    /// Pause a rollout: no node starts its upgrade after this (one mid-step finishes).
    Pause {
        /// The rollout's id.
        id: String,
        #[command(flatten)]
        reach: ReachArgs,
        #[command(flatten)]
        key: OrderKeyArg,
    },
    /// Resume a paused rollout.
    Resume {
        /// The rollout's id.
        id: String,
        #[command(flatten)]
        reach: ReachArgs,
        #[command(flatten)]
        key: OrderKeyArg,
    },
    /// Abort a rollout: no node starts its upgrade after this; with --rollback, the nodes
    /// that committed go back to the release they ran before (as many at once as
    /// max_unavailable allows).
    Abort {
        /// The rollout's id.
        id: String,
        /// Also return committed nodes to their previous release.
        #[arg(long)]
        rollback: bool,
        #[command(flatten)]
        reach: ReachArgs,
        #[command(flatten)]
        key: OrderKeyArg,
    },
}

/// `fleet rollout start`.
#[derive(Debug, Clone, Args)]
pub struct RolloutStart {
    /// The release version (VERSION.bundle in the release store).
    pub version: semver::Version,
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// How many targets of each cluster go first, each alone; the rest start only once they
    /// committed [default: the cluster's rollout.canary: none, the first node, or the node it
    /// names].
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// At most this many nodes of a cluster out of service at once, counting nodes already
    /// down [default: the cluster's rollout.max_unavailable].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unavailable: Option<u32>,
    /// Seconds a new server must stay healthy before its node commits [default: the
    /// cluster's rollout.min_healthy_secs].
    #[arg(long, value_name = "SECS")]
    pub min_healthy: Option<u64>,
    /// Seconds a new server has to become healthy for --min-healthy, or its node rolls back
    /// [default: the cluster's rollout.health_timeout_secs].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub health_timeout: Option<u64>,
    /// A flow that must run successfully on each upgraded node before it commits [default:
    /// the cluster's rollout.smoke_flow].
    #[arg(long, value_name = "FLOW")]
    pub smoke_flow: Option<String>,
    /// How long the rollout may take (90m, 4h); no node starts its upgrade after it, and the
    /// order expires then [default: 1h, plus the health timeout and 10m per target].
    #[arg(long, value_name = "DURATION")]
    pub deadline: Option<String>,
    /// The release store holding VERSION.bundle [default: releases/ in the controller's data
    /// directory].
    #[arg(long, value_name = "STORE")]
    pub store: Option<PathBuf>,
    /// Leave out the nodes that cannot stage VERSION (without it, such a node keeps the
    /// rollout from starting on its cluster).
    #[arg(long)]
    pub skip_unstaged: bool,
    /// Hand out the orders and return; `fleet rollout watch ID` follows it.
    #[arg(long)]
    pub detach: bool,
    /// Start at once on clusters outside their maintenance windows (a customer_managed
    /// cluster's `maintenance_windows` in the inventory); without it, such a cluster waits for
    /// its next window, saying which and when it opens. The audit log records who overrode
    /// which window.
    #[arg(long)]
    pub now: bool,
    #[command(flatten)]
    pub key: OrderKeyArg,
    /// Seconds after which a target nobody heard of is `lost` (see `fleet rollout watch`).
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub lost_after: u64,
}

/// The key that signs rollout orders and controls.
#[derive(Debug, Clone, Args)]
pub struct OrderKeyArg {
    /// The order key (its .pub named in the nodes' trust root) [default: $FLEET_ORDER_KEY,
    /// else order.key in $FLEET_DATA_DIR, $XDG_DATA_HOME/fleet or ~/.local/share/fleet].
    #[arg(long, value_name = "FILE")]
    pub order_key: Option<PathBuf>,
}

/// How a rollout's targets are reached.
#[derive(Debug, Clone, Args)]
pub struct ReachArgs {
    /// The inventory YAML file (how to reach the rollout's targets).
    #[arg(short, long, value_name = "FILE")]
    pub inventory: PathBuf,
    /// How many nodes to work on at once.
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub parallel: u32,
    /// Seconds to wait for each node to connect.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// Connect to each node (without logging in), show its host key fingerprint and record it
    /// in the node's known_hosts file. Compare the fingerprints with the node owner's.
    Trust {
        /// The inventory YAML file.
        #[arg(short, long, value_name = "FILE")]
        inventory: PathBuf,
        /// Select nodes (see `fleet inventory list --help`).
        #[arg(short, long, value_name = "PATTERN")]
        limit: Option<String>,
        /// Replace a recorded key that differs (after a reinstall). Without it, a changed key
        /// is refused.
        #[arg(long)]
        replace: bool,
        /// How many nodes to contact at once.
        #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        parallel: u32,
        /// Seconds to wait for each node.
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate an ed25519 key pair: DIR/NAME.key (private, mode 0600) and DIR/NAME.pub.
    Generate {
        /// Directory to write the key files into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Base name of the key files.
        #[arg(long, default_value = "fleet")]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct RootKeys {
    /// A root public key file (repeat for several).
    #[arg(long = "root-key", value_name = "PUB")]
    pub root_keys: Vec<PathBuf>,
    /// How many root keys must sign a root document.
    #[arg(long, value_name = "N")]
    pub root_threshold: Option<u32>,
    /// A release public key file that nodes accept (repeat for several).
    #[arg(long = "release-key", value_name = "PUB")]
    pub release_keys: Vec<PathBuf>,
    /// How many release keys must sign a manifest.
    #[arg(long, value_name = "N")]
    pub release_threshold: Option<u32>,
    /// An order public key: the controller's online key that signs rollout orders and
    /// controls (repeat for several; a root without one accepts no order).
    #[arg(long = "order-key", value_name = "PUB")]
    pub order_keys: Vec<PathBuf>,
    /// How many order keys must sign an order (default 1 when order keys are given).
    #[arg(long, value_name = "N")]
    pub order_threshold: Option<u32>,
    /// Sign with this private key (repeat for several).
    #[arg(long = "sign", value_name = "KEY")]
    pub sign: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Create root version 1, signed by the given keys.
    Init {
        #[command(flatten)]
        keys: RootKeys,
        /// Where to write the root document (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Create the successor of a root: version + 1, keys changed as given (unchanged where
    /// not given). It is valid once signed by a threshold of the old and of the new root keys.
    Rotate {
        /// The root being replaced.
        #[arg(long, value_name = "ROOT.json")]
        current: PathBuf,
        #[command(flatten)]
        keys: RootKeys,
        /// Name no order keys in the new root (it then accepts no order).
        #[arg(long, conflicts_with_all = ["order_keys", "order_threshold"])]
        no_order_keys: bool,
        /// Where to write the new root document (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Add a signature to a root document (in place).
    Sign {
        /// The root document to sign.
        file: PathBuf,
        /// The private key to sign with.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
    },
    /// Check a root document: signed by a threshold of its own root keys or, with
    /// --previous, a valid rotation from that root.
    Verify {
        /// The root document to check.
        file: PathBuf,
        /// The root it must succeed.
        #[arg(long, value_name = "ROOT.json")]
        previous: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum InstallerCommand {
    /// Write install.sh for release VERSION of the store into DIR, with the release's bundle
    /// and agent, `latest` and SHA256SUMS: serve DIR at --url and customers run
    /// `curl -fsSLo install.sh URL/install.sh && sudo sh install.sh`. Building an older
    /// release into DIR adds its files and leaves the newest release's script and `latest`.
    /// With --offline, also fleet-offline-VERSION-ARCH.tar (script, agent, signed bundle,
    /// SHA256SUMS), which installs with no network at all.
    Build {
        /// The release version.
        version: semver::Version,
        /// The release store holding VERSION.bundle.
        #[arg(long, value_name = "STORE")]
        store: PathBuf,
        /// The trust root nodes pin at their first install; the bundle must verify against it.
        #[arg(long, value_name = "ROOT.json")]
        trust: PathBuf,
        /// The folder to write (the release server's folder).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The address DIR is served at: the script downloads `latest`, bundles and the agent
        /// from there (http_proxy / https_proxy honoured).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Also write the offline bundle, for airgapped customers.
        #[arg(long)]
        offline: bool,
    },
    /// Write the configuration of one node of the inventory (agent.toml, server.toml and
    /// secrets/, mode 0600) into DIR, for `install.sh --config DIR`: the same files
    /// `fleet provision` writes. DIR holds secrets: hand it over as such.
    Config {
        /// The node's name in the inventory.
        node: String,
        /// The inventory YAML file.
        #[arg(short, long, value_name = "FILE")]
        inventory: PathBuf,
        /// The folder to write (created; must be empty or missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Build and sign a bundle into the release store as VERSION.bundle: of a release tree
    /// (--from), or of the tree assembled from built binaries (--bin-dir).
    #[command(group(clap::ArgGroup::new("tree").required(true).args(["from", "bin_dir"])))]
    Build {
        /// Release version (semver, e.g. 1.4.0).
        #[arg(long, value_name = "V")]
        version: semver::Version,
        /// Directory holding the release tree (bin/etl-server, bin/fleet-agent, ...).
        #[arg(long, value_name = "TREE")]
        from: Option<PathBuf>,
        /// Directory holding the built etl-server and fleet-agent (e.g. target/release after
        /// `cargo build --release -p fleet-server -p fleet-agent`): the release tree is
        /// bin/etl-server and bin/fleet-agent, copied from there with mode 0755.
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// Release private key to sign the manifest with.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Release channel.
        #[arg(long, default_value = "stable", value_name = "C")]
        channel: String,
        /// Days until the release expires and nodes refuse it.
        #[arg(long, default_value_t = 90, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=3650))]
        expires_in: u32,
        /// Target platform (default: this machine's, e.g. linux-x86_64).
        #[arg(long, value_name = "P")]
        platform: Option<String>,
        /// Oldest fleet-agent version that may install this release (default: this fleet's).
        #[arg(long, value_name = "V")]
        min_agent_version: Option<semver::Version>,
        /// The release store directory.
        #[arg(long, value_name = "STORE")]
        out: PathBuf,
    },
    /// Verify a bundle against a trust root: signatures, expiry and every file's size and hash.
    Verify {
        /// The bundle file.
        bundle: PathBuf,
        /// The trust root document (ROOT.json).
        #[arg(long, value_name = "ROOT.json")]
        trust: PathBuf,
    },
    /// List the releases in a store (signatures are not checked here; use verify).
    List {
        /// The release store directory.
        #[arg(long, value_name = "STORE")]
        store: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only rows since this time (2026-11-30T10:00:00Z) or this long ago (2h, 7days).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain: name the first row that was edited, deleted or moved (exit 1).
    Verify,
}
