//! Signed releases for tests: a root key, a release key and an order key with the trust root
//! naming them, rollout orders and controls signed by any key,
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
use fleet_release::order::{Control, Order, SignedControl, SignedOrder};
use fleet_release::signatures::Signature;
use fleet_release::{BuildOptions, Entry, Manifest, Payload, Root, RootBody, SecretKey, Timestamp};
use sha2::{Digest, Sha256};

use crate::HarnessError;

/// How long a release built here stays valid after it was created.
pub const RELEASE_VALIDITY: Duration = Duration::from_secs(86_400);

/// A root key, a release key, an order key, and the trust root (threshold 1 of each) that
/// the root key signed, naming all three.
pub struct Signing {
    pub root_key: SecretKey,
    pub release_key: SecretKey,
    pub order_key: SecretKey,
    pub root: Root,
}

impl Signing {
    pub fn generate() -> Self {
        let root_key = SecretKey::generate().expect("a root key");
        let release_key = SecretKey::generate().expect("a release key");
        let order_key = SecretKey::generate().expect("an order key");
        let body = RootBody::new(1, vec![root_key.public()], 1, vec![release_key.public()], 1)
            .and_then(|body| body.with_order_keys(vec![order_key.public()], 1))
            .expect("a root body with one key of each role");
        let mut root = Root::unsigned(body).expect("an unsigned root");
        root.sign(&root_key);
        Self {
            root_key,
            release_key,
            order_key,
            root,
        }
    }

    /// `order` signed by the order key, as the node reads it.
    pub fn order(&self, order: Order) -> Vec<u8> {
        sign_order(order, &self.order_key)
    }

    /// `control` signed by the order key, as the node reads it.
    pub fn control(&self, control: Control) -> Vec<u8> {
        let mut signed = SignedControl::unsigned(control).expect("a control within the rules");
        signed.sign(&self.order_key);
        signed.to_json().into_bytes()
    }
}

/// `order` signed by `key` (whatever role it holds), as the node reads it.
pub fn sign_order(order: Order, key: &SecretKey) -> Vec<u8> {
    let mut signed = SignedOrder::unsigned(order).expect("an order within the rules");
    signed.sign(key);
    signed.to_json().into_bytes()
}

/// The digest an order names the release of `bundle` by: the sha256 of its exact signed
/// manifest bytes.
pub fn bundle_manifest_digest(bundle: &Path) -> String {
    let mut file = fs::File::open(bundle).expect("open the bundle");
    let header = fleet_release::bundle::read_header(&mut file).expect("a bundle header");
    fleet_release::bundle::manifest_digest(&header.manifest_bytes)
}

/// An order of rollout `rollout` for cluster `acme/prod`, moving `targets` to `version` (with
/// manifest digest `digest`) under sequence `sequence`, created now and valid ten minutes.
pub fn test_order(
    rollout: &str,
    version: &str,
    digest: &str,
    targets: &[&str],
    sequence: u64,
) -> Order {
    let created = Timestamp::now();
    Order {
        format: fleet_release::order::FORMAT,
        rollout: rollout.into(),
        cluster: "acme/prod".into(),
        version: version.parse().expect("a semver version"),
        manifest_sha256: digest.into(),
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        canary: Vec::new(),
        max_unavailable: 1,
        min_healthy_secs: 5,
        health_timeout_secs: 60,
        smoke_flow: None,
        members: Vec::new(),
        rollback_of: None,
        deadline: created.plus(Duration::from_secs(3600)),
        sequence,
        created,
        expires: created.plus(Duration::from_secs(600)),
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
