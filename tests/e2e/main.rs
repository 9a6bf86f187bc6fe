//! End-to-end tests: they run the real `fleet` binary on real files, as an operator would.

mod browser;
mod daemons;
mod deploy;
mod install_nspawn;
mod installer;
mod inventory;
mod modes;
mod old_glibc;
mod release;
mod rollout;
mod serve;
mod ssh;
mod support;
mod systemd;
mod users;
