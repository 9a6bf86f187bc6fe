//! The test fleet against the real OpenSSH server and client: logins, nodes going down and coming
//! back, changed host keys, parallel fleets, cleanup, and the `fleet-testfleet` binary.

use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fleet_tests::{FleetOptions, PIDS_FILE, TestFleet, lock_dir};

fn start(nodes: usize) -> TestFleet {
    match TestFleet::start(FleetOptions::with_nodes(nodes)) {
        Ok(fleet) => fleet,
        Err(e) => panic!("starting a {nodes}-node test fleet: {e}"),
    }
}

fn accepts_tcp(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn ssh_true(fleet: &TestFleet, k: usize, known_hosts: &Path) -> Output {
    fleet
        .ssh_command(k, known_hosts)
        .arg("true")
        .output()
        .expect("run /usr/bin/ssh (apt-get install -y openssh-client)")
}

fn assert_login(fleet: &TestFleet, k: usize, known_hosts: &Path) {
    let out = ssh_true(fleet, k, known_hosts);
    assert!(
        out.status.success(),
        "ssh to {} failed ({}): {}\nsshd log: {}",
        fleet.nodes()[k].name,
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&fleet.nodes()[k].log).unwrap_or_default()
    );
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `true` when someone holds the lock of the block that `addr` belongs to.
fn block_locked(addr: Ipv4Addr) -> bool {
    let [_, a, b, _] = addr.octets();
    let path = lock_dir().join(format!("127.{a}.{b}.lock"));
    let file = File::options()
        .read(true)
        .write(true)
        .open(&path)
        .expect("the block's lock file exists");
    match file.try_lock() {
        Ok(()) => false,
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(e)) => panic!("lock {}: {e}", path.display()),
    }
}

/// Waits up to 3 s for the block of `addr` to be unlocked. Not at once: a process forked at that
/// moment (a concurrent test's spawn, or an sshd child accepting a last connection before it
/// execs) holds a duplicate of the lock for a few milliseconds.
fn block_freed(addr: Ipv4Addr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while block_locked(addr) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn every_node_accepts_tcp_and_an_ssh_login_with_strict_host_keys() {
    let fleet = start(3);
    let known_hosts = fleet.dir().join("known_hosts");
    fleet
        .write_known_hosts(&known_hosts)
        .expect("write known_hosts");
    let mut addrs = HashSet::new();
    for (k, node) in fleet.nodes().iter().enumerate() {
        assert_eq!(node.name, format!("node-{}", k + 1));
        assert!(node.root.is_dir() && node.root.starts_with(fleet.dir()));
        assert!(node.host_key_pub.starts_with("ssh-ed25519 AAAA"));
        assert_eq!(
            fleet.known_hosts_line(k),
            format!("[{}]:{} {}", node.addr, node.port, node.host_key_pub)
        );
        assert!(accepts_tcp(node.socket_addr().into()), "{}", node.name);
        assert_login(&fleet, k, &known_hosts);
        addrs.insert(node.addr);
    }
    assert_eq!(addrs.len(), 3, "each node has its own address");
    assert!(!fleet.nodes()[0].addr.is_unspecified());
    assert_ne!(fleet.nodes()[0].addr, Ipv4Addr::LOCALHOST);
}

#[test]
fn the_inventory_loads_with_fleet_inventory() {
    let fleet = start(2);
    let known_hosts = fleet.dir().join("known_hosts");
    let path = fleet.dir().join("inventory.yaml");
    fleet
        .write_inventory(&path, &known_hosts)
        .expect("write inventory");
    let inventory = fleet_inventory::Inventory::load(&path).unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(&path).unwrap_or_default()
        )
    });
    assert_eq!(inventory.customers().len(), 1);
    assert_eq!(inventory.customers()[0].name, "test");
    assert_eq!(inventory.customers()[0].mode.as_str(), "dedicated");
    let cluster = inventory
        .cluster("test", "local")
        .expect("cluster test/local");
    assert_eq!(cluster.shared_storage, fleet.dir().join("shared"));
    assert_eq!(inventory.nodes().len(), 2);
    for (resolved, node) in inventory.nodes().iter().zip(fleet.nodes()) {
        assert_eq!(resolved.name, node.name);
        assert_eq!(resolved.host, node.addr.to_string());
        assert_eq!(resolved.node_root, node.root);
        assert_eq!(resolved.ssh.port, node.port);
        assert_eq!(resolved.ssh.user, fleet.user());
        assert_eq!(
            resolved.ssh.identity_file.as_deref(),
            Some(fleet.client_key())
        );
        assert_eq!(resolved.ssh.known_hosts, known_hosts);
        // Every node's server and agent metrics on its own address; the fleet's Redis prefix.
        assert_eq!(resolved.vars["listen"], node.api.to_string());
        assert_eq!(
            resolved.vars["agent_metrics_listen"],
            format!("{}:{}", node.addr, fleet_tests::AGENT_METRICS_PORT)
        );
        assert_eq!(resolved.vars["redis_prefix"], fleet.redis_prefix());
    }
    assert_eq!(cluster.rollout.min_healthy_secs, 2);
}

#[test]
fn a_stopped_node_refuses_connections_and_comes_back_with_the_same_host_key() {
    let mut fleet = start(2);
    let known_hosts = fleet.dir().join("known_hosts");
    fleet
        .write_known_hosts(&known_hosts)
        .expect("write known_hosts");
    let before = fleet.nodes()[1].clone();
    let pid = fleet.pids()[1];

    fleet.stop_node(1).expect("stop node-2");
    assert!(!alive(pid), "sshd {pid} was reaped");
    assert!(!accepts_tcp(before.socket_addr().into()), "node-2 is down");
    assert!(!ssh_true(&fleet, 1, &known_hosts).status.success());
    assert_login(&fleet, 0, &known_hosts);
    fleet.stop_node(1).expect("stopping twice does nothing");

    fleet.start_node(1).expect("start node-2");
    assert_eq!(fleet.nodes()[1], before, "same address, port and host key");
    assert_login(&fleet, 1, &known_hosts);
    assert!(matches!(
        fleet.stop_node(2),
        Err(fleet_tests::HarnessError::NoSuchNode { index: 2, count: 2 })
    ));
}

#[test]
fn a_replaced_host_key_fails_strict_host_key_checking() {
    let mut fleet = start(1);
    let known_hosts = fleet.dir().join("known_hosts");
    fleet
        .write_known_hosts(&known_hosts)
        .expect("write known_hosts");
    assert_login(&fleet, 0, &known_hosts);
    let old = fleet.nodes()[0].host_key_pub.clone();

    fleet.replace_host_key(0).expect("replace the host key");
    assert_ne!(fleet.nodes()[0].host_key_pub, old);
    let out = ssh_true(&fleet, 0, &known_hosts);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("Host key verification failed"),
        "{stderr}"
    );

    let fresh = fleet.dir().join("known_hosts.new");
    fleet.write_known_hosts(&fresh).expect("write known_hosts");
    assert_login(&fleet, 0, &fresh);
}

#[test]
fn fleets_started_at_once_get_disjoint_addresses() {
    let handles: Vec<_> = (0..2).map(|_| thread::spawn(|| start(3))).collect();
    let fleets: Vec<TestFleet> = handles
        .into_iter()
        .map(|h| h.join().expect("fleet thread"))
        .collect();
    let addrs: Vec<Ipv4Addr> = fleets
        .iter()
        .flat_map(|f| f.nodes().iter().map(|n| n.addr))
        .collect();
    let distinct: HashSet<_> = addrs.iter().collect();
    assert_eq!(distinct.len(), 6, "{addrs:?}");
    let block = |f: &TestFleet| {
        let [_, a, b, _] = f.nodes()[0].addr.octets();
        (a, b)
    };
    assert_ne!(block(&fleets[0]), block(&fleets[1]));
    for fleet in &fleets {
        for node in fleet.nodes() {
            assert!(accepts_tcp(node.socket_addr().into()), "{}", node.name);
        }
    }
}

#[test]
fn dropping_a_fleet_reaps_every_sshd_and_frees_its_block() {
    let fleet = start(3);
    let pids = fleet.pids();
    let dir = fleet.dir().to_path_buf();
    let addr = fleet.nodes()[0].addr;
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| alive(p)));
    assert!(block_locked(addr));

    drop(fleet);
    for pid in pids {
        assert!(!alive(pid), "sshd {pid} is gone");
    }
    assert!(!dir.exists(), "the temporary folder is removed");
    assert!(block_freed(addr), "the address block is free again");
}

#[test]
fn the_binary_leaves_a_fleet_running_and_stops_exactly_it() {
    let bin = env!("CARGO_BIN_EXE_fleet-testfleet");
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = parent.path().join("fleet");
    // The sshd must not inherit the command's stdout or stderr: a caller reading them to the end
    // (as `output()` does) would wait as long as the nodes run. So wait for the exit, check that
    // no sshd holds a pipe, and only then read.
    let mut child = Command::new(bin)
        .args(["start", "--nodes", "2", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fleet-testfleet start");
    let status = child.wait().expect("wait for fleet-testfleet start");
    let started_pids: Vec<u32> = std::fs::read_to_string(dir.join(PIDS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    for pid in &started_pids {
        for fd in 0..3 {
            let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("sshd's fd");
            assert!(
                !target.to_string_lossy().starts_with("pipe:"),
                "sshd {pid} holds a pipe as fd {fd}: {}",
                target.display()
            );
        }
    }
    let out = child
        .wait_with_output()
        .expect("read fleet-testfleet's output");
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("node-1 127."), "{stdout}");

    let dir = dir.canonicalize().expect("fleet dir");
    let pids: Vec<u32> = std::fs::read_to_string(dir.join(PIDS_FILE))
        .expect("pids file")
        .lines()
        .map(|l| l.parse().expect("a PID"))
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| alive(p)), "sshd outlive the command");
    assert!(dir.join("inventory.yaml").is_file());
    assert!(
        !dir.join("known_hosts").exists(),
        "enrollment is `fleet hosts trust`'s job"
    );
    let inventory =
        fleet_inventory::Inventory::load(&dir.join("inventory.yaml")).expect("inventory loads");
    let first: Ipv4Addr = inventory.nodes()[0].host.parse().expect("an address");
    assert!(accepts_tcp(SocketAddr::from((first, 2222))));
    assert!(
        block_locked(first),
        "the block stays taken while the sshd run"
    );

    let refused = Command::new(bin)
        .args(["start", "--nodes", "1", "--dir"])
        .arg(&dir)
        .output()
        .expect("run fleet-testfleet start");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));

    let stop = Command::new(bin)
        .args(["stop", "--dir"])
        .arg(&dir)
        .output()
        .expect("run fleet-testfleet stop");
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    for pid in &pids {
        assert!(!running_sshd(*pid, &dir), "sshd {pid} was killed");
    }
    assert!(
        !accepts_tcp(SocketAddr::from((first, 2222))),
        "stop waits for refusal"
    );
    assert!(
        block_freed(first),
        "the block is free once its sshd are gone"
    );
}

/// Alive and still one of the fleet's sshd (a killed orphan may linger as a zombie, with an
/// empty command line, when init does not reap it).
fn running_sshd(pid: u32, dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
}

#[test]
fn a_missing_node_index_is_an_error_not_a_panic() {
    let mut fleet = start(1);
    for result in [fleet.start_node(1), fleet.replace_host_key(5)] {
        let err = result.expect_err("no such node");
        assert!(err.to_string().contains("indexed from 0"), "{err}");
    }
    assert_eq!(fleet.pids().len(), 1, "the node still runs");
}

#[test]
fn an_sshd_that_exits_at_start_is_reported_with_its_log() {
    let mut fleet = start(1);
    fleet.stop_node(0).expect("stop node-1");
    let key = fleet.nodes()[0].dir.join("ssh_host_ed25519_key");
    std::fs::write(&key, "not a key\n").expect("spoil the host key");
    let err = fleet
        .start_node(0)
        .expect_err("sshd cannot load its host key");
    let text = err.to_string();
    assert!(
        matches!(err, fleet_tests::HarnessError::NodeExited { .. }),
        "{text}"
    );
    assert!(text.contains("node-1: sshd exited"), "{text}");
    assert!(text.contains("sshd.log"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(fleet.pids().is_empty());
}

#[test]
fn a_missing_sshd_names_the_package_to_install() {
    let err = fleet_tests::HarnessError::SshdMissing {
        path: fleet_tests::SSHD.into(),
    };
    assert!(
        err.to_string()
            .contains("apt-get install -y openssh-server"),
        "{err}"
    );
}
