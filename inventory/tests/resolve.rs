//! The example files load, inherited settings resolve level by level, and printing masks secrets.

mod common;

use std::path::{Path, PathBuf};

use common::load;
use fleet_inventory::{Canary, Inventory, LoadBalancing, Mode, Setting};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn acme_example_is_accepted_as_is() {
    let path = examples().join("acme.yaml");
    let inventory = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let dir = std::path::absolute(examples()).expect("absolute");
    assert_eq!(inventory.customers().len(), 1);
    assert_eq!(inventory.clusters().len(), 1);
    let cluster = &inventory.clusters()[0];
    assert_eq!(cluster.nodes, ["acme-prod-1", "acme-prod-2"]);
    assert_eq!(cluster.rollout.max_unavailable, 1);
    assert_eq!(cluster.rollout.health_timeout_secs, 120);
    assert_eq!(cluster.load_balancing, LoadBalancing::RoundRobin);
    let lines: Vec<String> = inventory
        .nodes()
        .iter()
        .map(|n| n.summary_line(cluster))
        .collect();
    let kh = dir.join("known_hosts");
    assert_eq!(
        lines,
        [
            format!(
                "acme-prod-1 customer=acme cluster=prod host=10.0.1.11 ssh=etl@10.0.1.11:22 identity=~/.ssh/fleet_ed25519 known_hosts={} node_root=/opt/etl mode=customer_managed push=\"over SSH, any time (no maintenance windows)\" lb=round_robin labels=cloud=aws,region=eu-west-2 redis=redis://10.0.0.5:6379/0 postgres=env:ACME_PG_URL",
                kh.display()
            ),
            format!(
                "acme-prod-2 customer=acme cluster=prod host=10.0.1.12 ssh=etl@10.0.1.12:2222 identity=~/.ssh/fleet_ed25519 known_hosts={} node_root=/opt/etl mode=customer_managed push=\"over SSH, any time (no maintenance windows)\" lb=round_robin labels=cloud=aws,region=eu-west-2 redis=redis://10.0.0.5:6379/0 postgres=env:ACME_PG_URL",
                kh.display()
            ),
        ]
    );
}

#[test]
fn fleet_example_is_accepted() {
    let path = examples().join("fleet.yaml");
    let inventory = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let dir = std::path::absolute(examples()).expect("absolute");
    assert_eq!(inventory.customers().len(), 2);
    assert_eq!(inventory.clusters().len(), 4);
    assert_eq!(inventory.nodes().len(), 9);

    let prod = inventory.cluster("acme", "prod").expect("acme/prod");
    assert_eq!(prod.load_balancing, LoadBalancing::Weighted);
    assert_eq!(prod.rollout.canary, Canary::Node("acme-prod-1".into()));
    assert_eq!(prod.rollout.health_timeout_secs, 300);
    assert_eq!(prod.rollout.smoke_flow.as_deref(), Some("orders-smoke"));
    let p3 = inventory.node("acme-prod-3").expect("acme-prod-3");
    assert_eq!(p3.weight, 2);
    assert_eq!(p3.ssh.port, 2222);
    assert_eq!(p3.labels["tier"], "1");
    assert_eq!(p3.labels["disk"], "nvme");
    assert_eq!(p3.labels["managed_by"], "fleet");

    let staging = inventory.cluster("acme", "staging").expect("acme/staging");
    assert_eq!(staging.rollout.canary, Canary::Auto);
    assert_eq!(
        staging.postgres_url.masked(),
        "file:secrets/acme-staging-pg"
    );
    let stg = inventory.node("acme-stg-1").expect("acme-stg-1");
    assert_eq!(stg.vars["log_level"], "debug");
    assert_eq!(stg.vars["worker_threads"], 4);
    assert_eq!(stg.vars["support_contact"], "ops@acme.example");

    let eu1 = inventory.node("globex-eu-1").expect("globex-eu-1");
    assert_eq!(eu1.mode, Mode::Dedicated);
    assert_eq!(eu1.ssh.user, "deploy");
    assert_eq!(eu1.node_root, Path::new("/srv/etl"));
    assert_eq!(
        eu1.ssh.known_hosts,
        Path::new("/etc/fleet/globex_known_hosts")
    );
    let jump = eu1.ssh.jump.as_ref().expect("jump");
    assert_eq!(jump.to_string(), "bastion@bastion.globex.example:2200");
    let eu4 = inventory.node("globex-eu-4").expect("globex-eu-4");
    assert_eq!(
        eu4.ssh.jump.as_ref().map(ToString::to_string).as_deref(),
        Some("bastion@bastion2.globex.example:22")
    );
    // `ssh: *ssh_defaults` on the node: the aliased map wins field by field, the jump is inherited.
    let us1 = inventory.node("globex-us-1").expect("globex-us-1");
    assert_eq!(us1.ssh.user, "etl");
    assert_eq!(us1.ssh.known_hosts, dir.join("known_hosts"));
    assert_eq!(
        us1.ssh.identity_file.as_deref(),
        Some(Path::new("~/.ssh/fleet_ed25519"))
    );
    assert!(us1.ssh.jump.is_some());
    assert_eq!(
        us1.vars["extra_env"],
        serde_json::json!({ "HTTP_PROXY": "http://proxy.globex.example:3128" })
    );
    let eu = inventory.cluster("globex", "eu").expect("globex/eu");
    assert!(matches!(eu.redis_url, Setting::Literal(_)));
    assert_eq!(eu.rollout.max_unavailable, 2);
}

#[test]
fn node_over_cluster_over_customer_over_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("inventory.yaml");
    let text = "\
defaults:
  ssh: { user: d-user, port: 1001, identity_file: keys/d, known_hosts: d_known, jump: d-jump }
  node_root: /d
  labels: { a: d, b: d, c: d, d: d }
  vars: { a: d, b: d, c: d, d: d, list: [1, 2] }
customers:
  acme:
    mode: airgapped
    ssh: { user: c-user, port: 1002, identity_file: /keys/c }
    node_root: /c
    labels: { a: c, b: c, c: c }
    vars: { a: c, b: c, c: c }
    clusters:
      prod:
        redis_url: redis://r/0
        postgres_url: postgres://p/db
        shared_storage: /s
        ssh: { user: k-user, known_hosts: ~/k_known }
        node_root: /k
        labels: { a: k, b: k }
        vars: { a: k, b: { nested: true } }
        nodes:
          - name: n1
            host: 10.0.0.1
            ssh: { user: n-user, jump: { host: n-jump, port: 2022 } }
            node_root: /n
            labels: { a: n, tier: 1 }
            vars: { a: n }
          - { name: n2, host: 10.0.0.2 }
";
    std::fs::write(&path, text).expect("write");
    let inventory = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let base = std::path::absolute(dir.path()).expect("absolute");
    let [n1, n2] = inventory.nodes() else {
        panic!("two nodes expected");
    };

    // n1 sets user, jump, node_root, labels.a and vars.a itself.
    assert_eq!(n1.ssh.user, "n-user");
    assert_eq!(n1.ssh.port, 1002);
    assert_eq!(n1.ssh.identity_file.as_deref(), Some(Path::new("/keys/c")));
    assert_eq!(n1.ssh.known_hosts, Path::new("~/k_known"));
    assert_eq!(
        n1.ssh.jump.as_ref().map(|j| (j.host.as_str(), j.port)),
        Some(("n-jump", 2022))
    );
    assert_eq!(n1.node_root, Path::new("/n"));
    let labels: Vec<(&str, &str)> = n1
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("a", "n"),
            ("b", "k"),
            ("c", "c"),
            ("d", "d"),
            ("tier", "1")
        ]
    );
    assert_eq!(
        serde_json::to_value(&n1.vars).expect("json"),
        serde_json::json!({ "a": "n", "b": { "nested": true }, "c": "c", "d": "d", "list": [1, 2] })
    );

    // n2 sets nothing: cluster, then customer, then defaults.
    assert_eq!(n2.ssh.user, "k-user");
    assert_eq!(n2.ssh.port, 1002);
    assert_eq!(
        n2.ssh
            .jump
            .as_ref()
            .map(|j| (j.user.clone(), j.host.as_str(), j.port)),
        Some((None, "d-jump", 22))
    );
    assert_eq!(n2.node_root, Path::new("/k"));
    assert_eq!(n2.labels["a"], "k");
    assert_eq!(n2.vars["a"], "k");
    assert_eq!(n2.mode, Mode::Airgapped);

    // A relative path is taken from the inventory's folder; defaults apply when nothing is set.
    let only_defaults = text.replace("identity_file: /keys/c", "port: 1002");
    let only_defaults = only_defaults.replacen(
        "ssh: { user: c-user, port: 1002, port: 1002 }",
        "ssh: { user: c-user }",
        1,
    );
    std::fs::write(&path, only_defaults).expect("write");
    let inventory = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let n2 = &inventory.nodes()[1];
    assert_eq!(n2.ssh.port, 1001);
    assert_eq!(
        n2.ssh.identity_file.as_deref(),
        Some(base.join("keys/d").as_path())
    );
}

#[test]
fn defaults_when_nothing_is_set() {
    let inventory = load(&common::base("", ""));
    let node = &inventory.nodes()[0];
    assert_eq!(node.ssh.port, 22);
    assert_eq!(node.ssh.known_hosts, Path::new("/inv/known_hosts"));
    assert_eq!(node.ssh.identity_file, None);
    assert_eq!(node.ssh.jump, None);
    assert_eq!(
        node.node_root,
        Path::new(fleet_inventory::DEFAULT_NODE_ROOT)
    );
    assert_eq!(node.weight, 1);
    assert!(node.labels.is_empty() && node.vars.is_empty());
    let cluster = &inventory.clusters()[0];
    assert_eq!(cluster.rollout, fleet_inventory::Rollout::default());
    assert_eq!(cluster.rollout.min_healthy_secs, 10);
    assert_eq!(cluster.rollout.canary, Canary::Off);
}

#[test]
fn scalars_quoting_and_jump_strings() {
    let text = common::base(
        "        labels: { tier: 1, on: true, ratio: 1.50, quoted: \"22\" }\n",
        ", ssh: { jump: \"ops@[fd00::1]:2200\" }, weight: 3",
    );
    let inventory = load(&text);
    let node = &inventory.nodes()[0];
    assert_eq!(node.labels["tier"], "1");
    assert_eq!(node.labels["on"], "true");
    assert_eq!(node.labels["ratio"], "1.50");
    assert_eq!(node.labels["quoted"], "22");
    assert_eq!(node.weight, 3);
    let jump = node.ssh.jump.as_ref().expect("jump");
    assert_eq!(
        (jump.user.as_deref(), jump.host.as_str(), jump.port),
        (Some("ops"), "fd00::1", 2200)
    );
    assert_eq!(jump.to_string(), "ops@[fd00::1]:2200");
}

#[test]
fn ordinary_aliases_keep_working() {
    let text = "\
defaults:
  ssh: &common { user: etl, port: 2200 }
customers:
  acme:
    mode: shared
    clusters:
      prod: &cluster
        redis_url: redis://r/0
        postgres_url: postgres://p/db
        shared_storage: /s
        nodes:
          - { name: a1, host: 10.0.0.1, ssh: *common }
      prod2:
        redis_url: redis://r/0
        postgres_url: postgres://p/db
        shared_storage: /s
        nodes:
          - { name: a2, host: 10.0.0.2, ssh: *common }
";
    let inventory = load(text);
    assert_eq!(inventory.nodes().len(), 2);
    assert!(
        inventory
            .nodes()
            .iter()
            .all(|n| n.ssh.port == 2200 && n.ssh.user == "etl")
    );
}

#[test]
fn secrets_and_passwords_never_print() {
    let text = common::base("", "")
        .replace(
            "redis://10.0.0.5:6379/0",
            "redis://:hunter2@10.0.0.5:6379/0",
        )
        .replace("env:PG", "postgres://etl:s3cr3t@db:5432/etl");
    let inventory = load(&text);
    let node = &inventory.nodes()[0];
    let cluster = inventory.cluster_of(node).expect("cluster");
    let line = node.summary_line(cluster);
    assert!(
        line.ends_with(
            "redis=redis://:***@10.0.0.5:6379/0 postgres=postgres://etl:***@db:5432/etl"
        ),
        "{line}"
    );
    let json = serde_json::to_string(&inventory.views()).expect("json");
    let debug = format!("{inventory:?}");
    for printed in [&line, &json, &debug] {
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cr3t"),
            "{printed}"
        );
    }
    // The real value is there for the one place that uses it.
    assert_eq!(
        cluster.postgres_url.resolve().expect("literal").expose(),
        "postgres://etl:s3cr3t@db:5432/etl"
    );
}

#[test]
fn file_secret_resolves_relative_to_the_inventory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    std::fs::write(
        dir.path().join("secrets/pg"),
        "postgres://u:topsecret@h/db\n",
    )
    .expect("write");
    let path = dir.path().join("inv.yaml");
    std::fs::write(
        &path,
        common::base("", "").replace("env:PG", "file:secrets/pg"),
    )
    .expect("write");
    let inventory = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let cluster = &inventory.clusters()[0];
    assert_eq!(cluster.postgres_url.masked(), "file:secrets/pg");
    let secret = cluster.postgres_url.resolve().expect("readable");
    assert_eq!(secret.expose(), "postgres://u:topsecret@h/db");
    assert_eq!(format!("{secret} {secret:?}"), "*** Secret(***)");
}

#[test]
fn node_view_serializes_flat_with_cluster_settings() {
    let path = examples().join("acme.yaml");
    let inventory = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let views = inventory.views();
    let json = serde_json::to_value(views[1]).expect("json");
    assert_eq!(json["name"], "acme-prod-2");
    assert_eq!(json["customer"], "acme");
    assert_eq!(json["mode"], "customer_managed");
    assert_eq!(json["ssh"]["port"], 2222);
    assert_eq!(json["ssh"]["identity_file"], "~/.ssh/fleet_ed25519");
    assert_eq!(json["labels"]["region"], "eu-west-2");
    assert_eq!(json["postgres_url"], "env:ACME_PG_URL");
    assert_eq!(json["redis_url"], "redis://10.0.0.5:6379/0");
    assert_eq!(json["load_balancing"], "round_robin");
    assert_eq!(json["rollout"]["canary"], false);
    assert_eq!(json["shared_storage"], "/mnt/efs/etl");
    assert_eq!(
        views[1].to_string(),
        inventory.nodes()[1].summary_line(&inventory.clusters()[0])
    );
    assert_eq!(inventory.nodes_of(&inventory.clusters()[0]).count(), 2);
}
