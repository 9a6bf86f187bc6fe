//! Signed releases for tests: a root key and a release key with the trust root naming them,
//! release trees, bundles built from them at a chosen time, releases of the project's own
//! `etl-server` and `fleet-agent` (assembled as `fleet release build --bin-dir` does), and
//! bundles assembled by hand around any manifest and payload (hostile content, validly signed). Not the command line:
//! tests that exercise `fleet keys`, `fleet trust` and `fleet release` run the binary instead.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleet_release::bundle::{Header, MANIFEST_DOMAIN};
use fleet_release::manifest::FORMAT;
use fleet_release::signatures::Signature;
use fleet_release::{BuildOptions, Entry, Manifest, Payload, Root, RootBody, SecretKey, Timestamp};
use sha2::{Digest, Sha256};

use crate::HarnessError;

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

/// The directory holding the project's own binaries for this run: the running test
/// executable's (`target/debug/deps/..`, i.e. `target/debug`, wherever `CARGO_TARGET_DIR`
/// put it), checked to hold `etl-server` and `fleet-agent`. `cargo test --workspace` builds
/// both; a narrower `cargo test -p ...` may not, and then this says how to build them.
pub fn own_binaries() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(HarnessError::io("locating the test executable"))?;
    let mut dir = exe.parent().unwrap_or(Path::new(".")).to_owned();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let missing: Vec<String> = fleet_release::tree::BINARIES
        .iter()
        .filter_map(|rel| Path::new(rel).file_name())
        .filter(|name| !dir.join(name).is_file())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    if missing.is_empty() {
        Ok(dir)
    } else {
        Err(HarnessError::BinariesMissing { dir, missing })
    }
}

/// Builds release `version` of the project's own binaries ([`own_binaries`]: `bin/etl-server`
/// and `bin/fleet-agent`, through `fleet_release::assemble`, the function behind
/// `fleet release build --bin-dir`) into `store`, signed by `key` as if at `created`, valid for
/// [`RELEASE_VALIDITY`] from then; returns the bundle's path. Panics, saying how to build
/// them, when the binaries are missing.
pub fn build_own_release(
    version: &str,
    key: &SecretKey,
    store: &Path,
    created: SystemTime,
) -> PathBuf {
    let bin_dir = own_binaries().unwrap_or_else(|e| panic!("{e}"));
    let tree = fleet_release::assemble(&bin_dir, store)
        .unwrap_or_else(|e| panic!("assembling release {version}: {e}"));
    build_release(version, tree.path(), key, store, created)
}

/// The lowercase hex sha256 of `bytes`, as manifests write it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A manifest for release `version` of this machine's platform, created now and valid for
/// [`RELEASE_VALIDITY`], listing `entries` as given and describing `payload` (its size and
/// sha256), so that whatever the payload holds, only the archive checks can refuse it.
pub fn hand_manifest(version: &str, counter: u64, entries: Vec<Entry>, payload: &[u8]) -> Manifest {
    let created = Timestamp::now();
    Manifest {
        format: FORMAT,
        version: version.parse().expect("a semver version"),
        counter,
        channel: "stable".into(),
        created,
        expires: created.plus(RELEASE_VALIDITY),
        platform: fleet_release::bundle::host_platform(),
        min_agent_version: "0.1.0".parse().expect("a semver version"),
        payload: Payload {
            size: payload.len() as u64,
            sha256: sha256_hex(payload),
        },
        entries,
    }
}

/// The bytes of a bundle of `payload` under `manifest`, signed by `key` (the manifest is used
/// as given: it may break any rule, and the payload may be any bytes).
pub fn signed_bundle(key: &SecretKey, manifest: &Manifest, payload: &[u8]) -> Vec<u8> {
    let manifest_bytes = serde_json::to_vec(manifest).expect("a manifest serializes");
    let header = Header {
        signatures: vec![Signature::create(key, MANIFEST_DOMAIN, &manifest_bytes)],
        manifest_bytes,
    };
    let mut bytes = Vec::new();
    header.write_to(&mut bytes).expect("writing to memory");
    bytes.extend_from_slice(payload);
    bytes
}
