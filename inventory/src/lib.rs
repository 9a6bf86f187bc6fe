//! The fleet's YAML inventory: loads and validates it (every problem, each with file:line:column
//! and a hint), resolves inherited settings per node, and selects targets (`--limit`); it does
//! not connect anywhere, and reads secrets only when asked to resolve one. Its positioned YAML
//! tree (`yaml`) and field readers (`fields`) also read the server's flow definitions.
//!
//! ```no_run
//! use std::path::Path;
//! let inventory = fleet_inventory::Inventory::load(Path::new("examples/acme.yaml"))?;
//! for node in inventory.select("acme/prod,!acme-prod-2").map_err(|e| e.to_string())? {
//!     if let Some(cluster) = inventory.cluster_of(node) {
//!         println!("{}", node.summary_line(cluster));
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod fields;
mod model;
mod problem;
mod schema;
mod secret;
mod select;
mod window;
pub mod yaml;

use std::path::{Path, PathBuf};

pub use fields::Fields;
pub use model::{
    Canary, Cluster, Customer, Jump, LoadBalancing, Mode, Node, NodeView, Rollout, Ssh, TenantSpec,
};
pub use problem::{LoadError, Pos, Problem, Problems, suggest, typo_hint};
pub use schema::{
    DEFAULT_AUTHORIZED_KEYS, DEFAULT_NODE_ROOT, FLOW_NAME_HINT, NAME_HINT, TENANT_NAME_HINT,
    is_flow_name, is_name, is_tenant_name,
};
pub use secret::{Secret, SecretError, SecretRef, Setting, mask_url_password};
pub use select::{SelectError, glob_match};
pub use window::{MaintenanceWindow, Opening, Weekday, describe as describe_windows};
pub use yaml::{MAX_DEPTH, MAX_NODES};

/// A validated inventory with every node's settings resolved.
#[derive(Debug, Clone)]
pub struct Inventory {
    file: PathBuf,
    customers: Vec<Customer>,
    clusters: Vec<Cluster>,
    nodes: Vec<Node>,
}

impl Inventory {
    /// Reads and validates the inventory at `path`. Relative paths in it (identity files,
    /// known_hosts, `file:` secrets) are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let mut problems = Problems::new(path.display().to_string());
        let bytes = match read_capped(path, MAX_FILE_BYTES) {
            Ok(bytes) => bytes,
            Err(err) => {
                problems.add_file(format!("cannot read: {err}"));
                return Err(problems.into_error());
            }
        };
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(err) => {
                problems.add(
                    utf8_error_pos(&bytes, err.valid_up_to()),
                    "",
                    "not valid UTF-8",
                );
                return Err(problems.into_error());
            }
        };
        Self::check(text, path, problems)
    }

    /// Validates inventory text as if read from `file_label` (used in messages and as the base
    /// for relative paths). The same validation as [`Inventory::load`].
    pub fn from_str(text: &str, file_label: &Path) -> Result<Self, LoadError> {
        let problems = Problems::new(file_label.display().to_string());
        Self::check(text, file_label, problems)
    }

    fn check(text: &str, file: &Path, mut problems: Problems) -> Result<Self, LoadError> {
        let base_dir = std::path::absolute(file)
            .ok()
            .and_then(|abs| abs.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let root = yaml::parse(text, &mut problems);
        if !problems.is_empty() && root.is_none() {
            return Err(problems.into_error());
        }
        let resolved = schema::check(root.as_ref(), &base_dir, &mut problems);
        if !problems.is_empty() {
            return Err(problems.into_error());
        }
        Ok(Self {
            file: file.to_path_buf(),
            customers: resolved.customers,
            clusters: resolved.clusters,
            nodes: resolved.nodes,
        })
    }

    /// The file this inventory was read from (or the label given to [`Inventory::from_str`]).
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Every node, in file order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every cluster, in file order.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// Every customer, in file order.
    pub fn customers(&self) -> &[Customer] {
        &self.customers
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn cluster(&self, customer: &str, name: &str) -> Option<&Cluster> {
        self.clusters
            .iter()
            .find(|c| c.customer == customer && c.name == name)
    }

    /// The cluster a node belongs to (always `Some` for a node of this inventory).
    pub fn cluster_of(&self, node: &Node) -> Option<&Cluster> {
        self.cluster(&node.customer, &node.cluster)
    }

    /// The nodes of a cluster, in file order.
    pub fn nodes_of<'a>(&'a self, cluster: &'a Cluster) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.iter().filter(move |n| n.belongs_to(cluster))
    }

    /// Every node with its cluster's settings, in file order (for `inventory list --json`).
    pub fn views(&self) -> Vec<NodeView<'_>> {
        self.nodes
            .iter()
            .filter_map(|n| self.cluster_of(n).map(|c| n.with_cluster(c)))
            .collect()
    }
}

/// 1-based line and column (in characters) of the byte at `offset`, which follows valid UTF-8.
fn utf8_error_pos(bytes: &[u8], offset: usize) -> Pos {
    let valid = std::str::from_utf8(&bytes[..offset.min(bytes.len())]).unwrap_or_default();
    let line = valid.matches('\n').count() + 1;
    let line_start = valid.rfind('\n').map_or(0, |i| i + 1);
    let column = valid[line_start..].chars().count() + 1;
    Pos::new(line, column)
}

/// Largest inventory file read (16 MiB): an inventory is text an operator writes.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads a whole file, but never more than `cap` bytes, whatever the file claims to be (a
/// device or a FIFO has no honest size).
pub(crate) fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(std::io::Error::other(format!("larger than {cap} bytes")));
    }
    Ok(bytes)
}
