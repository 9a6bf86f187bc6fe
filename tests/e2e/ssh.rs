//! SSH transport and host key enrolment against real OpenSSH `sshd` nodes on loopback
//! addresses (the fleet-tests harness).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_controller::{Input, Session, SshError, Target, Timeouts, fetch_host_key};
use fleet_inventory::Inventory;
use fleet_tests::{FleetOptions, TestFleet};

use crate::support::run;

fn fleet(nodes: usize) -> TestFleet {
    TestFleet::start(FleetOptions {
        nodes,
        ..FleetOptions::default()
    })
    .expect("the test fleet starts (needs openssh-server)")
}

/// Writes the fleet's inventory (with an empty known_hosts beside it) and returns its path.
fn inventory(f: &TestFleet) -> (PathBuf, PathBuf) {
    let inv = f.dir().join("inventory.yaml");
    let known = f.dir().join("known_hosts");
    f.write_inventory(&inv, &known).expect("inventory");
    (inv, known)
}

fn targets(inv: &Path) -> Vec<Target> {
    Inventory::load(inv)
        .expect("valid inventory")
        .nodes()
        .iter()
        .map(Target::of)
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(10),
        command: Duration::from_secs(60),
    }
}

/// Lines sshd logged about authentication, which must not appear when the host key is refused.
fn auth_lines(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("publickey")
                || l.contains("authenticating user")
                || l.contains("Accepted key")
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn hosts_trust_enrols_each_node_once_and_refuses_a_changed_key() {
    let mut f = fleet(3);
    let (inv, known) = inventory(&f);
    let inv_s = inv.to_string_lossy().into_owned();

    let first = run(&["hosts", "trust", "-i", &inv_s, "--json"]).ok().json();
    let actions: Vec<_> = first["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["action"].clone())
        .collect();
    assert_eq!(actions, ["added", "added", "added"]);
    let recorded = fs::read_to_string(&known).expect("known_hosts written");
    for k in 0..3 {
        assert!(
            recorded.contains(&f.known_hosts_line(k)),
            "node {k} missing from:\n{recorded}"
        );
    }

    let again = run(&["hosts", "trust", "-i", &inv_s]).ok();
    assert_eq!(
        again.stdout.matches("unchanged").count(),
        3,
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("3 nodes: 3 ok, 0 failed"),
        "{}",
        again.stdout
    );

    f.replace_host_key(1).expect("new host key");
    let refused = run(&["hosts", "trust", "-i", &inv_s]).fails();
    assert!(
        refused.stderr.contains("error: node-2: offers SHA256:"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--replace"), "{}", refused.stderr);
    assert!(
        refused.stdout.contains("3 nodes: 2 ok, 1 failed"),
        "{}",
        refused.stdout
    );
    assert_eq!(
        fs::read_to_string(&known).expect("known_hosts"),
        recorded,
        "a refused key is never recorded"
    );

    let replaced = run(&[
        "hosts",
        "trust",
        "-i",
        &inv_s,
        "--limit",
        "node-2",
        "--replace",
    ])
    .ok();
    assert!(replaced.stdout.contains("replaced"), "{}", replaced.stdout);
    assert!(
        fs::read_to_string(&known)
            .expect("known_hosts")
            .contains(&f.known_hosts_line(1))
    );
}

#[test]
fn unknown_changed_and_revoked_keys_stop_before_authentication() {
    let mut f = fleet(1);
    let (inv, known) = inventory(&f);
    let target = targets(&inv).remove(0);
    let log = f.nodes()[0].log.clone();
    let rt = rt();

    // Unknown: refused with the fingerprint, and sshd saw no authentication attempt.
    match rt.block_on(Session::connect(&target, timeouts())) {
        Err(SshError::UnknownHost { fingerprint, .. }) => {
            assert!(fingerprint.starts_with("SHA256:"))
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("connected to an unknown host"),
    }
    assert_eq!(auth_lines(&log), Vec::<String>::new());

    // Known: connects, authenticates, runs a command (and sshd logs the authentication, which
    // shows the log check above can see one).
    f.write_known_hosts(&known).expect("known_hosts");
    let out = rt.block_on(async {
        let session = Session::connect(&target, timeouts())
            .await
            .expect("connects");
        let out = session
            .exec(
                "echo hello; echo oops >&2; exit 3",
                Input::None,
                Duration::from_secs(10),
            )
            .await;
        session.close().await;
        out
    });
    let out = out.expect("runs");
    assert_eq!(
        (out.status, out.stdout_text(), out.stderr_text()),
        (Some(3), "hello\n".into(), "oops\n".into())
    );
    let seen = auth_lines(&log).len();
    assert!(
        seen > 0,
        "sshd logged no authentication for a successful login"
    );

    // Changed: refused naming the known_hosts line, without a new authentication attempt.
    f.replace_host_key(0).expect("new host key");
    match rt.block_on(Session::connect(&target, timeouts())) {
        Err(SshError::HostKeyChanged { lines, .. }) => assert_eq!(lines, vec![1]),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("connected despite a changed host key"),
    }
    assert_eq!(
        auth_lines(&log).len(),
        seen,
        "authentication was attempted on a changed host key"
    );

    // Revoked: the new key, recorded and also revoked, is refused.
    f.write_known_hosts(&known).expect("known_hosts");
    let key_line = f.known_hosts_line(0);
    let key = key_line.split_once(' ').expect("host and key").1;
    fs::write(&known, format!("{key_line}\n@revoked * {key}\n")).expect("write");
    assert!(matches!(
        rt.block_on(Session::connect(&target, timeouts())),
        Err(SshError::HostKeyRevoked { line: 2, .. })
    ));
    assert_eq!(auth_lines(&log).len(), seen);
}

#[test]
fn exec_streams_large_input_and_times_out() {
    let f = fleet(1);
    let (inv, known) = inventory(&f);
    f.write_known_hosts(&known).expect("known_hosts");
    let target = targets(&inv).remove(0);
    let data: Vec<u8> = (0..(48u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let local = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let rt = rt();
    rt.block_on(async {
        let session = Session::connect(&target, timeouts())
            .await
            .expect("connects");
        let mut reader: &[u8] = &data;
        let out = session
            .exec(
                "sha256sum",
                Input::Reader(&mut reader),
                Duration::from_secs(60),
            )
            .await
            .expect("runs");
        assert_eq!(
            out.stdout_text().split_whitespace().next(),
            Some(local.as_str())
        );
        let out = session
            .exec(
                "wc -c",
                Input::Bytes(&data[..1000]),
                Duration::from_secs(10),
            )
            .await
            .expect("runs");
        assert_eq!(out.stdout_text().trim(), "1000");
        match session
            .exec("sleep 5", Input::None, Duration::from_millis(500))
            .await
        {
            Err(SshError::CommandTimeout { .. }) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        // The connection is still usable after a command timed out.
        let out = session
            .exec("true", Input::None, Duration::from_secs(10))
            .await
            .expect("runs");
        assert!(out.success());
        session.close().await;
    });
}

#[test]
fn a_wrong_identity_is_refused_and_a_down_node_fails_alone() {
    let mut f = fleet(3);
    let (inv, known) = inventory(&f);
    f.write_known_hosts(&known).expect("known_hosts");
    let mut target = targets(&inv).remove(0);
    let rt = rt();

    let other = f.dir().join("other_key");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .expect("ssh-keygen runs");
    assert!(keygen.success());
    target.identity = Some(other);
    assert!(matches!(
        rt.block_on(Session::connect(&target, timeouts())),
        Err(SshError::AuthRefused { .. })
    ));

    f.stop_node(1).expect("stop node-2");
    let inv_s = inv.to_string_lossy().into_owned();
    let out = run(&["hosts", "trust", "-i", &inv_s]).fails();
    assert!(
        out.stdout.contains("3 nodes: 2 ok, 1 failed"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("error: node-2"), "{}", out.stderr);
    let down = targets(&inv).remove(1);
    assert!(matches!(
        rt.block_on(fetch_host_key(&down, Duration::from_secs(5))),
        Err(SshError::Connect { .. })
    ));
}

#[test]
fn connects_through_a_jump_host() {
    let mut f = fleet(2);
    let (inv, known) = inventory(&f);
    f.write_known_hosts(&known).expect("known_hosts");
    let mut all = targets(&inv);
    let (jump, mut target) = (all.remove(0), all.remove(0));
    target.jump = Some(Box::new(jump));
    let rt = rt();
    let run_echo = |target: &Target| {
        rt.block_on(async {
            let session = Session::connect(target, timeouts()).await?;
            let out = session
                .exec("echo via", Input::None, Duration::from_secs(10))
                .await?;
            session.close().await;
            Ok::<_, SshError>(out.stdout_text())
        })
    };
    // Enrolment reaches the node through its jump host, enrolling the jump host first.
    fs::write(&known, "").expect("empty known_hosts");
    let enrolled = rt.block_on(fleet_controller::trust_host_key(
        &target,
        false,
        Duration::from_secs(10),
    ));
    assert!(
        enrolled.as_ref().is_ok_and(|e| e.action == "added"),
        "{enrolled:?}"
    );
    let recorded = fs::read_to_string(&known).expect("known_hosts");
    assert!(
        recorded.contains(&f.known_hosts_line(0)) && recorded.contains(&f.known_hosts_line(1)),
        "{recorded}"
    );
    assert_eq!(run_echo(&target).expect("connects through node-1"), "via\n");
    // With the jump host down, the node cannot be reached this way (it went through it).
    f.stop_node(0).expect("stop node-1");
    assert!(matches!(run_echo(&target), Err(SshError::Connect { .. })));
    let mut direct = target.clone();
    direct.jump = None;
    assert_eq!(run_echo(&direct).expect("direct"), "via\n");
}

/// Kills (and reaps) the child it holds when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn authenticates_through_ssh_agent() {
    use std::process::{Command, Stdio};
    let f = fleet(1);
    let (inv, known) = inventory(&f);
    f.write_known_hosts(&known).expect("known_hosts");
    let sock = f.dir().join("agent.sock");
    let _agent = Child(
        Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent runs (package openssh-client)"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut target = targets(&inv).remove(0);
    target.identity = None;
    target.agent_socket = Some(sock.clone());
    let rt = rt();

    // An empty agent proves nothing.
    assert!(matches!(
        rt.block_on(Session::connect(&target, timeouts())),
        Err(SshError::AuthRefused { .. })
    ));

    let added = Command::new("ssh-add")
        .arg(f.client_key())
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .expect("ssh-add runs");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let out = rt.block_on(async {
        let session = Session::connect(&target, timeouts())
            .await
            .expect("authenticates with the agent's key");
        let out = session
            .exec("echo agent", Input::None, Duration::from_secs(10))
            .await
            .expect("runs");
        session.close().await;
        out
    });
    assert_eq!(out.stdout_text(), "agent\n");
}
