//! The controller's own small files (trust roots, known_hosts, its key and state): where its
//! data directory is, bounded reads and atomic replacement. Not the node side: the agent has
//! its own in `fleet_agent::layout`.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The controller's data directory (its key, its state store): `fleet_data_dir`, else
/// `xdg_data_home/fleet`, else `home/.local/share/fleet` (the values of `$FLEET_DATA_DIR`,
/// `$XDG_DATA_HOME` and `$HOME`; empty ones count as unset, and a relative `XDG_DATA_HOME` is
/// ignored, as its specification says).
pub fn data_dir_from(
    fleet_data_dir: Option<std::ffi::OsString>,
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<std::path::PathBuf> {
    let set =
        |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    set(fleet_data_dir)
        .or_else(|| {
            set(xdg_data_home)
                .filter(|d| d.is_absolute())
                .map(|d| d.join("fleet"))
        })
        .or_else(|| set(home).map(|h| h.join(".local/share/fleet")))
}

/// [`data_dir_from`] this process's environment.
pub fn data_dir() -> Option<std::path::PathBuf> {
    data_dir_from(
        std::env::var_os("FLEET_DATA_DIR"),
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
    )
}

/// Reads a whole file, but never more than `cap` bytes, whatever it claims to be.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(std::io::Error::other(format!("larger than {cap} bytes")));
    }
    Ok(bytes)
}

/// Replaces `path` with `bytes` atomically (a reader sees the old or the new content, never a
/// mix), keeping the file's mode, or giving a new file `new_mode`.
pub fn replace(path: &Path, bytes: &[u8], new_mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let permissions = match fs::metadata(path) {
        Ok(meta) => meta.permissions(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::Permissions::from_mode(new_mode),
        Err(e) => return Err(e),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    // The temporary file starts as 0600; the files kept here are public.
    tmp.as_file().set_permissions(permissions)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
