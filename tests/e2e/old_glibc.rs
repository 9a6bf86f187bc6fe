//! The node binaries run on old systems: `scripts/release-tree.sh` (cargo zigbuild for
//! x86_64-unknown-linux-gnu.2.17) builds a release tree whose `etl-server` and `fleet-agent`
//! need no glibc symbol newer than 2.17 (CentOS 7, Amazon Linux 1), read with `objdump -T`;
//! they run here, and `fleet release build --from` takes the tree.

use std::path::Path;
use std::process::Command;

use crate::support::{Tree, release_build, repo, trust_root};

/// The newest glibc the binaries may need.
const CEILING: (u32, u32) = (2, 17);

/// Every `GLIBC_x.y[.z]` version a binary's dynamic symbols need, as (x, y).
fn glibc_versions(binary: &Path) -> Vec<(u32, u32, String)> {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .expect("objdump (package binutils)");
    assert!(
        out.status.success(),
        "objdump -T {}: {out:?}",
        binary.display()
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut found = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        if let Some(v) = word.strip_prefix("GLIBC_") {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            found.push((major, minor, word.to_owned()));
        }
    }
    found
}

#[test]
fn the_release_tree_script_builds_node_binaries_for_glibc_2_17() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    // The same target folder as this test's build: cargo rebuilds only what changed.
    let target = std::env::current_exe()
        .expect("test executable")
        .ancestors()
        .nth(3)
        .expect("target/debug/deps/..")
        .to_owned();
    let out = Command::new(repo().join("scripts/release-tree.sh"))
        .arg(&tree)
        .args(["--profile", "dev"])
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("scripts/release-tree.sh runs");
    assert!(
        out.status.success(),
        "scripts/release-tree.sh: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for bin in ["etl-server", "fleet-agent"] {
        let path = tree.join("bin").join(bin);
        let versions = glibc_versions(&path);
        assert!(
            !versions.is_empty(),
            "{bin}: no GLIBC_ version at all: not a glibc binary?"
        );
        let newest = versions.iter().max().expect("some");
        assert!(
            (newest.0, newest.1) <= CEILING,
            "{bin} needs {}, newer than GLIBC_{}.{}",
            newest.2,
            CEILING.0,
            CEILING.1
        );
        let ran = Command::new(&path)
            .args(if bin == "fleet-agent" {
                &["run", "--help"][..]
            } else {
                &["--help"][..]
            })
            .output()
            .expect("runs");
        assert!(ran.status.success(), "{bin} --help: {ran:?}");
    }
    // The check can fail: this machine's own build needs a newer glibc.
    let own = fleet_tests::own_binaries().unwrap_or_else(|e| panic!("{e}"));
    let host = glibc_versions(&own.join("fleet-agent"));
    assert!(
        host.iter().any(|v| (v.0, v.1) > CEILING),
        "the host build needs no glibc above 2.17 either: the check proves nothing"
    );
    // And it is a release tree.
    let keys = dir.path().join("keys");
    trust_root(&keys, &dir.path().join("root.json"));
    release_build(
        "1.0.0",
        Tree::From(&tree),
        &keys.join("release.key"),
        &dir.path().join("store"),
    );
}
