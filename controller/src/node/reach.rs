//! Which selected nodes the controller may connect to: the one place a customer's mode
//! decides it. An airgapped customer's nodes are set aside before any connection, each with
//! the line that says why; the transport refuses them again (`ssh::Target::never_contacted`)
//! should any path reach it. Not the selection itself (`--limit`, the inventory's).

use std::borrow::Borrow;

use fleet_inventory::Node;
use serde::Serialize;

/// A selected node the command leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub node: String,
    pub why: String,
}

impl std::fmt::Display for Skipped {
    /// `node-x: skipped: customer acme is airgapped: never contacted over SSH; ...`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: skipped: {}", self.node, self.why)
    }
}

/// `nodes` split into those the controller may connect to (in their order) and those it never
/// does.
pub fn reachable<N: Borrow<Node>>(nodes: impl IntoIterator<Item = N>) -> (Vec<N>, Vec<Skipped>) {
    let mut reachable = Vec::new();
    let mut skipped = Vec::new();
    for n in nodes {
        match n.borrow().never_contacted() {
            Some(why) => skipped.push(Skipped {
                node: n.borrow().name.clone(),
                why,
            }),
            None => reachable.push(n),
        }
    }
    (reachable, skipped)
}

/// The error of a command whose every selected node was skipped: nothing was done.
pub fn all_skipped(skipped: &[Skipped]) -> anyhow::Error {
    anyhow::anyhow!(
        "nothing was done: every selected node ({}) is never contacted",
        skipped
            .iter()
            .map(|s| s.node.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Rollout target `name` of `inventory`, when the controller may connect to it; otherwise the
/// line that says why not (not in the inventory, or `skipped: ...`), for the node's row.
pub fn target<'i>(
    inventory: &'i fleet_inventory::Inventory,
    name: &str,
) -> Result<&'i Node, String> {
    let node = inventory
        .node(name)
        .ok_or_else(|| format!("not in the inventory {}", inventory.file().display()))?;
    match node.never_contacted() {
        Some(why) => Err(format!("skipped: {why}")),
        None => Ok(node),
    }
}
