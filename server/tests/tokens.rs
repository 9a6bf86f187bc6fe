//! API tokens in the cluster's Postgres: made with a role and a tenant, listed without their
//! secret, checked in constant time against the stored hash, refused when unknown, altered,
//! revoked or expired; and `etl-server token` as a process: the token printed once, absent
//! from `list` and from every column of the table.

mod common;

use std::process::Command;

use chrono::{Duration, Utc};
use fleet_server::auth::{Role, TokenStore, TokensError};
use fleet_tests::TestDb;

#[tokio::test]
async fn tokens_are_kept_as_hashes_and_refused_when_altered_revoked_or_expired() {
    let db = TestDb::new("tokens").await;
    let pool = fleet_server::connect_db(&db.url, &Default::default(), 2)
        .await
        .expect("connect and migrate");
    let store = TokenStore::new(&pool);
    let expires = Utc::now() + Duration::hours(1);
    let (token, row) = store
        .create(Role::Run, Some("acme"), "alice", Some(expires))
        .await
        .expect("made");
    assert_eq!(
        (
            row.role.as_str(),
            row.tenant.as_deref(),
            row.created_by.as_str()
        ),
        ("run", Some("acme"), "alice")
    );
    assert!(row.last_used_at.is_none() && row.revoked_at.is_none());

    // Nothing of the secret is stored: no column of any row holds it, or the whole token.
    let secret = &token.text[token.id.len() + 1..];
    let dump: Vec<String> = sqlx::query_scalar("SELECT t::text FROM api_tokens t")
        .fetch_all(&pool)
        .await
        .expect("dump");
    assert_eq!(dump.len(), 1);
    assert!(
        !dump[0].contains(secret) && !dump[0].contains(&token.text),
        "{dump:?}"
    );

    let now = Utc::now();
    let caller = store
        .authenticate(&token.text, now)
        .await
        .expect("checked")
        .expect("a live token");
    assert_eq!(
        (caller.role, caller.tenant.as_deref(), caller.token.as_str()),
        (Role::Run, Some("acme"), token.id.as_str())
    );
    let listed = store.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used_at.is_some(), "{listed:?}");

    // Altered (the last digit), another token's id with this secret, malformed, unknown:
    // refused alike.
    let last = token.text.chars().last().expect("a digit");
    let altered = format!(
        "{}{}",
        &token.text[..token.text.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let (other, _) = store
        .create(Role::Admin, None, "bob", None)
        .await
        .expect("made");
    let swapped = format!("{}_{}", other.id, secret);
    for bad in [altered.as_str(), swapped.as_str(), "etl_", "Bearer x", ""] {
        assert_eq!(
            store.authenticate(bad, now).await.expect("checked"),
            None,
            "{bad}"
        );
    }
    // The operator's token: every tenant.
    let admin = store
        .authenticate(&other.text, now)
        .await
        .expect("checked")
        .expect("live");
    assert_eq!((admin.role, admin.tenant), (Role::Admin, None));

    // Expired: refused once its time has come.
    let later = expires + Duration::seconds(1);
    assert_eq!(
        store
            .authenticate(&token.text, later)
            .await
            .expect("checked"),
        None
    );
    assert!(
        store
            .authenticate(&other.text, later)
            .await
            .expect("checked")
            .is_some()
    );

    // Revoked: refused; revoking again keeps the first time; an unknown id is an error.
    let revoked = store.revoke(&other.id).await.expect("revoked");
    assert!(revoked.revoked_at.is_some());
    assert_eq!(
        store.authenticate(&other.text, now).await.expect("checked"),
        None
    );
    let again = store.revoke(&other.id).await.expect("again");
    assert_eq!(again.revoked_at, revoked.revoked_at);
    assert!(matches!(
        store.revoke("etl_000000000000").await,
        Err(TokensError::NotFound(_))
    ));
    // A tenant must be a name a path and a schema can hold.
    assert!(matches!(
        store.create(Role::Read, Some("../x"), "eve", None).await,
        Err(TokensError::Tenant(_))
    ));
    pool.close().await;
}

fn etl_server(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_etl-server"))
        .args(args)
        .env("USER", "carol")
        .env_remove("SUDO_USER")
        .output()
        .expect("etl-server runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn etl_server_token_prints_a_token_once_lists_without_it_and_revokes() {
    let db = TestDb::new("tokencli").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        common::config_text(
            "node-a",
            &db,
            &dir.path().join("shared"),
            "127.0.0.1:0",
            "[tenants.acme]\n",
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();

    // A tenant this node does not know gets no token.
    let (code, _, err) = etl_server(&[
        "token", "create", "--config", &config, "--role", "read", "--tenant", "globex",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("tenant `globex` is not configured") && err.contains("[tenants.globex]"),
        "{err}"
    );

    let (code, out, err) = etl_server(&[
        "token",
        "create",
        "--config",
        &config,
        "--role",
        "read",
        "--tenant",
        "acme",
        "--expires-in",
        "30d",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let token = out.lines().next().expect("the token").to_owned();
    assert!(
        token.starts_with("etl_") && out.contains("shown once"),
        "{out}"
    );
    let id = &token[..16];

    let (code, listed, err) = etl_server(&["token", "list", "--config", &config]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        listed.contains(id)
            && listed.contains("read")
            && listed.contains("acme")
            && listed.contains("carol"),
        "{listed}"
    );
    assert!(
        !listed.contains(&token[17..]),
        "the secret is listed: {listed}"
    );
    let (_, json, _) = etl_server(&["token", "list", "--config", &config, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json["tokens"][0]["id"], id);
    assert!(!json.to_string().contains(&token[17..]));

    let (code, out, err) = etl_server(&["token", "revoke", "--config", &config, id]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("revoked {id}"));
    let (_, listed, _) = etl_server(&["token", "list", "--config", &config, "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert!(listed["tokens"][0]["revoked_at"].is_string(), "{listed}");

    // Usage errors exit 2 and say what is wrong; an unknown id exits 1 naming it.
    for (args, says) in [
        (vec!["token", "create", "--config", &config], "--role"),
        (
            vec!["token", "create", "--config", &config, "--role", "root"],
            "give read, run or admin",
        ),
        (
            vec![
                "token",
                "create",
                "--config",
                &config,
                "--role",
                "run",
                "--expires-in",
                "1w",
            ],
            "duration",
        ),
        (vec!["token", "list"], "--config"),
        (
            vec!["token", "frob", "--config", &config],
            "unknown token command",
        ),
    ] {
        let (code, _, err) = etl_server(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A reader that closed early (`| head -n 1` after the token's line) is no failure.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_etl-server"))
        .args(["token", "create", "--config", &config, "--role", "read"])
        .stdout(writer)
        .output()
        .expect("etl-server runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let (code, _, err) = etl_server(&["token", "revoke", "--config", &config, "etl_000000000000"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no token etl_000000000000"), "{err}");
}
