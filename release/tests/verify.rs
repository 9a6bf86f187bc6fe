//! Build → verify round trips and every refusal, on real files. Hostile bundles are assembled
//! by hand from raw tar headers, the way an attacker would.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleet_release::bundle::{Header, MAGIC, MANIFEST_CAP, MANIFEST_DOMAIN, SIGNATURES_CAP};
use fleet_release::signatures::Signature;
use fleet_release::trust::ROOT_DOMAIN;
use fleet_release::{
    BuildOptions, Entry, Manifest, PublicKey, ReleaseError, Root, RootBody, SecretKey, Timestamp,
};
use sha2::{Digest, Sha256};

struct Fixture {
    dir: tempfile::TempDir,
    release_key: SecretKey,
    root: Root,
}

fn fixture() -> Fixture {
    let root_key = SecretKey::generate().expect("key");
    let release_key = SecretKey::generate().expect("key");
    let body =
        RootBody::new(1, vec![root_key.public()], 1, vec![release_key.public()], 1).expect("body");
    let mut root = Root::unsigned(body).expect("root");
    root.sign(&root_key);
    root.verify_self().expect("self-signed root");
    Fixture {
        dir: tempfile::tempdir().expect("tempdir"),
        release_key,
        root,
    }
}

impl Fixture {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A small release tree with a directory, an executable, a data file and a symlink.
    fn tree(&self) -> PathBuf {
        let from = self.path("tree");
        if from.exists() {
            return from;
        }
        fs::create_dir_all(from.join("bin")).expect("mkdir");
        fs::write(from.join("bin/etl-server"), "#!/bin/sh\necho etl\n").expect("write");
        fs::set_permissions(
            from.join("bin/etl-server"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        fs::write(from.join("README"), "hello\n").expect("write");
        symlink("bin/etl-server", from.join("server")).expect("symlink");
        from
    }

    fn build(&self, version: &str, now: SystemTime) -> Result<(PathBuf, Manifest), ReleaseError> {
        let from = self.tree();
        let store = self.path("store");
        fleet_release::build(&BuildOptions {
            expires_in: Duration::from_secs(86_400),
            now,
            ..BuildOptions::new(
                version.parse().expect("semver"),
                &from,
                &self.release_key,
                &store,
            )
        })
    }

    fn verify(&self, bundle: &Path) -> Result<fleet_release::Verified, ReleaseError> {
        fleet_release::verify(
            fs::File::open(bundle).expect("open"),
            &self.root,
            SystemTime::now(),
        )
    }
}

/// A tree whose manifest would pass the cap every node reads with is refused at build time
/// (nothing is written to the store), instead of being built and then refused by every node.
#[test]
fn a_manifest_over_the_nodes_cap_is_not_built() {
    let f = fixture();
    let from = f.tree();
    // About 350 bytes of manifest per file: 4000 files pass 1 MiB.
    let long = "x".repeat(200);
    for k in 0..4000 {
        let dir = from.join(format!("d{}", k % 40));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(format!("{long}{k}")), "").expect("write");
    }
    match f.build("1.0.0", SystemTime::now()) {
        Err(ReleaseError::TooLarge {
            what: "manifest",
            size,
            cap,
        }) => assert!(
            size > cap && cap == fleet_release::bundle::MANIFEST_CAP,
            "{size} {cap}"
        ),
        other => panic!(
            "an oversized manifest was not refused: {:?}",
            other.map(|(bundle, _)| bundle)
        ),
    }
    let stored: Vec<_> = fs::read_dir(f.path("store"))
        .expect("store")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().ends_with(".bundle"))
        .collect();
    assert!(stored.is_empty(), "{stored:?}");
}

#[test]
fn build_then_verify_round_trip() {
    let f = fixture();
    let (bundle, manifest) = f.build("1.2.0", SystemTime::now()).expect("build");
    assert_eq!(bundle, f.path("store/1.2.0.bundle"));
    assert_eq!(manifest.counter, 1);
    let paths: Vec<_> = manifest.entries.iter().map(Entry::path).collect();
    assert_eq!(paths, ["README", "bin", "bin/etl-server", "server"]);
    let verified = f.verify(&bundle).expect("verifies");
    assert_eq!(verified.manifest, manifest);
    assert_eq!(verified.files, 2);
    assert_eq!(verified.signers, vec![f.release_key.public()]);
    let exe = manifest
        .entries
        .iter()
        .find(|e| e.path() == "bin/etl-server")
        .expect("listed");
    assert!(matches!(
        exe,
        Entry::File {
            mode: 0o755,
            size: 19,
            ..
        }
    ));
}

#[test]
fn counter_grows_and_versions_are_unique() {
    let f = fixture();
    f.build("1.0.0", SystemTime::now()).expect("first");
    let (_, second) = f.build("1.1.0", SystemTime::now()).expect("second");
    assert_eq!(second.counter, 2);
    // A hotfix of an older line still gets a higher counter.
    let (_, hotfix) = f.build("1.0.1", SystemTime::now()).expect("hotfix");
    assert_eq!(hotfix.counter, 3);
    assert!(matches!(
        f.build("1.1.0", SystemTime::now()),
        Err(ReleaseError::VersionExists { .. })
    ));
    let listed = fleet_release::list_store(&f.path("store")).expect("list");
    let counters: Vec<_> = listed
        .iter()
        .map(|r| r.as_ref().expect("readable").manifest.counter)
        .collect();
    assert_eq!(counters, [1, 2, 3]);
}

#[test]
fn refuses_a_damaged_store_rather_than_guessing_the_counter() {
    let f = fixture();
    f.build("1.0.0", SystemTime::now()).expect("first");
    fs::write(f.path("store/0.9.0.bundle"), b"garbage").expect("write");
    assert!(matches!(
        f.build("1.1.0", SystemTime::now()),
        Err(ReleaseError::InFile { .. })
    ));
}

#[test]
fn refuses_a_store_inside_the_tree() {
    let f = fixture();
    let from = f.tree();
    let store = from.join("store");
    let err = fleet_release::build(&BuildOptions::new(
        "1.0.0".parse().expect("semver"),
        &from,
        &f.release_key,
        &store,
    ))
    .expect_err("refused");
    assert!(err.to_string().contains("is inside it"), "{err}");
}

#[test]
fn refuses_expired_manifest() {
    let f = fixture();
    let (bundle, _) = f
        .build("1.0.0", SystemTime::now() - Duration::from_secs(2 * 86_400))
        .expect("build");
    assert!(matches!(
        f.verify(&bundle),
        Err(ReleaseError::Expired { .. })
    ));
}

#[test]
fn refuses_flipped_byte_in_payload() {
    let f = fixture();
    let (bundle, _) = f.build("1.0.0", SystemTime::now()).expect("build");
    let mut bytes = fs::read(&bundle).expect("read");
    let last = bytes.len() - 40;
    bytes[last] ^= 0x01;
    fs::write(&bundle, &bytes).expect("write");
    assert!(matches!(
        f.verify(&bundle),
        Err(ReleaseError::PayloadMismatch(
            "sha256 differs from the manifest"
        ))
    ));
}

#[test]
fn every_byte_of_a_bundle_counts() {
    let f = fixture();
    let (bundle, _) = f.build("1.0.0", SystemTime::now()).expect("build");
    let bytes = fs::read(&bundle).expect("read");
    let probe = f.path("probe.bundle");
    // Where each part of the bundle starts: the magic, the manifest's length and bytes, the
    // signature list's length and bytes, then the payload.
    let block = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
    let manifest_at = MAGIC.len() + 4;
    let sigs_len_at = manifest_at + block(MAGIC.len());
    let sigs_at = sigs_len_at + 4;
    let payload_at = sigs_at + block(sigs_len_at);
    for at in 0..bytes.len() {
        for mask in [0x01u8, 0x20, 0x80] {
            let mut flipped = bytes.clone();
            flipped[at] ^= mask;
            fs::write(&probe, &flipped).expect("write");
            let err = match f.verify(&probe) {
                Err(err) => err,
                Ok(_) => panic!(
                    "flipping byte {at} of {} with {mask:#x} verified",
                    bytes.len()
                ),
            };
            // Each part fails in its own way; the manifest and payload only by their digests.
            let expected = if at < MAGIC.len() {
                matches!(err, ReleaseError::NotABundle)
            } else if at < manifest_at || (sigs_len_at..sigs_at).contains(&at) {
                matches!(
                    err,
                    ReleaseError::TooLarge { .. }
                        | ReleaseError::Truncated
                        | ReleaseError::Corrupt(_)
                )
            } else if at < sigs_len_at {
                matches!(
                    err,
                    ReleaseError::BadSignature {
                        what: "manifest",
                        ..
                    }
                )
            } else if at < payload_at {
                matches!(
                    err,
                    ReleaseError::Corrupt(_)
                        | ReleaseError::BadSignature { .. }
                        | ReleaseError::UnknownKey { .. }
                )
            } else {
                matches!(err, ReleaseError::PayloadMismatch(_))
            };
            assert!(expected, "flipping byte {at} with {mask:#x}: {err}");
        }
    }
    let mut appended = bytes.clone();
    appended.push(0);
    fs::write(&probe, &appended).expect("write");
    assert!(matches!(
        f.verify(&probe),
        Err(ReleaseError::PayloadMismatch(
            "longer than the manifest says"
        ))
    ));
}

#[test]
fn refuses_altered_manifest() {
    let f = fixture();
    let (bundle, _) = f.build("1.0.0", SystemTime::now()).expect("build");
    let bytes = fs::read(&bundle).expect("read");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let at = text.find("\"stable\"").expect("channel in manifest");
    let mut altered = bytes.clone();
    altered[at + 1..at + 7].copy_from_slice(b"stabl3");
    fs::write(&bundle, &altered).expect("write");
    assert!(matches!(
        f.verify(&bundle),
        Err(ReleaseError::BadSignature {
            what: "manifest",
            ..
        })
    ));
}

#[test]
fn refuses_wrong_and_missing_signatures() {
    let f = fixture();
    let manifest = manifest_for(&[("a", b"x".as_slice())]);
    let payload = payload(&[("a", RawKind::File(b"x"))]);
    let stranger = SecretKey::generate().expect("key");

    let unknown = assemble(&f, "unknown", &manifest, &[&stranger], &payload);
    assert!(matches!(
        f.verify(&unknown),
        Err(ReleaseError::UnknownKey { .. })
    ));

    let unsigned = assemble(&f, "unsigned", &manifest, &[], &payload);
    assert!(matches!(
        f.verify(&unsigned),
        Err(ReleaseError::MissingSignature { .. })
    ));

    let good = assemble(&f, "good", &manifest, &[&f.release_key], &payload);
    f.verify(&good)
        .expect("a hand-assembled good bundle verifies");
}

#[test]
fn refuses_a_signature_repeated_to_fake_a_threshold() {
    let root_key = SecretKey::generate().expect("key");
    let a = SecretKey::generate().expect("key");
    let b = SecretKey::generate().expect("key");
    let body = RootBody::new(
        1,
        vec![root_key.public()],
        1,
        vec![a.public(), b.public()],
        2,
    )
    .expect("body");
    let mut root = Root::unsigned(body).expect("root");
    root.sign(&root_key);
    let f = Fixture {
        dir: tempfile::tempdir().expect("tempdir"),
        release_key: a,
        root,
    };
    let manifest = manifest_for(&[("a", b"x".as_slice())]);
    let payload = payload(&[("a", RawKind::File(b"x"))]);

    let twice = assemble(
        &f,
        "twice",
        &manifest,
        &[&f.release_key, &f.release_key],
        &payload,
    );
    assert!(matches!(
        f.verify(&twice),
        Err(ReleaseError::RepeatedSignature { .. })
    ));
    let once = assemble(&f, "once", &manifest, &[&f.release_key], &payload);
    assert!(matches!(
        f.verify(&once),
        Err(ReleaseError::ThresholdNotMet {
            valid: 1,
            needed: 2,
            ..
        })
    ));
    let both = assemble(&f, "both", &manifest, &[&f.release_key, &b], &payload);
    f.verify(&both)
        .expect("two distinct keys meet the threshold");
}

#[test]
fn refuses_content_that_differs_from_the_manifest() {
    let f = fixture();
    let manifest = manifest_for(&[("a", b"hello".as_slice())]);
    type Case<'a> = (&'a str, Vec<(&'a str, RawKind)>, fn(&ReleaseError) -> bool);
    let cases: Vec<Case<'_>> = vec![
        ("hash", vec![("a", RawKind::File(b"hellO"))], |e| {
            matches!(e, ReleaseError::HashMismatch { .. })
        }),
        ("size", vec![("a", RawKind::File(b"hello!"))], |e| {
            matches!(e, ReleaseError::SizeMismatch { .. })
        }),
        (
            "unlisted",
            vec![
                ("a", RawKind::File(b"hello")),
                ("extra", RawKind::File(b"x")),
            ],
            |e| matches!(e, ReleaseError::Unlisted { path } if path == "extra"),
        ),
        (
            "missing",
            vec![],
            |e| matches!(e, ReleaseError::Missing { path } if path == "a"),
        ),
        (
            "dotdot",
            vec![
                ("a", RawKind::File(b"hello")),
                ("../evil", RawKind::File(b"x")),
            ],
            |e| matches!(e, ReleaseError::PathTraversal { .. }),
        ),
        ("absolute", vec![("/etc/evil", RawKind::File(b"x"))], |e| {
            matches!(e, ReleaseError::AbsolutePath { .. })
        }),
        ("device", vec![("null", RawKind::CharDevice)], |e| {
            matches!(e, ReleaseError::DeviceFile { .. })
        }),
        (
            "link-out",
            vec![
                ("a", RawKind::File(b"hello")),
                ("evil", RawKind::Symlink("../../etc/passwd")),
            ],
            |e| matches!(e, ReleaseError::LinkEscapes { .. }),
        ),
        (
            "twice",
            vec![
                ("a", RawKind::File(b"hello")),
                ("a", RawKind::File(b"hello")),
            ],
            |e| matches!(e, ReleaseError::Corrupt(_)),
        ),
    ];
    for (name, entries, expected) in cases {
        let bundle = assemble(&f, name, &manifest, &[&f.release_key], &payload(&entries));
        match f.verify(&bundle) {
            Err(e) if expected(&e) => {}
            other => panic!("{name}: unexpected outcome {other:?}"),
        }
    }
}

#[test]
fn refuses_manifests_listing_unsafe_entries() {
    let f = fixture();
    let bad_entries = [
        (
            Entry::File {
                path: "../x".into(),
                mode: 0o644,
                size: 0,
                sha256: sha(b""),
            },
            "traversal",
        ),
        (
            Entry::File {
                path: "/x".into(),
                mode: 0o644,
                size: 0,
                sha256: sha(b""),
            },
            "absolute",
        ),
        (
            Entry::Symlink {
                path: "l".into(),
                target: "../outside".into(),
            },
            "link",
        ),
        (
            Entry::Symlink {
                path: "l".into(),
                target: "/etc/passwd".into(),
            },
            "link",
        ),
    ];
    for (entry, kind) in bad_entries {
        let mut manifest = manifest_for(&[]);
        manifest.entries.push(entry);
        let bundle = assemble(&f, kind, &manifest, &[&f.release_key], &payload(&[]));
        let err = f.verify(&bundle).expect_err("refused");
        let ok = match kind {
            "traversal" => matches!(err, ReleaseError::PathTraversal { .. }),
            "absolute" => matches!(err, ReleaseError::AbsolutePath { .. }),
            _ => matches!(err, ReleaseError::LinkEscapes { .. }),
        };
        assert!(ok, "{kind}: {err}");
    }
    // An archive symlink whose target differs from the listed (safe) one.
    let mut manifest = manifest_for(&[]);
    manifest.entries.push(Entry::Symlink {
        path: "l".into(),
        target: "ok".into(),
    });
    let bundle = assemble(
        &f,
        "swapped",
        &manifest,
        &[&f.release_key],
        &payload(&[("l", RawKind::Symlink("/etc/passwd"))]),
    );
    assert!(matches!(
        f.verify(&bundle),
        Err(ReleaseError::LinkEscapes { .. })
    ));
}

#[test]
fn refuses_blocks_over_their_caps_before_reading_them() {
    let f = fixture();
    for (name, manifest_len, sig_len) in [
        ("manifest", MANIFEST_CAP + 1, 2),
        ("sigs", 2, SIGNATURES_CAP + 1),
    ] {
        let path = f.path(name);
        let mut w = fs::File::create(&path).expect("create");
        w.write_all(MAGIC).expect("write");
        w.write_all(&(manifest_len as u32).to_be_bytes())
            .expect("write");
        if name == "sigs" {
            w.write_all(b"{}").expect("write");
            w.write_all(&(sig_len as u32).to_be_bytes()).expect("write");
        }
        drop(w);
        let err = f.verify(&path).expect_err("refused");
        assert!(
            matches!(err, ReleaseError::TooLarge { .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn refuses_non_bundles_and_truncation() {
    let f = fixture();
    fs::write(f.path("junk"), b"definitely not a bundle").expect("write");
    assert!(matches!(
        f.verify(&f.path("junk")),
        Err(ReleaseError::NotABundle)
    ));
    let (bundle, _) = f.build("1.0.0", SystemTime::now()).expect("build");
    let bytes = fs::read(&bundle).expect("read");
    for cut in [10, 100, bytes.len() - 10] {
        fs::write(f.path("cut"), &bytes[..cut]).expect("write");
        let err = f.verify(&f.path("cut")).expect_err("a cut bundle");
        let expected = match cut {
            10 => matches!(err, ReleaseError::NotABundle),
            100 => matches!(err, ReleaseError::Truncated),
            _ => matches!(
                err,
                ReleaseError::PayloadMismatch("shorter than the manifest says")
            ),
        };
        assert!(expected, "cut at {cut}: {err}");
    }
}

#[test]
fn root_rotation_needs_old_and_new_thresholds_and_the_next_version() {
    let keys: Vec<SecretKey> = (0..4)
        .map(|_| SecretKey::generate().expect("key"))
        .collect();
    let release = SecretKey::generate().expect("key");
    let pubs = |idx: &[usize]| idx.iter().map(|&i| keys[i].public()).collect::<Vec<_>>();
    let mut v1 = Root::unsigned(
        RootBody::new(1, pubs(&[0, 1]), 2, vec![release.public()], 1).expect("body"),
    )
    .expect("root");
    v1.sign(&keys[0]);
    assert!(matches!(
        v1.verify_self(),
        Err(ReleaseError::ThresholdNotMet { .. })
    ));
    v1.sign(&keys[1]);
    v1.verify_self().expect("v1 complete");
    let v1 = Root::parse(v1.to_json().as_bytes()).expect("round trip");
    v1.verify_self().expect("v1 complete after a round trip");

    let next = |version, signers: &[usize]| {
        let mut r = Root::unsigned(
            RootBody::new(version, pubs(&[2, 3]), 2, vec![release.public()], 1).expect("body"),
        )
        .expect("root");
        for &i in signers {
            r.sign(&keys[i]);
        }
        Root::parse(r.to_json().as_bytes()).expect("round trip")
    };
    v1.verify_successor(&next(2, &[0, 1, 2, 3]))
        .expect("rotation accepted");
    assert!(matches!(
        v1.verify_successor(&next(2, &[0, 2, 3])),
        Err(ReleaseError::ThresholdNotMet { .. })
    ));
    assert!(matches!(
        v1.verify_successor(&next(2, &[0, 1, 2])),
        Err(ReleaseError::ThresholdNotMet { .. })
    ));
    assert!(matches!(
        v1.verify_successor(&next(3, &[0, 1, 2, 3])),
        Err(ReleaseError::RootVersion { .. })
    ));
    assert!(matches!(
        v1.verify_successor(&next(1, &[0, 1, 2, 3])),
        Err(ReleaseError::RootVersion { .. })
    ));

    // A signature repeated to reach the old threshold is refused.
    let text = next(2, &[0, 2, 3]).to_json();
    let list = text.find("\"signatures\": [").expect("signature list") + "\"signatures\": [".len();
    let first = &text[list..=list + text[list..].find('}').expect("first signature")];
    let doubled = format!("{}{first},{}", &text[..list], &text[list..]);
    let doubled = Root::parse(doubled.as_bytes()).expect("parses");
    assert!(matches!(
        v1.verify_successor(&doubled),
        Err(ReleaseError::RepeatedSignature { .. })
    ));

    // Editing the signed part breaks every signature.
    let tampered = next(2, &[0, 1, 2, 3])
        .to_json()
        .replace("\"release_threshold\":1", "\"release_threshold\":1 ");
    let tampered = Root::parse(tampered.as_bytes()).expect("parses");
    assert!(matches!(
        v1.verify_successor(&tampered),
        Err(ReleaseError::BadSignature { .. })
    ));
}

#[test]
fn refuses_malformed_roots() {
    let k = SecretKey::generate().expect("key").public();
    let r = SecretKey::generate().expect("key").public();
    let bad_root = |result: Result<(), ReleaseError>, expected: &str| match result {
        Err(ReleaseError::BadRoot(reason)) if reason.starts_with(expected) => {}
        other => panic!("expected a bad root ({expected}): {other:?}"),
    };
    bad_root(
        RootBody::new(1, vec![k], 2, vec![r], 1).map(drop),
        "root threshold 2 must be between 1 and the number of root keys (1)",
    );
    bad_root(
        RootBody::new(1, vec![k, k], 1, vec![r], 1).map(drop),
        "a root key is listed twice",
    );
    bad_root(
        RootBody::new(1, vec![k], 1, vec![r], 0).map(drop),
        "release threshold 0 must be between 1",
    );
    bad_root(
        RootBody::new(0, vec![k], 1, vec![r], 1).map(drop),
        "`version` starts at 1",
    );
    bad_root(Root::parse(b"{}").map(drop), "missing field `signed`");
    bad_root(Root::parse(b"not json").map(drop), "expected ident");
    assert!(matches!(
        Root::parse(&vec![b' '; 2 << 20]),
        Err(ReleaseError::TooLarge { .. })
    ));
}

#[test]
fn only_release_keys_sign_releases() {
    let root_key = SecretKey::generate().expect("key");
    let release_key = SecretKey::generate().expect("key");
    let body =
        RootBody::new(1, vec![root_key.public()], 1, vec![release_key.public()], 1).expect("body");
    let mut root = Root::unsigned(body).expect("root");
    root.sign(&root_key);
    let f = Fixture {
        dir: tempfile::tempdir().expect("tempdir"),
        release_key,
        root,
    };
    let manifest = manifest_for(&[("a", b"x".as_slice())]);
    let payload = payload(&[("a", RawKind::File(b"x"))]);
    let by_root = assemble(&f, "by-root", &manifest, &[&root_key], &payload);
    match f.verify(&by_root) {
        Err(ReleaseError::UnknownKey {
            what: "manifest",
            key,
        }) if key == root_key.public() => {}
        other => panic!("a manifest signed by the root key: {other:?}"),
    }
}

#[test]
fn a_key_holds_one_role() {
    let k = SecretKey::generate().expect("key");
    let other = SecretKey::generate().expect("key");
    let both = |e: &ReleaseError| {
        matches!(e, ReleaseError::BadRoot(m)
            if m.contains(&k.public().to_hex()) && m.contains("both a root key and a release key"))
    };
    let err = RootBody::new(1, vec![k.public()], 1, vec![k.public()], 1)
        .expect_err("a root key that is also a release key");
    assert!(both(&err), "{err}");
    let err = RootBody::new(1, vec![other.public(), k.public()], 1, vec![k.public()], 1)
        .expect_err("a root key that is also a release key");
    assert!(both(&err), "{err}");
    // A document with the overlap, validly signed, is refused when it is read.
    let signed = format!(
        r#"{{"type":"fleet-root","version":1,"root_keys":["{k}"],"root_threshold":1,"release_keys":["{k}"],"release_threshold":1}}"#,
        k = k.public()
    );
    let signature = Signature::create(&k, ROOT_DOMAIN, signed.as_bytes());
    let document = format!(
        r#"{{"signed":{signed},"signatures":[{}]}}"#,
        serde_json::to_string(&signature).expect("json")
    );
    let err = Root::parse(document.as_bytes()).expect_err("refused");
    assert!(both(&err), "{err}");
}

/// ℓ, the order of the ed25519 base point, little-endian.
const ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

#[test]
fn a_malleated_signature_is_refused() {
    let f = fixture();
    let manifest = manifest_for(&[("a", b"x".as_slice())]);
    let payload = payload(&[("a", RawKind::File(b"x"))]);
    // S + ℓ: the same point equation holds, so a verifier that does not insist on a reduced S
    // accepts a second spelling of the signature.
    let malleated = assemble_with(&f, "s-plus-l", &manifest, &payload, |bytes| {
        let mut sig = Signature::create(&f.release_key, MANIFEST_DOMAIN, bytes);
        let mut raw = hex::decode(&sig.sig).expect("hex");
        let mut carry = 0u16;
        for (s, l) in raw[32..].iter_mut().zip(ORDER) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "S + ℓ fits in 256 bits");
        sig.sig = hex::encode(raw);
        vec![sig]
    });
    match f.verify(&malleated) {
        Err(ReleaseError::BadSignature {
            what: "manifest",
            key,
        }) if key == f.release_key.public() => {}
        other => panic!("S + ℓ: {other:?}"),
    }
}

#[test]
fn small_order_and_non_canonical_public_keys_are_refused() {
    use ed25519_dalek::{Verifier, VerifyingKey};
    // The identity point: with R = identity and S = 0, `[S]B = R + [k]A` holds for every
    // message, so the plain check accepts this "signature" of anything.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut forged = [0u8; 64];
    forged[0] = 1;
    let weak = VerifyingKey::from_bytes(&identity).expect("decodes");
    assert!(
        weak.verify(b"anything", &ed25519_dalek::Signature::from_bytes(&forged))
            .is_ok(),
        "the plain check accepts the forgery; only a strict one refuses it"
    );
    let err = hex::encode(identity)
        .parse::<PublicKey>()
        .expect_err("a small-order key");
    assert!(err.contains("small-order"), "{err}");
    // Nor can a root name it: the key is refused when the document is read.
    let root_key = SecretKey::generate().expect("key");
    let signed = format!(
        r#"{{"type":"fleet-root","version":1,"root_keys":["{}"],"root_threshold":1,"release_keys":["{}"],"release_threshold":1}}"#,
        root_key.public(),
        hex::encode(identity)
    );
    let signature = Signature::create(&root_key, ROOT_DOMAIN, signed.as_bytes());
    let document = format!(
        r#"{{"signed":{signed},"signatures":[{}]}}"#,
        serde_json::to_string(&signature).expect("json")
    );
    match Root::parse(document.as_bytes()) {
        Err(ReleaseError::BadRoot(m)) if m.contains("small-order") => {}
        other => panic!("a root naming a small-order key: {other:?}"),
    }

    // A point with a second, non-canonical spelling (y + p for a small y): one key would pass
    // for two in a threshold.
    let spelled = |y: u8, plus_p: bool| {
        let mut bytes = [0u8; 32];
        if plus_p {
            bytes = [0xff; 32];
            bytes[0] = 0xed + y;
            bytes[31] = 0x7f;
        } else {
            bytes[0] = y;
        }
        bytes
    };
    let y = (2..19)
        .find(|&y| VerifyingKey::from_bytes(&spelled(y, false)).is_ok_and(|k| !k.is_weak()))
        .expect("a small y on the curve, not of small order");
    let canonical = VerifyingKey::from_bytes(&spelled(y, false)).expect("decodes");
    let other = VerifyingKey::from_bytes(&spelled(y, true)).expect("the other spelling decodes");
    assert_eq!(canonical.to_edwards(), other.to_edwards(), "one point");
    hex::encode(spelled(y, false))
        .parse::<PublicKey>()
        .expect("the canonical spelling is a key");
    let err = hex::encode(spelled(y, true))
        .parse::<PublicKey>()
        .expect_err("the non-canonical spelling");
    assert!(err.contains("not the canonical encoding"), "{err}");
}

// ---- hand assembly of hostile bundles ----

enum RawKind {
    File(&'static [u8]),
    Symlink(&'static str),
    CharDevice,
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn manifest_for(files: &[(&str, &[u8])]) -> Manifest {
    let now = Timestamp::now();
    Manifest {
        format: 1,
        version: "1.0.0".parse().expect("semver"),
        counter: 1,
        channel: "stable".into(),
        created: now,
        expires: now.plus(Duration::from_secs(3600)),
        platform: "linux-x86_64".into(),
        min_agent_version: "0.1.0".parse().expect("semver"),
        payload: fleet_release::Payload {
            size: 0,
            sha256: sha(b""),
        },
        entries: files
            .iter()
            .map(|(p, b)| Entry::File {
                path: (*p).into(),
                mode: 0o644,
                size: b.len() as u64,
                sha256: sha(b),
            })
            .collect(),
    }
}

/// A zstd tar whose header names are written raw, so `..` and absolute paths get through.
fn payload(entries: &[(&str, RawKind)]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (path, kind) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_mode(0o644);
        h.set_mtime(0);
        let data: &[u8] = match kind {
            RawKind::File(b) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(b.len() as u64);
                b
            }
            RawKind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                h.set_size(0);
                b""
            }
            RawKind::CharDevice => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_size(0);
                b""
            }
        };
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    zstd::encode_all(tar.as_slice(), 3).expect("compress")
}

/// Writes a bundle of `payload` under `manifest`, whose payload digest is filled in to match.
fn assemble(
    f: &Fixture,
    name: &str,
    manifest: &Manifest,
    signers: &[&SecretKey],
    payload: &[u8],
) -> PathBuf {
    assemble_with(f, name, manifest, payload, |bytes| {
        signers
            .iter()
            .map(|k| Signature::create(k, MANIFEST_DOMAIN, bytes))
            .collect()
    })
}

/// [`assemble`] with the signature list `sign` makes from the manifest bytes.
fn assemble_with(
    f: &Fixture,
    name: &str,
    manifest: &Manifest,
    payload: &[u8],
    sign: impl FnOnce(&[u8]) -> Vec<Signature>,
) -> PathBuf {
    let mut manifest = manifest.clone();
    manifest.payload = fleet_release::Payload {
        size: payload.len() as u64,
        sha256: sha(payload),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).expect("json");
    let header = Header {
        signatures: sign(&manifest_bytes),
        manifest_bytes,
    };
    let path = f.path(&format!("{name}.bundle"));
    let mut file = fs::File::create(&path).expect("create");
    header.write_to(&mut file).expect("header");
    file.write_all(payload).expect("payload");
    path
}

#[test]
fn unpack_writes_the_verified_tree() {
    let f = fixture();
    let (bundle, _) = f.build("1.0.0", SystemTime::now()).expect("build");
    let dest = f.path("unpacked");
    let verified = fleet_release::unpack(
        fs::File::open(&bundle).expect("open"),
        &f.root,
        SystemTime::now(),
        &dest,
    )
    .expect("unpacks");
    assert_eq!(verified.files, 2);
    assert_eq!(
        fs::read(dest.join("bin/etl-server")).expect("file"),
        fs::read(f.path("tree/bin/etl-server")).expect("src")
    );
    let mode = fs::metadata(dest.join("bin/etl-server"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        fs::read_link(dest.join("server")).expect("link"),
        Path::new("bin/etl-server")
    );
    // The destination must be new: nothing is ever unpacked over an existing tree.
    let again = fleet_release::unpack(
        fs::File::open(&bundle).expect("open"),
        &f.root,
        SystemTime::now(),
        &dest,
    );
    assert!(matches!(again, Err(ReleaseError::Io { .. })));
}

#[test]
fn unpack_refuses_a_tampered_bundle_before_writing_anything() {
    let f = fixture();
    let (bundle, _) = f.build("1.0.0", SystemTime::now()).expect("build");
    let mut bytes = fs::read(&bundle).expect("read");
    let last = bytes.len() - 100;
    bytes[last] ^= 1;
    fs::write(f.path("bad.bundle"), &bytes).expect("write");
    let dest = f.path("unpacked");
    let err = fleet_release::unpack(
        fs::File::open(f.path("bad.bundle")).expect("open"),
        &f.root,
        SystemTime::now(),
        &dest,
    )
    .expect_err("refused");
    assert!(matches!(err, ReleaseError::PayloadMismatch(_)), "{err}");
    assert_eq!(
        fs::read_dir(&dest).expect("dest").count(),
        0,
        "nothing unpacked from an unauthenticated payload"
    );
}

#[test]
fn receiving_measures_the_payload_as_it_is_written() {
    let f = fixture();
    let (bundle, _) = f.build("1.0.0", SystemTime::now()).expect("build");
    let bytes = fs::read(&bundle).expect("read");
    let receive = |input: &[u8], name: &str| {
        let path = f.path(name);
        let mut out = fs::File::create(&path).expect("create");
        let measured = fleet_release::bundle::receive(&mut &input[..], &mut out, &f.root)?;
        let dest = f.path(&format!("{name}.tree"));
        fleet_release::bundle::unpack_measured(
            fs::File::open(&path).expect("open"),
            &measured,
            &f.root,
            SystemTime::now(),
            &dest,
        )
    };
    receive(&bytes, "good").expect("a received bundle unpacks");
    // A bundle signed by an unknown key is refused before its payload is stored.
    let stranger = SecretKey::generate().expect("key");
    let manifest_for_stranger = manifest_for(&[("a", b"x".as_slice())]);
    let foreign = assemble(
        &f,
        "foreign",
        &manifest_for_stranger,
        &[&stranger],
        &payload(&[("a", RawKind::File(b"x"))]),
    );
    assert!(matches!(
        receive(&fs::read(foreign).expect("read"), "foreign-copy"),
        Err(ReleaseError::UnknownKey { .. })
    ));
    assert_eq!(
        fs::metadata(f.path("foreign-copy")).expect("created").len(),
        0,
        "nothing stored"
    );
    assert_eq!(
        fs::read(f.path("good")).expect("copy"),
        bytes,
        "received bytes are written unchanged"
    );

    let mut flipped = bytes.clone();
    let last = flipped.len() - 10;
    flipped[last] ^= 1;
    assert!(matches!(
        receive(&flipped, "flipped"),
        Err(ReleaseError::PayloadMismatch(
            "sha256 differs from the manifest"
        ))
    ));
    let short = &bytes[..bytes.len() - 10];
    assert!(matches!(
        receive(short, "short"),
        Err(ReleaseError::PayloadMismatch(
            "shorter than the manifest says"
        ))
    ));
    let mut long = bytes.clone();
    long.extend_from_slice(b"trailing");
    assert!(matches!(
        receive(&long, "long"),
        Err(ReleaseError::PayloadMismatch(
            "longer than the manifest says"
        ))
    ));
}
