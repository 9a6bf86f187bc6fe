//! The resolved inventory model (customers, clusters, nodes with every inherited setting
//! applied) and how it prints; not how it is read or validated (see `schema`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

use crate::secret::Setting;
use crate::window::{self, MaintenanceWindow};

/// How a customer runs the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Shared instances operated by us.
    Shared,
    /// Dedicated instances operated by us.
    Dedicated,
    /// Customer-owned instances we reach by SSH.
    CustomerManaged,
    /// Customer-owned instances we cannot reach (install script).
    Airgapped,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Shared,
        Mode::Dedicated,
        Mode::CustomerManaged,
        Mode::Airgapped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Dedicated => "dedicated",
            Mode::CustomerManaged => "customer_managed",
            Mode::Airgapped => "airgapped",
        }
    }
}

impl Mode {
    /// Whether the controller ever connects to this mode's nodes (never to an airgapped
    /// customer's: they take offline bundles).
    pub fn contacted(self) -> bool {
        self != Mode::Airgapped
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a cluster's dispatcher picks the node that runs a job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    LeastLoaded,
    Random,
    /// Proportional to each node's `weight`.
    Weighted,
}

impl LoadBalancing {
    pub const ALL: [LoadBalancing; 4] = [
        LoadBalancing::RoundRobin,
        LoadBalancing::LeastLoaded,
        LoadBalancing::Random,
        LoadBalancing::Weighted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancing::RoundRobin => "round_robin",
            LoadBalancing::LeastLoaded => "least_loaded",
            LoadBalancing::Random => "random",
            LoadBalancing::Weighted => "weighted",
        }
    }
}

impl std::str::FromStr for LoadBalancing {
    type Err = ();

    /// The algorithm named as in an inventory or a server config (`round_robin`, ...).
    fn from_str(name: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|a| a.as_str() == name).ok_or(())
    }
}

impl fmt::Display for LoadBalancing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a rollout upgrades one node alone first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Canary {
    /// `canary: false` (the default): no canary.
    #[default]
    Off,
    /// `canary: true`: the controller picks the canary (the cluster's first node).
    Auto,
    /// `canary: <node name>`: that node of the cluster.
    Node(String),
}

impl Serialize for Canary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Canary::Off => serializer.serialize_bool(false),
            Canary::Auto => serializer.serialize_bool(true),
            Canary::Node(name) => serializer.serialize_str(name),
        }
    }
}

/// A cluster's rolling-upgrade policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rollout {
    /// At most this many nodes are upgrading at once (≥ 1).
    pub max_unavailable: u32,
    pub canary: Canary,
    /// A node counts as upgraded once healthy this long.
    pub min_healthy_secs: u64,
    /// A node that is not healthy for `min_healthy_secs` within this time fails (≥ min_healthy_secs).
    pub health_timeout_secs: u64,
    /// A flow (by name) that must run successfully on each upgraded node before it commits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoke_flow: Option<String>,
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            max_unavailable: 1,
            canary: Canary::Off,
            min_healthy_secs: 10,
            health_timeout_secs: 120,
            smoke_flow: None,
        }
    }
}

/// A jump host (`ProxyJump`) to reach a node through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Jump {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Jump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A node's resolved SSH settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Ssh {
    pub user: String,
    pub port: u16,
    /// Absolute, or starting with `~/` (expanded at use).
    pub identity_file: Option<PathBuf>,
    /// The controller's deploy key, which provisioning restricts to the agent on the node and
    /// which push, activate and status use. Absolute, or starting with `~/`.
    pub deploy_identity_file: Option<PathBuf>,
    /// The authorized_keys file on the node, where provisioning installs the deploy key
    /// (a path on the node; `~/` is the SSH user's home there).
    pub authorized_keys: String,
    /// Absolute, or starting with `~/` (expanded at use).
    pub known_hosts: PathBuf,
    pub jump: Option<Jump>,
}

/// A customer and the names of its clusters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Customer {
    pub name: String,
    pub mode: Mode,
    pub clusters: Vec<String>,
}

/// A cluster's shared settings: everything its nodes have in common.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cluster {
    pub customer: String,
    pub name: String,
    pub redis_url: Setting,
    pub postgres_url: Setting,
    pub shared_storage: PathBuf,
    pub load_balancing: LoadBalancing,
    pub rollout: Rollout,
    /// When rollouts may start (`customer_managed` only; its own, else its customer's); none:
    /// any time.
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// The customers on a shared cluster, each a tenant of its ETL servers; none elsewhere.
    pub tenants: Vec<TenantSpec>,
    /// Names of the cluster's nodes, in file order.
    pub nodes: Vec<String>,
}

/// A tenant of a shared cluster: a customer of ours whose flows and runs the cluster's ETL
/// servers keep apart from the others'.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantSpec {
    pub name: String,
    /// Its runs running at once, cluster-wide; none: the node's `max_running_flows`.
    pub max_running_flows: Option<u32>,
}

/// One node with every inherited setting resolved (node over cluster over customer over defaults).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Node {
    pub name: String,
    pub host: String,
    pub customer: String,
    pub cluster: String,
    pub mode: Mode,
    pub ssh: Ssh,
    pub node_root: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Share of jobs under `weighted` load balancing (≥ 1).
    pub weight: u32,
}

impl Cluster {
    /// How a release reaches this cluster's nodes when their customer runs in `mode`, for
    /// people: `over SSH by us`, `over SSH, in maintenance windows (sat,sun 02:00-05:00 UTC)`,
    /// `never: offline bundle`.
    pub fn push_route(&self, mode: Mode) -> String {
        match mode {
            Mode::Shared | Mode::Dedicated => "over SSH by us".to_owned(),
            Mode::CustomerManaged if self.maintenance_windows.is_empty() => {
                "over SSH, any time (no maintenance windows)".to_owned()
            }
            Mode::CustomerManaged => format!(
                "over SSH, in maintenance windows ({})",
                window::describe(&self.maintenance_windows)
            ),
            Mode::Airgapped => "never: offline bundle".to_owned(),
        }
    }
}

impl Node {
    /// Why the controller must never connect to this node, as the line that says it was
    /// skipped (after the node's name); `None` when it may.
    pub fn never_contacted(&self) -> Option<String> {
        (!self.mode.contacted()).then(|| {
            format!(
                "customer {} is {}: never contacted over SSH; give it an offline bundle (fleet installer build --offline)",
                self.customer, self.mode
            )
        })
    }

    /// `true` when `cluster` is this node's cluster.
    pub fn belongs_to(&self, cluster: &Cluster) -> bool {
        self.customer == cluster.customer && self.cluster == cluster.name
    }

    /// The node together with its cluster's settings, for printing and `--json`.
    pub fn with_cluster<'a>(&'a self, cluster: &'a Cluster) -> NodeView<'a> {
        NodeView {
            node: self,
            cluster,
        }
    }

    /// One line for humans; secrets show as references, URL passwords as `***`.
    ///
    /// `acme-prod-2 customer=acme cluster=prod host=10.0.1.12 ssh=etl@10.0.1.12:2222 identity=...`
    pub fn summary_line(&self, cluster: &Cluster) -> String {
        let mut line = format!(
            "{} customer={} cluster={} host={} ssh={}@{}",
            self.name,
            self.customer,
            self.cluster,
            self.host,
            self.ssh.user,
            host_port(&self.host, self.ssh.port),
        );
        if let Some(jump) = &self.ssh.jump {
            line.push_str(&format!(" jump={jump}"));
        }
        let identity = self
            .ssh
            .identity_file
            .as_ref()
            .map_or_else(|| "-".to_owned(), |p| p.display().to_string());
        let labels = if self.labels.is_empty() {
            "-".to_owned()
        } else {
            self.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        line.push_str(&format!(
            " identity={identity} known_hosts={} node_root={} mode={} push={:?} lb={}",
            self.ssh.known_hosts.display(),
            self.node_root.display(),
            self.mode,
            cluster.push_route(self.mode),
            cluster.load_balancing,
        ));
        if cluster.load_balancing == LoadBalancing::Weighted {
            line.push_str(&format!(" weight={}", self.weight));
        }
        line.push_str(&format!(
            " labels={labels} redis={} postgres={}",
            cluster.redis_url.masked(),
            cluster.postgres_url.masked()
        ));
        line
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A node and its cluster's settings; serializes as one flat object with secrets masked.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    pub node: &'a Node,
    pub cluster: &'a Cluster,
}

impl Serialize for NodeView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            #[serde(flatten)]
            node: &'a Node,
            redis_url: &'a Setting,
            postgres_url: &'a Setting,
            shared_storage: &'a PathBuf,
            load_balancing: LoadBalancing,
            rollout: &'a Rollout,
            maintenance_windows: &'a [MaintenanceWindow],
            push: String,
        }
        Flat {
            node: self.node,
            redis_url: &self.cluster.redis_url,
            postgres_url: &self.cluster.postgres_url,
            shared_storage: &self.cluster.shared_storage,
            load_balancing: self.cluster.load_balancing,
            rollout: &self.cluster.rollout,
            maintenance_windows: &self.cluster.maintenance_windows,
            push: self.cluster.push_route(self.node.mode),
        }
        .serialize(serializer)
    }
}

impl fmt::Display for NodeView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.node.summary_line(self.cluster))
    }
}
