//! The `fleet` command line: its definition (`args`), the work behind each command
//! (`commands`), per-node fan-out with progress lines and summary tables (`fanout`), the cells
//! a node's answer fills in those tables (`rows`), and the reports they hand back (`report`); here, the dispatcher that prints a report and picks the
//! exit code. Not the work on a node (`node`) and not the transport (`ssh`).

mod args;
mod commands;
mod fanout;
mod report;
mod rows;

use std::process::ExitCode;

use fleet_proto::Request;

pub use args::Cli;
use args::Command;
use report::Failure;

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
    let outcome = match cli.command {
        Command::Inventory(c) => commands::inventory(c),
        Command::Hosts(c) => commands::hosts(c, !cli.json),
        Command::Provision {
            nodes,
            trust,
            agent,
            check,
        } => commands::provision(nodes, &trust, agent, check, !cli.json),
        Command::Push {
            version,
            nodes,
            store,
        } => commands::push(nodes, &version, &store, !cli.json),
        Command::Activate {
            version,
            nodes,
            allow_downgrade,
        } => {
            let request = Request::Activate {
                version,
                allow_downgrade,
            };
            commands::switch(nodes, request, !cli.json)
        }
        Command::Rollback { nodes } => commands::switch(nodes, Request::Rollback, !cli.json),
        Command::Status { nodes } => commands::status(nodes, !cli.json),
        Command::Keys(c) => commands::keys(c).map_err(Failure::from),
        Command::Trust(c) => commands::trust(c).map_err(Failure::from),
        Command::Release(c) => commands::release(c).map_err(Failure::from),
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
            if report.problems.is_empty() {
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
