//! Fixtures shared by the agent's tests: a node root (the layout made, a fresh trust root
//! pinned) in a temporary folder of its own. What each test then stages or runs is its own.
#![allow(dead_code)]

use std::fs;

use fleet_agent::Layout;
use fleet_tests::Signing;

/// A node root under `dir/node`, pinning `signing`'s root.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub signing: Signing,
    pub layout: Layout,
}

pub fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let signing = Signing::generate();
    let layout = Layout::new(dir.path().join("node"));
    layout.ensure().expect("layout");
    fs::write(layout.trust_root(), signing.root.to_json()).expect("trust");
    Node {
        dir,
        signing,
        layout,
    }
}
