//! The customers' modes through the `fleet` binary on real sshd nodes: an airgapped customer's
//! node is never connected to by any command that uses SSH (its own sshd's log shows no
//! connection, while the other node's shows them), each command names the skip, in text and
//! JSON, and a command left with only such nodes does nothing and fails; `inventory list`
//! says how a release reaches each node.

use fleet_tests::{FleetOptions, TestFleet};
use serde_json::Value;

use crate::deploy::{agent_binary, site_of};
use crate::support::run_env;

/// The line every command prints for the airgapped node.
const SKIP_LINE: &str = "node-2: skipped: customer test-offline is airgapped: never contacted over SSH; give it an offline bundle (fleet installer build --offline)";

/// The `nodes` entry of `node` in a command's JSON.
fn entry<'a>(json: &'a Value, node: &str) -> &'a Value {
    json["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["node"] == node)
        .unwrap_or_else(|| panic!("no entry for {node}: {json}"))
}

/// The sshd log lines of node `k` that record an incoming TCP connection.
fn connections(fleet: &TestFleet, k: usize) -> Vec<String> {
    let log = std::fs::read_to_string(&fleet.nodes()[k].log).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("Connection from"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_airgapped_customers_node_is_never_contacted_and_every_command_says_so() {
    // node-1 is a dedicated customer's, node-2 an airgapped customer's; both real sshd nodes.
    let fleet = TestFleet::start(FleetOptions {
        nodes: 2,
        airgapped: vec![1],
        ..FleetOptions::default()
    })
    .expect("test fleet");
    // What node-2's sshd saw before any command: the harness's own check that it listens (a
    // TCP connect that says no word of SSH), which sshd logs a moment later.
    let logged = std::time::Instant::now();
    while !std::fs::read_to_string(&fleet.nodes()[1].log)
        .unwrap_or_default()
        .contains("Connection closed by")
    {
        assert!(
            logged.elapsed() < std::time::Duration::from_secs(30),
            "node-2's sshd never logged the harness's check that it listens"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = connections(&fleet, 1);
    assert_eq!(before.len(), 1, "{before:?}");
    // Enrols the host keys (`hosts trust`, mixed as below) and builds the releases.
    let site = site_of(fleet);
    let agent = agent_binary().to_string_lossy().into_owned();
    let store = site.store.clone();

    // Every command that connects, on both nodes: node-1 is worked on, node-2 skipped.
    let mixed: Vec<Vec<&str>> = vec![
        vec!["hosts", "trust"],
        vec!["provision", "--trust", &site.root, "--agent", &agent],
        vec!["push", "1.0.0", "--store", &store],
        vec!["activate", "1.0.0"],
        vec!["status"],
        vec!["push", "2.0.0", "--store", &store],
        vec!["activate", "2.0.0"],
        vec!["rollback"],
    ];
    for args in &mixed {
        let text = site.fleet_cmd(args).ok();
        assert!(
            text.stdout.contains(SKIP_LINE) && text.stdout.contains("1 skipped"),
            "{args:?}: {}",
            text.stdout
        );
        let mut json_args = args.clone();
        json_args.push("--json");
        let json = site.fleet_cmd(&json_args).ok().json();
        let skipped = entry(&json, "node-2");
        assert_eq!(skipped["result"], "skipped", "{args:?}: {json}");
        assert!(
            skipped["skipped"]
                .as_str()
                .is_some_and(|s| s.starts_with("customer test-offline is airgapped")),
            "{args:?}: {json}"
        );
        assert!(
            entry(&json, "node-1")["error"].is_null(),
            "{args:?}: {json}"
        );
    }

    // Only the airgapped node selected: nothing done, a failure that names the skip.
    let mut alone = mixed.clone();
    alone.push(vec![
        "rollout", "start", "1.0.0", "--store", &store, "--detach",
    ]);
    for args in &alone {
        let mut limited = args.clone();
        limited.extend(["--limit", "node-2"]);
        let run = site.fleet_cmd(&limited).fails();
        assert!(
            run.stderr.contains(SKIP_LINE)
                && run
                    .stderr
                    .contains("nothing was done: every selected node (node-2) is never contacted"),
            "{args:?}: {}",
            run.stderr
        );
        limited.push("--json");
        let json = site.fleet_cmd(&limited).fails().json();
        assert_eq!(json["ok"], false, "{json}");
        assert_eq!(json["details"]["skipped"][0]["node"], "node-2", "{json}");
    }

    // The audit log names the skip too.
    let data = site.fleet.dir().join("data");
    let audit = run_env(&["audit", "--json"], &[("FLEET_DATA_DIR", &data)])
        .ok()
        .json();
    let push = audit["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["command"] == "push" && r["result"] == "ok")
        .unwrap_or_else(|| panic!("no push row: {audit}"));
    assert!(
        push["nodes"]
            .to_string()
            .contains(r#"["node-2","skipped"]"#),
        "{push}"
    );

    // node-1's sshd saw every command; node-2's sshd saw no TCP connection after the
    // harness's.
    let node1 = connections(&site.fleet, 0);
    assert!(
        node1.len() > 2 * mixed.len(),
        "node-1's log shows its connections: {node1:?}"
    );
    assert_eq!(
        connections(&site.fleet, 1),
        before,
        "node-2 (airgapped) was connected to; its log:\n{}",
        std::fs::read_to_string(&site.fleet.nodes()[1].log).unwrap_or_default()
    );

    // inventory list says how a release reaches each node.
    let list = site.fleet_cmd(&["inventory", "list", "--json"]).ok().json();
    assert_eq!(entry_named(&list, "node-1")["push"], "over SSH by us");
    assert_eq!(
        entry_named(&list, "node-2")["push"],
        "never: offline bundle"
    );
    assert_eq!(entry_named(&list, "node-2")["mode"], "airgapped");
    let text = site.fleet_cmd(&["inventory", "list"]).ok().stdout;
    assert!(
        text.contains("mode=airgapped push=\"never: offline bundle\""),
        "{text}"
    );
}

/// `inventory list --json`'s entry of `name` (its nodes carry `name`, not `node`).
fn entry_named<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no {name}: {json}"))
}
