//! `etl-server --config FILE`: serves the ETL API on the configured address until SIGTERM or
//! Ctrl-C, then shuts down gracefully (see `fleet_server::run`). Errors: `anyhow`, printed as
//! one line.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

// Rows are allocated on the source's thread and freed on others: glibc's allocator serialised
// those frees on its arena locks (a third of a transforming run's CPU, measured with perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: etl-server --config FILE
       etl-server token create|list|revoke --config FILE ... (etl-server token --help)

Runs the ETL server of one node: the flow and run API on the configured listen address,
flows executed on this node, runs recorded in Postgres. SIGTERM or Ctrl-C stops it gracefully.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("token") {
        return token(&args[1..]);
    }
    let config_path = match args.as_slice() {
        [flag, path] if flag == "--config" => PathBuf::from(path),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [flag] if flag == "--version" || flag == "-V" => {
            println!("etl-server {}", fleet_server::VERSION);
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // ETL_LOG=error|warn|info|debug|trace (default info), on stderr.
    let level = std::env::var("ETL_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("etl-server: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(serve(config_path));
    // A blocking thread an abandoned run left (a read that never returns) does not hold the
    // exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("etl-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    let mut config = fleet_server::Config::load(&config_path)?;
    config.release = release_from_env();
    config.probation = std::env::var_os("FLEET_PROBATION").is_some_and(|v| v == "1");
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(node = %config.node, listen = %config.listen, release = config.release.as_deref().unwrap_or("-"), probation = config.probation, "etl-server started");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    fleet_server::run(config, listener, async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    })
    .await?;
    Ok(())
}

/// `etl-server token ...`: the cluster's API tokens (`fleet_server::token_cli`).
fn token(args: &[String]) -> ExitCode {
    use fleet_server::token_cli;
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", token_cli::USAGE);
        return if args.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let (command, path, json) = match token_cli::parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("etl-server token: {e:#}\n{}", token_cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let done = fleet_server::Config::load(&path)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(token_cli::run(command, &config, json))
        });
    match done {
        // A reader that stopped early (`| head -n 1` keeps only the token) is no failure.
        Ok(out) => match writeln!(std::io::stdout().lock(), "{out}") {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("etl-server token: writing the answer: {e}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        },
        Err(e) => {
            eprintln!("etl-server token: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The release the agent started this server from: `FLEET_RELEASE`, read once at start; unset
/// or empty (a server started by hand) is none.
fn release_from_env() -> Option<String> {
    match std::env::var("FLEET_RELEASE") {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            tracing::warn!("FLEET_RELEASE is not UTF-8: ignored");
            None
        }
    }
}
