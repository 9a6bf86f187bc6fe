//! `fleet user add|list|remove|passwd` and `fleet token create|list|revoke`: the users of
//! `fleet serve` and its API tokens, in the state store. A password is read from the
//! terminal (twice, without echo) or from the first line of stdin, never from argv; a token
//! is printed once, when it is made. Every change writes its audit row.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context as _, anyhow, bail};
use serde_json::json;

use super::args::{TokenCommand, UserCommand};
use super::report::{Failure, Report};
use crate::serve::auth;
use crate::store::{Role, StateLocation, Store, Token, now_ms};

/// `fleet user ...`.
pub fn user(state: Option<&str>, command: UserCommand) -> Result<Report, Failure> {
    let (what, name) = match &command {
        UserCommand::Add { name, .. } => ("user add", Some(name)),
        UserCommand::Passwd { name } => ("user passwd", Some(name)),
        UserCommand::Remove { name } => ("user remove", Some(name)),
        UserCommand::List => ("user list", None),
    };
    if let Some(name) = &name
        && let Some(problem) = auth::user_name_problem(name)
    {
        return Err(anyhow!(problem).into());
    }
    let password = match &command {
        UserCommand::Add { name, .. } | UserCommand::Passwd { name } => {
            let password = read_password(name)?;
            Some(auth::hash_password(&password).map_err(|e| anyhow!(e))?)
        }
        _ => None,
    };
    let outcome = with_store(state, |store| async move {
        match command {
            UserCommand::Add { name, role } => {
                store
                    .add_user(&name, role, password.as_deref().unwrap_or_default())
                    .await?;
                Ok(Report::new(
                    format!("user {name} added ({role})"),
                    json!({ "ok": true, "user": name, "role": role }),
                ))
            }
            UserCommand::Passwd { name } => {
                if !store
                    .set_password(&name, password.as_deref().unwrap_or_default())
                    .await?
                {
                    bail!("no user named {name}");
                }
                Ok(Report::new(
                    format!("the password of {name} is changed; their sessions ended"),
                    json!({ "ok": true, "user": name }),
                ))
            }
            UserCommand::Remove { name } => {
                if !store.remove_user(&name).await? {
                    bail!("no user named {name}");
                }
                Ok(Report::new(
                    format!("user {name} removed; their sessions ended"),
                    json!({ "ok": true, "user": name }),
                ))
            }
            UserCommand::List => {
                let users = store.users().await?;
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.role.to_string(),
                            when(u.created_ms),
                            when(u.updated_ms),
                        ]
                    })
                    .collect();
                let text = if rows.is_empty() {
                    "no users: add one with `fleet user add NAME --role admin`".to_owned()
                } else {
                    super::fanout::table(&["NAME", "ROLE", "CREATED", "CHANGED"], &rows)
                };
                Ok(Report::new(text, json!({ "ok": true, "users": users })))
            }
        }
    });
    if what == "user list" {
        return outcome;
    }
    super::audit::record_local(state, what, None, outcome)
}

/// `fleet token ...`.
pub fn token(state: Option<&str>, command: TokenCommand) -> Result<Report, Failure> {
    let what = match &command {
        TokenCommand::Create { .. } => "token create",
        TokenCommand::Revoke { .. } => "token revoke",
        TokenCommand::List => "token list",
    };
    let outcome = with_store(state, |store| async move {
        match command {
            TokenCommand::Create {
                role,
                name,
                expires_in,
            } => {
                let created_ms = now_ms();
                let expires_ms = expires_in
                    .map(|d| {
                        humantime::parse_duration(&d)
                            .map(|d| created_ms + i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                            .with_context(|| {
                                format!("--expires-in {d:?}: not a duration (30d, 12h)")
                            })
                    })
                    .transpose()?;
                let (id, secret) = auth::new_token();
                let token = Token {
                    id: id.clone(),
                    name: name.unwrap_or_else(|| format!("token {id}")),
                    role,
                    created_by: super::audit::os_user(),
                    created_ms,
                    expires_ms,
                    last_used_ms: None,
                };
                store
                    .create_token(&token, &auth::token_hash(&secret))
                    .await?;
                Ok(Report::new(
                    format!(
                        "{secret}\n(token {id}, {role}: shown once, keep it secret; send it as `Authorization: Bearer <token>`)"
                    ),
                    json!({ "ok": true, "id": id, "role": role, "token": secret, "expires_ms": expires_ms }),
                ))
            }
            TokenCommand::Revoke { id } => {
                if !store.revoke_token(&id).await? {
                    bail!("no token with id {id} (`fleet token list` shows them)");
                }
                Ok(Report::new(
                    format!("token {id} revoked"),
                    json!({ "ok": true, "id": id }),
                ))
            }
            TokenCommand::List => {
                let tokens = store.tokens().await?;
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.role.to_string(),
                            t.created_by.clone(),
                            when(t.created_ms),
                            t.expires_ms.map_or("never".into(), when),
                            t.last_used_ms.map_or("never".into(), when),
                        ]
                    })
                    .collect();
                let text = if rows.is_empty() {
                    "no API tokens".to_owned()
                } else {
                    super::fanout::table(
                        &[
                            "ID",
                            "NAME",
                            "ROLE",
                            "BY",
                            "CREATED",
                            "EXPIRES",
                            "LAST USED",
                        ],
                        &rows,
                    )
                };
                Ok(Report::new(text, json!({ "ok": true, "tokens": tokens })))
            }
        }
    });
    if what == "token list" {
        return outcome;
    }
    // The audit row names the token's id, never the token.
    let id = outcome
        .as_ref()
        .ok()
        .and_then(|r| r.json["id"].as_str().map(str::to_owned));
    super::audit::record_local(state, what, id.map(|id| format!("token {id}")), outcome)
}

/// Opens the store, runs `work` on it, closes it.
fn with_store<F, Fut>(state: Option<&str>, work: F) -> Result<Report, Failure>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Report>>,
{
    let location = StateLocation::from_setting(state).map_err(anyhow::Error::from)?;
    let runtime = super::commands::runtime()?;
    runtime.block_on(async {
        let store = Store::open(&location).await.map_err(anyhow::Error::from)?;
        let report = work(store.clone()).await;
        store.close().await;
        report.map_err(Failure::from)
    })
}

/// The new password of `name`: asked twice on the terminal without echo, or the first line
/// of stdin when stdin is not a terminal.
fn read_password(name: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt_hidden(&format!("Password for {name}: "))?;
        let again = prompt_hidden("Again: ")?;
        if first != again {
            bail!("the two passwords differ; nothing changed");
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if let Some(problem) = auth::password_problem(&password) {
        bail!("{problem}; nothing changed");
    }
    Ok(password)
}

/// Reads a line from the terminal with echo off (restored whatever happens).
fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes -= LocalModes::ECHO;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    tcsetattr(&stdin, OptionalActions::Now, &quiet).context("turning the echo off")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn when(ms: i64) -> String {
    super::audit::when(ms)
}

/// For `--role`.
pub fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}
