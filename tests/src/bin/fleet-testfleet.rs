//! `fleet-testfleet`: starts a test fleet that outlives the command (for the demo and
//! benchmarks), starts and stops its nodes' agent daemons as an init system would, and stops
//! it again; only parsing and printing, the work is in `fleet_tests`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fleet_tests::{
    AGENT_PIDS_FILE, FleetOptions, PIDS_FILE, TestFleet, start_kept_agents, stop_kept,
    stop_kept_agents,
};

/// Private OpenSSH sshd nodes on loopback addresses.
#[derive(Parser)]
#[command(name = "fleet-testfleet", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start N nodes in DIR, write DIR/inventory.yaml and DIR/pids, and leave them running.
    Start {
        /// How many nodes (1 to 250).
        #[arg(long)]
        nodes: usize,
        /// The fleet's folder: created, or empty.
        #[arg(long)]
        dir: PathBuf,
        /// The port every node listens on (each on its own address).
        #[arg(long, default_value_t = 2222)]
        port: u16,
        /// The cluster's postgres_url in the inventory (the database its servers share).
        #[arg(long, default_value = fleet_tests::DEFAULT_POSTGRES_URL)]
        postgres_url: String,
    },
    /// Stop the agents listed in DIR/agent-pids (SIGTERM, waited for), then kill exactly the
    /// sshd listed in DIR/pids that still belong to DIR.
    Stop {
        #[arg(long)]
        dir: PathBuf,
    },
    /// The nodes' agent daemons (`<root>/bin/fleet-agent run --root <root>`, as installed by
    /// `fleet provision`), started and stopped as an init system would.
    #[command(subcommand)]
    Agents(AgentsCmd),
}

#[derive(Subcommand)]
enum AgentsCmd {
    /// Start every node's agent, output in DIR/node-K/agent.log, PIDs in DIR/agent-pids, and
    /// leave them running once each control socket answers.
    Start {
        #[arg(long)]
        dir: PathBuf,
    },
    /// SIGTERM the agents listed in DIR/agent-pids that still belong to DIR (each stops its
    /// server first) and wait for them.
    Stop {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Start {
            nodes,
            dir,
            port,
            postgres_url,
        } => {
            let opts = FleetOptions {
                nodes,
                port,
                postgres_url,
                ..FleetOptions::default()
            };
            let fleet = TestFleet::start_in(opts, &dir)
                .with_context(|| format!("start a fleet in {}", dir.display()))?;
            let inventory = fleet.dir().join("inventory.yaml");
            // Left empty on purpose: enrolling the host keys is `fleet hosts trust`'s job.
            let known_hosts = fleet.dir().join("known_hosts");
            fleet
                .write_inventory(&inventory, &known_hosts)
                .with_context(|| format!("write {}", inventory.display()))?;
            let lines: Vec<String> = fleet
                .nodes()
                .iter()
                .map(|n| format!("{} {} {}", n.name, n.socket_addr(), n.root.display()))
                .collect();
            let dir = fleet.keep();
            for line in lines {
                println!("{line}");
            }
            eprintln!(
                "inventory {}; stop with `fleet-testfleet stop --dir {}`",
                inventory.display(),
                dir.display()
            );
            Ok(())
        }
        Cmd::Stop { dir } => {
            let agents = stop_kept_agents(&dir)
                .with_context(|| format!("stop the agents in {}", dir.display()))?;
            if !agents.is_empty() {
                eprintln!("stopped {} agents", agents.len());
            }
            let killed =
                stop_kept(&dir).with_context(|| format!("stop the fleet in {}", dir.display()))?;
            eprintln!(
                "stopped {} sshd listed in {}",
                killed.len(),
                dir.join(PIDS_FILE).display()
            );
            Ok(())
        }
        Cmd::Agents(AgentsCmd::Start { dir }) => {
            let started = start_kept_agents(&dir)
                .with_context(|| format!("start the agents in {}", dir.display()))?;
            for (node, pid) in &started {
                println!("{node} fleet-agent run (pid {pid})");
            }
            eprintln!(
                "agents listed in {}; stop with `fleet-testfleet agents stop --dir {}`",
                dir.join(AGENT_PIDS_FILE).display(),
                dir.display()
            );
            Ok(())
        }
        Cmd::Agents(AgentsCmd::Stop { dir }) => {
            let stopped = stop_kept_agents(&dir)
                .with_context(|| format!("stop the agents in {}", dir.display()))?;
            eprintln!("stopped {} agents", stopped.len());
            Ok(())
        }
    }
}
