//! The `fleet` binary: parses the command line, sets up logging, runs the command, and turns
//! the outcome into an exit code. Everything else lives in the `fleet_controller` library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fleet_controller::Cli::parse();
    fleet_controller::init_logging(&cli);
    fleet_controller::run(cli)
}
