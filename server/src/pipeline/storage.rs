//! Paths on shared storage: a flow names files relative to it, and nothing it names may lead
//! outside, neither by `..`, nor by an absolute path, nor through a symbolic link.

use std::path::{Component, Path, PathBuf};

/// Checks the text of a relative path (no file system access).
pub fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!(
            "`{path}` is absolute: paths are relative to shared storage"
        ));
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(format!(
                    "`{path}` leaves shared storage (`..` is not allowed)"
                ));
            }
        }
    }
    if p.file_name().is_none() {
        return Err(format!("`{path}` names no file"));
    }
    Ok(())
}

/// The real location of `path` under `base`: the parent directory is resolved (symbolic links
/// followed) and must still be inside `base`; the file itself must not be a symbolic link.
pub fn resolve(base: &Path, path: &str) -> Result<PathBuf, String> {
    check_relative(path)?;
    let base = base
        .canonicalize()
        .map_err(|e| format!("shared storage {}: {e}", base.display()))?;
    let joined = base.join(path);
    let parent = joined.parent().unwrap_or(&base);
    let real_parent = parent
        .canonicalize()
        .map_err(|e| format!("{}: {e}", parent.display()))?;
    if !real_parent.starts_with(&base) {
        return Err(format!(
            "`{path}` leads outside shared storage through a symbolic link"
        ));
    }
    let name = joined
        .file_name()
        .ok_or_else(|| format!("`{path}` names no file"))?;
    let real = real_parent.join(name);
    if real
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        return Err(format!("`{path}` is a symbolic link: not followed"));
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
