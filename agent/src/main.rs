//! `fleet-agent`: runs one request against a node root and prints one JSON line with the
//! outcome. `fleet-agent --root R serve` takes the request from `SSH_ORIGINAL_COMMAND` (the
//! forced command of the deploy key); `fleet-agent --root R REQUEST...` takes it from argv.
//! Nothing else: the answer is `fleet_agent::answer`'s.

use std::process::ExitCode;
use std::time::SystemTime;

use fleet_agent::{Answer, Reply};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let original = std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default();
    let answer: Answer<Reply> = match fleet_agent::invocation(&args, &original) {
        Ok((layout, request)) => {
            fleet_agent::answer(&layout, request, fleet_agent::stdin, SystemTime::now())
        }
        Err(e) => Answer::Refused(e.into()),
    };
    print_line(&fleet_agent::answer_line(&answer));
    match answer {
        Answer::Done(_) => ExitCode::SUCCESS,
        Answer::Refused(refusal) => {
            eprintln!("fleet-agent: {refusal}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the one-line answer; a controller that went away is not a reason to panic.
fn print_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
