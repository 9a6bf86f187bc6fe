//! The order key: the controller's online key that signs rollout orders and controls. Where it
//! is (`--order-key`, else `$FLEET_ORDER_KEY`, else `order.key` in the controller's data
//! directory) and loading it with an error that says how to make one. Not the trust root: a
//! node takes what it signs only when its pinned root names the key's public half.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use fleet_release::SecretKey;

/// The file name of the order key in the controller's data directory.
pub const ORDER_KEY_FILE: &str = "order.key";

/// The order key's path: `given`, else `env` (the value of `$FLEET_ORDER_KEY`), else
/// `order.key` in `data_dir`.
pub fn order_key_path(
    given: Option<&Path>,
    env: Option<std::ffi::OsString>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_owned());
    }
    if let Some(path) = env.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    data_dir
        .map(|dir| dir.join(ORDER_KEY_FILE))
        .ok_or_else(|| {
            anyhow!("no order key: give --order-key FILE or set FLEET_ORDER_KEY (no data directory: FLEET_DATA_DIR, XDG_DATA_HOME and HOME are unset)")
        })
}

/// Loads the order key at `path`; a missing one is an error saying how to make it and pin it.
pub fn load_order_key(path: &Path) -> anyhow::Result<SecretKey> {
    if !path.exists() {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_stem()
            .map_or_else(|| "order".into(), |s| s.to_string_lossy().into_owned());
        return Err(anyhow!(
            "no order key at {}: make one with `fleet keys generate --out {} --name {name}`, then name {}/{name}.pub in the nodes' trust root (`fleet trust init --order-key ...` or `fleet trust rotate --order-key ...`) and provision it; or give --order-key FILE (or FLEET_ORDER_KEY)",
            path.display(),
            dir.display(),
            dir.display(),
        ));
    }
    SecretKey::load(path).with_context(|| format!("the order key {}", path.display()))
}

/// The order key `--order-key`, `$FLEET_ORDER_KEY` or the data directory names.
pub fn order_key(given: Option<&Path>) -> anyhow::Result<(PathBuf, SecretKey)> {
    let path = order_key_path(
        given,
        std::env::var_os("FLEET_ORDER_KEY"),
        crate::files::data_dir(),
    )?;
    let key = load_order_key(&path)?;
    Ok((path, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_then_the_environment_then_the_data_directory() {
        let data = Some(PathBuf::from("/data"));
        assert_eq!(
            order_key_path(
                Some(Path::new("/k/o.key")),
                Some("/env.key".into()),
                data.clone()
            )
            .expect("path"),
            PathBuf::from("/k/o.key")
        );
        assert_eq!(
            order_key_path(None, Some("/env.key".into()), data.clone()).expect("path"),
            PathBuf::from("/env.key")
        );
        assert_eq!(
            order_key_path(None, Some("".into()), data).expect("path"),
            PathBuf::from("/data/order.key")
        );
        let err = order_key_path(None, None, None).expect_err("nowhere");
        assert!(err.to_string().contains("--order-key FILE"), "{err}");
    }

    #[test]
    fn a_missing_key_says_how_to_make_and_pin_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("order.key");
        let err = load_order_key(&path).expect_err("missing").to_string();
        let shown = dir.path().display();
        assert!(
            err.contains(&format!("fleet keys generate --out {shown} --name order")),
            "{err}"
        );
        assert!(err.contains(&format!("{shown}/order.pub")), "{err}");
        assert!(err.contains("--order-key"), "{err}");
        fleet_release::write_key_pair(dir.path(), "order").expect("a key pair");
        load_order_key(&path).expect("now it loads");
    }
}
