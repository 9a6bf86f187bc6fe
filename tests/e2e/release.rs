//! Keys, trust roots and release bundles through the `fleet` command line.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Run, run};

/// A temporary workspace with a root key, a release key and a root document.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Self {
        let keys = Self {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for name in ["root", "release"] {
            run(&[
                "keys",
                "generate",
                "--out",
                keys.s("keys").as_str(),
                "--name",
                name,
            ])
            .ok();
        }
        run(&[
            "trust",
            "init",
            "--root-key",
            &keys.s("keys/root.pub"),
            "--release-key",
            &keys.s("keys/release.pub"),
            "--sign",
            &keys.s("keys/root.key"),
            "--out",
            &keys.s("root.json"),
        ])
        .ok();
        keys
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.p(rel).to_string_lossy().into_owned()
    }

    fn tree(&self, name: &str, files: &[(&str, &[u8])]) -> String {
        for (path, bytes) in files {
            let full = self.p(name).join(path);
            fs::create_dir_all(full.parent().expect("has parent")).expect("mkdir");
            fs::write(full, bytes).expect("write");
        }
        self.s(name)
    }

    fn build(&self, version: &str, from: &str) -> Run {
        self.build_with(version, from, "keys/release.key", "store")
    }

    /// Builds with the key and into the store given relative to the workspace.
    fn build_with(&self, version: &str, from: &str, key: &str, store: &str) -> Run {
        run(&[
            "release",
            "build",
            "--version",
            version,
            "--from",
            from,
            "--key",
            &self.s(key),
            "--out",
            &self.s(store),
            "--json",
        ])
    }

    fn verify(&self, bundle: &str) -> Run {
        run(&["release", "verify", bundle, "--trust", &self.s("root.json")])
    }
}

#[test]
fn keys_are_private_and_never_overwritten() {
    let k = Keys::new();
    let mode = fs::metadata(k.p("keys/root.key"))
        .expect("key exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = run(&["keys", "generate", "--out", &k.s("keys"), "--name", "root"]).fails();
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    // A private key that others can read is refused, as OpenSSH does.
    fs::set_permissions(k.p("keys/release.key"), fs::Permissions::from_mode(0o644)).expect("chmod");
    let from = k.tree("tree", &[("bin/etl-server", b"#!/bin/sh\n")]);
    let refused = k.build("1.0.0", &from).fails();
    assert!(refused.stderr.contains("chmod 600"), "{}", refused.stderr);
}

#[test]
fn build_verify_list_round_trip() {
    let k = Keys::new();
    let from = k.tree(
        "tree",
        &[
            ("bin/etl-server", b"#!/bin/sh\necho etl\n"),
            ("share/flows.yaml", b"x: 1\n"),
        ],
    );
    let built = k.build("1.0.0", &from).ok().json();
    assert_eq!(built["counter"], 1);
    assert_eq!(built["files"], 2);
    let bundle = built["bundle"].as_str().expect("bundle path").to_owned();
    let verified = k.verify(&bundle).ok();
    assert!(
        verified.stdout.contains("ok: release 1.0.0"),
        "{}",
        verified.stdout
    );

    k.build("1.1.0", &from).ok();
    let listed = run(&["release", "list", "--store", &k.s("store"), "--json"])
        .ok()
        .json();
    let versions: Vec<_> = listed["releases"]
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["version"].clone())
        .collect();
    assert_eq!(versions, ["1.0.0", "1.1.0"]);
    let text = run(&["release", "list", "--store", &k.s("store")]).ok();
    assert!(
        text.stdout
            .lines()
            .nth(2)
            .is_some_and(|l| l.starts_with("1.1.0")),
        "{}",
        text.stdout
    );

    let again = k.build("1.1.0", &from).fails();
    assert!(
        again.stderr.contains("already in the store"),
        "{}",
        again.stderr
    );
}

#[test]
fn verify_refuses_tampering_with_a_clear_message() {
    let k = Keys::new();
    let from = k.tree("tree", &[("bin/etl-server", b"#!/bin/sh\necho etl\n")]);
    write_noise(&k.p("tree/data.bin"), 1 << 20);
    let bundle = k.build("1.0.0", &from).ok().json()["bundle"]
        .as_str()
        .expect("path")
        .to_owned();

    // Swap the payload for one where a single byte of a file differs (incompressible data, so
    // the payload keeps its size) under the original signed manifest.
    let other_tree = k.tree("other", &[("bin/etl-server", b"#!/bin/sh\necho etl\n")]);
    let mut data = fs::read(k.p("tree/data.bin")).expect("read");
    data[1000] ^= 1;
    fs::write(k.p("other/data.bin"), data).expect("write");
    let other = k
        .build_with("9.9.9", &other_tree, "keys/release.key", "other-store")
        .ok()
        .json()["bundle"]
        .as_str()
        .expect("path")
        .to_owned();
    let spliced = k.p("spliced.bundle");
    let (original, replacement) = (
        fs::read(&bundle).expect("read"),
        fs::read(&other).expect("read"),
    );
    let (head, _) = split_bundle(&original);
    let (_, payload) = split_bundle(&replacement);
    fs::write(&spliced, [head, payload].concat()).expect("write");
    let refused = k.verify(&spliced.to_string_lossy()).fails();
    assert!(
        refused
            .stderr
            .contains("refused: payload: sha256 differs from the manifest"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        refused.stderr.lines().count(),
        1,
        "one clear line: {}",
        refused.stderr
    );

    // A bundle signed by a key the root does not name.
    run(&[
        "keys",
        "generate",
        "--out",
        &k.s("keys"),
        "--name",
        "stranger",
    ])
    .ok();
    let foreign = k
        .build_with("2.0.0", &from, "keys/stranger.key", "foreign")
        .ok()
        .json()["bundle"]
        .as_str()
        .expect("path")
        .to_owned();
    let refused = k.verify(&foreign).fails();
    assert!(refused.stderr.contains("unknown key"), "{}", refused.stderr);

    // JSON output for scripts carries the error too.
    let json = run(&[
        "release",
        "verify",
        &foreign,
        "--trust",
        &k.s("root.json"),
        "--json",
    ])
    .fails()
    .json();
    assert_eq!(json["ok"], false);
    assert!(
        json["error"]
            .as_str()
            .expect("error text")
            .contains("unknown key")
    );
}

/// Splits a bundle file into its header (magic, manifest, signatures) and its payload.
fn split_bundle(bytes: &[u8]) -> (&[u8], &[u8]) {
    let block =
        |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    let manifest_end = 16 + 4 + block(16);
    let header_end = manifest_end + 4 + block(manifest_end);
    bytes.split_at(header_end)
}

#[test]
fn trust_rotation_through_the_command_line() {
    let k = Keys::new();
    for name in ["root2", "root3"] {
        run(&["keys", "generate", "--out", &k.s("keys"), "--name", name]).ok();
    }
    // v2 hands the root to root2 + root3 (2 of 2); signed only by the new keys it is not valid.
    let partial = run(&[
        "trust",
        "rotate",
        "--current",
        &k.s("root.json"),
        "--root-key",
        &k.s("keys/root2.pub"),
        "--root-key",
        &k.s("keys/root3.pub"),
        "--root-threshold",
        "2",
        "--sign",
        &k.s("keys/root2.key"),
        "--sign",
        &k.s("keys/root3.key"),
        "--out",
        &k.s("root-v2.json"),
    ])
    .ok();
    assert!(
        partial.stdout.contains("not yet valid"),
        "{}",
        partial.stdout
    );
    let refused = run(&[
        "trust",
        "verify",
        &k.s("root-v2.json"),
        "--previous",
        &k.s("root.json"),
    ])
    .fails();
    assert!(
        refused.stderr.contains("by the current root keys"),
        "{}",
        refused.stderr
    );

    // The old root key signs too: now the rotation is accepted.
    run(&[
        "trust",
        "sign",
        &k.s("root-v2.json"),
        "--key",
        &k.s("keys/root.key"),
    ])
    .ok();
    run(&[
        "trust",
        "verify",
        &k.s("root-v2.json"),
        "--previous",
        &k.s("root.json"),
    ])
    .ok();
    run(&["trust", "verify", &k.s("root-v2.json")]).ok();

    // Skipping a version is refused even with every signature.
    let v3 = run(&[
        "trust",
        "rotate",
        "--current",
        &k.s("root-v2.json"),
        "--sign",
        &k.s("keys/root2.key"),
        "--sign",
        &k.s("keys/root3.key"),
        "--out",
        &k.s("root-v3.json"),
    ])
    .ok();
    assert!(v3.stdout.contains("complete"), "{}", v3.stdout);
    let skipped = run(&[
        "trust",
        "verify",
        &k.s("root-v3.json"),
        "--previous",
        &k.s("root.json"),
    ])
    .fails();
    assert!(
        skipped.stderr.contains("must go to version 2"),
        "{}",
        skipped.stderr
    );

    // Outputs are never overwritten.
    let again = run(&[
        "trust",
        "init",
        "--root-key",
        &k.s("keys/root.pub"),
        "--release-key",
        &k.s("keys/release.pub"),
        "--out",
        &k.s("root.json"),
    ])
    .fails();
    assert!(
        again.stderr.contains("never overwritten"),
        "{}",
        again.stderr
    );
}

/// Order keys: a third role in the root, kept by a rotation unless dropped, never shared with
/// another role.
#[test]
fn order_keys_through_the_command_line() {
    let k = Keys::new();
    run(&["keys", "generate", "--out", &k.s("keys"), "--name", "order"]).ok();
    let order = fleet_release::PublicKey::load(&k.p("keys/order.pub")).expect("order key");
    let init = run(&[
        "trust",
        "init",
        "--root-key",
        &k.s("keys/root.pub"),
        "--release-key",
        &k.s("keys/release.pub"),
        "--order-key",
        &k.s("keys/order.pub"),
        "--sign",
        &k.s("keys/root.key"),
        "--out",
        &k.s("root-orders.json"),
    ])
    .ok();
    assert!(init.stdout.contains("1 of 1 order keys"), "{}", init.stdout);
    let root = fleet_release::Root::load(&k.p("root-orders.json")).expect("a valid root");
    assert_eq!(
        (root.body().order_keys.clone(), root.body().order_threshold),
        (vec![order], 1)
    );
    // A root without order keys is written as before: no order fields at all.
    let plain = fs::read_to_string(k.p("root.json")).expect("root.json");
    assert!(!plain.contains("order_"), "{plain}");

    let two_roles = run(&[
        "trust",
        "init",
        "--root-key",
        &k.s("keys/root.pub"),
        "--release-key",
        &k.s("keys/release.pub"),
        "--order-key",
        &k.s("keys/release.pub"),
        "--out",
        &k.s("root-bad.json"),
    ])
    .fails();
    assert!(
        two_roles
            .stderr
            .contains("is both a release key and an order key"),
        "{}",
        two_roles.stderr
    );

    // A rotation keeps the order keys unless told to drop them.
    run(&[
        "trust",
        "rotate",
        "--current",
        &k.s("root-orders.json"),
        "--sign",
        &k.s("keys/root.key"),
        "--out",
        &k.s("root-orders-v2.json"),
    ])
    .ok();
    let v2 = fleet_release::Root::load(&k.p("root-orders-v2.json")).expect("v2");
    assert_eq!(v2.body().order_keys, vec![order]);
    run(&[
        "trust",
        "rotate",
        "--current",
        &k.s("root-orders-v2.json"),
        "--no-order-keys",
        "--sign",
        &k.s("keys/root.key"),
        "--out",
        &k.s("root-orders-v3.json"),
    ])
    .ok();
    let v3 = fleet_release::Root::load(&k.p("root-orders-v3.json")).expect("v3");
    assert!(v3.body().order_keys.is_empty());
    assert_eq!(v3.body().order_threshold, 0);
}

#[test]
fn expired_release_is_refused() {
    use std::time::{Duration, SystemTime};
    let k = Keys::new();
    let from = k.tree("tree", &[("bin/etl-server", b"#!/bin/sh\n")]);
    let key = fleet_release::SecretKey::load(&k.p("keys/release.key")).expect("key");
    let bundle = fleet_tests::build_release(
        "1.0.0",
        Path::new(&from),
        &key,
        &k.p("store"),
        SystemTime::now() - Duration::from_secs(3 * 86_400),
    );
    let refused = k.verify(&bundle.to_string_lossy()).fails();
    assert!(refused.stderr.contains("expired at"), "{}", refused.stderr);
}

/// A 1 GiB release verifies in fixed memory. Measured as the peak resident set size that
/// GNU time reports for the `fleet release verify` process, compared with a small bundle.
#[test]
fn one_gib_bundle_verifies_in_flat_memory() {
    let k = Keys::new();
    let small = k.tree("small", &[("bin/etl-server", b"#!/bin/sh\n")]);
    write_noise(&k.p("small/data.bin"), 4 << 20);
    let big = k.tree("big", &[("bin/etl-server", b"#!/bin/sh\n")]);
    for i in 0..4 {
        write_noise(&k.p(&format!("big/data/part-{i}.bin")), 256 << 20);
    }
    let small_bundle = k.build("1.0.0", &small).ok().json()["bundle"]
        .as_str()
        .expect("path")
        .to_owned();
    let big_bundle = k.build("2.0.0", &big).ok().json()["bundle"]
        .as_str()
        .expect("path")
        .to_owned();
    assert!(fs::metadata(&big_bundle).expect("bundle").len() > 1 << 30);

    let small_rss = peak_rss_kib(&small_bundle, &k.s("root.json"));
    let big_rss = peak_rss_kib(&big_bundle, &k.s("root.json"));
    eprintln!(
        "peak RSS of `fleet release verify`: 4 MiB bundle {small_rss} KiB, 1 GiB bundle {big_rss} KiB"
    );
    assert!(big_rss < 64 * 1024, "1 GiB verify used {big_rss} KiB");
    assert!(
        big_rss < small_rss + 16 * 1024,
        "memory grew with size: {small_rss} KiB -> {big_rss} KiB"
    );
}

fn peak_rss_kib(bundle: &str, root: &str) -> u64 {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.exists(),
        "GNU time is missing: install it with `apt-get install -y time` (.ci/run does)"
    );
    let out = Command::new(time)
        .args([
            "-f",
            "%M",
            env!("CARGO_BIN_EXE_fleet"),
            "release",
            "verify",
            bundle,
            "--trust",
            root,
        ])
        .output()
        .expect("runs");
    let run = Run::from(out).ok();
    run.stderr
        .trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("GNU time prints the peak RSS in KiB")
}

/// Writes `len` bytes that do not compress (xorshift), quickly and without holding them.
fn write_noise(path: &Path, len: usize) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let mut file = std::io::BufWriter::new(fs::File::create(path).expect("create"));
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ len as u64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..len / chunk.len() {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk).expect("write");
    }
    file.flush().expect("flush");
}

#[test]
fn list_shows_what_it_can_and_names_what_it_cannot() {
    let k = Keys::new();
    let from = k.tree("tree", &[("bin/etl-server", b"#!/bin/sh\n")]);
    k.build("1.0.0", &from).ok();
    fs::write(k.p("store/0.9.0.bundle"), b"not a bundle").expect("write");
    let out = run(&["release", "list", "--store", &k.s("store")]).fails();
    assert!(
        out.stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("1.0.0")),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("0.9.0.bundle: not a fleet bundle"),
        "{}",
        out.stderr
    );
    let json = run(&["release", "list", "--store", &k.s("store"), "--json"])
        .fails()
        .json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["releases"].as_array().expect("releases").len(), 1);
    // Building refuses rather than guess the next counter past a bundle it cannot read.
    let refused = k.build("1.1.0", &from).fails();
    assert!(
        refused.stderr.contains("0.9.0.bundle"),
        "{}",
        refused.stderr
    );
}

#[test]
fn signing_a_root_keeps_its_mode() {
    let k = Keys::new();
    fs::set_permissions(k.p("root.json"), fs::Permissions::from_mode(0o644)).expect("chmod");
    run(&[
        "trust",
        "sign",
        &k.s("root.json"),
        "--key",
        &k.s("keys/release.key"),
    ])
    .ok();
    let mode = fs::metadata(k.p("root.json"))
        .expect("root")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // The extra signature by a non-root key does not count, and does not break the root.
    run(&["trust", "verify", &k.s("root.json")]).ok();
}

#[test]
fn endless_key_files_are_refused_without_reading_them_all() {
    let k = Keys::new();
    let from = k.tree("tree", &[("bin/etl-server", b"#!/bin/sh\n")]);
    let out = run(&["release", "verify", &from, "--trust", "/dev/zero"]).fails();
    assert!(
        out.stderr.contains("root document is larger than its cap"),
        "{}",
        out.stderr
    );
    let out = run(&[
        "trust",
        "init",
        "--root-key",
        "/dev/zero",
        "--release-key",
        &k.s("keys/release.pub"),
        "--out",
        &k.s("x.json"),
    ])
    .fails();
    assert!(
        out.stderr.contains("key file is larger than its cap"),
        "{}",
        out.stderr
    );
}

#[test]
fn errors_are_one_line_naming_the_file_once() {
    let out = run(&["release", "list", "--store", "/nonexistent/store"]).fails();
    assert_eq!(
        out.stderr,
        "error: release store: /nonexistent/store: No such file or directory (os error 2)\n"
    );
    let out = run(&["trust", "verify", "/dev/null"]).fails();
    assert_eq!(
        out.stderr,
        "error: /dev/null: bad root document: EOF while parsing a value at line 1 column 0\n"
    );
}

/// The manifest of the bundle at `path`, as the store lists it.
fn manifest_of(path: &str) -> fleet_release::Manifest {
    fleet_release::list_store(Path::new(path).parent().expect("in a store"))
        .expect("the store lists")
        .into_iter()
        .map(|r| r.expect("a readable bundle"))
        .find(|r| r.path == Path::new(path))
        .expect("the bundle is listed")
        .manifest
}

#[test]
fn a_release_of_the_project_binaries_is_assembled_from_bin_dir() {
    use fleet_release::Entry;

    let k = Keys::new();
    let bin_dir = fleet_tests::own_binaries().unwrap_or_else(|e| panic!("{e}"));
    let built = run(&[
        "release",
        "build",
        "--version",
        "1.0.0",
        "--bin-dir",
        &bin_dir.to_string_lossy(),
        "--key",
        &k.s("keys/release.key"),
        "--out",
        &k.s("store"),
        "--json",
    ])
    .ok()
    .json();
    let bundle = built["bundle"].as_str().expect("bundle path").to_owned();
    k.verify(&bundle).ok();
    let file = |name: &str| {
        let bytes = fs::read(bin_dir.join(name)).expect("the binary");
        Entry::File {
            path: format!("bin/{name}"),
            mode: 0o755,
            size: bytes.len() as u64,
            sha256: fleet_tests::sha256_hex(&bytes),
        }
    };
    let expected = vec![
        Entry::Dir {
            path: "bin".into(),
            mode: 0o755,
        },
        file("etl-server"),
        file("fleet-agent"),
    ];
    assert_eq!(manifest_of(&bundle).entries, expected);
    let mut left: Vec<String> = fs::read_dir(k.p("store"))
        .expect("store")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [".lock", "1.0.0.bundle"],
        "the assembled tree is gone"
    );

    // The test fixture builds the same tree through the same function.
    let key = fleet_release::SecretKey::load(&k.p("keys/release.key")).expect("release key");
    let own =
        fleet_tests::build_own_release("1.1.0", &key, &k.p("store"), std::time::SystemTime::now());
    let own = own.to_string_lossy().into_owned();
    k.verify(&own).ok();
    assert_eq!(manifest_of(&own).entries, expected);
}

#[test]
fn bin_dir_names_a_missing_binary_and_how_to_build_it() {
    let k = Keys::new();
    let bins = k.tree("bins", &[("etl-server", b"#!/bin/sh\n")]);
    let build = |args: &[&str]| {
        let mut all: Vec<String> = ["release", "build", "--version", "1.0.0"]
            .iter()
            .chain(args)
            .map(|a| a.to_string())
            .collect();
        all.extend(["--key".into(), k.s("keys/release.key")]);
        all.extend(["--out".into(), k.s("store")]);
        run(&all)
    };
    let missing = build(&["--bin-dir", &bins]).fails();
    assert_eq!(
        missing.stderr,
        format!(
            "error: assembling release 1.0.0: {bins}/fleet-agent: not found; build it with \
             `cargo build --release -p fleet-server -p fleet-agent`\n"
        )
    );
    assert!(!k.p("store").exists(), "nothing is written");

    let tree = k.tree("tree", &[("bin/etl-server", b"#!/bin/sh\n")]);
    let both = build(&["--from", &tree, "--bin-dir", &bins]);
    assert_eq!(both.code, Some(2), "{}", both.stderr);
    assert!(
        both.stderr.contains("cannot be used with"),
        "{}",
        both.stderr
    );
    let neither = build(&[]);
    assert_eq!(neither.code, Some(2), "{}", neither.stderr);
    assert!(
        neither.stderr.contains("--from <TREE>") && neither.stderr.contains("--bin-dir <DIR>"),
        "{}",
        neither.stderr
    );
}
