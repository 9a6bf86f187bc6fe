//! `fleet rollout` against a real cluster: three sshd nodes provisioned with a trust root that
//! names an order key, their agent daemons running 1.0.0 servers, then rollouts of 1.1.0.
//! What the controller does is checked from outside: the release staged everywhere, the signed
//! order taken by every node (its record on the node's disk, its report), the rollout in the
//! state store with its targets and in the audit log, one rollout per cluster under two
//! concurrent starts, controls taken by every node, orders no node takes ending the rollout at
//! once, a node that cannot stage keeping the rollout off its cluster (unless skipped),
//! targets nobody can reach marked lost, and a rollout whose controller was killed after
//! handing out its orders carried on by the agents and found committed by a new watch.

use std::path::Path;
use std::process::Stdio;

use fleet_tests::{FleetRun, Provisioned, per_node, window_not_now};
use serde_json::Value;

fn provisioned(label: &str) -> Provisioned {
    let c = Provisioned::start(Path::new(env!("CARGO_BIN_EXE_fleet")), label, 3);
    for v in ["1.0.0", "1.1.0"] {
        c.build_release(v);
    }
    c.activate("1.0.0");
    c
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `fleet rollout start 1.1.0 --detach --json ...EXTRA -i INVENTORY` as a command to spawn.
fn start_command(c: &Provisioned, extra: &[&str]) -> std::process::Command {
    let (store, inventory) = (s(&c.store), s(&c.inventory));
    let mut args = vec![
        "rollout", "start", "1.1.0", "--store", &store, "--detach", "--json", "-i", &inventory,
    ];
    args.extend(extra);
    c.command(&args)
}

/// The rollouts `fleet rollout list --json` shows, newest first.
fn rollouts(c: &Provisioned) -> Vec<Value> {
    c.run(&["rollout", "list", "--json"]).ok().json()["rollouts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `fleet rollout status ID --json -i INVENTORY`: one round of the nodes' reports. Its exit
/// code says whether every target committed, which depends on how far the agents got: only
/// the document is read.
fn rollout_status(c: &Provisioned, id: &str) -> Value {
    let run = c.run_i(&["rollout", "status", id, "--json"]);
    assert!(
        matches!(run.code, Some(0 | 1)),
        "status: {}\n{}",
        run.stdout,
        run.stderr
    );
    run.json()["rollout"].clone()
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v.as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn rollout_start_stages_hands_out_orders_and_controls_reach_every_node() {
    let mut c = provisioned("e2e_rollout_start");
    c.with_logs(start_scenario);
}

fn start_scenario(c: &mut Provisioned) {
    let (store, data) = (s(&c.store), c.data.clone());

    // Without the order key: one clear error, nothing claimed or staged.
    let missing = data.join("elsewhere/order.key");
    let run = c
        .run_i(&[
            "rollout",
            "start",
            "1.1.0",
            "--store",
            &store,
            "--order-key",
            &s(&missing),
        ])
        .fails();
    assert!(
        run.stderr
            .contains(&format!("no order key at {}", missing.display()))
            && run.stderr.contains("fleet keys generate --out")
            && run.stderr.contains("--order-key"),
        "{}",
        run.stderr
    );
    assert!(
        rollouts(c).is_empty(),
        "a rollout was recorded without a key"
    );
    let status = c.ok_json(&["status"]);
    for (node, staged) in per_node(&status, "staged") {
        assert!(
            !names(&staged).contains(&"1.1.0".to_owned()),
            "{node} staged 1.1.0 without a key: {status}"
        );
    }

    // Two starts at once on the one cluster: exactly one proceeds, the other is refused
    // naming the first.
    let spawn = || {
        start_command(c, &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a start")
    };
    let (first, second) = (spawn(), spawn());
    let runs: Vec<FleetRun> = [first, second]
        .into_iter()
        .map(|child| child.wait_with_output().expect("a start ends").into())
        .collect();
    let (won, lost): (Vec<&FleetRun>, Vec<&FleetRun>) =
        runs.iter().partition(|r| r.code == Some(0));
    assert_eq!(
        (won.len(), lost.len()),
        (1, 1),
        "exactly one start proceeds: {runs:?}"
    );
    let started = won[0].json();
    let id = started["rollouts"][0]["rollout"]
        .as_str()
        .unwrap_or_else(|| panic!("no rollout id: {started}"))
        .to_owned();
    assert_eq!(lost[0].code, Some(1), "{:?}", lost[0]);
    assert!(
        lost[0].stderr.contains(&format!(
            "a rollout is already in flight on cluster test/local: {id}"
        )),
        "the refusal names the first: {}",
        lost[0].stderr
    );

    // The winner staged 1.1.0 everywhere and every node took its order.
    assert_eq!(started["rollouts"][0]["started"], true, "{started}");
    assert_eq!(
        names(&started["rollouts"][0]["targets"]),
        ["node-1", "node-2", "node-3"]
    );
    for n in started["nodes"].as_array().expect("nodes") {
        assert_eq!(n["stage"], "staged", "{n}");
        assert_eq!(n["order"], "accepted", "{n}");
        assert_eq!(n["rollout"], id.as_str(), "{n}");
    }
    let status = c.ok_json(&["status"]);
    for (node, staged) in per_node(&status, "staged") {
        assert!(
            names(&staged).contains(&"1.1.0".to_owned()),
            "{node}: {status}"
        );
    }
    // Each node keeps the order it accepted, as signed.
    for n in c.fleet.nodes() {
        let record = n.root.join(format!("state/orders/{id}.json"));
        let text = std::fs::read_to_string(&record)
            .unwrap_or_else(|e| panic!("{}: {e}", record.display()));
        let record: Value = serde_json::from_str(&text).expect("a JSON record");
        assert_eq!(record["order"]["version"], "1.1.0", "{record}");
        assert_eq!(record["order"]["cluster"], "test/local", "{record}");
    }

    // The store holds the rollout with its targets and order; status and list show it.
    let listed = rollouts(c);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "running");
    assert_eq!(names(&listed[0]["targets"]), ["node-1", "node-2", "node-3"]);
    let in_flight = c.run(&["rollout", "status", "--json"]).ok().json();
    assert_eq!(in_flight["rollouts"][0]["id"], id.as_str(), "{in_flight}");
    let shown = rollout_status(c, &id);
    assert_eq!(shown["cluster"], "test/local", "{shown}");
    assert_eq!(shown["version"], "1.1.0", "{shown}");
    assert_eq!(shown["order"]["rollout"], id.as_str(), "{shown}");
    assert_eq!(
        shown["order"]["min_healthy_secs"], 2,
        "the cluster's policy: {shown}"
    );
    let reported: Vec<(String, Value)> = per_node(&shown, "reached");
    assert_eq!(
        reported,
        ["node-1", "node-2", "node-3"].map(|n| (n.to_owned(), Value::from(true))),
        "every node reports: {shown}"
    );

    // The audit log has the start: every node with its result, the manifest's digest.
    let audit = c.run(&["audit", "--json"]).ok().json();
    let rows = audit["rows"].as_array().cloned().unwrap_or_default();
    let starts: Vec<&Value> = rows
        .iter()
        .filter(|r| r["command"] == "rollout start")
        .collect();
    assert_eq!(
        starts.len(),
        3,
        "every attempt is recorded (no key, refused, started): {audit}"
    );
    assert_eq!(
        starts.iter().filter(|r| r["result"] != "ok").count(),
        2,
        "{audit}"
    );
    let won_row = starts
        .iter()
        .find(|r| r["result"] == "ok")
        .unwrap_or_else(|| panic!("no successful start row: {audit}"));
    let row_nodes = won_row["nodes"].as_array().expect("nodes");
    assert_eq!(row_nodes.len(), 3, "{won_row}");
    for n in row_nodes {
        assert_eq!(n[1], "staged, order accepted", "{won_row}");
    }
    assert_eq!(
        won_row["digests"].as_array().map(Vec::len),
        Some(1),
        "{won_row}"
    );

    // Pause, resume, abort: signed controls that every node takes; their reports say so.
    for (word, asked) in [("pause", "pause"), ("resume", "resume"), ("abort", "abort")] {
        let sent = c.ok_json(&["rollout", word, &id]);
        assert_eq!(sent["nodes"].as_array().map(Vec::len), Some(3), "{sent}");
        for (node, result) in per_node(&sent, "result") {
            assert_eq!(result, "taken", "{node}: {sent}");
        }
        let shown = rollout_status(c, &id);
        assert_eq!(shown["asked"], asked, "after {word}: {shown}");
    }
    let audit = c.run(&["audit", "--json"]).ok().json();
    for command in ["rollout pause", "rollout resume", "rollout abort"] {
        let row = audit["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["command"] == command)
            .unwrap_or_else(|| panic!("no {command} row: {audit}"));
        assert_eq!(row["result"], "ok", "{row}");
        assert_eq!(row["nodes"].as_array().map(Vec::len), Some(3), "{row}");
    }
    let verified = c.run(&["audit", "verify"]).ok();
    assert!(
        verified.stdout.contains("the chain is intact"),
        "{}",
        verified.stdout
    );
}

#[test]
fn refused_orders_end_a_rollout_a_node_that_cannot_stage_keeps_it_off_and_unreachable_targets_are_lost()
 {
    let mut c = provisioned("e2e_rollout_lost");
    c.with_logs(lost_scenario);
}

fn lost_scenario(c: &mut Provisioned) {
    // Orders signed by a key the nodes' root does not name: every node refuses its order with
    // its code, and the rollout ends at once, failed, saying why; its cluster is free again.
    let stranger = c.fleet.dir().join("stranger");
    c.run(&[
        "keys",
        "generate",
        "--out",
        &s(&stranger),
        "--name",
        "order",
    ])
    .ok();
    let stranger_key = s(&stranger.join("order.key"));
    let run: FleetRun = start_command(c, &["--order-key", &stranger_key])
        .output()
        .expect("a start")
        .into();
    let doc = run.fails().json();
    for n in doc["nodes"].as_array().expect("nodes") {
        assert_eq!(n["stage"], "staged", "{n}");
        assert_eq!(n["code"], "not_order_key", "{n}");
    }
    let listed = rollouts(c);
    assert_eq!(listed[0]["state"], "failed", "{listed:?}");
    let reason = listed[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("no node took the order")
            && ["node-1", "node-2", "node-3"]
                .iter()
                .all(|n| reason.contains(n)),
        "{reason}"
    );
    let id = listed[0]["id"].as_str().expect("an id").to_owned();
    let refused = rollout_status(c, &id);
    for (node, outcome) in per_node(&refused, "outcome") {
        assert_eq!(outcome, "skipped", "{node}: {refused}");
    }

    c.fleet.stop_node(2).expect("node-3 goes down");

    // node-3 cannot stage: the rollout does not start on the cluster, and says why.
    let run: FleetRun = start_command(c, &[]).output().expect("a start").into();
    let run = run.fails();
    assert!(
        run.stderr.contains("node-3 could not stage 1.1.0"),
        "{}",
        run.stderr
    );
    let doc = run.json();
    assert_eq!(doc["rollouts"][0]["started"], false, "{doc}");
    for n in doc["nodes"].as_array().expect("nodes") {
        assert!(n["order"].is_null(), "no order was handed out: {n}");
    }
    let listed = rollouts(c);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["state"], "failed", "{listed:?}");
    let reason = listed[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("not started") && reason.contains("node-3"),
        "{reason}"
    );
    for n in &c.fleet.nodes()[..2] {
        let orders = n.root.join("state/orders");
        let taken = std::fs::read_dir(&orders).map_or(0, |d| d.count());
        assert_eq!(taken, 0, "{} holds an order: {}", n.name, orders.display());
    }

    // With --skip-unstaged it starts on the nodes that staged, its order naming only them.
    let run: FleetRun = start_command(c, &["--skip-unstaged"])
        .output()
        .expect("a start")
        .into();
    let doc = run.ok().json();
    let cluster = &doc["rollouts"][0];
    assert_eq!(cluster["started"], true, "{doc}");
    assert_eq!(names(&cluster["targets"]), ["node-1", "node-2"], "{doc}");
    assert_eq!(
        names(&cluster["order"]["targets"]),
        ["node-1", "node-2"],
        "{doc}"
    );
    let id = cluster["rollout"].as_str().expect("an id").to_owned();
    let listed = rollouts(c);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "running");
    assert_eq!(names(&listed[0]["targets"]), ["node-1", "node-2"]);

    // Its targets go down too: a watch (as after a controller crash, from the store) hears of
    // neither, marks both lost after --lost-after, and ends the rollout, freeing the cluster.
    c.fleet.stop_node(0).expect("node-1 goes down");
    c.fleet.stop_node(1).expect("node-2 goes down");
    let run = c.run_i(&["rollout", "watch", &id, "--lost-after", "2", "--json"]);
    let doc = run.clone().fails().json();
    let watched = &doc["rollouts"][0];
    assert_eq!(watched["state"], "failed", "{doc}");
    for (node, outcome) in per_node(watched, "outcome") {
        assert_eq!(outcome, "lost", "{node}: {doc}");
    }
    for (node, reason) in per_node(watched, "reason") {
        assert!(
            reason
                .as_str()
                .is_some_and(|r| r.contains("not heard of for 2 s")),
            "{node}: {reason}"
        );
    }
    let listed = rollouts(c);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "failed", "{listed:?}");
    let stored = rollout_status(c, &id);
    for (node, outcome) in per_node(&stored, "outcome") {
        assert_eq!(outcome, "lost", "recorded for {node}: {stored}");
    }
    // Without --json, a line per change and the summary table.
    let again = c.run_i(&["rollout", "watch", &id]).fails();
    assert!(
        again.stdout.contains("OUTCOME") && again.stdout.contains("2 node(s): 2 lost"),
        "{}",
        again.stdout
    );
}

#[test]
fn a_rollout_goes_on_after_its_controller_is_killed_and_watch_finds_it_committed() {
    let mut c = provisioned("e2e_rollout_crash");
    c.with_logs(crash_scenario);
}

fn crash_scenario(c: &mut Provisioned) {
    use std::io::BufRead;

    // Under load all along. The controller hands out the orders, starts watching, and is
    // SIGKILLed.
    let load = c.load();
    let (store, inventory) = (s(&c.store), s(&c.inventory));
    let mut child = c
        .command(&[
            "rollout", "start", "1.1.0", "--store", &store, "-i", &inventory,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a start");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("a line of stderr");
        let watching = line.starts_with("watching ");
        seen.push(line);
        if watching {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.starts_with("watching ")),
        "the start ended before it watched: {seen:#?}"
    );
    child.kill().expect("SIGKILL the controller");
    child.wait().expect("reaped");
    let listed = rollouts(c);
    assert_eq!(listed[0]["state"], "running", "nobody ended it: {listed:?}");
    let id = listed[0]["id"].as_str().expect("an id").to_owned();

    // The agents carry it on; a new controller's watch picks it up from the state store and
    // the nodes' reports, and ends it.
    let watched = c.run_i(&["rollout", "watch", &id, "--json"]).ok().json();
    let rollout = &watched["rollouts"][0];
    assert_eq!(rollout["state"], "committed", "{watched}");
    for (node, outcome) in per_node(rollout, "outcome") {
        assert_eq!(outcome, "committed", "{node}: {watched}");
    }
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.1.0");
    }
    let listed = rollouts(c);
    assert_eq!(listed[0]["state"], "committed", "{listed:?}");
    assert!(listed[0]["ended_ms"].is_i64(), "{listed:?}");
    // status agrees, from the store alone and from the nodes, and exits 0.
    let stored = c.run(&["rollout", "status", &id, "--json"]).ok().json();
    for (node, outcome) in per_node(&stored["rollout"], "outcome") {
        assert_eq!(outcome, "committed", "recorded for {node}: {stored}");
    }
    c.run_i(&["rollout", "status", &id]).ok();
    load.finish().assert_clean(1);
}

#[test]
fn a_release_that_fails_its_gate_halts_the_rollout_and_status_says_where_and_why() {
    let mut c = provisioned("e2e_rollout_halt");
    c.with_logs(halt_scenario);
}

fn halt_scenario(c: &mut Provisioned) {
    c.build_release_with_server(
        "1.2.0",
        "#!/bin/sh\necho 'this release is broken' >&2\nexit 3\n",
    );
    let load = c.load();
    let (store, inventory) = (s(&c.store), s(&c.inventory));
    let run = c.run(&[
        "rollout",
        "start",
        "1.2.0",
        "--store",
        &store,
        "-i",
        &inventory,
        "--canary",
        "1",
        "--min-healthy",
        "1",
        "--health-timeout",
        "10",
    ]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let listed = rollouts(c);
    assert_eq!(listed[0]["state"], "failed", "{listed:?}");
    let id = listed[0]["id"].as_str().expect("an id").to_owned();
    let status = c.run_i(&["rollout", "status", &id]);
    assert_eq!(status.code, Some(1), "{}", status.stdout);
    let doc = c.run_i(&["rollout", "status", &id, "--json"]).json();
    let outcomes = per_node(&doc["rollout"], "outcome");
    assert_eq!(
        outcomes,
        [
            ("node-1".to_owned(), Value::from("rolled_back")),
            ("node-2".to_owned(), Value::from("skipped")),
            ("node-3".to_owned(), Value::from("skipped")),
        ],
        "{doc}"
    );
    let reasons = per_node(&doc["rollout"], "reason");
    let why = reasons[0].1.as_str().unwrap_or_default();
    assert!(
        why.contains("release 1.2.0 failed its health gate"),
        "{doc}"
    );
    for line in ["node-1", "rolled_back", "failed its health gate"] {
        assert!(
            status.stdout.contains(line),
            "no `{line}` in\n{}",
            status.stdout
        );
    }
    for k in 0..3 {
        assert_eq!(c.serving(k), "1.0.0");
    }
    load.finish().assert_clean(1);
}

#[test]
fn a_rollout_outside_its_maintenance_window_waits_and_now_starts_it_audited() {
    let windows = window_not_now();
    let mut c = Provisioned::start_with(
        Path::new(env!("CARGO_BIN_EXE_fleet")),
        "e2e_rollout_window",
        fleet_tests::FleetOptions {
            nodes: 2,
            maintenance_windows: Some(windows),
            ..fleet_tests::FleetOptions::default()
        },
    );
    for v in ["1.0.0", "1.1.0"] {
        c.build_release(v);
    }
    c.activate("1.0.0");
    c.with_logs(window_scenario);
}

fn window_scenario(c: &mut Provisioned) {
    use std::io::BufRead;
    // Outside the window: the start says which window it waits for, and when it opens.
    let mut child = start_command(c, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a start");
    let stderr = child.stderr.take().expect("its stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // A guard against a start that never says it waits (the test fails, it does not hang).
    let waiting = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("no line from the waiting start: {e}")
        });
    assert!(
        waiting.starts_with(
            "test/local: outside its maintenance windows (mon,tue,wed,thu,fri,sat,sun "
        ) && waiting.contains("UTC): waiting for the window ")
            && waiting.contains(", which opens at ")
            && waiting.ends_with("; --now starts it at once"),
        "{waiting}"
    );
    // It sent nothing: no rollout claimed, no order on any node, 1.1.0 staged nowhere.
    assert!(rollouts(c).is_empty(), "a waiting start claimed a rollout");
    for node in c.fleet.nodes() {
        let orders = node.root.join("state/orders");
        let taken = std::fs::read_dir(&orders).map(|d| d.count()).unwrap_or(0);
        assert_eq!(taken, 0, "{} has an order while the start waits", node.name);
    }
    let status = c.ok_json(&["status"]);
    for (node, staged) in per_node(&status, "staged") {
        assert!(
            !names(&staged).contains(&"1.1.0".to_owned()),
            "{node} staged 1.1.0 while the start waits: {status}"
        );
    }
    // Only the process this test started.
    child.kill().expect("stop the waiting start");
    let _ = child.wait();

    // --now starts it at once, and the audit log says who overrode which window.
    let started = start_command(c, &["--now"]).output().expect("a start ends");
    let started = FleetRun::from(started).ok().json();
    assert_eq!(started["rollouts"][0]["started"], true, "{started}");
    let audit = c.run(&["audit", "--json"]).ok().json();
    let row = audit["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["command"] == "rollout start")
        .unwrap_or_else(|| panic!("no rollout start row: {audit}"));
    let result = row["result"].as_str().unwrap_or_default();
    let user = row["os_user"].as_str().unwrap_or_default();
    assert!(
        result.starts_with(&format!("ok; --now by {user}: started test/local outside its maintenance windows (mon,tue,wed,thu,fri,sat,sun "))
            && result.contains("the next, mon,tue,wed,thu,fri,sat,sun "),
        "{row}"
    );
    assert!(row["args"].to_string().contains("--now"), "{row}");
    assert_eq!(
        audit["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["command"] == "rollout start")
            .count(),
        1,
        "the waiting start recorded nothing: {audit}"
    );
}
