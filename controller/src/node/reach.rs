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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const INVENTORY: &str = "
defaults: { ssh: { user: etl } }
customers:
  acme:
    mode: dedicated
    clusters:
      prod:
        redis_url: redis://10.0.0.5:6379/0
        postgres_url: env:PG
        shared_storage: /mnt/etl
        nodes: [{ name: a1, host: 10.0.0.1 }, { name: a2, host: 10.0.0.2 }]
  vault:
    mode: airgapped
    clusters:
      main:
        redis_url: redis://10.0.0.5:6379/0
        postgres_url: env:PG
        shared_storage: /mnt/etl
        nodes: [{ name: v1, host: 10.0.1.1 }]
";

    #[test]
    fn airgapped_nodes_are_set_aside_with_why_and_rollout_targets_too() {
        let inventory =
            fleet_inventory::Inventory::from_str(INVENTORY, Path::new("i.yaml")).expect("valid");
        let (reachable, skipped) = reachable(inventory.nodes());
        let names: Vec<&str> = reachable.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a1", "a2"]);
        assert_eq!(
            skipped.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "v1: skipped: customer vault is airgapped: never contacted over SSH; give it an offline bundle (fleet installer build --offline)"
            ]
        );
        assert_eq!(
            all_skipped(&skipped).to_string(),
            "nothing was done: every selected node (v1) is never contacted"
        );
        assert_eq!(target(&inventory, "a2").map(|n| n.name.as_str()), Ok("a2"));
        let refused = target(&inventory, "v1").expect_err("airgapped");
        assert!(
            refused.starts_with("skipped: customer vault is airgapped"),
            "{refused}"
        );
        assert!(
            target(&inventory, "gone")
                .expect_err("unknown")
                .starts_with("not in the inventory ")
        );
        // The transport's own refusal travels with the target.
        let v1 = inventory.node("v1").expect("v1");
        assert!(crate::ssh::Target::of(v1).never_contacted.is_some());
        assert!(
            crate::ssh::Target::of(reachable[0])
                .never_contacted
                .is_none()
        );
    }
}
