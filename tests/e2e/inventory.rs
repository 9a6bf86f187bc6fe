//! `fleet inventory check` and `fleet inventory list` on real files.

use std::fs;

use crate::support::{repo, run};

fn example(name: &str) -> String {
    repo()
        .join("inventory/examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_issue_example_is_accepted_as_it_is() {
    let out = run(&["inventory", "check", "-i", &example("acme.yaml")]).ok();
    assert!(
        out.stdout.contains("ok (1 customers, 1 clusters, 2 nodes)"),
        "{}",
        out.stdout
    );
    run(&["inventory", "check", "-i", &example("fleet.yaml")]).ok();
}

#[test]
fn check_reports_every_problem_with_its_position_in_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    fs::write(
        &file,
        "defaults:\n  ssh: { user: etl, port: 99999 }\ncustomers:\n  acme:\n    mode: customer_managd\n    clusters:\n      prod:\n        redis_url: http://x\n        postgres_url: env:PG\n        shared_storage: /mnt/x\n        nodes:\n          - { name: a1, hots: 10.0.0.1 }\n          - { name: a1, host: 10.0.0.2 }\n",
    )
    .expect("write");
    let f = file.to_string_lossy();
    let out = run(&["inventory", "check", "-i", &f]).fails();
    let expected = [
        format!("{f}:2:27: defaults.ssh.port: `99999` is out of range"),
        format!(
            "{f}:5:11: customers.acme.mode: unknown mode `customer_managd` (hint: did you mean `customer_managed`?)"
        ),
        format!("{f}:8:20: customers.acme.clusters.prod.redis_url: unsupported URL scheme `http`"),
        format!(
            "{f}:12:13: customers.acme.clusters.prod.nodes[0].host: missing required key `host`"
        ),
        format!(
            "{f}:12:25: customers.acme.clusters.prod.nodes[0].hots: unknown key `hots` (hint: did you mean `host`?)"
        ),
        format!("{f}:13:21: customers.acme.clusters.prod.nodes[1].name: duplicate node name `a1`"),
    ];
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{}", out.stderr);
    for (line, want) in lines.iter().zip(&expected) {
        assert!(line.starts_with(want.as_str()), "got  {line}\nwant {want}");
    }
    assert_eq!(
        lines[expected.len()],
        format!("error: {f}: 6 problems found")
    );

    let json = run(&["inventory", "check", "-i", &f, "--json"])
        .fails()
        .json();
    let problems = json["details"]["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 6);
    assert_eq!(problems[1]["line"], 5);
    assert_eq!(problems[1]["column"], 11);
    assert_eq!(problems[1]["path"], "customers.acme.mode");
}

#[test]
fn unreadable_files_fail_with_one_clear_line() {
    let out = run(&["inventory", "check", "-i", "/nonexistent/fleet.yaml"]).fails();
    assert!(
        out.stderr
            .starts_with("/nonexistent/fleet.yaml: cannot read"),
        "{}",
        out.stderr
    );
}

#[test]
fn list_resolves_and_masks() {
    let out = run(&["inventory", "list", "-i", &example("acme.yaml")]).ok();
    let lines: Vec<_> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1].starts_with(
            "acme-prod-2 customer=acme cluster=prod host=10.0.1.12 ssh=etl@10.0.1.12:2222 "
        ),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("postgres=env:ACME_PG_URL"),
        "{}",
        lines[1]
    );

    // A literal URL's password never reaches the output.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("inv.yaml");
    fs::write(
        &file,
        "customers:\n  c:\n    mode: dedicated\n    ssh: { user: etl }\n    clusters:\n      k:\n        redis_url: redis://:hunter2@10.0.0.5:6379/0\n        postgres_url: postgres://etl:hunter2@db/etl\n        shared_storage: /mnt/s\n        nodes: [{ name: n1, host: 10.0.0.1 }]\n",
    )
    .expect("write");
    for args in [
        vec!["inventory", "list", "-i"],
        vec!["inventory", "list", "--json", "-i"],
    ] {
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        args.push(file.to_string_lossy().into_owned());
        let out = run(&args).ok();
        assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
        assert!(out.stdout.contains("***"), "{}", out.stdout);
    }
}

#[test]
fn limit_forms_through_the_command_line() {
    let names = |pattern: &str| -> Vec<String> {
        let json = run(&[
            "inventory",
            "list",
            "-i",
            &example("fleet.yaml"),
            "--limit",
            pattern,
            "--json",
        ])
        .ok()
        .json();
        json["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let all = names("*");
    assert!(all.len() >= 5);
    let first = all[0].clone();
    assert_eq!(names(&first), std::slice::from_ref(&first));
    assert_eq!(names(&format!("*,!{first}")).len(), all.len() - 1);

    let out = run(&[
        "inventory",
        "list",
        "-i",
        &example("fleet.yaml"),
        "--limit",
        "nope,acme-*",
    ])
    .fails();
    assert!(
        out.stderr.contains("no node matches `nope`"),
        "{}",
        out.stderr
    );
}

#[test]
fn endless_input_is_refused_without_reading_it_all() {
    let out = run(&["inventory", "check", "-i", "/dev/zero"]).fails();
    assert!(
        out.stderr
            .starts_with("/dev/zero: cannot read: larger than"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_reader_that_goes_away_is_not_a_crash() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.yaml");
    let nodes: String = (0..3000)
        .map(|i| {
            format!(
                "          - {{ name: n{i}, host: 10.1.{}.{} }}\n",
                i / 250,
                i % 250
            )
        })
        .collect();
    fs::write(
        &file,
        format!("customers:\n  c:\n    mode: shared\n    ssh: {{ user: etl }}\n    clusters:\n      k:\n        redis_url: redis://r\n        postgres_url: postgres://p/db\n        shared_storage: /mnt/s\n        nodes:\n{nodes}"),
    )
    .expect("write");
    let mut child = crate::support::fleet()
        .args(["inventory", "list", "-i"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read");
    assert!(first.starts_with("n0 "), "{first}");
    let out = child.wait_with_output().expect("wait");
    assert_ne!(
        out.status.code(),
        Some(101),
        "panicked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
