//! `fleet-agent`: runs one request against a node root and prints one JSON line with the
//! outcome. `fleet-agent --root R serve` takes the request from `SSH_ORIGINAL_COMMAND` (the
//! forced command of the deploy key); `fleet-agent --root R REQUEST...` takes it from argv.

use std::process::ExitCode;
use std::time::SystemTime;

use std::os::fd::AsFd;

use fleet_agent::{IdleTimeout, Layout, Request, STDIN_IDLE_TIMEOUT};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = run(&args);
    match outcome {
        Ok(json) => {
            answer(&json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            answer(&serde_json::json!({ "ok": false, "error": e.to_string() }));
            eprintln!("fleet-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the one-line answer; a controller that went away is not a reason to panic.
fn answer(json: &serde_json::Value) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{json}");
}

fn run(args: &[String]) -> Result<serde_json::Value, fleet_agent::AgentError> {
    let usage = || {
        fleet_agent::AgentError::BadRequest(format!(
            "usage: fleet-agent --root DIR ({} | serve)",
            Request::USAGE
        ))
    };
    let [flag, root, rest @ ..] = args else {
        return Err(usage());
    };
    if flag != "--root" {
        return Err(usage());
    }
    let layout = Layout::new(root);
    let original = std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default();
    let words: Vec<&str> = match rest {
        [serve] if serve == "serve" => original.split_whitespace().collect(),
        _ => rest.iter().map(String::as_str).collect(),
    };
    let value = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| fleet_agent::AgentError::Layout(e.to_string()))
    };
    match Request::parse(&words)? {
        Request::Stage { version } => {
            // Unbuffered (std's Stdin keeps a buffer the idle check cannot see).
            let stdin = std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(fleet_agent::AgentError::Stdin)?;
            let mut input = IdleTimeout::new(std::fs::File::from(stdin), STDIN_IDLE_TIMEOUT);
            let staged = fleet_agent::stage(&layout, &version, &mut input, SystemTime::now())?;
            value(serde_json::to_value(staged))
        }
        Request::Activate {
            version,
            allow_downgrade,
        } => value(serde_json::to_value(fleet_agent::activate(
            &layout,
            &version,
            allow_downgrade,
        )?)),
        Request::Rollback => value(serde_json::to_value(fleet_agent::rollback(&layout)?)),
        Request::Status => value(serde_json::to_value(fleet_agent::status(&layout)?)),
    }
    .map(|mut v| {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("ok".into(), true.into());
        }
        v
    })
}
