//! Every kind of problem, each with its exact line and column, and all problems in one run.

mod common;

use std::path::Path;

use common::{base, one, problems};
use fleet_inventory::Inventory;

#[test]
fn unknown_key_suggests_the_nearest() {
    assert_eq!(
        one(&base("", ", hots: x")),
        "/inv/fleet.yaml:12:41: customers.acme.clusters.prod.nodes[0].hots: unknown key `hots` (hint: did you mean `host`?)"
    );
}

#[test]
fn unknown_key_without_a_near_one_lists_the_allowed_keys() {
    assert_eq!(
        one(&base("        flavour: vanilla\n", "")),
        "/inv/fleet.yaml:11:9: customers.acme.clusters.prod.flavour: unknown key `flavour` (hint: allowed keys: redis_url, postgres_url, shared_storage, load_balancing, rollout, nodes, maintenance_windows, tenants, ssh, node_root, labels, vars)"
    );
}

#[test]
fn unknown_top_level_key() {
    let text = format!("{}extra: 1\n", base("", ""));
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:13:1: extra: unknown key `extra` (hint: allowed keys: defaults, customers)"
    );
}

#[test]
fn merge_keys_are_refused_with_a_hint() {
    let text = "\
common: &common { user: etl }
defaults:
  ssh:
    <<: *common
    port: 22
customers: {}
";
    let all = problems(text);
    let merge = all
        .iter()
        .find(|p| p.path == "defaults.ssh.<<")
        .expect("a problem for the merge key");
    assert_eq!((merge.line, merge.column), (4, 5));
    assert!(
        merge
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("merge keys (`<<`) are not supported")),
        "{merge}"
    );
}

#[test]
fn duplicate_node_names_across_customers() {
    let text = "\
defaults: { ssh: { user: etl } }
customers:
  acme:
    mode: shared
    clusters:
      prod:
        redis_url: redis://r/0
        postgres_url: postgres://p/db
        shared_storage: /s
        nodes:
          - { name: web-1, host: 10.0.0.1 }
  globex:
    mode: shared
    clusters:
      prod:
        redis_url: redis://r/0
        postgres_url: postgres://p/db
        shared_storage: /s
        nodes:
          - { name: web-2, host: 10.0.0.2 }
          - { name: web-1, host: 10.0.0.3 }
";
    assert_eq!(
        one(text),
        "/inv/fleet.yaml:21:21: customers.globex.clusters.prod.nodes[1].name: duplicate node name `web-1` (hint: `web-1` is already defined at line 11 (customers.acme.clusters.prod.nodes[0].name); node names are unique across the file)"
    );
}

#[test]
fn duplicate_mapping_keys() {
    let text = base("        shared_storage: /mnt/other\n", "");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:11:9: customers.acme.clusters.prod.shared_storage: duplicate key (hint: first defined at line 10)"
    );
}

#[test]
fn missing_required_field_points_at_the_map() {
    let text = base("", "").replace("{ name: n1, host: 10.0.0.1 }", "{ name: n1 }");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:12:13: customers.acme.clusters.prod.nodes[0].host: missing required key `host`"
    );
    let text = base("", "").replace("        redis_url: redis://10.0.0.5:6379/0\n", "");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:8:9: customers.acme.clusters.prod.redis_url: missing required key `redis_url`"
    );
    assert_eq!(
        one("defaults: {}\n"),
        "/inv/fleet.yaml:1:1: customers: missing required key `customers`"
    );
}

#[test]
fn null_counts_as_missing() {
    let text = base("", "").replace("mode: shared", "mode: ~");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:5:5: customers.acme.mode: required value is empty"
    );
    let text = base("", "").replace("shared_storage: /mnt/etl", "shared_storage:");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:10:9: customers.acme.clusters.prod.shared_storage: required value is empty"
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        one(&base("", ", ssh: { user: { name: etl } }")),
        "/inv/fleet.yaml:12:54: customers.acme.clusters.prod.nodes[0].ssh.user: expected a string, found a map"
    );
    let text = base("", "").replace("- { name: n1, host: 10.0.0.1 }", "- just-a-string");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:12:13: customers.acme.clusters.prod.nodes[0]: expected a map, found a string"
    );
    let text = base("", "").replace("    clusters:\n", "    clusters: [prod]\n    x:\n");
    assert!(
        problems(&text)
            .iter()
            .any(|p| p.to_string()
                == "/inv/fleet.yaml:6:15: customers.acme.clusters: expected a map of clusters, found a list"),
        "{:?}",
        problems(&text)
    );
}

#[test]
fn bad_urls() {
    let text = base("", "").replace("redis://10.0.0.5:6379/0", "http://10.0.0.5:6379/0");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:8:20: customers.acme.clusters.prod.redis_url: unsupported URL scheme `http` (hint: write a redis://, rediss://, unix:// URL such as redis://10.0.0.5:6379/0, or a secret reference `env:NAME` / `file:PATH`)"
    );
    let text = base("", "").replace("env:PG", "postgres://u:pw@[bad/db");
    let line = one(&text);
    assert!(
        line.starts_with(
            "/inv/fleet.yaml:9:23: customers.acme.clusters.prod.postgres_url: not a valid URL: invalid IPv6 address"
        ),
        "{line}"
    );
    assert!(
        !line.contains("pw"),
        "the message must not repeat the URL: {line}"
    );
    let text = base("", "").replace("redis://10.0.0.5:6379/0", "10.0.0.5:6379");
    assert!(one(&text).contains("redis_url: not a valid URL"));
}

#[test]
fn ports_out_of_range_or_not_integers() {
    assert_eq!(
        one(&base("", ", ssh: { port: 70000 }")),
        "/inv/fleet.yaml:12:54: customers.acme.clusters.prod.nodes[0].ssh.port: `70000` is out of range: must be within 1..=65535"
    );
    assert_eq!(
        one(&base("", ", ssh: { port: \"22\" }")),
        "/inv/fleet.yaml:12:54: customers.acme.clusters.prod.nodes[0].ssh.port: expected an integer, found a string (hint: remove the quotes)"
    );
    assert_eq!(
        one(&base("", ", ssh: { port: 22.5 }")),
        "/inv/fleet.yaml:12:54: customers.acme.clusters.prod.nodes[0].ssh.port: expected an integer, found `22.5`"
    );
    assert_eq!(
        one(&base("", ", ssh: { port: 0 }")),
        "/inv/fleet.yaml:12:54: customers.acme.clusters.prod.nodes[0].ssh.port: `0` is out of range: must be within 1..=65535"
    );
}

#[test]
fn bad_mode_suggests_the_nearest() {
    let text = base("", "").replace("mode: shared", "mode: dedicatd");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:5:11: customers.acme.mode: unknown mode `dedicatd` (hint: did you mean `dedicated`?)"
    );
    let text = base("", "").replace("mode: shared", "mode: hosted");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:5:11: customers.acme.mode: unknown mode `hosted` (hint: one of: shared, dedicated, customer_managed, airgapped)"
    );
}

#[test]
fn bad_load_balancing_suggests_the_nearest() {
    assert_eq!(
        one(&base("        load_balancing: roundrobin\n", "")),
        "/inv/fleet.yaml:11:25: customers.acme.clusters.prod.load_balancing: unknown load-balancing algorithm `roundrobin` (hint: did you mean `round_robin`?)"
    );
}

#[test]
fn bad_names() {
    let text = base("", "").replace("  acme:", "  Acme:");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:4:3: customers.Acme: invalid customer name `Acme` (hint: names match [a-z0-9][a-z0-9_.-]*: lowercase letters, digits, `_`, `.` and `-`)"
    );
    let text = base("", "").replace("      prod:", "      prod/eu:");
    assert!(one(&text).starts_with(
        "/inv/fleet.yaml:7:7: customers.acme.clusters.prod/eu: invalid cluster name `prod/eu`"
    ));
    let text = base("", "").replace("name: n1", "name: \"web,1\"");
    assert!(one(&text).starts_with(
        "/inv/fleet.yaml:12:21: customers.acme.clusters.prod.nodes[0].name: invalid node name `web,1`"
    ));
}

#[test]
fn bad_hosts() {
    assert!(
        one(&base("", "").replace("10.0.0.1", "10.0.0.300")).starts_with(
            "/inv/fleet.yaml:12:31: customers.acme.clusters.prod.nodes[0].host: `10.0.0.300` is not a valid hostname or IP address"
        )
    );
}

#[test]
fn relative_node_root_and_shared_storage() {
    let text = base("", "").replace("/mnt/etl", "mnt/etl");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:10:25: customers.acme.clusters.prod.shared_storage: `mnt/etl` is not an absolute path (hint: write it from the root, e.g. /opt/etl)"
    );
    let text = base("", "").replace(
        "  ssh: { user: etl }",
        "  ssh: { user: etl }\n  node_root: opt/etl",
    );
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:3:14: defaults.node_root: `opt/etl` is not an absolute path (hint: write it from the root, e.g. /opt/etl)"
    );
}

#[test]
fn bad_secret_references() {
    let text = base("", "").replace("env:PG", "env:1PG");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:9:23: customers.acme.clusters.prod.postgres_url: bad secret reference `env:1PG`: the name must match [A-Za-z_][A-Za-z0-9_]* (hint: a secret reference is `env:NAME` or `file:PATH`)"
    );
    let text = base("", "").replace("env:PG", "\"file:\"");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:9:23: customers.acme.clusters.prod.postgres_url: bad secret reference `file:`: the path is empty (hint: a secret reference is `env:NAME` or `file:PATH`)"
    );
}

#[test]
fn canary_must_be_a_node_of_the_cluster() {
    assert_eq!(
        one(&base("        rollout: { canary: n2 }\n", "")),
        "/inv/fleet.yaml:11:28: customers.acme.clusters.prod.rollout.canary: canary `n2` is not a node of this cluster (hint: did you mean `n1`?)"
    );
    assert_eq!(
        one(&base("        rollout: { canary: 3 }\n", "")),
        "/inv/fleet.yaml:11:28: customers.acme.clusters.prod.rollout.canary: expected `true`, `false` or a node name, found an integer"
    );
}

#[test]
fn rollout_numbers() {
    assert_eq!(
        one(&base("        rollout: { max_unavailable: 0 }\n", "")),
        "/inv/fleet.yaml:11:37: customers.acme.clusters.prod.rollout.max_unavailable: `0` is out of range: must be at least 1"
    );
    assert_eq!(
        one(&base(
            "        rollout: { min_healthy_secs: 60, health_timeout_secs: 30 }\n",
            ""
        )),
        "/inv/fleet.yaml:11:63: customers.acme.clusters.prod.rollout.health_timeout_secs: health_timeout_secs (30) is shorter than min_healthy_secs (60) (hint: a node could never pass its health gate; raise health_timeout_secs)"
    );
    assert_eq!(
        one(&base("        rollout: { min_healthy_secs: 600 }\n", "")),
        "/inv/fleet.yaml:11:38: customers.acme.clusters.prod.rollout.min_healthy_secs: health_timeout_secs (120) is shorter than min_healthy_secs (600) (hint: a node could never pass its health gate; raise health_timeout_secs)"
    );
}

#[test]
fn smoke_flow_is_a_flow_name() {
    assert_eq!(
        one(&base(
            "        rollout: { smoke_flow: \"orders smoke\" }\n",
            ""
        )),
        "/inv/fleet.yaml:11:32: customers.acme.clusters.prod.rollout.smoke_flow: `orders smoke` is not a flow name (hint: a flow name is 1 to 63 bytes of letters, digits, `_`, `-` and `.`, as the ETL server accepts)"
    );
    assert_eq!(
        one(&base("        rollout: { smoke_flow: [a] }\n", "")),
        "/inv/fleet.yaml:11:32: customers.acme.clusters.prod.rollout.smoke_flow: expected a string, found a list"
    );
    let long = "f".repeat(64);
    assert!(
        one(&base(&format!("        rollout: {{ smoke_flow: {long} }}\n"), ""))
            .ends_with("is not a flow name (hint: a flow name is 1 to 63 bytes of letters, digits, `_`, `-` and `.`, as the ETL server accepts)")
    );
    let fine = common::load(&base(
        "        rollout: { smoke_flow: orders-smoke.v2 }\n",
        "",
    ));
    assert_eq!(
        fine.clusters()[0].rollout.smoke_flow.as_deref(),
        Some("orders-smoke.v2")
    );
}

#[test]
fn empty_cluster_and_customer_without_clusters() {
    let text = base("", "").replace(
        "        nodes:\n          - { name: n1, host: 10.0.0.1 }\n",
        "        nodes: []\n",
    );
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:11:16: customers.acme.clusters.prod.nodes: cluster has no nodes (hint: a cluster needs at least one node)"
    );
    let text = "customers:\n  acme:\n    mode: shared\n    clusters: {}\n";
    assert_eq!(
        one(text),
        "/inv/fleet.yaml:4:15: customers.acme.clusters: customer has no clusters (hint: add a cluster, or remove the customer)"
    );
    assert_eq!(
        one("customers: {}\n"),
        "/inv/fleet.yaml:1:12: customers: no customers defined"
    );
}

#[test]
fn every_node_needs_an_ssh_user() {
    let text = base("", "").replace("  ssh: { user: etl }", "  ssh: { port: 22 }");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:12:13: customers.acme.clusters.prod.nodes[0].ssh.user: no SSH user for this node (hint: set ssh.user on the node, its cluster, its customer or in defaults)"
    );
}

#[test]
fn bad_jump_hosts() {
    assert_eq!(
        one(&base("", ", ssh: { jump: \"bastion:99999\" }")),
        "/inv/fleet.yaml:12:54: customers.acme.clusters.prod.nodes[0].ssh.jump: invalid jump port `99999`: must be within 1..=65535 (hint: write `[user@]host[:port]` or a map { host, port, user })"
    );
    assert_eq!(
        one(&base("", ", ssh: { jump: { port: 22 } }")),
        "/inv/fleet.yaml:12:54: customers.acme.clusters.prod.nodes[0].ssh.jump.host: missing required key `host`"
    );
    assert!(one(&base("", ", ssh: { jump: \"u@:22\" }")).contains("invalid jump host `u@:22`"));
}

#[test]
fn bad_labels() {
    let text = base("        labels: { _bad: x, ok: [1] }\n", "");
    let lines: Vec<String> = problems(&text).iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "/inv/fleet.yaml:11:19: customers.acme.clusters.prod.labels._bad: invalid label key `_bad` (hint: label keys match [A-Za-z0-9][A-Za-z0-9_.-/]*)",
            "/inv/fleet.yaml:11:32: customers.acme.clusters.prod.labels.ok: expected a string, found a list",
        ]
    );
}

#[test]
fn unreadable_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.yaml");
    let err = Inventory::load(&missing).expect_err("missing file");
    assert_eq!(err.problems().len(), 1);
    let line = err.to_string();
    assert!(
        line.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{line}"
    );
    assert!(line.contains("No such file"), "{line}");

    let err = Inventory::load(dir.path()).expect_err("a directory");
    assert_eq!(err.problems().len(), 1);
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", dir.path().display())),
        "{err}"
    );
}

#[test]
fn unreadable_for_lack_of_permission() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("locked.yaml");
    std::fs::write(&path, common::base("", "")).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let result = Inventory::load(&path);
    // root reads any file whatever its mode; then the load must simply succeed.
    match std::fs::read(&path) {
        Ok(_) => assert!(result.is_ok(), "{result:?}"),
        Err(err) => {
            let err_text = err.to_string();
            let load_err = result.expect_err("permission denied");
            assert_eq!(
                load_err.to_string(),
                format!("{}: cannot read: {err_text}", path.display())
            );
        }
    }
}

#[test]
fn non_utf8_points_at_the_first_bad_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    let mut bytes = b"customers:\n  caf\xc3\xa9: x\n  ab".to_vec();
    bytes.extend_from_slice(b"\xff\xfe: y\n");
    std::fs::write(&path, bytes).expect("write");
    let err = Inventory::load(&path).expect_err("not UTF-8");
    assert_eq!(
        err.to_string(),
        format!("{}:3:5: not valid UTF-8", path.display())
    );
}

#[test]
fn yaml_syntax_errors_carry_the_parser_position() {
    let line = one("customers:\n  acme: [1, 2\n");
    assert!(
        line.starts_with("/inv/fleet.yaml:3:1: ") && line.contains("invalid YAML: "),
        "{line}"
    );
    let line = one("customers:\n  acme:\n\tmode: shared\n");
    assert!(line.starts_with("/inv/fleet.yaml:3:"), "{line}");
    assert!(line.contains("invalid YAML"), "{line}");
}

#[test]
fn multiple_documents_are_refused() {
    let text = format!("{}---\ncustomers: {{}}\n", base("", ""));
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:13:1: <root>: more than one YAML document in the file (hint: keep the whole inventory in one document; remove the extra `---`)"
    );
}

#[test]
fn only_standard_tags() {
    let text = base("", "").replace("mode: shared", "mode: !custom shared");
    assert_eq!(
        one(&text),
        "/inv/fleet.yaml:5:11: customers.acme.mode: unsupported tag `!custom` (hint: only the standard tags !!str, !!int, !!float, !!bool, !!null, !!map and !!seq are accepted)"
    );
    // Standard tags are understood: `!!str 22` is a string, so not a port.
    assert_eq!(
        one(&base("", ", ssh: { port: !!str 22 }")),
        "/inv/fleet.yaml:12:54: customers.acme.clusters.prod.nodes[0].ssh.port: expected an integer, found a string (hint: remove the quotes)"
    );
    let ok = base("", ", ssh: { port: !!int 2222 }").replace("mode: shared", "mode: !!str shared");
    let inventory = common::load(&ok);
    assert_eq!(inventory.nodes()[0].ssh.port, 2222);
}

#[test]
fn unknown_alias_is_an_error() {
    let line = one("customers: *nothing\n");
    assert!(line.starts_with("/inv/fleet.yaml:1:12: "), "{line}");
}

#[test]
fn billion_laughs_is_refused_fast() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..=10 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    text.push_str("customers: *a10\n");
    let all = problems(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    let p = &all[0];
    assert!(
        p.message.contains("expands the document past 100000 nodes"),
        "{p}"
    );
    // a0..a3 hold 11, 111, 1111 and 11111 nodes; with the keys that is 12351 nodes when a4's
    // list opens, so the 8th copy of a3 (11111 nodes each) breaks the bound, at column 10 + 7 * 5.
    assert_eq!((p.line, p.column), (5, 45), "{p}");
    assert_eq!(p.path, "a4[7]");
}

#[test]
fn aliases_to_a_long_string_are_bounded_by_its_size() {
    // 1 MiB of text copied 200 times would be 200 MiB: refused at the alias that crosses the
    // bound (a 1 MiB scalar weighs 16385 nodes, so the 6th copy passes 100000).
    let text = format!(
        "big: &big \"{}\"\ncopies: [{}]\n",
        "x".repeat(1 << 20),
        vec!["*big"; 200].join(", ")
    );
    let all = problems(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        all[0].message.contains("expands the document past"),
        "{}",
        all[0]
    );
    assert_eq!((all[0].line, all[0].column), (2, 10 + 5 * 6), "{}", all[0]);
}

#[test]
fn deep_nesting_is_refused() {
    let depth = 200;
    let text = format!("customers: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    let all = problems(&text);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        all[0].message.contains("nesting deeper than 64 levels"),
        "{}",
        all[0]
    );
    assert_eq!((all[0].line, all[0].column), (1, 12 + 63));
}

#[test]
fn all_problems_in_one_run_in_file_order() {
    let text = "\
defaults:
  ssh: { user: etl, port: \"22\" }
  node_roots: /opt/etl
customers:
  acme:
    mode: sharde
    clusters:
      prod:
        redis_url: http://r/0
        postgres_url: env:PG
        shared_storage: relative/dir
        load_balancing: weigthed
        rollout: { canary: nobody }
        nodes:
          - { name: n1, hots: 10.0.0.1 }
          - { name: n1, host: 10.0.0.2, ssh: { port: 0 } }
      empty:
        redis_url: redis://r/0
        postgres_url: postgres://p/db
        shared_storage: /s
        nodes: []
  Bad:
    mode: shared
";
    let lines: Vec<String> = problems(text).iter().map(ToString::to_string).collect();
    let expected = [
        "/inv/fleet.yaml:2:27: defaults.ssh.port: expected an integer, found a string (hint: remove the quotes)",
        "/inv/fleet.yaml:3:3: defaults.node_roots: unknown key `node_roots` (hint: did you mean `node_root`?)",
        "/inv/fleet.yaml:6:11: customers.acme.mode: unknown mode `sharde` (hint: did you mean `shared`?)",
        "/inv/fleet.yaml:9:20: customers.acme.clusters.prod.redis_url: unsupported URL scheme `http` (hint: write a redis://, rediss://, unix:// URL such as redis://10.0.0.5:6379/0, or a secret reference `env:NAME` / `file:PATH`)",
        "/inv/fleet.yaml:11:25: customers.acme.clusters.prod.shared_storage: `relative/dir` is not an absolute path (hint: write it from the root, e.g. /opt/etl)",
        "/inv/fleet.yaml:12:25: customers.acme.clusters.prod.load_balancing: unknown load-balancing algorithm `weigthed` (hint: did you mean `weighted`?)",
        "/inv/fleet.yaml:13:28: customers.acme.clusters.prod.rollout.canary: canary `nobody` is not a node of this cluster (hint: nodes of this cluster: n1)",
        "/inv/fleet.yaml:15:13: customers.acme.clusters.prod.nodes[0].host: missing required key `host`",
        "/inv/fleet.yaml:15:25: customers.acme.clusters.prod.nodes[0].hots: unknown key `hots` (hint: did you mean `host`?)",
        "/inv/fleet.yaml:16:21: customers.acme.clusters.prod.nodes[1].name: duplicate node name `n1` (hint: `n1` is already defined at line 15 (customers.acme.clusters.prod.nodes[0].name); node names are unique across the file)",
        "/inv/fleet.yaml:16:54: customers.acme.clusters.prod.nodes[1].ssh.port: `0` is out of range: must be within 1..=65535",
        "/inv/fleet.yaml:21:16: customers.acme.clusters.empty.nodes: cluster has no nodes (hint: a cluster needs at least one node)",
        "/inv/fleet.yaml:22:3: customers.Bad: invalid customer name `Bad` (hint: names match [a-z0-9][a-z0-9_.-]*: lowercase letters, digits, `_`, `.` and `-`)",
        "/inv/fleet.yaml:23:5: customers.Bad.clusters: missing required key `clusters`",
    ];
    assert_eq!(lines, expected);
}

#[test]
fn load_error_displays_every_line_and_serializes() {
    let err =
        Inventory::from_str("customers: {}\nx: 1\n", Path::new("f.yaml")).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "f.yaml:1:12: customers: no customers defined\nf.yaml:2:1: x: unknown key `x` (hint: allowed keys: defaults, customers)"
    );
    let json = serde_json::to_value(&err.problems()[1]).expect("serializes");
    assert_eq!(
        json,
        serde_json::json!({
            "file": "f.yaml", "line": 2, "column": 1, "path": "x",
            "message": "unknown key `x`", "hint": "allowed keys: defaults, customers"
        })
    );
}

#[test]
fn garbage_never_panics() {
    let inputs: Vec<String> = vec![
        String::new(),
        "\n\n".into(),
        "~".into(),
        "[]".into(),
        "- - - -".into(),
        "{{{{".into(),
        "customers:\n  a:\n    clusters:\n      b:\n        nodes: [~, 1, [], {}]\n".into(),
        "customers: { a: { mode: [], clusters: { b: { nodes: { x: 1 } } } } }".into(),
        "? [a, b]\n: c\n".into(),
        "customers: !!map [1]\n".into(),
        "&a a: *a\n".into(),
        "\u{feff}customers: 1".into(),
        "key: \"unterminated".into(),
        "a: |\n  b\n c".into(),
        "%YAML 1.2\n%TAG ! tag:x,2000:\n--- !foo\ncustomers: {}".into(),
        "customers:\n  a:\n    mode: shared\n    clusters:\n      b:\n        redis_url: \"redis://[::1\"\n        postgres_url: 'postgres://'\n        shared_storage: 7\n        rollout: { canary: '', max_unavailable: 99999999999999999999999 }\n        nodes:\n          - { name: '', host: '', weight: -1, ssh: { jump: '@:', port: 1e3 } }\n".into(),
        "\0\u{1}\u{2}".into(),
        "- ".repeat(500),
        "{a: ".repeat(500),
    ];
    for input in &inputs {
        let result = Inventory::from_str(input, Path::new("g.yaml"));
        if let Err(err) = result {
            assert!(!err.problems().is_empty(), "{input:?}");
        }
    }
}

/// A newline in `node_root` would start a line of its own in the node's `authorized_keys`
/// (an unrestricted key): paths with control characters are refused with their place.
#[test]
fn paths_with_control_characters_are_refused() {
    assert_eq!(
        one(&base(
            "        node_root: \"/opt/etl\\nssh-ed25519 AAAA evil\"\n",
            ""
        )),
        "/inv/fleet.yaml:11:20: customers.acme.clusters.prod.node_root: \"/opt/etl\\nssh-ed25519 AAAA evil\" has a control character (hint: paths are plain text: no newlines, tabs or other control characters)"
    );
    assert_eq!(
        one(&base("", ", ssh: { identity_file: \"keys/id\\tx\" }")),
        "/inv/fleet.yaml:12:63: customers.acme.clusters.prod.nodes[0].ssh.identity_file: \"keys/id\\tx\" has a control character (hint: paths are plain text: no newlines, tabs or other control characters)"
    );
}
