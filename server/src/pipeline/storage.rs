//! Paths on shared storage: a flow names files relative to it, and nothing it names may lead
//! outside, neither by `..`, nor by an absolute path, nor through a symbolic link. Refusals
//! are `StorageError`s.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::pipeline::error::StorageError;

/// Checks the text of a relative path (no file system access).
pub fn check_relative(path: &str) -> Result<(), StorageError> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(StorageError::Absolute {
            path: path.to_owned(),
        });
    }
    if path.contains('\0') {
        return Err(StorageError::NulByte);
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(StorageError::LeavesStorage {
                    path: path.to_owned(),
                });
            }
        }
    }
    if p.file_name().is_none() {
        return Err(StorageError::NoFileName {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The real location of `path` under `base`: the parent directory is resolved (symbolic links
/// followed) and must still be inside `base`; the file itself must not be a symbolic link.
pub fn resolve(base: &Path, path: &str) -> Result<PathBuf, StorageError> {
    check_relative(path)?;
    let base = base.canonicalize().map_err(|e| StorageError::Unavailable {
        base: base.to_owned(),
        error: Arc::new(e),
    })?;
    let joined = base.join(path);
    let parent = joined.parent().unwrap_or(&base);
    let real_parent = parent.canonicalize().map_err(|e| StorageError::Directory {
        directory: parent.to_owned(),
        error: Arc::new(e),
    })?;
    if !real_parent.starts_with(&base) {
        return Err(StorageError::LinkLeavesStorage {
            path: path.to_owned(),
        });
    }
    let name = joined.file_name().ok_or_else(|| StorageError::NoFileName {
        path: path.to_owned(),
    })?;
    let real = real_parent.join(name);
    if real
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(StorageError::Symlink {
            path: path.to_owned(),
        });
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_every_way_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("in")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).expect("symlink");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("in/pw")).expect("symlink");
        assert!(resolve(dir.path(), "in/a.csv").is_ok());
        for bad in [
            "/etc/passwd",
            "../x",
            "in/../../x",
            "out/x.csv",
            "in/pw",
            "",
        ] {
            assert!(resolve(dir.path(), bad).is_err(), "{bad}");
        }
    }
}
