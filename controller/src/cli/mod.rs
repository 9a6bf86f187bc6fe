//! The `fleet` command line: its definition (`args`), the work behind each command
//! (`commands`; `rollout` for `fleet rollout`), per-node fan-out with progress lines and
//! summary tables (`fanout`), the cells a node's answer fills in those tables (`rows`), and the
//! reports they hand back (`report`); here, the dispatcher that prints a report and picks the
//! exit code. Not the work on a node (`node`) and not the transport (`ssh`).

mod args;
mod audit;
mod commands;
pub(crate) mod fanout;
mod installer;
mod report;
mod rollout;
mod rows;
mod users;

use std::process::ExitCode;

use fleet_proto::Request;

pub use args::Cli;
use args::Command;
use report::Failure;

/// `fleet serve`: opens the store, binds, serves until SIGTERM or Ctrl-C.
fn serve(
    state: Option<&str>,
    inventory: &std::path::Path,
    listen: std::net::SocketAddr,
    options: crate::serve::ServeOptions,
    collect: crate::serve::collect::CollectOptions,
) -> Result<report::Report, Failure> {
    use anyhow::Context as _;
    let inventory = std::sync::Arc::new(commands::load_inventory(inventory)?);
    let location = crate::store::StateLocation::from_setting(state).map_err(anyhow::Error::from)?;
    let runtime = commands::runtime()?;
    runtime.block_on(async {
        let store = crate::store::Store::open(&location)
            .await
            .map_err(anyhow::Error::from)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let bound = listener.local_addr().context("the bound address")?;
        // The line a script or a test waits for.
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        println!("fleet serve: listening on {scheme}://{bound} (state {location})");
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(e) => {
                        tracing::error!(error = %e, "no SIGTERM handler: stop with Ctrl-C");
                        return std::future::pending().await;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        crate::serve::serve(
            store.clone(),
            inventory,
            options,
            collect,
            listener,
            shutdown,
        )
        .await
        .context("serving")?;
        store.close().await;
        Ok::<_, Failure>(report::Report::new(
            format!("fleet serve: stopped (was on {scheme}://{bound})"),
            serde_json::json!({ "ok": true, "listen": bound.to_string() }),
        ))
    })
}

/// Sets up `tracing` on stderr from `--log-level`, then `FLEET_LOG`, else `warn`.
pub fn init_logging(cli: &Cli) {
    let from_env = std::env::var("FLEET_LOG").ok().and_then(|l| match l.parse() {
        Ok(level) => Some(level),
        Err(_) => {
            eprintln!("warning: FLEET_LOG={l:?} is not a log level (error, warn, info, debug, trace); using warn");
            None
        }
    });
    let level = cli.log_level.or(from_env).unwrap_or(tracing::Level::WARN);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs a parsed command line, prints its report or error, and returns the exit code:
/// 0 on success, 1 on failure (clap exits with 2 on a usage error before this).
pub fn run(cli: Cli) -> ExitCode {
    let state = cli.state.clone();
    let audited = |changed: audit::Changed<'_>, outcome: Result<report::Report, Failure>| {
        audit::audited(state.as_deref(), &changed, outcome)
    };
    let outcome = match cli.command {
        Command::Audit(args) => audit::audit(cli.state.as_deref(), args),
        Command::Inventory(c) => commands::inventory(c),
        Command::Hosts(c) => commands::hosts(c, !cli.json),
        Command::Provision {
            nodes,
            trust,
            agent,
            check,
        } => {
            let outcome = commands::provision(nodes.clone(), &trust, agent, check, !cli.json);
            if check {
                outcome
            } else {
                let changed = audit::Changed {
                    command: "provision",
                    nodes: &nodes,
                    bootstrap: true,
                    bundle: None,
                    overrode: Vec::new(),
                };
                audited(changed, outcome)
            }
        }
        Command::Push {
            version,
            nodes,
            store,
        } => {
            let outcome = commands::push(nodes.clone(), &version, &store, !cli.json);
            let bundle = store.join(format!("{version}.bundle"));
            let changed = audit::Changed {
                command: "push",
                nodes: &nodes,
                bootstrap: false,
                bundle: Some(&bundle),
                overrode: Vec::new(),
            };
            audited(changed, outcome)
        }
        Command::Activate {
            version,
            nodes,
            allow_downgrade,
        } => {
            let request = Request::Activate {
                version,
                allow_downgrade,
            };
            let outcome = commands::switch(nodes.clone(), request, !cli.json);
            let changed = audit::Changed {
                command: "activate",
                nodes: &nodes,
                bootstrap: false,
                bundle: None,
                overrode: Vec::new(),
            };
            audited(changed, outcome)
        }
        Command::Rollback { nodes } => {
            let outcome = commands::switch(nodes.clone(), Request::Rollback, !cli.json);
            let changed = audit::Changed {
                command: "rollback",
                nodes: &nodes,
                bootstrap: false,
                bundle: None,
                overrode: Vec::new(),
            };
            audited(changed, outcome)
        }
        Command::Status { nodes } => commands::status(nodes, !cli.json),
        Command::Keys(c) => commands::keys(c).map_err(Failure::from),
        Command::Trust(c) => commands::trust(c).map_err(Failure::from),
        Command::Release(c) => commands::release(c).map_err(Failure::from),
        Command::Installer(c) => installer::installer(c),
        Command::Rollout(c) => rollout::rollout(c, state.as_deref(), cli.json),
        Command::User(c) => users::user(state.as_deref(), c),
        Command::Token(c) => users::token(state.as_deref(), c),
        Command::Serve {
            inventory,
            store,
            order_key,
            collect_every,
            collect_parallel,
            listen,
            secure_cookies,
            tls_cert,
            tls_key,
            trusted_origin,
            session_ttl,
        } => {
            let every: std::time::Duration = collect_every.into();
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => fleet_tls::server_config(&cert, &key).map(Some),
                _ => Ok(None),
            };
            match tls {
                Err(e) => Err(Failure::from(anyhow::anyhow!("TLS: {e}"))),
                Ok(tls) => {
                    let options = crate::serve::ServeOptions {
                        secure_cookies: secure_cookies || tls.is_some(),
                        tls,
                        trusted_origins: trusted_origin,
                        session_ttl: session_ttl.into(),
                        stale_after: every * 3,
                        release_store: store,
                        order_key,
                    };
                    let collect = crate::serve::collect::CollectOptions {
                        every,
                        parallel: collect_parallel,
                        ..Default::default()
                    };
                    serve(state.as_deref(), &inventory, listen, options, collect)
                }
            }
        }
    };
    match outcome {
        Ok(report) => {
            if cli.json {
                print_out(&report.json.to_string());
            } else if !report.text.is_empty() {
                print_out(report.text.trim_end());
            }
            for problem in &report.problems {
                eprintln!("error: {problem}");
            }
            if report.problems.is_empty() && report.success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(failure) => {
            for line in &failure.lines {
                eprintln!("{line}");
            }
            eprintln!("error: {:#}", failure.error);
            if cli.json {
                let mut doc =
                    serde_json::json!({ "ok": false, "error": format!("{:#}", failure.error) });
                if let (Some(details), Some(obj)) = (failure.details, doc.as_object_mut()) {
                    obj.insert("details".into(), details);
                }
                print_out(&doc.to_string());
            }
            ExitCode::FAILURE
        }
    }
}

/// Prints to stdout; a reader that went away (`fleet ... | head`) is not an error worth a
/// panic, so write errors are dropped.
fn print_out(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}
