//! Secret references (`env:NAME`, `file:PATH`), resolved values that never print, and settings
//! that are either a literal or a reference; not a secret store: nothing here caches or logs a
//! resolved value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

/// A secret could not be resolved. Names the reference, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret `env:{name}`: the environment variable is not set")]
    EnvNotSet { name: String },
    #[error("secret `env:{name}`: the environment variable is not valid UTF-8")]
    EnvNotUnicode { name: String },
    #[error("secret `file:{written}`: cannot read {}: {reason}", path.display())]
    FileUnreadable {
        written: String,
        path: PathBuf,
        reason: String,
    },
}

/// A reference to a secret, as written in the inventory. Printing it shows the reference only.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SecretRef {
    /// `env:NAME`: the value of an environment variable of the process that uses it.
    Env(String),
    /// `file:PATH`: the content of a file; `path` is resolved against the inventory's folder
    /// (a leading `~/` is kept and expanded when the file is read).
    File { written: String, path: PathBuf },
}

/// `None` when `text` is not a reference; otherwise the reference, or why it is malformed.
pub(crate) fn parse_ref(text: &str, base_dir: &Path) -> Option<Result<SecretRef, String>> {
    if let Some(name) = text.strip_prefix("env:") {
        let mut chars = name.chars();
        let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        return Some(if valid {
            Ok(SecretRef::Env(name.to_owned()))
        } else {
            Err(format!(
                "bad secret reference `env:{name}`: the name must match [A-Za-z_][A-Za-z0-9_]*"
            ))
        });
    }
    if let Some(written) = text.strip_prefix("file:") {
        return Some(if written.trim().is_empty() {
            Err("bad secret reference `file:`: the path is empty".to_owned())
        } else {
            Ok(SecretRef::File {
                written: written.to_owned(),
                path: crate::schema::resolve_path(written, base_dir),
            })
        });
    }
    None
}

/// Largest secret file read (64 KiB).
const MAX_SECRET_FILE_BYTES: u64 = 64 << 10;

impl SecretRef {
    /// Reads the secret now: the environment variable or the file, minus one trailing newline.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(value) => Ok(Secret(trim_newline(value))),
                Err(std::env::VarError::NotPresent) => {
                    Err(SecretError::EnvNotSet { name: name.clone() })
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(SecretError::EnvNotUnicode { name: name.clone() })
                }
            },
            SecretRef::File { written, path } => {
                let path = expand_home(path);
                let unreadable = |reason: String| SecretError::FileUnreadable {
                    written: written.clone(),
                    path: path.clone(),
                    reason,
                };
                match crate::read_capped(&path, MAX_SECRET_FILE_BYTES) {
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Ok(text) => Ok(Secret(trim_newline(text))),
                        Err(_) => Err(unreadable("not valid UTF-8".to_owned())),
                    },
                    Err(err) => Err(unreadable(err.to_string())),
                }
            }
        }
    }
}

fn expand_home(path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    path.to_path_buf()
}

fn trim_newline(mut value: String) -> String {
    if value.ends_with("\r\n") {
        value.truncate(value.len() - 2);
    } else if value.ends_with('\n') {
        value.truncate(value.len() - 1);
    }
    value
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File { written, .. } => write!(f, "file:{written}"),
        }
    }
}

/// A resolved secret value. `Debug` and `Display` print `***`; use [`Secret::expose`] to get
/// the value at the one place that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A connection setting: a literal URL written in the inventory, or a reference to a secret.
/// `Debug`, `Display` and `Serialize` all show [`Setting::masked`].
#[derive(Clone, PartialEq, Eq)]
pub enum Setting {
    Literal(String),
    Secret(SecretRef),
}

impl Setting {
    /// Printable form: a literal URL with its password replaced by `***`, or the reference.
    pub fn masked(&self) -> String {
        match self {
            Setting::Literal(url) => mask_url_password(url),
            Setting::Secret(reference) => reference.to_string(),
        }
    }

    /// The value to use: the literal, or the secret read now.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            Setting::Literal(url) => Ok(Secret(url.clone())),
            Setting::Secret(reference) => reference.resolve(),
        }
    }

    pub fn is_secret_ref(&self) -> bool {
        matches!(self, Setting::Secret(_))
    }
}

impl fmt::Debug for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Setting::Literal(_) => write!(f, "Literal({:?})", self.masked()),
            Setting::Secret(reference) => write!(f, "Secret({reference})"),
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for Setting {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

/// `scheme://user:password@host/...` → `scheme://user:***@host/...`, and a `password=` query
/// parameter (libpq accepts one) → `password=***`; anything else unchanged.
pub fn mask_url_password(url: &str) -> String {
    let url = mask_userinfo(url);
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let (query, fragment) = query
        .split_once('#')
        .map_or((query, None), |(q, f)| (q, Some(f)));
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{base}?{}", masked.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn mask_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &userinfo[..colon],
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_only() {
        assert_eq!(
            mask_url_password("postgres://etl:s3cr3t@db:5432/etl"),
            "postgres://etl:***@db:5432/etl"
        );
        assert_eq!(
            mask_url_password("redis://:pw@10.0.0.5:6379/0"),
            "redis://:***@10.0.0.5:6379/0"
        );
        assert_eq!(
            mask_url_password("redis://user@10.0.0.5:6379/0"),
            "redis://user@10.0.0.5:6379/0"
        );
        assert_eq!(
            mask_url_password("redis://10.0.0.5:6379/0?x=a:b@c"),
            "redis://10.0.0.5:6379/0?x=a:b@c"
        );
        assert_eq!(
            mask_url_password("postgres://db/etl?sslmode=require&password=hunter2#x"),
            "postgres://db/etl?sslmode=require&password=***#x"
        );
        assert_eq!(
            mask_url_password("unix:///run/redis.sock"),
            "unix:///run/redis.sock"
        );
    }

    #[test]
    fn setting_never_prints_password() {
        let s = Setting::Literal("postgres://u:hunter2@h/db".to_owned());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        let json = serde_json::to_string(&s).unwrap_or_default();
        assert!(!json.contains("hunter2"));
        assert_eq!(
            s.resolve().map(|v| v.expose().to_owned()),
            Ok("postgres://u:hunter2@h/db".to_owned())
        );
        let v = s.resolve();
        assert!(!format!("{v:?}").contains("hunter2"));
    }

    #[test]
    fn references_parse_and_resolve() {
        let base = Path::new("/inv");
        assert_eq!(
            parse_ref("env:PG_URL", base),
            Some(Ok(SecretRef::Env("PG_URL".to_owned())))
        );
        for name in ["1X", ""] {
            assert_eq!(
                parse_ref(&format!("env:{name}"), base),
                Some(Err(format!(
                    "bad secret reference `env:{name}`: the name must match [A-Za-z_][A-Za-z0-9_]*"
                )))
            );
        }
        assert_eq!(
            parse_ref("file:", base),
            Some(Err(
                "bad secret reference `file:`: the path is empty".to_owned()
            ))
        );
        assert_eq!(parse_ref("redis://x", base), None);
        let Some(Ok(SecretRef::File { path, .. })) = parse_ref("file:secrets/pg", base) else {
            panic!("file reference not parsed");
        };
        assert_eq!(path, Path::new("/inv/secrets/pg"));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pg");
        std::fs::write(&file, "postgres://u:pw@h/db\n").expect("write");
        let reference = SecretRef::File {
            written: "pg".to_owned(),
            path: file,
        };
        let secret = reference.resolve().expect("resolves");
        assert_eq!(secret.expose(), "postgres://u:pw@h/db");
        assert_eq!(format!("{secret}"), "***");

        let missing = SecretRef::Env("FLEET_INVENTORY_TEST_SURELY_UNSET_VAR".to_owned());
        let err = missing.resolve().expect_err("unset");
        assert_eq!(
            err.to_string(),
            "secret `env:FLEET_INVENTORY_TEST_SURELY_UNSET_VAR`: the environment variable is not set"
        );
        let gone = SecretRef::File {
            written: "nope".to_owned(),
            path: dir.path().join("nope"),
        };
        assert!(
            gone.resolve()
                .expect_err("missing file")
                .to_string()
                .starts_with("secret `file:nope`: cannot read")
        );
    }
}
