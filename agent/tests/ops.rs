//! The agent's operations on a real node root, with real signed bundles.

mod common;
use common::{Node, node};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use fleet_agent::{AgentError, Answer, Code, Layout, Reply, Request};
use fleet_release::{ReleaseError, SecretKey};
use fleet_tests::{build_release, release_tree};

/// A version as a request carries it.
fn v(text: &str) -> semver::Version {
    text.parse().expect("a version")
}

impl Node {
    fn bundle(&self, version: &str, key: &SecretKey, created: SystemTime) -> PathBuf {
        let tree = release_tree(self.dir.path(), version);
        let store = self.dir.path().join(format!("store-{}", key.public()));
        build_release(version, &tree, key, &store, created)
    }

    fn good(&self, version: &str) -> PathBuf {
        self.bundle(version, &self.signing.release_key, SystemTime::now())
    }

    fn stage_bytes(&self, version: &str, bytes: &[u8]) -> Result<fleet_agent::Staged, AgentError> {
        fleet_agent::stage(
            &self.layout,
            &v(version),
            &mut &bytes[..],
            SystemTime::now(),
        )
    }

    fn stage(&self, version: &str, bundle: &Path) -> Result<fleet_agent::Staged, AgentError> {
        self.stage_bytes(version, &fs::read(bundle).expect("bundle"))
    }

    /// Nothing half-done: staging is empty and only complete releases exist.
    fn assert_clean(&self, staged: &[&str]) {
        assert_eq!(
            fs::read_dir(self.layout.staging())
                .expect("staging")
                .count(),
            0,
            "staging debris"
        );
        let mut found: Vec<String> = fs::read_dir(self.layout.releases())
            .expect("releases")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        found.sort();
        assert_eq!(found, staged);
    }
}

#[test]
fn stage_is_verified_complete_and_idempotent() {
    let n = node();
    let bundle = n.good("1.0.0");
    let staged = n.stage("1.0.0", &bundle).expect("stages");
    assert!(staged.changed);
    assert_eq!(
        fs::read_to_string(n.layout.release("1.0.0").join("bin/etl-server")).expect("file"),
        "#!/bin/sh\necho 1.0.0\n"
    );
    n.assert_clean(&["1.0.0"]);
    for dir in [n.layout.state(), n.layout.staging()] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&dir).expect("state dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    }
    let again = n.stage_bytes("1.0.0", b"").expect("no-op");
    assert!(
        !again.changed,
        "staging a release the node has reads nothing"
    );
}

#[test]
fn a_release_without_its_manifest_is_staged_again() {
    let n = node();
    // What an interrupted rename (or a hand-made directory) leaves: a tree, no manifest.
    fs::create_dir_all(n.layout.release("1.0.0").join("junk")).expect("mkdir");
    let staged = n.stage("1.0.0", &n.good("1.0.0")).expect("stages");
    assert!(staged.changed);
    assert!(!n.layout.release("1.0.0").join("junk").exists());
    assert!(n.layout.manifest("1.0.0").is_file());
}

#[test]
fn a_stalled_upload_fails_cleanly_and_frees_the_node() {
    use std::io::Write;
    let n = node();
    let bytes = fs::read(n.good("1.0.0")).expect("bundle");
    // Half the bundle arrives, then the sender stalls with the pipe still open.
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    let mut writer = fs::File::from(writer);
    writer.write_all(&bytes[..bytes.len() / 2]).expect("write");
    let mut input =
        fleet_agent::IdleTimeout::new(fs::File::from(reader), Duration::from_millis(200));
    let err = fleet_agent::stage(&n.layout, &v("1.0.0"), &mut input, SystemTime::now())
        .expect_err("a silent sender is given up on");
    assert!(err.to_string().contains("no data for 200ms"), "{err}");
    n.assert_clean(&[]);
    drop(writer);
    // The lock was released: the next push goes through at once.
    n.stage_bytes("1.0.0", &bytes)
        .expect("stages after the stall");
    n.assert_clean(&["1.0.0"]);
}

#[test]
fn refused_bundles_leave_nothing_behind() {
    let n = node();
    let bundle = fs::read(n.good("1.0.0")).expect("bundle");

    let mut flipped = bundle.clone();
    let at = flipped.len() - 50;
    flipped[at] ^= 1;
    assert!(matches!(
        n.stage_bytes("1.0.0", &flipped),
        Err(AgentError::Release(ReleaseError::PayloadMismatch(_)))
    ));
    n.assert_clean(&[]);

    // A connection cut mid-upload: `a_cut_upload_leaves_nothing_once_the_agent_has_started_receiving`.
    n.stage_bytes("1.0.0", &bundle)
        .expect("a retry completes it");
    n.assert_clean(&["1.0.0"]);

    let stranger = SecretKey::generate().expect("key");
    let foreign = n.bundle("2.0.0", &stranger, SystemTime::now());
    assert!(matches!(
        n.stage("2.0.0", &foreign),
        Err(AgentError::Release(ReleaseError::UnknownKey { .. }))
    ));
    let expired = n.bundle(
        "3.0.0",
        &n.signing.release_key,
        SystemTime::now() - Duration::from_secs(3 * 86_400),
    );
    assert!(matches!(
        n.stage("3.0.0", &expired),
        Err(AgentError::Release(ReleaseError::Expired { .. }))
    ));
    let v4 = n.good("4.0.0");
    assert!(matches!(
        n.stage("5.0.0", &v4),
        Err(AgentError::WrongVersion { .. })
    ));
    n.assert_clean(&["1.0.0"]);
}

#[test]
fn activate_downgrade_and_rollback() {
    let n = node();
    assert!(matches!(
        fleet_agent::activate(&n.layout, &v("1.0.0"), false),
        Err(AgentError::NotStaged(_))
    ));
    for v in ["1.0.0", "2.0.0"] {
        n.stage(v, &n.good(v)).expect("stages");
    }
    fleet_agent::activate(&n.layout, &v("1.0.0"), false).expect("first activation");
    let switched = fleet_agent::activate(&n.layout, &v("2.0.0"), false).expect("upgrade");
    assert_eq!(
        (switched.active.as_str(), switched.previous.as_deref()),
        ("2.0.0", Some("1.0.0"))
    );
    assert_eq!(
        fs::read_link(n.layout.current()).expect("current"),
        Path::new("releases/2.0.0")
    );
    assert!(
        !fleet_agent::activate(&n.layout, &v("2.0.0"), false)
            .expect("no-op")
            .changed
    );

    assert!(matches!(
        fleet_agent::activate(&n.layout, &v("1.0.0"), false),
        Err(AgentError::Downgrade { .. })
    ));
    assert_eq!(
        fs::read_link(n.layout.current()).expect("current"),
        Path::new("releases/2.0.0"),
        "a refusal changes nothing"
    );

    let back = fleet_agent::rollback(&n.layout).expect("rollback");
    assert_eq!(
        (back.active.as_str(), back.previous.as_deref()),
        ("1.0.0", Some("2.0.0"))
    );
    let status = fleet_agent::status(&n.layout).expect("status");
    assert_eq!(status.active.as_deref(), Some("1.0.0"));
    assert_eq!(status.staged, ["1.0.0", "2.0.0"]);
    assert!(status.free_bytes > 0);
    fleet_agent::activate(&n.layout, &v("2.0.0"), false).expect("forward again");
    fleet_agent::activate(&n.layout, &v("1.0.0"), true).expect("an explicit downgrade");
}

#[test]
fn an_old_release_cannot_be_staged_after_a_newer_one_ran() {
    let n = node();
    let old = n.good("1.0.0"); // counter 1
    let new = n.good("2.0.0"); // counter 2
    n.stage("2.0.0", &new).expect("stages");
    fleet_agent::activate(&n.layout, &v("2.0.0"), false).expect("activates");
    match n.stage("1.0.0", &old) {
        Err(AgentError::OldCounter {
            counter: 1,
            installed: 2,
            ..
        }) => {}
        other => panic!("an old, validly signed release was staged: {other:?}"),
    }
    n.assert_clean(&["2.0.0"]);
}

#[test]
fn the_binary_serves_only_agent_requests() {
    let n = node();
    let agent = env!("CARGO_BIN_EXE_fleet-agent");
    let root = n.layout.root().to_string_lossy().into_owned();
    let serve = |original: &str, stdin: Vec<u8>| {
        let mut child = Command::new(agent)
            .args(["--root", &root, "serve"])
            .env("SSH_ORIGINAL_COMMAND", original)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut input = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = input.write_all(&stdin);
        });
        let out = child.wait_with_output().expect("wait");
        writer.join().expect("writer");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        (out.status.code(), json)
    };
    for refused in ["", "sh", "bash -i", "stage ../../etc/passwd", "status; id"] {
        let (code, json) = serve(refused, Vec::new());
        assert_eq!(code, Some(1), "{refused:?}");
        assert!(
            json["error"]
                .as_str()
                .expect("error")
                .contains("only runs fleet-agent requests"),
            "{json}"
        );
    }
    let bundle = fs::read(n.good("1.0.0")).expect("bundle");
    let (code, json) = serve("stage 1.0.0", bundle);
    assert_eq!(
        (code, json["ok"].clone(), json["changed"].clone()),
        (Some(0), true.into(), true.into()),
        "{json}"
    );
    let (code, json) = serve("activate 1.0.0", Vec::new());
    assert_eq!(
        (code, json["active"].clone()),
        (Some(0), "1.0.0".into()),
        "{json}"
    );
    let (_, json) = serve("status", Vec::new());
    assert_eq!(json["active"], "1.0.0");
}

impl Node {
    /// Answers the request `words` as `fleet-agent` would, without a process; `input` is the
    /// bundle on stdin.
    fn ask(&self, words: &str, input: &[u8]) -> Answer<Reply> {
        let words: Vec<&str> = words.split_whitespace().collect();
        let request = Request::parse(&words).expect("a request");
        fleet_agent::answer(&self.layout, request, || Ok(input), SystemTime::now())
    }

    /// The code of a refused answer.
    fn refused(&self, words: &str, input: &[u8]) -> Code {
        match self.ask(words, input) {
            Answer::Refused(refusal) => refusal.code,
            Answer::Done(reply) => panic!("`{words}` was answered: {reply:?}"),
        }
    }
}

#[test]
fn every_refusal_answers_with_its_code() {
    let n = node();
    let v1 = fs::read(n.good("1.0.0")).expect("bundle");
    let v2 = fs::read(n.good("2.0.0")).expect("bundle");
    assert_eq!(n.refused("activate 1.0.0", b""), Code::NotStaged);
    assert_eq!(n.refused("rollback", b""), Code::NoPrevious);
    let mut flipped = v1.clone();
    let at = flipped.len() - 50;
    flipped[at] ^= 1;
    assert_eq!(n.refused("stage 1.0.0", &flipped), Code::VerificationFailed);
    assert_eq!(n.refused("stage 3.0.0", &v1), Code::WrongVersion);
    match n.ask("stage 1.0.0", &v1) {
        Answer::Done(Reply::Staged(staged)) => assert!(staged.changed),
        other => panic!("{other:?}"),
    }
    n.ask("stage 2.0.0", &v2);
    n.ask("activate 2.0.0", b"");
    assert_eq!(n.refused("activate 1.0.0", b""), Code::Downgrade);
    fs::remove_dir_all(n.layout.release("1.0.0")).expect("unstage 1.0.0");
    fs::remove_file(n.layout.manifest("1.0.0")).expect("unstage 1.0.0");
    assert_eq!(n.refused("stage 1.0.0", &v1), Code::OldCounter);

    // A bundle request whose input cannot be opened; the others never open it.
    let request = Request::parse(&["stage", "4.0.0"]).expect("request");
    let answer = fleet_agent::answer(
        &n.layout,
        request,
        || Err::<&[u8], _>(std::io::Error::other("no stdin")),
        SystemTime::now(),
    );
    assert!(
        matches!(&answer, Answer::Refused(r) if r.code == Code::Input),
        "{answer:?}"
    );
    let status = fleet_agent::answer(
        &n.layout,
        Request::Status,
        || -> std::io::Result<&[u8]> { panic!("status read its input") },
        SystemTime::now(),
    );
    match status {
        Answer::Done(Reply::Status(status)) => assert_eq!(status.active.as_deref(), Some("2.0.0")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_busy_node_answers_busy_and_still_reports_status() {
    let mut n = node();
    n.layout = n.layout.clone().with_lock_wait(Duration::from_millis(200));
    let held = fs::File::create(n.layout.lock_file()).expect("lock file");
    held.lock().expect("another operation holds the node");
    let answer = n.ask("activate 1.0.0", b"");
    let Answer::Refused(refusal) = &answer else {
        panic!("a held node answered {answer:?}");
    };
    assert_eq!(refusal.code, Code::Busy);
    assert!(refusal.code.is_retryable());
    assert!(refusal.error.contains("try again"), "{}", refusal.error);
    assert!(
        fleet_agent::answer_line(&answer).contains(r#""code":"busy""#),
        "{}",
        fleet_agent::answer_line(&answer)
    );
    assert!(n.ask("status", b"").is_ok(), "status only reads");
    drop(held);
    assert_eq!(n.refused("activate 1.0.0", b""), Code::NotStaged);
}

/// Writes `bytes` into `writer` one at a time, `every` apart, until they are all sent or the
/// reader is gone; returns how many were sent.
fn trickle(mut writer: fs::File, bytes: Vec<u8>, every: Duration) -> usize {
    use std::io::Write;
    let mut sent = 0;
    for byte in bytes {
        if writer.write_all(&[byte]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(every);
    }
    sent
}

#[test]
fn a_trickling_sender_is_cut_off_by_the_overall_deadline() {
    let mut n = node();
    n.layout = n
        .layout
        .clone()
        .with_receive_deadline(Duration::from_millis(800));
    let bundle = n.good("1.0.0");
    let bytes = fs::read(&bundle).expect("bundle");
    // A byte every 20 ms never trips the 200 ms idle check; the whole bundle would take
    // len × 20 ms (tens of seconds).
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    let total = bytes.len();
    let sender = std::thread::spawn(move || {
        trickle(fs::File::from(writer), bytes, Duration::from_millis(20))
    });
    let mut input =
        fleet_agent::IdleTimeout::new(fs::File::from(reader), Duration::from_millis(200));
    let err = fleet_agent::stage(&n.layout, &v("1.0.0"), &mut input, SystemTime::now())
        .expect_err("a trickling sender is cut off");
    match &err {
        AgentError::Release(ReleaseError::Read(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{err}");
            assert!(
                e.to_string()
                    .contains("the bundle did not arrive within 800ms"),
                "{err}"
            );
        }
        other => panic!("expected the receive deadline, got {other:?}"),
    }
    assert_eq!(err.code(), Code::Input);
    drop(input);
    let sent = sender.join().expect("sender");
    assert!(sent < total, "the whole bundle trickled in ({sent} bytes)");
    n.assert_clean(&[]);
    // The lock is free again.
    n.stage("1.0.0", &bundle).expect("stages after the cut");
}

#[test]
fn a_header_larger_than_the_cap_is_refused_before_it_is_read() {
    let n = node();
    // A manifest announced at 2 MiB: refused from its length alone, nothing more is read.
    let mut bytes = fleet_release::bundle::MAGIC.to_vec();
    bytes.extend_from_slice(&(2u32 << 20).to_be_bytes());
    match n.stage_bytes("1.0.0", &bytes) {
        Err(AgentError::Release(ReleaseError::TooLarge { what, size, cap })) => {
            assert_eq!((what, size, cap), ("manifest", 2 << 20, 1 << 20));
        }
        other => panic!("a 2 MiB manifest was not refused by its length: {other:?}"),
    }
    n.assert_clean(&[]);
}

#[test]
fn a_busy_refusal_names_the_holder_pid_and_age() {
    let mut n = node();
    n.layout = n.layout.clone().with_lock_wait(Duration::from_millis(200));
    let root = n.layout.root().to_string_lossy().into_owned();
    // A real agent staging from a sender that has sent nothing yet holds the node.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(["--root", &root, "stage", "1.0.0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the agent");
    let started = std::time::Instant::now();
    let staging_file = n.layout.staging().join("1.0.0.bundle");
    let deadline = started + Duration::from_secs(30);
    while !staging_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never started receiving"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = n.ask("activate 1.0.0", b"");
    let _ = holder.kill();
    let _ = holder.wait();
    let Answer::Refused(refusal) = &answer else {
        panic!("a held node answered {answer:?}");
    };
    assert_eq!(refusal.code, Code::Busy);
    let pid = format!("pid {}", holder.id());
    assert!(refusal.error.contains(&pid), "{}", refusal.error);
    let age = refusal
        .error
        .split("holding it for ")
        .nth(1)
        .and_then(|rest| rest.split(" s").next())
        .and_then(|secs| secs.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no age in: {}", refusal.error));
    // The age is the difference of two whole unix seconds, so it may round up by one.
    assert!(
        age <= started.elapsed().as_secs() + 1,
        "held for {age} s, but it started {:?} ago",
        started.elapsed()
    );
}

#[test]
fn a_cut_upload_leaves_nothing_once_the_agent_has_started_receiving() {
    use std::io::Write;
    let n = node();
    let bytes = fs::read(n.good("1.0.0")).expect("bundle");
    // Cut halfway through the payload, after the whole header.
    let block = |at: usize| {
        at + 4 + u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize
    };
    let header = block(block(fleet_release::bundle::MAGIC.len()));
    let cut = header + (bytes.len() - header) / 2;
    let (reader, writer) = rustix::pipe::pipe().expect("pipe");
    let probe = reader.try_clone().expect("a second handle on the pipe");
    let mut writer = fs::File::from(writer);
    writer.write_all(&bytes[..cut]).expect("write");
    let layout = n.layout.clone();
    let agent = std::thread::spawn(move || {
        let mut input =
            fleet_agent::IdleTimeout::new(fs::File::from(reader), Duration::from_secs(60));
        fleet_agent::stage(&layout, &v("1.0.0"), &mut input, SystemTime::now())
    });
    // The agent has taken every byte sent so far (header and half the payload) and has its
    // staging file open.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rustix::io::ioctl_fionread(&probe).expect("FIONREAD") > 0
        || !n.layout.staging().join("1.0.0.bundle").is_file()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never received the first half"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The connection is cut.
    drop(writer);
    match agent.join().expect("agent thread") {
        Err(AgentError::Release(ReleaseError::PayloadMismatch(why))) => {
            assert_eq!(why, "shorter than the manifest says");
        }
        other => panic!("a cut upload answered {other:?}"),
    }
    n.assert_clean(&[]);
}

#[test]
fn a_node_whose_clock_is_behind_refuses_what_expired_before_its_newest_release() {
    let n = node();
    let key = &n.signing.release_key;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let newest = n.bundle("2.0.0", key, now); // created now
    let older = n.bundle("1.5.0", key, now - 23 * hour); // valid until now + 1 h
    let expired = n.bundle("1.0.0", key, now - 36 * hour); // expired 12 h ago
    // The node's clock is 35 hours behind: by it, 1.0.0 is still valid.
    let behind = now - 35 * hour;
    let expired_bytes = fs::read(&expired).expect("bundle");
    let stage_behind =
        |layout: &Layout| fleet_agent::stage(layout, &v("1.0.0"), &mut &expired_bytes[..], behind);

    // A node that never saw a newer release has only its clock to go by.
    let fresh = node();
    fs::write(fresh.layout.trust_root(), n.signing.root.to_json()).expect("trust");
    stage_behind(&fresh.layout).expect("valid by the node's clock");

    n.stage("2.0.0", &newest).expect("stages");
    // An older (still valid) release does not lower the node's floor.
    n.stage("1.5.0", &older).expect("stages");
    let err = stage_behind(&n.layout).expect_err("expired before the node's newest release");
    assert_eq!(err.code(), Code::VerificationFailed, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("release 1.0.0 expired")
            && message.contains("the newest release this node accepted"),
        "{message}"
    );
    n.assert_clean(&["1.5.0", "2.0.0"]);
}

#[test]
fn activation_refuses_a_release_changed_after_staging() {
    use std::os::unix::fs::PermissionsExt;
    let n = node();
    let v1 = n.good("1.0.0"); // counter 1
    let v2 = n.good("2.0.0"); // counter 2
    n.stage("1.0.0", &v1).expect("stages");
    n.stage("2.0.0", &v2).expect("stages");
    fleet_agent::activate(&n.layout, &v("1.0.0"), false).expect("activates");
    let release = n.layout.release("2.0.0");
    let server = release.join("bin/etl-server");
    let refused = |what: &str| {
        let err = fleet_agent::activate(&n.layout, &v("2.0.0"), false)
            .expect_err("an altered release is refused");
        assert_eq!(err.code(), Code::VerificationFailed, "{what}: {err}");
        assert_eq!(
            n.layout.link_version(&n.layout.current()).expect("current"),
            Some("1.0.0".into()),
            "{what}: a refusal switches nothing"
        );
        err.to_string()
    };

    fs::write(&server, "#!/bin/sh\necho owned\n").expect("rewrite");
    fs::set_permissions(&server, fs::Permissions::from_mode(0o755)).expect("chmod");
    let message = refused("content");
    assert!(
        message.contains("`bin/etl-server`") && message.contains("sha256"),
        "{message}"
    );
    fs::write(&server, "#!/bin/sh\necho 2.0.0\n").expect("restore");

    fs::set_permissions(&server, fs::Permissions::from_mode(0o777)).expect("chmod");
    let message = refused("mode");
    assert!(
        message.contains("`bin/etl-server`") && message.contains("mode 777"),
        "{message}"
    );
    fs::set_permissions(&server, fs::Permissions::from_mode(0o755)).expect("chmod");

    fs::write(release.join("bin/preload.so"), "x").expect("plant");
    let message = refused("an added file");
    assert!(
        message.contains("`bin/preload.so`") && message.contains("not in its manifest"),
        "{message}"
    );
    fs::remove_file(release.join("bin/preload.so")).expect("remove");

    fleet_agent::activate(&n.layout, &v("2.0.0"), false).expect("the restored tree activates");
    // Staging it again repairs an altered release.
    fs::write(&server, "#!/bin/sh\necho owned\n").expect("rewrite");
    let restaged = n.stage("2.0.0", &v2).expect("restages");
    assert!(restaged.changed, "an altered release is staged again");
    assert_eq!(
        fs::read_to_string(&server).expect("server"),
        "#!/bin/sh\necho 2.0.0\n"
    );
    fleet_agent::rollback(&n.layout).expect("rolls back");
    fleet_agent::activate(&n.layout, &v("2.0.0"), false).expect("activates again");
}

/// The syscalls by which the agent creates, replaces, removes or opens the node's files.
/// `strace` counts each syscall separately, so killing the agent at the Nth call of each, for
/// every N until a run completes, kills it before every one of its writes.
const WRITES: &[&str] = &[
    "openat",
    "rename",
    "renameat",
    "renameat2",
    "symlink",
    "symlinkat",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "chmod",
    "fchmod",
    "fchmodat",
    "ftruncate",
];

/// A node with 1.0.0 and 2.0.0 activated in turn (current 2.0.0, previous 1.0.0, counter 2),
/// and the bundles of 2.0.0 and 3.0.0.
fn upgraded_node() -> (Node, PathBuf, PathBuf) {
    let n = node();
    let v1 = n.good("1.0.0"); // counter 1
    let v2 = n.good("2.0.0"); // counter 2
    n.stage("1.0.0", &v1).expect("stages");
    fleet_agent::activate(&n.layout, &v("1.0.0"), false).expect("activates");
    n.stage("2.0.0", &v2).expect("stages");
    fleet_agent::activate(&n.layout, &v("2.0.0"), false).expect("activates");
    let v3 = n.good("3.0.0");
    (n, v2, v3)
}

/// Copies the node root `from` to a fresh `to` (links are relative, so they keep working).
fn copy_root(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

fn counter(layout: &Layout) -> u64 {
    fs::read_to_string(layout.counter())
        .map(|t| t.trim().parse().expect("a number"))
        .unwrap_or(0)
}

/// A release the node counts as staged, with the bytes it was built with and the digest
/// rollout orders name it by.
fn assert_complete(layout: &Layout, version: &str, context: &str) {
    assert!(
        layout.manifest(version).is_file(),
        "{context}: {version} has no manifest"
    );
    assert!(
        layout.manifest_digest(version).is_file(),
        "{context}: {version} is staged without its manifest digest"
    );
    assert_tree(layout, version, context);
}

/// The tree of `releases/<version>` is there, with the bytes it was built with.
fn assert_tree(layout: &Layout, version: &str, context: &str) {
    assert_eq!(
        fs::read_to_string(layout.release(version).join("bin/etl-server"))
            .unwrap_or_else(|e| panic!("{context}: {version}: {e}")),
        format!("#!/bin/sh\necho {version}\n"),
        "{context}"
    );
}

/// What must hold after any crash: `current` is `before` or `after`, a release whose tree is
/// there; `previous` names one too; the counter never dropped, and is at least that of
/// whatever is current; every release status lists is complete.
fn assert_recoverable(layout: &Layout, before: &str, after: &str, floor: u64, context: &str) {
    let current = layout
        .link_version(&layout.current())
        .expect("current reads")
        .unwrap_or_else(|| panic!("{context}: no current"));
    assert!(
        current == before || current == after,
        "{context}: current is {current}"
    );
    assert_tree(layout, &current, context);
    let previous = layout
        .link_version(&layout.previous())
        .expect("previous reads")
        .unwrap_or_else(|| panic!("{context}: previous lost"));
    assert_tree(layout, &previous, context);
    let counter = counter(layout);
    assert!(
        counter >= floor,
        "{context}: counter {counter} below {floor}"
    );
    // The fixture builds release N.0.0 with counter N.
    let needed: u64 = current
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .expect("a N.0.0 version");
    assert!(
        counter >= needed,
        "{context}: {current} is current but the counter is {counter}"
    );
    let status = fleet_agent::status(layout).expect("status");
    for staged in &status.staged {
        assert_complete(layout, staged, context);
    }
}

/// Runs `fleet-agent --root <copy> words` on a fresh copy of `base` under strace, killed at
/// the Nth call of each write syscall in turn until a run completes; after every kill the node
/// must be recoverable, roll back, and take the same request again. Returns the kills.
fn kill_between_writes(
    base: &Path,
    words: &[&str],
    input: Option<&Path>,
    after: &str,
    check_done: impl Fn(&Layout),
) -> usize {
    let agent = env!("CARGO_BIN_EXE_fleet-agent");
    let work = base.with_extension("crash");
    let mut kills = 0;
    for syscall in WRITES {
        for nth in 1.. {
            copy_root(base, &work);
            let layout = Layout::new(&work);
            let stdin = match input {
                Some(path) => Stdio::from(fs::File::open(path).expect("bundle")),
                None => Stdio::null(),
            };
            let out = Command::new("strace")
                .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                .arg(format!("inject={syscall}:signal=SIGKILL:when={nth}"))
                .arg(agent)
                .arg("--root")
                .arg(&work)
                .args(words)
                .stdin(stdin)
                // cargo's library path would make the loader's opens most of the kill points.
                .env_remove("LD_LIBRARY_PATH")
                .output()
                .expect("strace runs");
            let context = format!("{words:?} killed at {syscall} #{nth}");
            assert_recoverable(&layout, "2.0.0", after, 2, &context);
            use std::os::unix::process::ExitStatusExt;
            if out.status.signal() != Some(9) {
                assert!(
                    out.status.success(),
                    "{context}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
                check_done(&layout);
                break;
            }
            kills += 1;
            // Rolling back leaves the running release for the one before it: `previous` was
            // never lost to the crash (nor left on the running release).
            let running = layout.link_version(&layout.current()).expect("current");
            let back = fleet_agent::rollback(&layout)
                .unwrap_or_else(|e| panic!("{context}: rollback: {e}"));
            assert_ne!(Some(back.active), running, "{context}: rollback stayed put");
            assert_recoverable(&layout, "1.0.0", "2.0.0", 2, &context);
            let request = Request::parse(words).expect("request");
            let bundle = input
                .map(|p| fs::read(p).expect("bundle"))
                .unwrap_or_default();
            match fleet_agent::answer(&layout, request, || Ok(&bundle[..]), SystemTime::now()) {
                Answer::Done(_) => {}
                Answer::Refused(r) => panic!("{context}: the re-run was refused: {r:?}"),
            }
            check_done(&layout);
        }
    }
    kills
}

#[test]
fn a_crash_between_any_two_writes_of_stage_or_activate_leaves_a_recoverable_node() {
    let (n, v2, v3) = upgraded_node();
    let base = n.dir.path().join("base");
    copy_root(n.layout.root(), &base);

    // The running release lost its manifest: staging it again replaces its tree, which must
    // never be missing on the way.
    let lost = n.dir.path().join("lost");
    copy_root(&base, &lost);
    fs::remove_file(Layout::new(&lost).manifest("2.0.0")).expect("drop the manifest");
    let kills = kill_between_writes(&lost, &["stage", "2.0.0"], Some(&v2), "2.0.0", |layout| {
        assert_complete(layout, "2.0.0", "after stage");
    });
    assert!(kills > 10, "stage was killed only {kills} times");

    let kills = kill_between_writes(&base, &["stage", "3.0.0"], Some(&v3), "2.0.0", |layout| {
        assert_complete(layout, "3.0.0", "after stage");
    });
    assert!(kills > 10, "stage was killed only {kills} times");

    let kills = kill_between_writes(&base, &["rollback"], None, "1.0.0", |_| {});
    assert!(kills > 5, "rollback was killed only {kills} times");

    n.stage("3.0.0", &v3).expect("stages");
    copy_root(n.layout.root(), &base);
    let kills = kill_between_writes(&base, &["activate", "3.0.0"], None, "3.0.0", |layout| {
        assert_eq!(
            layout
                .link_version(&layout.current())
                .expect("current")
                .as_deref(),
            Some("3.0.0")
        );
        assert!(counter(layout) >= 3);
    });
    assert!(kills > 10, "activate was killed only {kills} times");
}
