//! The state store's conformance suite: every test runs against a SQLite file and against a
//! Postgres database of its own (the machine's Postgres, `fleet_tests::TestDb`), through the
//! same `Store` calls. Tampering is done with plain SQL on the same database, as someone with
//! write access to it would.

use fleet_controller::{
    AuditEntry, NodeOutcome, Principal, Role, StateLocation, Store, StoreError, Tamper, Token,
};

/// Runs `$body(store)` once on SQLite and once on Postgres, as two tests.
macro_rules! on_both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tempdir");
                let location = StateLocation::Sqlite(dir.path().join("state.db"));
                let store = Store::open(&location).await.expect("open sqlite");
                ($body)(store.clone(), location).await;
                store.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = fleet_tests::TestDb::new(stringify!($name)).await;
                let location = StateLocation::Postgres(db.url.clone());
                let store = Store::open(&location).await.expect("open postgres");
                ($body)(store.clone(), location).await;
                store.close().await;
            }
        }
    };
}

fn targets(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn entry(n: i64) -> AuditEntry {
    AuditEntry {
        at_ms: 1_000 * n,
        os_user: "ops".into(),
        key_fingerprints: vec!["SHA256:abc".into()],
        command: "activate".into(),
        args: vec![
            "activate".into(),
            format!("1.{n}.0"),
            "-i".into(),
            "fleet.yaml".into(),
        ],
        nodes: vec![
            ("node-1".into(), "ok".into()),
            ("node-2".into(), format!("failed {n}")),
        ],
        digests: vec![format!("{n:064x}")],
        result: "ok".into(),
    }
}

async fn three_rows(store: &Store) {
    for n in 1..=3 {
        let row = store.append_audit(&entry(n)).await.expect("append");
        assert_eq!(row.id, n);
    }
}

/// Plain SQL on the store's database.
async fn exec(store: &Store, sql: &str) {
    match store {
        Store::Sqlite(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .expect("sql");
        }
        Store::Postgres(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(pool)
                .await
                .expect("sql");
        }
    }
}

on_both!(
    the_audit_chain_reads_back_and_verifies,
    |store: Store, location: StateLocation| async move {
        three_rows(&store).await;
        let rows = store.audit(None).await.expect("rows");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].entry, entry(2));
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        assert_eq!(store.audit(Some(2_000)).await.expect("since").len(), 2);
        assert_eq!(store.verify_audit().await.expect("verify"), (3, None));
        // Reopening migrates nothing again and keeps the chain.
        let again = Store::open(&location).await.expect("reopen");
        assert_eq!(again.verify_audit().await.expect("verify"), (3, None));
        assert_eq!(again.append_audit(&entry(4)).await.expect("append").id, 4);
    }
);

on_both!(
    an_edited_row_is_named,
    |store: Store, _l: StateLocation| async move {
        three_rows(&store).await;
        exec(
            &store,
            "UPDATE audit SET result = 'failed: nothing' WHERE id = 2",
        )
        .await;
        let (_, tamper) = store.verify_audit().await.expect("verify");
        assert_eq!(tamper, Some(Tamper::Edited { id: 2 }));
        assert!(
            tamper
                .expect("tamper")
                .to_string()
                .contains("audit row 2 was edited")
        );
    }
);

on_both!(
    a_deleted_row_is_named,
    |store: Store, _l: StateLocation| async move {
        three_rows(&store).await;
        exec(&store, "DELETE FROM audit WHERE id = 2").await;
        let (_, tamper) = store.verify_audit().await.expect("verify");
        assert_eq!(
            tamper,
            Some(Tamper::Broken {
                id: 3,
                after: Some(1)
            })
        );
        exec(&store, "DELETE FROM audit WHERE id = 1").await;
        let (_, tamper) = store.verify_audit().await.expect("verify");
        assert_eq!(tamper, Some(Tamper::Broken { id: 3, after: None }));
    }
);

on_both!(
    swapped_rows_are_named,
    |store: Store, _l: StateLocation| async move {
        three_rows(&store).await;
        // Rows 2 and 3 exchange places: each keeps its content and hashes under the other's id.
        exec(&store, "UPDATE audit SET id = 100 WHERE id = 2").await;
        exec(&store, "UPDATE audit SET id = 2 WHERE id = 3").await;
        exec(&store, "UPDATE audit SET id = 3 WHERE id = 100").await;
        let (_, tamper) = store.verify_audit().await.expect("verify");
        assert_eq!(tamper, Some(Tamper::Edited { id: 2 }));
    }
);

on_both!(
    concurrent_appends_keep_one_chain,
    |store: Store, _l: StateLocation| async move {
        let mut tasks = Vec::new();
        for t in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..5 {
                    store
                        .append_audit(&entry(t * 10 + n))
                        .await
                        .expect("append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let rows = store.audit(None).await.expect("rows");
        assert_eq!(
            rows.iter().map(|r| r.id).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        assert_eq!(store.verify_audit().await.expect("verify"), (20, None));
    }
);

on_both!(
    one_rollout_in_flight_per_cluster,
    |store: Store, _l: StateLocation| async move {
        store
            .start_rollout("r1", "acme/prod", "2.0.0", &targets(&["n1", "n2"]))
            .await
            .expect("first");
        match store.start_rollout("r2", "acme/prod", "2.0.0", &[]).await {
            Err(StoreError::RolloutInFlight { cluster, rollout }) => {
                assert_eq!((cluster.as_str(), rollout.as_str()), ("acme/prod", "r1"));
            }
            other => panic!("a second rollout on the cluster: {other:?}"),
        }
        store
            .start_rollout("r3", "acme/test", "2.0.0", &[])
            .await
            .expect("another cluster");
        assert!(
            store
                .end_rollout("r1", "committed", None)
                .await
                .expect("end")
        );
        // The first end stands.
        assert!(
            !store
                .end_rollout("r1", "failed", Some("late"))
                .await
                .expect("end again")
        );
        let r1 = store.rollout("r1").await.expect("read").expect("r1");
        assert_eq!(r1.state, "committed");
        assert!(r1.ended_ms.is_some());
        store
            .start_rollout("r2", "acme/prod", "2.0.0", &[])
            .await
            .expect("the cluster is free again");
        // An id is used once.
        match store.start_rollout("r1", "other/one", "2.0.0", &[]).await {
            Err(StoreError::RolloutExists { id }) => assert_eq!(id, "r1"),
            other => panic!("a second rollout r1: {other:?}"),
        }

        // Two at once on a free cluster: exactly one proceeds.
        let (a, b) = tokio::join!(
            store.start_rollout("r4", "beta/prod", "1.0.0", &[]),
            store.start_rollout("r5", "beta/prod", "1.0.0", &[])
        );
        assert_eq!(
            usize::from(a.is_ok()) + usize::from(b.is_ok()),
            1,
            "{a:?} {b:?}"
        );
    }
);

on_both!(
    node_outcomes_and_status_snapshots,
    |store: Store, _l: StateLocation| async move {
        store
            .start_rollout("r1", "acme/prod", "2.0.0", &targets(&["n1", "n2"]))
            .await
            .expect("rollout");
        let outcome = |node: &str, outcome: Option<&str>, step: &str| NodeOutcome {
            node: node.into(),
            outcome: outcome.map(str::to_owned),
            step: Some(step.into()),
            reason: None,
            updated_ms: 5,
            started_ms: Some(3),
            ended_ms: outcome.map(|_| 4),
        };
        store
            .set_node_outcome("r1", &outcome("n2", None, "gate"))
            .await
            .expect("set");
        store
            .set_node_outcome("r1", &outcome("n1", Some("committed"), "commit"))
            .await
            .expect("set");
        store
            .set_node_outcome("r1", &outcome("n2", Some("rolled_back"), "rollback"))
            .await
            .expect("update");
        let outcomes = store.node_outcomes("r1").await.expect("read");
        assert_eq!(
            outcomes,
            vec![
                outcome("n1", Some("committed"), "commit"),
                outcome("n2", Some("rolled_back"), "rollback"),
            ]
        );
        assert_eq!(store.node_status("n1").await.expect("none"), None);
        let status = serde_json::json!({ "active": "2.0.0", "daemon": { "server": "healthy" } });
        store.save_node_status("n1", &status).await.expect("save");
        store
            .save_node_status("n1", &status)
            .await
            .expect("save again");
        let (_, read) = store.node_status("n1").await.expect("read").expect("saved");
        assert_eq!(read, status);
        // A failure is kept beside the last status, and a node only ever failed is listed too.
        store
            .save_node_error("n1", "connection refused")
            .await
            .expect("error");
        store
            .save_node_error("n3", "no route")
            .await
            .expect("error");
        let snapshots = store.node_snapshots().await.expect("snapshots");
        let names: Vec<&str> = snapshots.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(names, ["n1", "n3"]);
        assert_eq!(snapshots[0].status.as_ref().map(|(_, s)| s), Some(&status));
        assert_eq!(
            snapshots[0].error.as_ref().map(|(_, e)| e.as_str()),
            Some("connection refused")
        );
        assert!(snapshots[1].status.is_none());
        exec(
            &store,
            "UPDATE node_status SET status = '{' WHERE node = 'n1'",
        )
        .await;
        let err = store.node_snapshots().await.expect_err("corrupt");
        assert!(err.to_string().contains("the status of n1"), "{err}");
    }
);

on_both!(
    a_rollout_keeps_its_targets_and_its_order,
    |store: Store, location: StateLocation| async move {
        let started = store
            .start_rollout("r1", "acme/prod", "2.0.0", &targets(&["n1", "n2", "n3"]))
            .await
            .expect("start");
        assert_eq!(started.targets, targets(&["n1", "n2", "n3"]));
        assert_eq!(
            (started.order.as_deref(), started.in_flight()),
            (None, true)
        );
        store
            .set_rollout_order(
                "r1",
                &targets(&["n1", "n3"]),
                r#"{"order":{},"signatures":[]}"#,
            )
            .await
            .expect("order");
        // Another controller, later, finds everything it needs to watch it.
        let again = Store::open(&location).await.expect("reopen");
        let read = again.rollout("r1").await.expect("read").expect("r1");
        assert_eq!(read.targets, targets(&["n1", "n3"]));
        assert_eq!(
            read.order.as_deref(),
            Some(r#"{"order":{},"signatures":[]}"#)
        );
        assert_eq!(read.version, "2.0.0");
        assert_eq!(read.last_control, None);
        // The last control a node took is kept with it, for a watch begun afresh.
        assert!(
            store
                .set_rollout_control("r1", "abort_rollback")
                .await
                .expect("control")
        );
        let read = again.rollout("r1").await.expect("read").expect("r1");
        assert_eq!(read.last_control.as_deref(), Some("abort_rollback"));
        assert_eq!(
            again
                .rollouts(true)
                .await
                .expect("in flight")
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            ["r1"]
        );
        assert!(
            again
                .end_rollout("r1", "failed", Some("n2 rolled back: health"))
                .await
                .expect("end")
        );
        let ended = again.rollout("r1").await.expect("read").expect("r1");
        assert_eq!(
            (
                ended.state.as_str(),
                ended.reason.as_deref(),
                ended.in_flight()
            ),
            ("failed", Some("n2 rolled back: health"), false)
        );
        assert!(
            !again
                .set_rollout_control("r1", "abort")
                .await
                .expect("control"),
            "an ended rollout's last control stays"
        );
        // No order of an ended rollout is recorded (none may be handed out).
        match again.set_rollout_order("r1", &targets(&["n1"]), "{}").await {
            Err(StoreError::RolloutEnded { id }) => assert_eq!(id, "r1"),
            other => panic!("an order for an ended rollout: {other:?}"),
        }
        assert!(again.rollouts(true).await.expect("in flight").is_empty());
        store
            .start_rollout("r2", "acme/prod", "2.1.0", &[])
            .await
            .expect("r2");
        let all: Vec<String> = again
            .rollouts(false)
            .await
            .expect("all")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(all, ["r2", "r1"], "newest first");
    }
);

on_both!(
    the_order_sequence_only_rises,
    |store: Store, location: StateLocation| async move {
        let first = store.next_sequence().await.expect("sequence");
        // Never below the clock (ms): a controller with a new store still signs above what
        // the nodes accepted from the old one.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64;
        assert!(
            first + 60_000 > now && first <= now + 60_000,
            "{first} vs {now}"
        );
        let second = store.next_sequence().await.expect("sequence");
        assert!(second > first, "{second} after {first}");
        // Concurrent takers, on this pool and on other connections to the same database (as
        // other controllers), never get the same number.
        let mut tasks = Vec::new();
        for t in 0..6 {
            let store = if t % 2 == 0 {
                store.clone()
            } else {
                Store::open(&location).await.expect("another store")
            };
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..25 {
                    got.push(store.next_sequence().await.expect("sequence"));
                }
                got
            }));
        }
        let mut all = vec![first, second];
        for t in tasks {
            let got = t.await.expect("task");
            assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
            all.extend(got);
        }
        let taken = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), taken, "a sequence number was handed out twice");
        assert!(all.iter().all(|&n| n > second || n == first || n == second));
    }
);

on_both!(
    users_sessions_and_tokens,
    |store: Store, _l: StateLocation| async move {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        store
            .add_user("alice", Role::Operator, "$argon2id$h1")
            .await
            .expect("add");
        match store.add_user("alice", Role::Admin, "h").await {
            Err(StoreError::UserExists { name }) => assert_eq!(name, "alice"),
            other => panic!("a second alice: {other:?}"),
        }
        let users = store.users().await.expect("users");
        assert_eq!(users.len(), 1);
        assert_eq!(
            (users[0].name.as_str(), users[0].role),
            ("alice", Role::Operator)
        );
        assert_eq!(
            store.user_credentials("alice").await.expect("credentials"),
            Some((Role::Operator, "$argon2id$h1".to_owned()))
        );
        assert_eq!(store.user_credentials("bob").await.expect("none"), None);

        // Sessions: live, unknown, expired (and then gone).
        store
            .create_session("s1", "alice", now + 60_000)
            .await
            .expect("s1");
        store
            .create_session("s2", "alice", now - 1)
            .await
            .expect("s2");
        let alice = Principal {
            name: "alice".into(),
            role: Role::Operator,
        };
        assert_eq!(store.session("s1").await.expect("s1"), Some(alice.clone()));
        assert_eq!(store.session("nope").await.expect("nope"), None);
        assert_eq!(store.session("s2").await.expect("expired"), None);
        assert!(!store.end_session("s2").await.expect("gone already"));
        // A new password ends every session of the user.
        assert!(
            store
                .set_password("alice", "$argon2id$h2")
                .await
                .expect("passwd")
        );
        assert!(!store.set_password("bob", "x").await.expect("no bob"));
        assert_eq!(store.session("s1").await.expect("ended"), None);
        store
            .create_session("s3", "alice", now + 60_000)
            .await
            .expect("s3");
        assert!(store.end_session("s3").await.expect("logout"));
        assert_eq!(store.session("s3").await.expect("ended"), None);
        // Removing the user ends their sessions.
        store
            .create_session("s4", "alice", now + 60_000)
            .await
            .expect("s4");
        assert!(store.remove_user("alice").await.expect("remove"));
        assert!(!store.remove_user("alice").await.expect("again"));
        assert_eq!(store.session("s4").await.expect("cascade"), None);

        // Tokens: found by hash, last use noted, expiry and revocation honoured.
        let token = |id: &str, expires_ms: Option<i64>| Token {
            id: id.into(),
            name: format!("ci {id}"),
            role: Role::Viewer,
            created_by: "ops".into(),
            created_ms: now,
            expires_ms,
            last_used_ms: None,
        };
        store
            .create_token(&token("t1", None), "hash1")
            .await
            .expect("t1");
        store
            .create_token(&token("t2", Some(now - 1)), "hash2")
            .await
            .expect("t2");
        assert_eq!(
            store.token("hash1").await.expect("t1"),
            Some(Principal {
                name: "token:t1".into(),
                role: Role::Viewer
            })
        );
        assert_eq!(store.token("hash2").await.expect("expired"), None);
        assert_eq!(store.token("t1").await.expect("an id is not a hash"), None);
        let tokens = store.tokens().await.expect("tokens");
        assert_eq!(tokens.len(), 2);
        assert!(
            tokens[0].last_used_ms.is_some_and(|t| t >= now),
            "{tokens:?}"
        );
        assert!(store.revoke_token("t1").await.expect("revoke"));
        assert!(!store.revoke_token("t1").await.expect("again"));
        assert_eq!(store.token("hash1").await.expect("revoked"), None);

        // A role the code does not know is an error naming whose, not a guess.
        store
            .add_user("carol", Role::Viewer, "h")
            .await
            .expect("carol");
        exec(
            &store,
            "UPDATE users SET role = 'root' WHERE name = 'carol'",
        )
        .await;
        let err = store.users().await.expect_err("corrupt role");
        assert!(err.to_string().contains("the role of carol"), "{err}");
    }
);

/// A Postgres URL's password never shows in the store's errors or its location.
#[tokio::test]
async fn a_postgres_password_is_never_shown() {
    let location = StateLocation::Postgres("postgres://fleet:hunter2@127.0.0.1:1/state".into());
    assert!(!location.to_string().contains("hunter2"), "{location}");
    let err = match Store::open(&location).await {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("state store"), "{err}");
}
