//! `fleet-agent`: runs one request against a node root and prints one JSON line with the
//! outcome, or runs the node's daemon. `fleet-agent --root R serve` takes the request from
//! `SSH_ORIGINAL_COMMAND` (the forced command of the deploy key); `fleet-agent --root R
//! REQUEST...` takes it from argv; both hand `status`, `activate` and `rollback` to the daemon
//! when one runs (`fleet_agent::respond`). `fleet-agent run --root R` is the daemon
//! (`fleet_agent::daemon::run`): this file only parses, sets up logging, turns SIGTERM and
//! Ctrl-C into its shutdown, and execs a new agent when the daemon asks for it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use fleet_agent::daemon::{DaemonConfig, Exit};
use fleet_agent::{Answer, Reply};

const RUN_USAGE: &str = "usage: fleet-agent run --root DIR

Runs the node's agent daemon: supervises DIR/current/bin/etl-server, polls its health,
publishes heartbeats to the cluster's Redis, answers status / activate / rollback on
DIR/state/agent.sock. Reads DIR/config/agent.toml. SIGTERM or Ctrl-C stops the server and
the daemon. FLEET_AGENT_LOG=error|warn|info|debug sets the log level (default info).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("run") {
        return run_daemon(&args[1..]);
    }
    let original = std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default();
    let forwarded = match fleet_agent::invocation(&args, &original) {
        Ok((layout, request)) => {
            fleet_agent::respond(&layout, request, fleet_agent::stdin, SystemTime::now())
        }
        Err(e) => {
            let answer: Answer<Reply> = Answer::Refused(e.into());
            fleet_agent::daemon::Forwarded {
                line: fleet_agent::answer_line(&answer),
                ok: false,
            }
        }
    };
    print_line(&forwarded.line);
    if forwarded.ok {
        ExitCode::SUCCESS
    } else {
        let error = serde_json::from_str::<serde_json::Value>(&forwarded.line)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        eprintln!("fleet-agent: {error}");
        ExitCode::FAILURE
    }
}

/// Prints the one-line answer; a controller that went away is not a reason to panic.
fn print_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn run_daemon(args: &[String]) -> ExitCode {
    let root = match args {
        [flag, root] if flag == "--root" => PathBuf::from(root),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{RUN_USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{RUN_USAGE}");
            return ExitCode::from(2);
        }
    };
    let level = std::env::var("FLEET_AGENT_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .init();
    let config = match DaemonConfig::load(&root) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    };
    let ran = runtime.block_on(fleet_agent::daemon::run(config, shutdown));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match ran {
        Ok(Exit::Stopped) => ExitCode::SUCCESS,
        Ok(Exit::Replace(binary)) => {
            use std::os::unix::process::CommandExt;
            let error = std::process::Command::new(&binary)
                .args(std::env::args_os().skip(1))
                .exec();
            eprintln!(
                "fleet-agent: replacing the agent with {}: {error}",
                binary.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fleet-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
