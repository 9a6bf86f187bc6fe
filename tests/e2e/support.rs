//! Shared helpers for the end-to-end tests: running `fleet` and reading what it printed.

use std::path::Path;
use std::process::Command;

/// The `fleet` binary cargo built for these tests.
pub fn fleet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleet"))
}

pub use fleet_tests::FleetRun as Run;

/// Runs `fleet ARGS`.
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    run_env(args, &[])
}

/// Runs `fleet ARGS` with the variables `env` set.
pub fn run_env<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &Path)]) -> Run {
    fleet()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the fleet binary runs")
        .into()
}

/// The repository's root, for the example files.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the controller crate sits in the repository")
}

/// `fleet ARGS -i INVENTORY` with the controller's data (its key, its state) in `data`.
pub fn run_on(inventory: &str, data: &Path, args: &[&str]) -> Run {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-i", inventory]);
    run_env(&all, &[("FLEET_DATA_DIR", data)])
}

/// Generates a root key and a release key in `keys/` and writes the trust root naming them
/// (signed by the root key) to `root`, through the `fleet` command line.
pub fn trust_root(keys: &Path, root: &Path) {
    fleet_tests::trust_root(Path::new(env!("CARGO_BIN_EXE_fleet")), keys, root, None);
}

/// Where `fleet release build` takes a release's files from.
pub enum Tree<'a> {
    /// A release tree (`--from`).
    From(&'a Path),
    /// A directory of built binaries (`--bin-dir`).
    Bins(&'a Path),
}

/// `fleet release build --version VERSION` of `tree` into `store`, signed with `key`, which must
/// succeed.
pub fn release_build(version: &str, tree: Tree<'_>, key: &Path, store: &Path) -> Run {
    let (flag, dir) = match tree {
        Tree::From(dir) => ("--from", dir),
        Tree::Bins(dir) => ("--bin-dir", dir),
    };
    let s = |p: &Path| p.to_string_lossy().into_owned();
    run(&[
        "release",
        "build",
        "--version",
        version,
        flag,
        &s(dir),
        "--key",
        &s(key),
        "--out",
        &s(store),
    ])
    .ok()
}
