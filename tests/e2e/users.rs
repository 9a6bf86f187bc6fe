//! `fleet user` and `fleet token` through the real binary: passwords only from stdin (never
//! argv), their rules, the store holding hashes only, a token shown once and working until
//! revoked, and an audit row for every change (never a secret in it).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use super::support::{Run, fleet, run_env};

/// `fleet ARGS` with the state in `data`, `stdin` written to its standard input.
pub(super) fn with_stdin(data: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = fleet()
        .args(args)
        .env("FLEET_DATA_DIR", data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the fleet binary runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("fleet ends").into()
}

#[test]
fn users_and_tokens_are_managed_and_audited() {
    let data = tempfile::tempdir().expect("tempdir");
    let d = data.path();
    let env = [("FLEET_DATA_DIR", d)];
    let password = "a long enough secret 1";
    let added = with_stdin(
        d,
        &["user", "add", "alice", "--role", "operator"],
        &format!("{password}\n"),
    )
    .ok();
    assert!(
        added.stdout.contains("user alice added (operator)"),
        "{}",
        added.stdout
    );

    // Refusals, each naming why, changing nothing.
    let short = with_stdin(d, &["user", "add", "bob", "--role", "viewer"], "short\n").fails();
    assert!(
        short.stderr.contains("12 to 1024 characters"),
        "{}",
        short.stderr
    );
    let twice = with_stdin(
        d,
        &["user", "add", "alice", "--role", "admin"],
        &format!("{password}\n"),
    )
    .fails();
    assert!(
        twice.stderr.contains("a user named alice exists already"),
        "{}",
        twice.stderr
    );
    let bad = with_stdin(
        d,
        &["user", "add", "<b>", "--role", "admin"],
        &format!("{password}\n"),
    )
    .fails();
    assert!(bad.stderr.contains("is not a user name"), "{}", bad.stderr);
    let role = run_env(&["user", "add", "carol", "--role", "root"], &env);
    assert_eq!(role.code, Some(2), "{}", role.stderr);
    assert!(
        role.stderr.contains("`root` is not a role"),
        "{}",
        role.stderr
    );

    let list = run_env(&["user", "list", "--json"], &env).ok().json();
    let users = list["users"].as_array().expect("users");
    assert_eq!(users.len(), 1, "{list}");
    assert_eq!(
        (&users[0]["name"], &users[0]["role"]),
        (&"alice".into(), &"operator".into())
    );
    assert!(users[0].get("password_hash").is_none(), "{list}");

    with_stdin(d, &["user", "passwd", "alice"], "another long secret\n").ok();
    let nobody = with_stdin(d, &["user", "passwd", "nobody"], "another long secret\n").fails();
    assert!(
        nobody.stderr.contains("no user named nobody"),
        "{}",
        nobody.stderr
    );

    // A token: printed once, listed by id (never the token), revoked.
    let created = run_env(
        &[
            "token", "create", "--role", "viewer", "--name", "ci", "--json",
        ],
        &env,
    )
    .ok()
    .json();
    let (id, token) = (
        created["id"].as_str().expect("id").to_owned(),
        created["token"].as_str().expect("token").to_owned(),
    );
    assert!(token.starts_with(&format!("fleet_{id}_")), "{created}");
    let tokens = run_env(&["token", "list"], &env).ok();
    assert!(
        tokens.stdout.contains(&id) && tokens.stdout.contains("ci"),
        "{}",
        tokens.stdout
    );
    assert!(!tokens.stdout.contains(&token), "{}", tokens.stdout);
    let expiring = run_env(
        &["token", "create", "--role", "admin", "--expires-in", "soon"],
        &env,
    )
    .fails();
    assert!(
        expiring.stderr.contains("not a duration"),
        "{}",
        expiring.stderr
    );
    run_env(&["token", "revoke", &id], &env).ok();
    let again = run_env(&["token", "revoke", &id], &env).fails();
    assert!(
        again.stderr.contains(&format!("no token with id {id}")),
        "{}",
        again.stderr
    );

    run_env(&["user", "remove", "alice"], &env).ok();
    assert_eq!(
        run_env(&["user", "list", "--json"], &env).ok().json()["users"],
        serde_json::json!([])
    );

    // Every change (and every refused one) is in the audit log; no secret is.
    let audit = run_env(&["audit", "--json"], &env).ok();
    let rows = audit.json()["rows"].as_array().expect("rows").clone();
    let commands: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["command"].as_str().unwrap_or("?").to_owned(),
                r["result"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    let ok = |c: &str| {
        commands
            .iter()
            .any(|(cmd, res)| cmd == c && res.starts_with("ok"))
    };
    for c in [
        "user add",
        "user passwd",
        "token create",
        "token revoke",
        "user remove",
    ] {
        assert!(ok(c), "{c} not audited: {commands:?}");
    }
    assert!(
        commands
            .iter()
            .any(|(c, r)| c == "user add" && r.contains("exists already")),
        "{commands:?}"
    );
    assert!(
        commands
            .iter()
            .any(|(c, r)| c == "token create" && r.contains(&id)),
        "{commands:?}"
    );
    for secret in [password, "another long secret", token.as_str()] {
        assert!(!audit.stdout.contains(secret), "a secret in the audit log");
    }
    let db = std::fs::read(d.join("state.db")).expect("state.db");
    let db = String::from_utf8_lossy(&db);
    for secret in [password, "another long secret", token.as_str()] {
        assert!(!db.contains(secret), "a secret in the state file");
    }
    run_env(&["audit", "verify"], &env).ok();
}
