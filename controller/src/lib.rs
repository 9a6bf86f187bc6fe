//! The fleet controller: the `fleet` command line and the work behind each command. Not the
//! inventory or release formats: those are the `fleet-inventory` and `fleet-release` crates.

pub mod cli;
mod commands;
pub mod config;
pub mod deploy;
pub mod fanout;
pub mod files;
pub mod hosts;
pub mod known_hosts;
pub mod report;
pub mod ssh;
