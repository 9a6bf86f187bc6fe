//! Hostile bundles through the agent: each is validly signed by the node's release key (or
//! by a key the node must not trust for releases), so the refusal comes from the checks after
//! the signature. Each test asserts the specific refusal, and that the node is exactly as it
//! was outside `state/staging` (releases, `current`, `previous`, the counter, the trust root)
//! with staging left empty.

mod common;
use common::Node;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fleet_agent::{AgentError, Answer, Code, Request};
use fleet_release::{BuildOptions, Entry, ReleaseError};
use fleet_tests::{
    RELEASE_VALIDITY, build_release, hand_manifest, release_tree, sha256_hex, signed_bundle,
};

/// The version every hostile bundle claims, with a counter above the node's.
const HOSTILE: &str = "3.0.0";
const COUNTER: u64 = 100;
/// The content of the one executable every hostile release lists.
const SERVER: &[u8] = b"#!/bin/sh\necho 3.0.0\n";
/// What a compression bomb unpacks to: over a thousand times its compressed size.
const BOMB: u64 = 64 << 20;

/// A node running 2.0.0 with 1.0.0 as `previous`, both staged the ordinary way.
fn node() -> Node {
    let node = common::node();
    let (dir, signing, layout) = (&node.dir, &node.signing, &node.layout);
    let store = dir.path().join("store");
    for version in ["1.0.0", "2.0.0"] {
        let tree = release_tree(dir.path(), version);
        let bundle = build_release(
            version,
            &tree,
            &signing.release_key,
            &store,
            SystemTime::now(),
        );
        let bytes = fs::read(bundle).expect("bundle");
        fleet_agent::stage(
            layout,
            &version.parse().expect("version"),
            &mut bytes.as_slice(),
            SystemTime::now(),
        )
        .expect("stages");
        fleet_agent::activate(layout, &version.parse().expect("version"), false)
            .expect("activates");
    }
    node
}

impl Node {
    /// Stages `HOSTILE` from `input`, expecting a refusal, and checks that it changed nothing
    /// outside staging. Returns the error.
    fn refused(&self, input: &mut impl Read) -> AgentError {
        let before = snapshot(self.dir.path(), &self.layout.staging());
        let outcome = fleet_agent::stage(
            &self.layout,
            &HOSTILE.parse().expect("version"),
            input,
            SystemTime::now(),
        );
        let err = match outcome {
            Err(err) => err,
            Ok(staged) => panic!("a hostile bundle was staged: {staged:?}"),
        };
        assert_eq!(
            snapshot(self.dir.path(), &self.layout.staging()),
            before,
            "the refusal `{err}` changed something outside staging"
        );
        assert_eq!(
            fs::read_dir(self.layout.staging())
                .expect("staging")
                .count(),
            0,
            "staging debris after `{err}`"
        );
        let status = fleet_agent::status(&self.layout).expect("status");
        assert_eq!(
            (status.active.as_deref(), status.previous.as_deref()),
            (Some("2.0.0"), Some("1.0.0"))
        );
        assert_eq!(status.staged, ["1.0.0", "2.0.0"]);
        err
    }

    /// [`Node::refused`] for a bundle signed by the node's release key; returns the release
    /// error it was refused with, whose code must be `verification_failed`.
    fn refuses_signed(&self, manifest: &fleet_release::Manifest, payload: &[u8]) -> ReleaseError {
        let bundle = signed_bundle(&self.signing.release_key, manifest, payload);
        let err = self.refused(&mut bundle.as_slice());
        assert_eq!(err.code(), Code::VerificationFailed, "{err}");
        match err {
            AgentError::Release(e) => e,
            other => panic!("refused for another reason: {other}"),
        }
    }
}

/// Every path under `dir` except what is inside `staging`, with its type, mode and content
/// (a file's sha256, a link's target).
fn snapshot(dir: &Path, staging: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for item in fs::read_dir(&at).expect("read_dir") {
            let path = item.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.is_symlink() {
                format!("link {}", fs::read_link(&path).expect("link").display())
            } else if meta.is_dir() {
                if path != staging {
                    stack.push(path.clone());
                }
                format!("dir {mode:o}")
            } else {
                let bytes = fs::read(&path).expect("file");
                format!("file {mode:o} {}", sha256_hex(&bytes))
            };
            out.insert(path, what);
        }
    }
    out
}

/// Appends one tar entry to `tar` exactly as given: the header's type, mode, size and link
/// name are whatever the test says, and `data` follows, padded to 512 bytes.
fn raw_entry(
    tar: &mut impl Write,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    size: u64,
    link: &str,
    data: &mut impl Read,
) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_cksum();
    tar.write_all(h.as_bytes()).expect("header");
    let copied = io::copy(data, tar).expect("data");
    let pad = copied.div_ceil(512) * 512 - copied;
    tar.write_all(&vec![0u8; pad as usize]).expect("padding");
}

fn dir_entry(tar: &mut impl Write, path: &str) {
    raw_entry(
        tar,
        path,
        tar::EntryType::Directory,
        0o755,
        0,
        "",
        &mut io::empty(),
    );
}

fn file_entry(tar: &mut impl Write, path: &str, mode: u32, data: &[u8]) {
    raw_entry(
        tar,
        path,
        tar::EntryType::Regular,
        mode,
        data.len() as u64,
        "",
        &mut &data[..],
    );
}

/// The end of a tar archive: two zero blocks.
fn end(tar: &mut impl Write) {
    tar.write_all(&[0u8; 1024]).expect("end blocks");
}

fn compress(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).expect("compress")
}

/// The listing of an ordinary release: `bin` and the executable `bin/etl-server`.
fn listed(mode: u32) -> Vec<Entry> {
    vec![
        Entry::Dir {
            path: "bin".into(),
            mode: 0o755,
        },
        Entry::File {
            path: "bin/etl-server".into(),
            mode,
            size: SERVER.len() as u64,
            sha256: sha256_hex(SERVER),
        },
    ]
}

/// A hand-assembled, validly signed bundle of `bin/etl-server`, as the hostile ones are made.
fn well_formed(n: &Node) -> Vec<u8> {
    let mut tar = Vec::new();
    dir_entry(&mut tar, "bin");
    file_entry(&mut tar, "bin/etl-server", 0o755, SERVER);
    end(&mut tar);
    let payload = compress(&tar);
    signed_bundle(
        &n.signing.release_key,
        &hand_manifest(HOSTILE, COUNTER, listed(0o755), &payload),
        &payload,
    )
}

#[test]
fn a_hand_assembled_bundle_stages_so_the_refusals_below_are_the_archive_checks() {
    let n = node();
    let bundle = well_formed(&n);
    fleet_agent::stage(
        &n.layout,
        &HOSTILE.parse().expect("version"),
        &mut bundle.as_slice(),
        SystemTime::now(),
    )
    .expect("the well-formed hand-assembled bundle stages");
    assert_eq!(
        fs::read(n.layout.release(HOSTILE).join("bin/etl-server")).expect("unpacked"),
        SERVER
    );
}

#[test]
fn a_hard_link_is_refused() {
    let n = node();
    // A hard link to the node's trust root: were it made, writing the listed file's bytes
    // through it would replace the root.
    let mut entries = listed(0o755);
    entries.push(Entry::File {
        path: "bin/hl".into(),
        mode: 0o644,
        size: 0,
        sha256: sha256_hex(b""),
    });
    let mut tar = Vec::new();
    dir_entry(&mut tar, "bin");
    file_entry(&mut tar, "bin/etl-server", 0o755, SERVER);
    raw_entry(
        &mut tar,
        "bin/hl",
        tar::EntryType::Link,
        0o644,
        0,
        "../../../../trust/root.json",
        &mut io::empty(),
    );
    end(&mut tar);
    let payload = compress(&tar);
    let manifest = hand_manifest(HOSTILE, COUNTER, entries, &payload);
    match n.refuses_signed(&manifest, &payload) {
        ReleaseError::UnsafePath { path, reason }
            if path == "bin/hl" && reason.contains("Link") => {}
        other => panic!("a hard link was refused as: {other}"),
    }
}

#[test]
fn setuid_setgid_and_sticky_bits_are_refused_in_the_manifest_and_in_the_archive() {
    let n = node();
    for bits in [0o4000, 0o2000, 0o1000] {
        // Listed with the bit, and carried with it: the manifest's own rules refuse it.
        let mut tar = Vec::new();
        dir_entry(&mut tar, "bin");
        file_entry(&mut tar, "bin/etl-server", 0o755 | bits, SERVER);
        end(&mut tar);
        let payload = compress(&tar);
        let manifest = hand_manifest(HOSTILE, COUNTER, listed(0o755 | bits), &payload);
        match n.refuses_signed(&manifest, &payload) {
            ReleaseError::BadManifest(reason)
                if reason.contains("bin/etl-server")
                    && reason.contains("setuid, setgid and sticky bits are not allowed") => {}
            other => panic!("mode {bits:o} in the manifest was refused as: {other}"),
        }
        // Listed without it, carried with it in the tar header.
        let manifest = hand_manifest(HOSTILE, COUNTER, listed(0o755), &payload);
        match n.refuses_signed(&manifest, &payload) {
            ReleaseError::EntryDiffers { path, what }
                if path == "bin/etl-server" && what == "mode" => {}
            other => panic!("mode {bits:o} in the tar header was refused as: {other}"),
        }
    }
}

#[test]
fn a_million_entries_are_refused_without_reading_them_all() {
    let n = node();
    // A manifest listing a million entries is over the manifest cap: refused before it is
    // read, let alone parsed.
    let mut entries = vec![Entry::Dir {
        path: "d".into(),
        mode: 0o755,
    }];
    entries.extend((0..1_000_000).map(|i| Entry::Dir {
        path: format!("d/{i}"),
        mode: 0o755,
    }));
    let mut tar = Vec::new();
    dir_entry(&mut tar, "d");
    end(&mut tar);
    let payload = compress(&tar);
    let manifest = hand_manifest(HOSTILE, COUNTER, entries, &payload);
    match n.refuses_signed(&manifest, &payload) {
        ReleaseError::TooLarge {
            what: "manifest", ..
        } => {}
        other => panic!("a million listed entries were refused as: {other}"),
    }

    // An archive of a million entries under a manifest of two: the work stops at the first
    // entry the manifest does not list.
    let mut encoder = zstd::Encoder::new(Vec::new(), 1).expect("encoder");
    dir_entry(&mut encoder, "bin");
    file_entry(&mut encoder, "bin/etl-server", 0o755, SERVER);
    for i in 0..1_000_000 {
        file_entry(&mut encoder, &format!("bin/{i}"), 0o644, b"");
    }
    end(&mut encoder);
    let payload = encoder.finish().expect("compress");
    let manifest = hand_manifest(HOSTILE, COUNTER, listed(0o755), &payload);
    match n.refuses_signed(&manifest, &payload) {
        ReleaseError::Unlisted { path } if path == "bin/0" => {}
        other => panic!("a million archive entries were refused as: {other}"),
    }
}

/// A tar entry of `BOMB` zero bytes, compressed with the rest of the archive.
fn bomb(tar: &mut impl Write, path: &str, kind: tar::EntryType) {
    raw_entry(
        tar,
        path,
        kind,
        0o755,
        BOMB,
        "",
        &mut io::repeat(0).take(BOMB),
    );
}

/// Compresses what `write` writes, checking it is a bomb: over 1000 to 1.
fn bomb_payload(write: impl FnOnce(&mut zstd::Encoder<'static, Vec<u8>>)) -> Vec<u8> {
    let mut encoder = zstd::Encoder::new(Vec::new(), 3).expect("encoder");
    write(&mut encoder);
    let payload = encoder.finish().expect("compress");
    assert!(
        BOMB / payload.len() as u64 >= 1000,
        "{} bytes unpack to over {BOMB}",
        payload.len()
    );
    payload
}

#[test]
fn a_compression_bomb_in_a_directory_entry_is_refused_at_its_header() {
    let n = node();
    // A directory whose header carries 64 MiB of data: skipping it would decompress it all.
    let payload = bomb_payload(|tar| {
        bomb(tar, "bin", tar::EntryType::Directory);
        file_entry(tar, "bin/etl-server", 0o755, SERVER);
        end(tar);
    });
    let manifest = hand_manifest(HOSTILE, COUNTER, listed(0o755), &payload);
    match n.refuses_signed(&manifest, &payload) {
        ReleaseError::SizeMismatch {
            path,
            expected: 0,
            actual: BOMB,
        } if path == "bin" => {}
        other => panic!("a directory carrying a bomb was refused as: {other}"),
    }
}

#[test]
fn a_compression_bomb_in_a_long_name_record_stops_at_the_manifests_bound() {
    let n = node();
    // A GNU long-name record of 64 MiB, which a tar reader holds in memory whole: the
    // decompressed stream is cut where the manifest's entries end.
    let payload = bomb_payload(|tar| {
        dir_entry(tar, "bin");
        bomb(tar, "././@LongLink", tar::EntryType::GNULongName);
        file_entry(tar, "bin/etl-server", 0o755, SERVER);
        end(tar);
    });
    let manifest = hand_manifest(HOSTILE, COUNTER, listed(0o755), &payload);
    match n.refuses_signed(&manifest, &payload) {
        ReleaseError::Inflated { cap } if cap < 1 << 20 => {}
        other => panic!("a long-name bomb was refused as: {other}"),
    }
}

#[test]
fn an_endless_stream_after_the_declared_size_is_cut_at_one_byte_past_it() {
    let n = node();
    let bundle = well_formed(&n);
    // The sender never stops: the agent reads one byte past the signed size and refuses.
    let mut endless = bundle.as_slice().chain(io::repeat(0));
    match n.refused(&mut endless) {
        AgentError::Release(ReleaseError::PayloadMismatch("longer than the manifest says")) => {}
        other => panic!("an endless stream was refused as: {other}"),
    }
}

/// Asks the node, as `fleet-agent` would, to stage `HOSTILE` from `bundle`.
fn ask_stage(n: &Node, bundle: &[u8]) -> Answer<fleet_agent::Reply> {
    let request = Request::parse(&["stage", HOSTILE]).expect("request");
    fleet_agent::answer(&n.layout, request, || Ok(bundle), SystemTime::now())
}

#[test]
fn a_release_for_another_platform_is_refused_with_wrong_platform() {
    let n = node();
    let tree = release_tree(n.dir.path(), HOSTILE);
    let other = n.dir.path().join("store-sparc");
    let (bundle, _) = fleet_release::build(&BuildOptions {
        expires_in: RELEASE_VALIDITY,
        platform: "linux-sparc64".into(),
        ..BuildOptions::new(
            HOSTILE.parse().expect("version"),
            &tree,
            &n.signing.release_key,
            &other,
        )
    })
    .expect("builds");
    let bytes = fs::read(&bundle).expect("bundle");
    let before = snapshot(n.dir.path(), &n.layout.staging());
    match ask_stage(&n, &bytes) {
        Answer::Refused(refusal) => {
            assert_eq!(refusal.code, Code::WrongPlatform, "{}", refusal.error);
            assert!(
                refusal.error.contains("is for linux-sparc64"),
                "{}",
                refusal.error
            );
        }
        Answer::Done(reply) => panic!("a release for linux-sparc64 was staged: {reply:?}"),
    }
    assert_eq!(snapshot(n.dir.path(), &n.layout.staging()), before);
    match n.refused(&mut bytes.as_slice()) {
        AgentError::WrongPlatform { platform, .. } if platform == "linux-sparc64" => {}
        other => panic!("refused as: {other}"),
    }
}

#[test]
fn a_release_signed_by_a_root_key_is_refused() {
    let n = node();
    let tree = release_tree(n.dir.path(), HOSTILE);
    let store = n.dir.path().join("store-root");
    let bundle = build_release(
        HOSTILE,
        &tree,
        &n.signing.root_key,
        &store,
        SystemTime::now(),
    );
    let bytes = fs::read(bundle).expect("bundle");
    match n.refused(&mut bytes.as_slice()) {
        AgentError::Release(ReleaseError::UnknownKey {
            what: "manifest",
            key,
        }) if key == n.signing.root_key.public() => {}
        other => panic!("a release signed by the root key was refused as: {other}"),
    }
}
