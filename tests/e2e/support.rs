//! Shared helpers for the end-to-end tests: running `fleet` and reading what it printed.

use std::path::Path;
use std::process::{Command, Output};

/// The `fleet` binary cargo built for these tests.
pub fn fleet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleet"))
}

/// What one run of `fleet` did.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn fails(self) -> Self {
        assert_eq!(
            self.code,
            Some(1),
            "expected failure\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

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
    let s = |p: &Path| p.to_string_lossy().into_owned();
    for name in ["root", "release"] {
        run(&["keys", "generate", "--out", &s(keys), "--name", name]).ok();
    }
    run(&[
        "trust",
        "init",
        "--root-key",
        &s(&keys.join("root.pub")),
        "--release-key",
        &s(&keys.join("release.pub")),
        "--sign",
        &s(&keys.join("root.key")),
        "--out",
        &s(root),
    ])
    .ok();
}
