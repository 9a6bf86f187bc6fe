//! Provision, push, activate, status and rollback on real sshd nodes, through the `fleet`
//! binary, with the real `fleet-agent` installed on every node.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_tests::{FleetOptions, TestFleet, build_release, release_tree};

use crate::support::{Run, Tree, release_build, run, run_env, run_on, trust_root};

/// A fleet ready to deploy to (shared with the modes' tests, `modes.rs`).
pub(crate) struct Site {
    pub(crate) fleet: TestFleet,
    pub(crate) inv: String,
    pub(crate) root: String,
    pub(crate) store: String,
    keys: PathBuf,
}

pub(crate) fn agent_binary() -> PathBuf {
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
    site_with(FleetOptions {
        nodes,
        ..FleetOptions::default()
    })
}

/// `site` of a fleet started with `opts`.
fn site_with(opts: FleetOptions) -> Site {
    site_of(TestFleet::start(opts).expect("test fleet"))
}

/// `site` of a running fleet (`hosts trust` enrols every node it may contact).
pub(crate) fn site_of(fleet: TestFleet) -> Site {
    let dir = fleet.dir().to_owned();
    let inv = dir.join("inventory.yaml");
    fleet
        .write_inventory(&inv, &dir.join("known_hosts"))
        .expect("inventory");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let keys = dir.join("keys");
    let root = dir.join("root.json");
    trust_root(&keys, &root);
    let store = dir.join("store");
    for v in ["1.0.0", "2.0.0"] {
        let tree = release_tree(&dir, v);
        release_build(v, Tree::From(&tree), &keys.join("release.key"), &store);
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
    /// Runs `fleet ARGS -i INVENTORY`, with the controller's key (the admin tokens' source)
    /// kept in this site's folder.
    pub(crate) fn fleet_cmd(&self, args: &[&str]) -> Run {
        run_on(&self.inv, &self.fleet.dir().join("data"), args)
    }

    pub(crate) fn provision(&self, extra: &[&str]) -> Run {
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
        Self::results_of(&run.json(), field)
    }

    fn results_of(json: &serde_json::Value, field: &str) -> Vec<String> {
        json["nodes"]
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

    let first = site.provision(&[]).ok();
    assert_eq!(Site::results(&first, "result"), each("changed"));
    // These nodes run no systemd: no unit, and each node's report says how to start the agent.
    for (k, n) in first.json()["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .enumerate()
    {
        let root = site.fleet.nodes()[k].root.display().to_string();
        assert_eq!(
            n["notes"],
            serde_json::json!([format!(
                "no systemd on the node (/run/systemd/system is missing), so no unit was installed: the node's init system must start the agent: {root}/bin/fleet-agent run --root {root}"
            )]),
            "{n}"
        );
        assert!(
            !n["changes"].to_string().contains("fleet-agent.service"),
            "{n}"
        );
    }
    assert_eq!(
        Site::results(&site.provision(&[]).ok(), "result"),
        each("unchanged")
    );
    // As text, the line follows the table, for every node, on an unchanged run too.
    let agent = agent_binary().to_string_lossy().into_owned();
    let text = site
        .fleet_cmd(&["provision", "--trust", &site.root, "--agent", &agent])
        .ok()
        .stdout;
    for node in site.fleet.nodes() {
        let root = node.root.display();
        let line = format!(
            "\n{}: no systemd on the node (/run/systemd/system is missing), so no unit was installed: the node's init system must start the agent: {root}/bin/fleet-agent run --root {root}\n",
            node.name
        );
        assert!(text.contains(&line), "{line:?} in:\n{text}");
    }

    // Config files are rendered from templates/, and their secrets kept apart, mode 0600.
    let config = site.fleet.nodes()[0].root.join("config");
    let server = fs::read_to_string(config.join("server.toml")).expect("server.toml");
    assert!(
        server.contains("node = \"node-1\"\n") && server.contains("max_running_flows = 4\n"),
        "{server}"
    );
    // etl-server reads the rendered file as it is, secrets from their files.
    let loaded =
        fleet_server::Config::load(&config.join("server.toml")).expect("etl-server reads it");
    assert_eq!(loaded.node, "node-1");
    assert_eq!(
        loaded.postgres_url,
        "postgres://postgres@127.0.0.1:5432/postgres"
    );
    assert_eq!(loaded.limits.max_running_flows, 4);
    let secret = config.join("secrets/postgres_url");
    assert_eq!(
        fs::read_to_string(&secret).expect("secret"),
        "postgres://postgres@127.0.0.1:5432/postgres\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&secret).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    // The cluster's admin and cluster tokens: one secret each for all its nodes, which the
    // server reads.
    let read_all = |name: &str| -> Vec<String> {
        site.fleet
            .nodes()
            .iter()
            .map(|n| {
                let path = n.root.join("config/secrets").join(name);
                assert_eq!(
                    fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
                    0o600
                );
                fs::read_to_string(path).expect("token").trim().to_owned()
            })
            .collect()
    };
    let (tokens, cluster_tokens) = (read_all("admin_token"), read_all("cluster_token"));
    let token = tokens[0].as_str();
    for t in [token, cluster_tokens[0].as_str()] {
        assert!(
            t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()),
            "{t}"
        );
    }
    assert!(tokens.iter().all(|t| t == token), "{tokens:?}");
    assert!(
        cluster_tokens
            .iter()
            .all(|t| *t == cluster_tokens[0] && t != token)
    );
    assert_eq!(loaded.admin_token.as_deref(), Some(token));
    assert_eq!(
        loaded.cluster_token.as_deref(),
        Some(cluster_tokens[0].as_str())
    );
    assert!(
        server.contains("admin_token_file = ")
            && server.contains(&format!("redis_prefix = {:?}\n", site.fleet.redis_prefix())),
        "{server}"
    );
    // Each node's server on its own address, so the fleets of parallel tests never clash.
    assert!(
        server.contains(&format!("listen = \"{}\"\n", site.fleet.nodes()[0].api)),
        "{server}"
    );

    // A changed setting: --check shows the diff and changes nothing; a run applies it.
    let text = fs::read_to_string(&site.inv).expect("inventory");
    fs::write(
        &site.inv,
        text.replacen(
            "defaults:\n",
            "defaults:\n  vars: { max_running_flows: 8 }\n",
            1,
        ),
    )
    .expect("write");
    let check = site.provision(&["--check"]).ok().json();
    let diff = check["nodes"][0]["diffs"][0]
        .as_str()
        .expect("a diff")
        .to_owned();
    assert!(
        diff.contains("-max_running_flows = 4\n+max_running_flows = 8\n"),
        "{diff}"
    );
    assert!(
        !check.to_string().contains("127.0.0.1:5432") && !check.to_string().contains(token),
        "a secret reached the output: {check}"
    );
    assert_eq!(
        fs::read_to_string(config.join("server.toml")).expect("server.toml"),
        server,
        "--check wrote"
    );
    assert_eq!(
        Site::results(&site.provision(&[]).ok(), "result"),
        each("changed")
    );
    assert!(
        fs::read_to_string(config.join("server.toml"))
            .expect("server.toml")
            .contains("max_running_flows = 8\n")
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
    // No agent daemon runs on these nodes: `current` moves, and the output says no server
    // was restarted.
    let activated = site.fleet_cmd(&["activate", "2.0.0"]).ok();
    assert!(
        activated.stdout.contains(
            "2.0.0   switched  no agent daemon runs: current switched, no server was restarted"
        ),
        "{}",
        activated.stdout
    );
    assert_eq!(site.active(), each("2.0.0"));
    let status = site.fleet_cmd(&["status"]).ok();
    let row = status
        .stdout
        .lines()
        .find(|l| l.starts_with("node-3 "))
        .unwrap_or_else(|| panic!("a row for node-3: {}", status.stdout));
    let cells: Vec<&str> = row
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells[..8],
        [
            "node-3",
            "not running",
            "-",
            "-",
            "2.0.0",
            "-",
            "-",
            "1.0.0,2.0.0"
        ],
        "{}",
        status.stdout
    );
    let json = site.fleet_cmd(&["status", "--json"]).ok().json();
    let node = &json["nodes"][2];
    assert_eq!(node["daemon"], serde_json::Value::Null, "{json}");
    assert_eq!(node["previous"], "1.0.0", "{json}");
    assert!(
        node["host_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("SHA256:")),
        "{json}"
    );

    // A downgrade is refused and changes nothing; rollback goes back explicitly.
    let refused = site.fleet_cmd(&["activate", "1.0.0"]).fails();
    assert!(
        refused.stderr.contains("older than the active 2.0.0"),
        "{}",
        refused.stderr
    );
    assert_eq!(site.current_link(0), Path::new("releases/2.0.0"));
    let rolled = site.fleet_cmd(&["rollback", "--json"]).ok().json();
    assert_eq!(Site::results_of(&rolled, "server"), each("not_restarted"));
    assert_eq!(Site::results_of(&rolled, "previous"), each("2.0.0"));
    assert_eq!(site.active(), each("1.0.0"));
    let not_staged = site.fleet_cmd(&["activate", "3.0.0"]).fails();
    assert!(
        not_staged.stderr.contains("not staged"),
        "{}",
        not_staged.stderr
    );
    assert_eq!(site.active(), each("1.0.0"));
    audit_log_records_every_change(&site);
}

/// Every command above that changed nodes left one audit row (who, which key, the command
/// line, each node's result, the pushed manifest's digest); the chain verifies, and a row
/// edited in the SQLite file afterwards is named by `fleet audit verify`.
fn audit_log_records_every_change(site: &Site) {
    let data = site.fleet.dir().join("data");
    let env = [("FLEET_DATA_DIR", data.as_path())];
    let audit = run_env(&["audit", "--json"], &env).ok().json();
    let rows = audit["rows"].as_array().expect("rows").clone();
    let commands: Vec<&str> = rows.iter().filter_map(|r| r["command"].as_str()).collect();
    for wanted in ["provision", "push", "activate", "rollback"] {
        assert!(
            commands.contains(&wanted),
            "{wanted} not audited: {commands:?}"
        );
    }
    assert!(
        !rows
            .iter()
            .any(|r| r["args"][0] == "status" || r["args"].to_string().contains("--check")),
        "status and provision --check change nothing and leave no row: {commands:?}"
    );
    let push = rows
        .iter()
        .find(|r| r["command"] == "push")
        .expect("a push row");
    assert_eq!(push["nodes"].as_array().map(Vec::len), Some(5), "{push}");
    assert!(
        push["digests"][0].as_str().is_some_and(|d| d.len() == 64),
        "the manifest's sha256: {push}"
    );
    assert!(
        push["key_fingerprints"][0]
            .as_str()
            .is_some_and(|k| k.starts_with("SHA256:")),
        "{push}"
    );
    assert!(
        push["os_user"].as_str().is_some_and(|u| !u.is_empty()),
        "{push}"
    );
    let refused = rows
        .iter()
        .find(|r| {
            r["command"] == "activate"
                && r["result"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("failed"))
        })
        .expect("the refused downgrade is recorded as failed");
    assert!(refused["args"].to_string().contains("1.0.0"), "{refused}");

    let verified = run_env(&["audit", "verify"], &env).ok();
    assert!(
        verified.stdout.contains("the chain is intact"),
        "{}",
        verified.stdout
    );

    // Someone with write access to the file makes the refused activation look fine.
    let id = refused["id"].as_i64().expect("id");
    let db = data.join("state.db");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
                .await
                .expect("the state file");
            sqlx::query("UPDATE audit SET result = 'ok' WHERE id = $1")
                .bind(id)
                .execute(&pool)
                .await
                .expect("edit");
            pool.close().await;
        });
    let caught = run_env(&["audit", "verify"], &env).fails();
    assert!(
        caught
            .stderr
            .contains(&format!("audit row {id} was edited")),
        "{}",
        caught.stderr
    );
}

#[test]
fn the_deploy_key_reaches_only_the_agent() {
    let site = site(1);
    // An earlier, unrestricted line for the same key would win in sshd: provisioning removes it.
    let authorized = site.fleet.nodes()[0].dir.join("authorized_keys");
    let deploy_pub =
        fs::read_to_string(format!("{}.pub", site.fleet.deploy_key().display())).expect("pub");
    let mut keys = fs::read_to_string(&authorized).expect("authorized_keys");
    keys.push_str(&deploy_pub);
    fs::write(&authorized, keys).expect("write");
    site.provision(&[]).ok();
    let blob = deploy_pub.split_whitespace().nth(1).expect("blob");
    let lines: Vec<String> = fs::read_to_string(&authorized)
        .expect("authorized_keys")
        .lines()
        .filter(|l| l.contains(blob))
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("restrict,command="), "{lines:?}");
    let node = &site.fleet.nodes()[0];
    // ssh or scp (`port_flag` -p or -P) with the deploy key, checking the node's host key.
    let client = |program: &str, port_flag: &str| {
        let mut c = Command::new(program);
        c.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .args(["-o", "KexAlgorithms=curve25519-sha256"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                site.fleet.dir().join("known_hosts").display()
            ))
            .arg("-i")
            .arg(site.fleet.deploy_key())
            .args([port_flag, &node.port.to_string()]);
        c
    };
    let ssh = |args: &[&str], command: &[&str]| {
        let out = client("ssh", "-p")
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
    // Forwarding of every kind: the node's sshd allows it (X11Forwarding yes, as Debian ships
    // it), so only the key's options refuse it. Checked first, as a key that forwards would
    // leave the `-N` attempts below waiting. sshd reports what it made of the
    // key's options to the client (`ssh -v`): the deploy key keeps the forced command alone,
    // where the fleet's own unrestricted key gets every forwarding.
    let key_options = |key: &Path| {
        let out = Command::new("ssh")
            .args(["-v", "-A", "-X", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                site.fleet.dir().join("known_hosts").display()
            ))
            .arg("-i")
            .arg(key)
            .args(["-p", &node.port.to_string()])
            .arg(format!("{}@{}", site.fleet.user(), node.addr))
            .arg("true")
            .env("DISPLAY", ":0")
            .output()
            .expect("ssh runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let options = stderr
            .lines()
            .find_map(|l| l.split_once("key options: ").map(|(_, o)| o.to_owned()))
            .unwrap_or_else(|| panic!("sshd reports no key options: {stderr}"));
        (options, stderr)
    };
    let (open, _) = key_options(site.fleet.client_key());
    for forwarding in ["agent-forwarding", "port-forwarding", "x11-forwarding"] {
        assert!(open.contains(forwarding), "{open}");
    }
    let (restricted, stderr) = key_options(site.fleet.deploy_key());
    assert_eq!(restricted.trim(), "command", "{stderr}");
    assert!(stderr.contains("X11 forwarding request failed"), "{stderr}");
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
    // Local forwarding (a direct-tcpip channel, here the stdio form) is refused.
    let (code, _, stderr) = ssh(&["-W", &format!("{}:{}", node.addr, node.port)], &[]);
    assert_eq!(code, Some(255), "{stderr}");
    assert!(
        stderr.contains("open failed: administratively prohibited"),
        "{stderr}"
    );
    // File transfer is refused: scp and sftp run the agent too, which writes nothing.
    let staging = node.root.join("state/staging");
    let local = site.dir().join("planted");
    fs::write(&local, "not a release").expect("write");
    let out = client("scp", "-P")
        .arg("-O")
        .arg(&local)
        .arg(format!(
            "{}@{}:{}/planted",
            site.fleet.user(),
            node.addr,
            staging.display()
        ))
        .output()
        .expect("scp runs");
    assert!(!out.status.success(), "scp through the deploy key");
    let (code, _, _) = ssh(&["-s"], &["sftp"]);
    assert_ne!(code, Some(0), "the sftp subsystem through the deploy key");
    assert!(!staging.join("planted").exists());
    let _ = &site.keys;
}

impl Site {
    fn dir(&self) -> &Path {
        self.fleet.dir()
    }

    /// Copies release `version` from the site's store into a new store, changed by `alter`.
    fn altered_store(&self, name: &str, version: &str, alter: impl FnOnce(&mut Vec<u8>)) -> String {
        let store = self.dir().join(name);
        fs::create_dir_all(&store).expect("mkdir");
        let mut bytes =
            fs::read(Path::new(&self.store).join(format!("{version}.bundle"))).expect("bundle");
        alter(&mut bytes);
        fs::write(store.join(format!("{version}.bundle")), bytes).expect("write");
        store.to_string_lossy().into_owned()
    }

    /// Builds `version` signed by `key` at `created` into a store of its own.
    fn built_store(
        &self,
        name: &str,
        version: &str,
        key: &Path,
        created: std::time::SystemTime,
    ) -> String {
        let tree = release_tree(self.dir(), version);
        let store = self.dir().join(name);
        let key = fleet_release::SecretKey::load(key).expect("key");
        build_release(version, &tree, &key, &store, created);
        store.to_string_lossy().into_owned()
    }

    /// `current`, the staged releases and whatever is in staging, on node `k`.
    fn node_state(&self, k: usize) -> (PathBuf, Vec<String>, usize) {
        let root = &self.fleet.nodes()[k].root;
        let mut releases: Vec<String> = fs::read_dir(root.join("releases"))
            .expect("releases")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        releases.sort();
        let staging = fs::read_dir(root.join("state/staging"))
            .map(|d| d.count())
            .unwrap_or(0);
        (
            fs::read_link(root.join("current")).unwrap_or_default(),
            releases,
            staging,
        )
    }

    fn assert_untouched(&self, k: usize) {
        assert_eq!(
            self.node_state(k),
            (PathBuf::from("releases/1.0.0"), vec!["1.0.0".to_owned()], 0),
            "node {k}"
        );
    }
}

/// A site with 1.0.0 active everywhere.
fn running_site(nodes: usize) -> Site {
    let site = site(nodes);
    site.provision(&[]).ok();
    site.fleet_cmd(&["push", "1.0.0", "--store", &site.store])
        .ok();
    site.fleet_cmd(&["activate", "1.0.0"]).ok();
    site
}

#[test]
fn refused_pushes_leave_the_active_release_and_no_debris() {
    let site = running_site(3);
    let cases = [
        (
            "flipped",
            site.altered_store("flipped", "2.0.0", |b| *b.last_mut().expect("bytes") ^= 1),
            "payload",
        ),
        (
            "stranger",
            {
                run(&[
                    "keys",
                    "generate",
                    "--out",
                    &site.keys.to_string_lossy(),
                    "--name",
                    "stranger",
                ])
                .ok();
                site.built_store(
                    "stranger",
                    "2.0.0",
                    &site.keys.join("stranger.key"),
                    std::time::SystemTime::now(),
                )
            },
            "unknown key",
        ),
        (
            "expired",
            site.built_store(
                "expired",
                "2.0.0",
                &site.keys.join("release.key"),
                std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86_400),
            ),
            "expired at",
        ),
    ];
    for (name, store, message) in cases {
        let out = site
            .fleet_cmd(&["push", "2.0.0", "--store", &store])
            .fails();
        assert!(
            out.stdout.contains("3 nodes: 0 ok, 3 failed"),
            "{name}: {}",
            out.stdout
        );
        assert!(out.stderr.contains(message), "{name}: {}", out.stderr);
        for k in 0..3 {
            site.assert_untouched(k);
        }
    }
}

#[test]
fn a_cut_upload_leaves_nothing_and_a_retry_completes_it() {
    use fleet_controller::{Input, Session, Timeouts};
    let site = running_site(1);
    let node = fleet_inventory::Inventory::load(Path::new(&site.inv))
        .expect("inventory")
        .nodes()[0]
        .clone();
    let target = fleet_controller::deploy_target(&node).expect("deploy target");
    let bundle = fs::read(Path::new(&site.store).join("2.0.0.bundle")).expect("bundle");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let session = Session::connect(&target, Timeouts::default())
            .await
            .expect("connects");
        let mut half = CutAfter {
            data: bundle.clone(),
            pos: 0,
            cut: bundle.len() / 2,
        };
        let sent = session
            .exec(
                "stage 2.0.0",
                Input::Reader(&mut half),
                std::time::Duration::from_secs(30),
            )
            .await;
        match sent {
            Err(fleet_controller::SshError::Input { command, error, .. })
                if command == "stage 2.0.0" && error.to_string() == "connection cut" => {}
            other => panic!("the cut upload ended with {other:?}"),
        }
        drop(session); // the connection goes away mid-upload
    });
    // The agent sees its input end early, refuses the bundle and clears staging.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while site.node_state(0).2 != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    site.assert_untouched(0);
    site.fleet_cmd(&["push", "2.0.0", "--store", &site.store])
        .ok();
    assert_eq!(site.node_state(0).1, ["1.0.0", "2.0.0"]);
}

/// Yields `data` up to `cut`, then fails, like a source that breaks mid-transfer.
struct CutAfter {
    data: Vec<u8>,
    pos: usize,
    cut: usize,
}

impl tokio::io::AsyncRead for CutAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.pos >= self.cut {
            return std::task::Poll::Ready(Err(std::io::Error::other("connection cut")));
        }
        let n = buf.remaining().min(self.cut - self.pos).min(64 << 10);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[test]
fn a_down_node_fails_alone() {
    let mut site = running_site(3);
    site.fleet.stop_node(1).expect("stop node-2");
    let out = site
        .fleet_cmd(&["push", "2.0.0", "--store", &site.store])
        .fails();
    assert!(
        out.stdout.contains("3 nodes: 2 ok, 1 failed"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("error: node-2"), "{}", out.stderr);
    assert_eq!(site.node_state(0).1, ["1.0.0", "2.0.0"]);
    assert_eq!(site.node_state(2).1, ["1.0.0", "2.0.0"]);
    site.assert_untouched(1);
}

/// Unmounts on drop, so a failing test never leaves a mount behind.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_staging_is_refused_cleanly() {
    let site = site(1);
    let root = site.fleet.nodes()[0].root.clone();
    let agent_size = fs::metadata(agent_binary()).expect("agent").len();
    let size = format!("size={}k", (agent_size + (4 << 20)) / 1024);
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
        .arg(&root)
        .status()
        .expect("mount runs");
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let _guard = Tmpfs(root.clone());
    site.provision(&[]).ok();
    site.fleet_cmd(&["push", "1.0.0", "--store", &site.store])
        .ok();
    site.fleet_cmd(&["activate", "1.0.0"]).ok();

    // 8 MiB that cannot compress does not fit in what is left.
    let tree = site.dir().join("tree-9.0.0");
    fs::create_dir_all(tree.join("bin")).expect("mkdir");
    let noise: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    fs::write(tree.join("data.bin"), noise).expect("write");
    fs::write(tree.join("bin/etl-server"), "#!/bin/sh\n").expect("write");
    let key = site.keys.join("release.key");
    release_build("9.0.0", Tree::From(&tree), &key, Path::new(&site.store));
    let out = site
        .fleet_cmd(&["push", "9.0.0", "--store", &site.store])
        .fails();
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    site.assert_untouched(0);
}

#[test]
fn provisioning_never_re_roots_a_node() {
    let site = site(1);
    site.provision(&[]).ok();
    let pinned = fs::read(site.fleet.nodes()[0].root.join("trust/root.json")).expect("pinned root");
    // A different root, valid on its own but not signed by the pinned root's keys.
    let other = site.dir().join("other-root.json");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    for name in ["other", "other-release"] {
        run(&["keys", "generate", "--out", &s(&site.keys), "--name", name]).ok();
    }
    run(&[
        "trust",
        "init",
        "--root-key",
        &s(&site.keys.join("other.pub")),
        "--release-key",
        &s(&site.keys.join("other-release.pub")),
        "--sign",
        &s(&site.keys.join("other.key")),
        "--out",
        &s(&other),
    ])
    .ok();
    let agent = agent_binary().to_string_lossy().into_owned();
    let out = site
        .fleet_cmd(&["provision", "--trust", &s(&other), "--agent", &agent])
        .fails();
    assert!(
        out.stderr.contains("is not its successor"),
        "{}",
        out.stderr
    );
    assert_eq!(
        fs::read(site.fleet.nodes()[0].root.join("trust/root.json")).expect("pinned root"),
        pinned
    );
    // A proper rotation (signed by the old root key and the new one) is accepted.
    let v2 = site.dir().join("root-v2.json");
    run(&[
        "trust",
        "rotate",
        "--current",
        &site.root,
        "--root-key",
        &s(&site.keys.join("other.pub")),
        "--sign",
        &s(&site.keys.join("root.key")),
        "--sign",
        &s(&site.keys.join("other.key")),
        "--out",
        &s(&v2),
    ])
    .ok();
    site.fleet_cmd(&["provision", "--trust", &s(&v2), "--agent", &agent])
        .ok();
}
