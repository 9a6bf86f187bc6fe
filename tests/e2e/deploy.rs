//! Provision, push, activate, status and rollback on real sshd nodes, through the `fleet`
//! binary, with the real `fleet-agent` installed on every node.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_tests::{FleetOptions, TestFleet};

use crate::support::{Run, run};

struct Site {
    fleet: TestFleet,
    inv: String,
    root: String,
    store: String,
    keys: PathBuf,
}

fn agent_binary() -> PathBuf {
    let agent = Path::new(env!("CARGO_BIN_EXE_fleet")).with_file_name("fleet-agent");
    assert!(
        agent.exists(),
        "{} is missing: build it with `cargo build -p fleet-agent` (`cargo test --workspace` does)",
        agent.display()
    );
    agent
}

/// A fleet with enrolled host keys, a trust root and signed releases 1.0.0 and 2.0.0.
fn site(nodes: usize) -> Site {
    let fleet = TestFleet::start(FleetOptions {
        nodes,
        ..FleetOptions::default()
    })
    .expect("test fleet");
    let dir = fleet.dir().to_owned();
    let inv = dir.join("inventory.yaml");
    fleet
        .write_inventory(&inv, &dir.join("known_hosts"))
        .expect("inventory");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let keys = dir.join("keys");
    for name in ["root", "release"] {
        run(&["keys", "generate", "--out", &s(&keys), "--name", name]).ok();
    }
    let root = dir.join("root.json");
    run(&[
        "trust",
        "init",
        "--root-key",
        &s(&keys.join("root.pub")),
        "--release-key",
        &s(&keys.join("release.pub")),
        "--sign",
        &s(&keys.join("root.key")),
        "--out",
        &s(&root),
    ])
    .ok();
    let store = dir.join("store");
    for v in ["1.0.0", "2.0.0"] {
        let tree = dir.join(format!("tree-{v}"));
        fs::create_dir_all(tree.join("bin")).expect("mkdir");
        fs::write(
            tree.join("bin/etl-server"),
            format!("#!/bin/sh\necho {v}\n"),
        )
        .expect("write");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            tree.join("bin/etl-server"),
            fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        run(&[
            "release",
            "build",
            "--version",
            v,
            "--from",
            &s(&tree),
            "--key",
            &s(&keys.join("release.key")),
            "--out",
            &s(&store),
        ])
        .ok();
    }
    run(&["hosts", "trust", "-i", &s(&inv)]).ok();
    Site {
        inv: s(&inv),
        root: s(&root),
        store: s(&store),
        keys,
        fleet,
    }
}

impl Site {
    fn fleet_cmd(&self, args: &[&str]) -> Run {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-i", &self.inv]);
        run(&all)
    }

    fn provision(&self, extra: &[&str]) -> Run {
        let agent = agent_binary().to_string_lossy().into_owned();
        let mut args = vec![
            "provision",
            "--trust",
            &self.root,
            "--agent",
            &agent,
            "--json",
        ];
        args.extend(extra);
        self.fleet_cmd(&args)
    }

    fn results(run: &Run, field: &str) -> Vec<String> {
        run.json()["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n[field].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    fn active(&self) -> Vec<String> {
        Self::results(&self.fleet_cmd(&["status", "--json"]).ok(), "active")
    }

    fn current_link(&self, k: usize) -> PathBuf {
        fs::read_link(self.fleet.nodes()[k].root.join("current")).expect("current link")
    }
}

#[test]
fn provision_push_activate_status_rollback_on_five_nodes() {
    let site = site(5);
    let each = |s: &str| vec![s.to_owned(); 5];

    let check = site.provision(&["--check"]).ok();
    assert_eq!(Site::results(&check, "result"), each("would change"));
    assert!(
        !site.fleet.nodes()[0].root.join("bin").exists(),
        "--check changed nothing"
    );

    assert_eq!(
        Site::results(&site.provision(&[]).ok(), "result"),
        each("changed")
    );
    assert_eq!(
        Site::results(&site.provision(&[]).ok(), "result"),
        each("unchanged")
    );

    let push = |v: &str| {
        site.fleet_cmd(&["push", v, "--store", &site.store, "--json"])
            .ok()
    };
    assert_eq!(Site::results(&push("1.0.0"), "result"), each("staged"));
    assert_eq!(Site::results(&push("1.0.0"), "result"), each("unchanged"));
    site.fleet_cmd(&["activate", "1.0.0"]).ok();
    assert_eq!(site.active(), each("1.0.0"));
    let out = Command::new(site.fleet.nodes()[2].root.join("current/bin/etl-server"))
        .output()
        .expect("runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.0.0\n");

    push("2.0.0");
    site.fleet_cmd(&["activate", "2.0.0"]).ok();
    assert_eq!(site.active(), each("2.0.0"));
    let status = site.fleet_cmd(&["status"]).ok();
    assert!(status.stdout.contains("1.0.0,2.0.0"), "{}", status.stdout);
    assert!(status.stdout.contains("SHA256:"), "{}", status.stdout);

    // A downgrade is refused and changes nothing; rollback goes back explicitly.
    let refused = site.fleet_cmd(&["activate", "1.0.0"]).fails();
    assert!(
        refused.stderr.contains("older than the active 2.0.0"),
        "{}",
        refused.stderr
    );
    assert_eq!(site.current_link(0), Path::new("releases/2.0.0"));
    site.fleet_cmd(&["rollback"]).ok();
    assert_eq!(site.active(), each("1.0.0"));
    let not_staged = site.fleet_cmd(&["activate", "3.0.0"]).fails();
    assert!(
        not_staged.stderr.contains("not staged"),
        "{}",
        not_staged.stderr
    );
    assert_eq!(site.active(), each("1.0.0"));
}

#[test]
fn the_deploy_key_reaches_only_the_agent() {
    let site = site(1);
    site.provision(&[]).ok();
    let node = &site.fleet.nodes()[0];
    let ssh = |args: &[&str], command: &[&str]| {
        let out = Command::new("ssh")
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "KexAlgorithms=curve25519-sha256",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                site.fleet.dir().join("known_hosts").display()
            ))
            .arg("-i")
            .arg(site.fleet.deploy_key())
            .args(["-p", &node.port.to_string()])
            .args(args)
            .arg(format!("{}@{}", site.fleet.user(), node.addr))
            .args(command)
            .output()
            .expect("ssh runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No command (a shell): the agent answers and refuses.
    let (code, stdout, _) = ssh(&[], &[]);
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains("only runs fleet-agent requests"),
        "{stdout}"
    );
    // A PTY is refused by `restrict` (and a client that insists on one gets nothing at all).
    let (code, stdout, stderr) = ssh(&["-tt"], &[]);
    assert_eq!(code, Some(255), "{stdout} {stderr}");
    assert!(stderr.contains("PTY allocation request failed"), "{stderr}");
    assert_eq!(stdout, "");
    // Asking for a shell command runs the agent, which refuses it.
    let (code, stdout, _) = ssh(&[], &["id"]);
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains("only runs fleet-agent requests"),
        "{stdout}"
    );
    // Port forwarding is refused.
    let (code, _, stderr) = ssh(
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:9",
        ],
        &[],
    );
    assert_eq!(code, Some(255), "{stderr}");
    assert!(stderr.contains("forwarding failed"), "{stderr}");
    let _ = &site.keys;
}
