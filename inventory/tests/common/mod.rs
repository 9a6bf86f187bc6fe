//! Helpers shared by the integration tests: load text as an inventory and look at its problems.

#![allow(dead_code)]

use std::path::Path;

use fleet_inventory::{Inventory, Problem};

pub const LABEL: &str = "/inv/fleet.yaml";

pub fn load(text: &str) -> Inventory {
    match Inventory::from_str(text, Path::new(LABEL)) {
        Ok(inventory) => inventory,
        Err(err) => panic!("expected a valid inventory, got:\n{err}"),
    }
}

pub fn problems(text: &str) -> Vec<Problem> {
    match Inventory::from_str(text, Path::new(LABEL)) {
        Ok(_) => panic!("expected problems, the inventory was accepted:\n{text}"),
        Err(err) => err.problems().to_vec(),
    }
}

/// The only problem in `text`, as its display line.
pub fn one(text: &str) -> String {
    let all = problems(text);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one problem, got:\n{}",
        all.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    all[0].to_string()
}

/// A valid one-cluster inventory with `node_extra` spliced into the first node's flow map
/// and `cluster_extra` lines (indented 8 spaces) into the cluster.
pub fn base(cluster_extra: &str, node_extra: &str) -> String {
    format!(
        "\
defaults:
  ssh: {{ user: etl }}
customers:
  acme:
    mode: shared
    clusters:
      prod:
        redis_url: redis://10.0.0.5:6379/0
        postgres_url: env:PG
        shared_storage: /mnt/etl
{cluster_extra}        nodes:
          - {{ name: n1, host: 10.0.0.1{node_extra} }}
"
    )
}
