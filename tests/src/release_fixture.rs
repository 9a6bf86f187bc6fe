//! Signed releases for tests: a root key and a release key with the trust root naming them,
//! release trees, and bundles built from them at a chosen time. Not the command line: tests
//! that exercise `fleet keys`, `fleet trust` and `fleet release` run the binary instead.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleet_release::{BuildOptions, Root, RootBody, SecretKey};

/// How long a release built here stays valid after it was created.
pub const RELEASE_VALIDITY: Duration = Duration::from_secs(86_400);

/// A root key, a release key, and the trust root (threshold 1 of each) that the root key
/// signed, naming both.
pub struct Signing {
    pub root_key: SecretKey,
    pub release_key: SecretKey,
    pub root: Root,
}

impl Signing {
    pub fn generate() -> Self {
        let root_key = SecretKey::generate().expect("a root key");
        let release_key = SecretKey::generate().expect("a release key");
        let body = RootBody::new(1, vec![root_key.public()], 1, vec![release_key.public()], 1)
            .expect("a root body with one key of each role");
        let mut root = Root::unsigned(body).expect("an unsigned root");
        root.sign(&root_key);
        Self {
            root_key,
            release_key,
            root,
        }
    }
}

/// Writes `dir/tree-<version>`, a release tree whose `bin/etl-server` (mode 0755) prints the
/// version, and returns its path. Writing it again is harmless.
pub fn release_tree(dir: &Path, version: &str) -> PathBuf {
    let tree = dir.join(format!("tree-{version}"));
    let server = tree.join("bin/etl-server");
    fs::create_dir_all(tree.join("bin")).expect("mkdir tree/bin");
    fs::write(&server, format!("#!/bin/sh\necho {version}\n")).expect("write bin/etl-server");
    fs::set_permissions(&server, fs::Permissions::from_mode(0o755)).expect("chmod bin/etl-server");
    tree
}

/// Builds release `version` of `tree` into `store`, signed by `key` as if at `created`, valid
/// for [`RELEASE_VALIDITY`] from then; returns the bundle's path.
pub fn build_release(
    version: &str,
    tree: &Path,
    key: &SecretKey,
    store: &Path,
    created: SystemTime,
) -> PathBuf {
    let (bundle, _) = fleet_release::build(&BuildOptions {
        expires_in: RELEASE_VALIDITY,
        now: created,
        ..BuildOptions::new(version.parse().expect("a semver version"), tree, key, store)
    })
    .expect("the release builds");
    bundle
}
