//! Checks a release installed in `releases/<version>` against the verified manifest it was
//! staged with, before it becomes current: every listed entry with its type, mode, size,
//! sha256 or link target, and nothing unlisted. A tree changed on disk after staging (by
//! anyone who can write to `releases/`) is refused, naming the first path that differs. Not
//! the bundle's verification: that is `fleet-release`'s, when the tree is unpacked.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fleet_release::{Entry, Manifest};
use sha2::{Digest, Sha256};

use crate::AgentError;

/// Checks the tree at `dir` against `manifest`, the first difference naming its path.
pub(crate) fn check_tree(dir: &Path, manifest: &Manifest) -> Result<(), AgentError> {
    let version = manifest.version.to_string();
    let altered = |path: &str, problem: String| AgentError::Altered {
        version: version.clone(),
        path: path.to_owned(),
        problem,
    };
    for entry in &manifest.entries {
        let path = entry.path();
        let full = dir.join(path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(meta) => meta,
            Err(e) => return Err(altered(path, format!("cannot be read: {e}"))),
        };
        let kind = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        match entry {
            Entry::Dir { mode: want, .. } => {
                if !kind.is_dir() {
                    return Err(altered(path, "is no longer a directory".into()));
                }
                if mode != *want {
                    return Err(altered(path, format!("has mode {mode:o}, not {want:o}")));
                }
            }
            Entry::File {
                mode: want,
                size,
                sha256,
                ..
            } => {
                if !kind.is_file() {
                    return Err(altered(path, "is no longer a regular file".into()));
                }
                if mode != *want {
                    return Err(altered(path, format!("has mode {mode:o}, not {want:o}")));
                }
                if meta.len() != *size {
                    return Err(altered(
                        path,
                        format!("has {} bytes, not {size}", meta.len()),
                    ));
                }
                if file_sha256(&full).map_err(|e| altered(path, format!("cannot be read: {e}")))?
                    != *sha256
                {
                    return Err(altered(path, "sha256 differs from its manifest".into()));
                }
            }
            Entry::Symlink { target, .. } => {
                if !kind.is_symlink() {
                    return Err(altered(path, "is no longer a symlink".into()));
                }
                let found = fs::read_link(&full)
                    .map_err(|e| altered(path, format!("cannot be read: {e}")))?;
                if found != Path::new(target) {
                    return Err(altered(
                        path,
                        format!("points at {}, not {target}", found.display()),
                    ));
                }
            }
        }
    }
    let listed: BTreeSet<&str> = manifest.entries.iter().map(Entry::path).collect();
    if let Some(extra) = unlisted(dir, dir, &listed)? {
        return Err(altered(&extra, "is not in its manifest".into()));
    }
    Ok(())
}

/// The first entry under `at` (relative to `dir`) that the manifest does not list; listed
/// directories are descended into, symlinks never followed.
fn unlisted(dir: &Path, at: &Path, listed: &BTreeSet<&str>) -> Result<Option<String>, AgentError> {
    let mut names: Vec<_> = fs::read_dir(at)
        .map_err(crate::io(at))?
        .map(|item| item.map(|item| item.path()))
        .collect::<Result<_, _>>()
        .map_err(crate::io(at))?;
    names.sort();
    for path in names {
        let relative = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if !listed.contains(relative.as_str()) {
            return Ok(Some(relative));
        }
        let meta = fs::symlink_metadata(&path).map_err(crate::io(&path))?;
        if meta.is_dir()
            && let Some(extra) = unlisted(dir, &path, listed)?
        {
            return Ok(Some(extra));
        }
    }
    Ok(None)
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}
