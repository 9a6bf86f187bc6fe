//! `etl-server token create|list|revoke --config FILE`: the node's API tokens, kept in its
//! cluster's Postgres (`auth::TokenStore`). A token is printed once, by `create`; `list` shows
//! ids, roles, tenants, creators and times, never a secret.

use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::auth::{Role, TokenRow, TokenStore, parse_duration};

pub const USAGE: &str = "usage: etl-server token create --config FILE --role read|run|admin [--tenant T] [--expires-in D] [--by NAME] [--json]
       etl-server token list --config FILE [--json]
       etl-server token revoke --config FILE ID [--json]

API tokens of the cluster whose Postgres FILE names. create prints the token once (only a hash
is kept): `read` lists and reads, `run` also defines, runs and cancels, `admin` also drains,
resumes and manages tokens; --tenant confines it to one tenant's flows and runs (none: every
tenant); --expires-in 30d|12h|90m|3600s. list shows every token without its secret; revoke ID
(the token's etl_... id, as list shows it) makes it refused from then on.";

/// One `token` command line, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenCommand {
    Create {
        role: Role,
        tenant: Option<String>,
        expires_in: Option<Duration>,
        by: Option<String>,
    },
    List,
    Revoke {
        id: String,
    },
}

/// Parses `ARGS` after `token`: the command, the config file and `--json`.
pub fn parse(args: &[String]) -> anyhow::Result<(TokenCommand, std::path::PathBuf, bool)> {
    let (verb, rest) = args.split_first().context("a token command is needed")?;
    let mut config = None;
    let (mut role, mut tenant, mut expires_in, mut by, mut json, mut id) =
        (None, None, None, None, false, None);
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--config" => config = Some(std::path::PathBuf::from(value("--config")?)),
            "--role" => {
                let v = value("--role")?;
                role = Some(
                    Role::parse(&v)
                        .with_context(|| format!("--role {v}: give read, run or admin"))?,
                );
            }
            "--tenant" => tenant = Some(value("--tenant")?),
            "--expires-in" => {
                let v = value("--expires-in")?;
                expires_in = Some(parse_duration(&v).with_context(|| {
                    format!("--expires-in {v}: give a duration such as 30d, 12h, 90m or 3600s")
                })?);
            }
            "--by" => by = Some(value("--by")?),
            "--json" => json = true,
            other if other.starts_with('-') => bail!("unknown option {other}"),
            other if verb == "revoke" && id.is_none() => id = Some(other.to_owned()),
            other => bail!("unexpected argument {other}"),
        }
    }
    let config = config.context("--config FILE is needed (the node's server.toml)")?;
    if verb != "create"
        && (role.is_some() || tenant.is_some() || expires_in.is_some() || by.is_some())
    {
        bail!("--role, --tenant, --expires-in and --by go with create");
    }
    let command = match verb.as_str() {
        "create" => TokenCommand::Create {
            role: role.context("--role read|run|admin is needed")?,
            tenant,
            expires_in,
            by,
        },
        "list" => TokenCommand::List,
        "revoke" => TokenCommand::Revoke {
            id: id.context("revoke needs the token's id (etl_..., as list shows it)")?,
        },
        other => bail!("unknown token command {other}: create, list or revoke"),
    };
    Ok((command, config, json))
}

/// Runs a parsed `token` command against the cluster's Postgres; what to print on stdout.
pub async fn run(
    command: TokenCommand,
    config: &crate::Config,
    json: bool,
) -> anyhow::Result<String> {
    let pool = crate::db::connect(&config.postgres_url, &config.postgres, 2).await?;
    let store = TokenStore::new(&pool);
    let out = match command {
        TokenCommand::Create {
            role,
            tenant,
            expires_in,
            by,
        } => {
            let by = by
                .or_else(|| std::env::var("SUDO_USER").ok())
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".into());
            let expires_at = expires_in
                .map(|d| chrono::Duration::from_std(d).map(|d| chrono::Utc::now() + d))
                .transpose()
                .context("--expires-in is too long")?;
            if let Some(t) = &tenant
                && config.tenant(t).is_none()
            {
                anyhow::bail!(
                    "tenant `{t}` is not configured on this node: add [tenants.{t}] to the config (fleet provision writes the inventory's tenants of a shared cluster)"
                );
            }
            let (token, row) = store
                .create(role, tenant.as_deref(), &by, expires_at)
                .await?;
            if json {
                serde_json::json!({ "ok": true, "token": token.text, "details": row }).to_string()
            } else {
                format!(
                    "{}\n# {} (role {}, {}, {}): shown once, only its hash is kept",
                    token.text,
                    row.id,
                    row.role,
                    row.tenant
                        .as_deref()
                        .map_or("every tenant".into(), |t| format!("tenant {t}")),
                    row.expires_at.map_or("no expiry".into(), |t| format!(
                        "expires {}",
                        t.to_rfc3339()
                    ))
                )
            }
        }
        TokenCommand::List => {
            let rows = store.list().await?;
            if json {
                serde_json::json!({ "ok": true, "tokens": rows }).to_string()
            } else {
                table(&rows)
            }
        }
        TokenCommand::Revoke { id } => {
            let row = store.revoke(&id).await?;
            if json {
                serde_json::json!({ "ok": true, "revoked": row }).to_string()
            } else {
                format!("revoked {}", row.id)
            }
        }
    };
    pool.close().await;
    Ok(out)
}

fn table(rows: &[TokenRow]) -> String {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("-".to_owned(), |t| {
            t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        })
    };
    let mut lines = vec![format!(
        "{:<17} {:<5} {:<12} {:<12} {:<20} {:<20} {:<20} {}",
        "ID", "ROLE", "TENANT", "CREATED BY", "CREATED", "LAST USED", "EXPIRES", "REVOKED"
    )];
    for r in rows {
        lines.push(format!(
            "{:<17} {:<5} {:<12} {:<12} {:<20} {:<20} {:<20} {}",
            r.id,
            r.role,
            r.tenant.as_deref().unwrap_or("*"),
            r.created_by,
            time(Some(r.created_at)),
            time(r.last_used_at),
            time(r.expires_at),
            time(r.revoked_at)
        ));
    }
    lines.join("\n")
}
