//! The release tree's layout (`bin/etl-server`, `bin/fleet-agent`, both mode 0755) and its
//! assembly from a directory of built binaries, so that a release of the project's own
//! programs is put together in one place, whoever builds it (`fleet release build --bin-dir`,
//! the test fixtures). Not the bundle: `build` packs whatever tree it is given; and not the
//! node: where trees are unpacked and which one runs is the agent's business.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::ReleaseError;
use crate::keys::io_err;

/// The ETL server's path inside a release tree.
pub const SERVER_BIN: &str = "bin/etl-server";
/// The node agent's path inside a release tree.
pub const AGENT_BIN: &str = "bin/fleet-agent";
/// Every program a release tree carries, by its path in the tree; the file name is the
/// binary's name as cargo builds it.
pub const BINARIES: [&str; 2] = [SERVER_BIN, AGENT_BIN];
/// The mode of the tree's programs and of its directories.
pub const BIN_MODE: u32 = 0o755;
/// How to build the binaries a release tree is assembled from.
pub const BUILD_HINT: &str = "cargo build --release -p fleet-server -p fleet-agent";

/// A release tree assembled by [`assemble`], in a temporary directory removed on drop.
#[derive(Debug)]
pub struct AssembledTree {
    dir: tempfile::TempDir,
}

impl AssembledTree {
    /// The tree's root, to build a release from (`BuildOptions::from`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Assembles a release tree from `bin_dir/etl-server` and `bin_dir/fleet-agent` (as cargo
/// leaves them in `target/release`), copied to [`BINARIES`] with mode [`BIN_MODE`], in a new
/// temporary directory under `scratch` (created if missing; give the release store, so that
/// the copies stay on its file system). A missing binary is refused, naming it and
/// [`BUILD_HINT`]; so is anything but a regular file (a symlink is followed).
pub fn assemble(bin_dir: &Path, scratch: &Path) -> Result<AssembledTree, ReleaseError> {
    let sources = BINARIES
        .iter()
        .map(|rel| source_of(bin_dir, rel))
        .collect::<Result<Vec<_>, _>>()?;
    fs::create_dir_all(scratch).map_err(|e| io_err(scratch, e))?;
    let dir = tempfile::Builder::new()
        .prefix(".release-tree-")
        .tempdir_in(scratch)
        .map_err(|e| io_err(scratch, e))?;
    for (rel, (source, mut file)) in BINARIES.iter().zip(sources) {
        let target = dir.path().join(rel);
        let parent = target.parent().unwrap_or(dir.path());
        fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
        set_mode(parent)?;
        let mut out = File::create(&target).map_err(|e| io_err(&target, e))?;
        io::copy(&mut file, &mut out).map_err(|e| ReleaseError::Source {
            path: source.clone(),
            reason: format!("copying it to {}: {e}", target.display()),
        })?;
        // The umask may have taken bits off; the manifest records exactly BIN_MODE.
        set_mode(&target)?;
    }
    Ok(AssembledTree { dir })
}

/// Opens the binary that goes to `rel`, refusing a missing one or one that is not a file.
fn source_of(bin_dir: &Path, rel: &str) -> Result<(PathBuf, File), ReleaseError> {
    let name = Path::new(rel).file_name().unwrap_or(rel.as_ref());
    let path = bin_dir.join(name);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReleaseError::MissingBinary { path });
        }
        Err(e) => return Err(io_err(&path, e)),
    };
    let meta = file.metadata().map_err(|e| io_err(&path, e))?;
    if !meta.is_file() {
        return Err(ReleaseError::Source {
            path,
            reason: format!("not a regular file, so not a binary for `{rel}`"),
        });
    }
    Ok((path, file))
}

fn set_mode(path: &Path) -> Result<(), ReleaseError> {
    fs::set_permissions(path, fs::Permissions::from_mode(BIN_MODE)).map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn bin_dir(files: &[(&str, u32)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, mode) in files {
            let path = dir.path().join(name);
            fs::write(&path, format!("#!/bin/sh\necho {name}\n")).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        dir
    }

    #[test]
    fn the_tree_holds_both_binaries_as_0755_and_nothing_else() {
        let bins = bin_dir(&[
            ("etl-server", 0o700),
            ("fleet-agent", 0o644),
            ("other", 0o755),
        ]);
        let scratch = tempfile::tempdir().expect("tempdir");
        let tree = assemble(bins.path(), &scratch.path().join("store")).expect("assembles");
        assert!(tree.path().starts_with(scratch.path().join("store")));
        let mut found: Vec<String> = fs::read_dir(tree.path().join("bin"))
            .expect("bin/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, ["etl-server", "fleet-agent"]);
        assert_eq!(
            fs::read_dir(tree.path()).expect("root").count(),
            1,
            "only bin/"
        );
        for rel in ["bin", SERVER_BIN, AGENT_BIN] {
            let meta = fs::metadata(tree.path().join(rel)).expect(rel);
            assert_eq!(meta.mode() & 0o7777, BIN_MODE, "{rel}");
        }
        assert_eq!(
            fs::read_to_string(tree.path().join(AGENT_BIN)).expect("agent"),
            "#!/bin/sh\necho fleet-agent\n"
        );
        let path = tree.path().to_owned();
        drop(tree);
        assert!(!path.exists(), "the temporary tree is removed");
    }

    #[test]
    fn a_missing_binary_is_named_with_how_to_build_it() {
        let bins = bin_dir(&[("etl-server", 0o755)]);
        let scratch = tempfile::tempdir().expect("tempdir");
        let err = assemble(bins.path(), scratch.path()).expect_err("fleet-agent is missing");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "{}: not found",
                bins.path().join("fleet-agent").display()
            )),
            "{text}"
        );
        assert!(text.contains(BUILD_HINT), "{text}");
        assert_eq!(
            fs::read_dir(scratch.path()).expect("scratch").count(),
            0,
            "nothing is written before both binaries are found"
        );
    }

    #[test]
    fn a_directory_in_place_of_a_binary_is_refused() {
        let bins = bin_dir(&[("fleet-agent", 0o755)]);
        fs::create_dir(bins.path().join("etl-server")).expect("mkdir");
        let scratch = tempfile::tempdir().expect("tempdir");
        match assemble(bins.path(), scratch.path()) {
            Err(ReleaseError::Source { path, reason }) => {
                assert_eq!(path, bins.path().join("etl-server"));
                assert!(reason.contains("not a regular file"), "{reason}");
            }
            other => panic!("expected a refused source, got {other:?}"),
        }
    }
}
