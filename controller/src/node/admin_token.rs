//! The per-cluster admin token of the ETL servers (`config/secrets/admin_token`), derived from
//! the controller's own key so that every node of a cluster gets the same token and a second
//! provisioning run the same bytes, with no state store: HMAC-SHA256(key, "admin-token\0" +
//! customer/cluster), in hex. The key is 32 random bytes in a file of mode 0600 made on first
//! use; a key file others may read is refused. Neither the key nor a token is ever displayed.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};

/// The key file's name in the controller's data directory.
pub const KEY_FILE: &str = "controller.key";

/// The controller's secret key: derives secrets that must agree between nodes and runs.
pub struct ControllerKey([u8; 32]);

impl std::fmt::Debug for ControllerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControllerKey(secret)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no place for the controller key: set FLEET_DATA_DIR (or XDG_DATA_HOME, or HOME) to a directory"
    )]
    NoDataDir,
    #[error("controller key {}: {error}", .path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "controller key {}: mode {mode:04o} lets group or others at it; `chmod 600` it (or remove it to make a new one, which changes every cluster's admin token)",
        .path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("controller key {}: not a regular file", .path.display())]
    NotAFile { path: PathBuf },
    #[error("controller key {}: not 64 hex digits (32 bytes)", .path.display())]
    Malformed { path: PathBuf },
    #[error("controller key {}: no randomness: {error}", .path.display())]
    Random {
        path: PathBuf,
        error: getrandom::Error,
    },
}

/// Where the key lives: `$FLEET_DATA_DIR/controller.key`, else
/// `$XDG_DATA_HOME/fleet/controller.key`, else `~/.local/share/fleet/controller.key`. Empty
/// variables count as unset; a relative `XDG_DATA_HOME` is ignored, as its specification says.
pub fn key_path(
    fleet_data_dir: Option<OsString>,
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, KeyError> {
    crate::files::data_dir_from(fleet_data_dir, xdg_data_home, home)
        .map(|dir| dir.join(KEY_FILE))
        .ok_or(KeyError::NoDataDir)
}

impl ControllerKey {
    /// The key at the place the environment names (see [`key_path`]), made on first use.
    pub fn load_or_create_default() -> Result<Self, KeyError> {
        let path = key_path(
            std::env::var_os("FLEET_DATA_DIR"),
            std::env::var_os("XDG_DATA_HOME"),
            std::env::var_os("HOME"),
        )?;
        Self::load_or_create(&path)
    }

    /// Reads the key at `path`, or makes one there (32 random bytes, mode 0600, in a directory
    /// made with mode 0700). Two controllers making it at once end up with the same key: the
    /// file appears complete under its name or not at all, and the loser reads the winner's.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |error: std::io::Error| KeyError::Io {
            path: path.to_owned(),
            error,
        };
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|error| KeyError::Random {
            path: path.to_owned(),
            error,
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".controller.key.")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(format!("{}\n", hex::encode(key)).as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io)?;
        match tmp.persist_noclobber(path) {
            Ok(_) => Ok(Self(key)),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io(e.error)),
        }
    }

    /// Reads an existing key, refusing one that group or others may read or write.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |error: std::io::Error| KeyError::Io {
            path: path.to_owned(),
            error,
        };
        // Not followed: a link is not the key file, whatever it points at.
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile {
                path: path.to_owned(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text = crate::files::read_capped(path, 128).map_err(io)?;
        let malformed = || KeyError::Malformed {
            path: path.to_owned(),
        };
        let bytes = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
            .ok_or_else(malformed)?;
        Ok(Self(bytes.try_into().map_err(|_| malformed())?))
    }

    /// The admin token of the ETL servers of cluster `customer/cluster`: 64 hex digits.
    pub fn admin_token(&self, customer: &str, cluster: &str) -> String {
        self.derive(b"admin-token\0", customer, cluster)
    }

    /// The token the ETL servers of cluster `customer/cluster` present to each other (another
    /// derivation: knowing one token tells nothing of the other).
    pub fn cluster_token(&self, customer: &str, cluster: &str) -> String {
        self.derive(b"cluster-token\0", customer, cluster)
    }

    fn derive(&self, purpose: &[u8], customer: &str, cluster: &str) -> String {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(purpose);
        mac.update(format!("{customer}/{cluster}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_per_cluster_the_same_on_every_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/controller.key");
        let key = ControllerKey::load_or_create(&path).expect("made");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("parent"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);

        let prod = key.admin_token("acme", "prod");
        assert!(
            prod.len() >= 32 && prod.chars().all(|c| c.is_ascii_hexdigit()),
            "{prod}"
        );
        // The same cluster: the same token, from this key and from the file read again.
        assert_eq!(key.admin_token("acme", "prod"), prod);
        let again = ControllerKey::load_or_create(&path).expect("read");
        assert_eq!(again.admin_token("acme", "prod"), prod);
        // Another cluster, or another customer's cluster of the same name: another token.
        assert_ne!(key.admin_token("acme", "staging"), prod);
        assert_ne!(key.admin_token("globex", "prod"), prod);
        // The cluster token is another secret.
        assert_ne!(key.cluster_token("acme", "prod"), prod);
        assert_eq!(
            key.cluster_token("acme", "prod"),
            again.cluster_token("acme", "prod")
        );
        // Another key, another token.
        let other = ControllerKey::load_or_create(&dir.path().join("other.key")).expect("made");
        assert_ne!(other.admin_token("acme", "prod"), prod);
        // The key's debug form shows nothing of it.
        assert_eq!(format!("{key:?}"), "ControllerKey(secret)");
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("controller.key");
        ControllerKey::load_or_create(&path).expect("made");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = ControllerKey::load_or_create(&path).expect_err("refused");
        assert!(
            matches!(err, KeyError::Permissions { mode: 0o640, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("controller.key: mode 0640 lets group or others at it; `chmod 600` it"),
            "{text}"
        );
        std::fs::write(&path, "not hex\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = ControllerKey::load(&path).expect_err("refused");
        assert!(
            err.to_string().ends_with("not 64 hex digits (32 bytes)"),
            "{err}"
        );
    }

    #[test]
    fn the_key_file_is_found_as_the_environment_says() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            key_path(os("/srv/fleet"), os("/x"), os("/home/ops")).expect("path"),
            Path::new("/srv/fleet/controller.key")
        );
        assert_eq!(
            key_path(os(""), os("/x"), os("/home/ops")).expect("path"),
            Path::new("/x/fleet/controller.key")
        );
        assert_eq!(
            key_path(None, os("relative"), os("/home/ops")).expect("path"),
            Path::new("/home/ops/.local/share/fleet/controller.key")
        );
        let err = key_path(None, None, None).expect_err("nowhere");
        assert!(err.to_string().contains("set FLEET_DATA_DIR"), "{err}");
    }
}
