//! The release manifest: what a bundle holds and the facts a node checks before installing
//! it. Not the archive: the manifest describes every entry, the archive only carries bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ReleaseError;

/// Manifest format written by this version.
pub const FORMAT: u32 = 1;
/// Permission bits a release may carry: no setuid, setgid or sticky bits.
pub const MODE_BITS: u32 = 0o777;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub version: semver::Version,
    /// Grows with every release built into a store; a node refuses to stage a release whose
    /// counter is below that of a release it has already activated.
    pub counter: u64,
    pub channel: String,
    pub created: Timestamp,
    pub expires: Timestamp,
    /// `linux-<arch>`, as in `linux-x86_64`.
    pub platform: String,
    pub min_agent_version: semver::Version,
    /// The compressed payload that follows the header, so that every byte of a bundle is
    /// covered by the signature, not only the bytes that unpack into files.
    pub payload: Payload,
    /// Every directory, file and symlink of the release, parents before children.
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        size: u64,
        sha256: String,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

impl Manifest {
    /// Total size of the files it lists.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| {
                if let Entry::File { size, .. } = e {
                    *size
                } else {
                    0
                }
            })
            .sum()
    }

    pub fn file_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::File { .. }))
            .count()
    }

    /// Checks every rule a manifest must meet whoever signed it: format, channel, times, and
    /// that every entry stays inside the release tree.
    pub fn check(&self) -> Result<(), ReleaseError> {
        if self.format != FORMAT {
            return Err(ReleaseError::BadManifest(format!(
                "format {} is not supported (this build reads format {FORMAT})",
                self.format
            )));
        }
        check_channel(&self.channel)?;
        if self.expires.0 <= self.created.0 {
            return Err(ReleaseError::BadManifest(
                "`expires` is not after `created`".into(),
            ));
        }
        if !is_sha256(&self.payload.sha256) {
            return Err(ReleaseError::BadManifest(
                "payload sha256 is not 64 hex digits".into(),
            ));
        }
        let mut kinds: BTreeMap<&str, &Entry> = BTreeMap::new();
        for entry in &self.entries {
            let path = entry.path();
            check_path(path)?;
            if let Some((parent, _)) = path.rsplit_once('/') {
                match kinds.get(parent) {
                    Some(Entry::Dir { .. }) => {}
                    Some(Entry::Symlink { .. }) => {
                        return Err(ReleaseError::LinkEscapes {
                            path: path.into(),
                            target: format!("(its parent `{parent}` is a symlink)"),
                        });
                    }
                    _ => {
                        return Err(ReleaseError::BadManifest(format!(
                            "`{path}` is listed before its directory `{parent}`"
                        )));
                    }
                }
            }
            match entry {
                Entry::Dir { mode, .. } | Entry::File { mode, .. } if mode & !MODE_BITS != 0 => {
                    return Err(ReleaseError::BadManifest(format!(
                        "`{path}` has mode {mode:o}: setuid, setgid and sticky bits are not allowed"
                    )));
                }
                Entry::File { sha256, .. } if !is_sha256(sha256) => {
                    return Err(ReleaseError::BadManifest(format!(
                        "`{path}`: sha256 is not 64 hex digits"
                    )));
                }
                Entry::Symlink { target, .. } => check_link(path, target)?,
                _ => {}
            }
            if kinds.insert(path, entry).is_some() {
                return Err(ReleaseError::BadManifest(format!(
                    "`{path}` is listed twice"
                )));
            }
        }
        Ok(())
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn check_channel(channel: &str) -> Result<(), ReleaseError> {
    let ok = !channel.is_empty()
        && channel.len() <= 64
        && channel
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ReleaseError::BadManifest(format!(
            "channel `{channel}` must be 1 to 64 characters of a-z, 0-9 and `-`"
        )))
    }
}

/// A path inside a release: relative, `/`-separated, no `.`/`..`/empty parts.
pub fn check_path(path: &str) -> Result<(), ReleaseError> {
    let bad = |reason: &str| {
        Err(ReleaseError::UnsafePath {
            path: path.into(),
            reason: reason.into(),
        })
    };
    if path.starts_with('/') {
        return Err(ReleaseError::AbsolutePath { path: path.into() });
    }
    if path.split('/').any(|part| part == "..") {
        return Err(ReleaseError::PathTraversal { path: path.into() });
    }
    if path.is_empty() || path.len() > 4096 {
        return bad("empty or longer than 4096 bytes");
    }
    if path.split('/').any(|part| part.is_empty() || part == ".") {
        return bad("empty or `.` path component");
    }
    if path
        .chars()
        .any(|c| c == '\0' || c == '\\' || c.is_control())
    {
        return bad("NUL, backslash or control character");
    }
    Ok(())
}

/// A symlink target must resolve inside the tree. It may climb with leading `..` parts (never
/// above the root) and then only descend: a `..` after a normal part could climb out of a
/// directory that is itself a link, so it is refused.
pub fn check_link(path: &str, target: &str) -> Result<(), ReleaseError> {
    let escapes = || {
        Err(ReleaseError::LinkEscapes {
            path: path.into(),
            target: target.into(),
        })
    };
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return escapes();
    }
    let mut depth = path.matches('/').count() as i64;
    let mut descended = false;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if descended => return escapes(),
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return escapes();
                }
            }
            _ => descended = true,
        }
    }
    Ok(())
}

/// A point in time, written as RFC 3339 (`2026-11-23T20:00:00Z`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// Now, to whole seconds (manifests do not carry sub-second times).
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    pub fn plus(self, d: Duration) -> Self {
        Self(self.0 + d)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Self(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.0))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s)
            .map(Self)
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not an RFC 3339 time: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(check_path("bin/etl-server").is_ok());
        assert!(matches!(
            check_path("/etc/passwd"),
            Err(ReleaseError::AbsolutePath { .. })
        ));
        assert!(matches!(
            check_path("bin/../../x"),
            Err(ReleaseError::PathTraversal { .. })
        ));
        assert!(matches!(
            check_path("a//b"),
            Err(ReleaseError::UnsafePath { .. })
        ));
        assert!(matches!(
            check_path("./a"),
            Err(ReleaseError::UnsafePath { .. })
        ));
        assert!(matches!(
            check_path(""),
            Err(ReleaseError::UnsafePath { .. })
        ));
    }

    #[test]
    fn links() {
        assert!(check_link("bin/x", "etl-server").is_ok());
        assert!(check_link("bin/x", "../lib/y").is_ok());
        assert!(check_link("a/b/c", "../../top").is_ok());
        let escapes = |path: &str, target: &str| {
            assert!(
                matches!(
                    check_link(path, target),
                    Err(ReleaseError::LinkEscapes { path: p, target: t }) if p == path && t == target
                ),
                "{path} -> {target}"
            );
        };
        escapes("x", "../outside");
        escapes("bin/x", "../../outside");
        escapes("bin/x", "/etc/passwd");
        // `d/..` may climb out if `d` is itself a link.
        escapes("x", "d/../y");
        escapes("x", "");
    }

    #[test]
    fn timestamps_round_trip() {
        let t = Timestamp::now();
        let json = serde_json::to_string(&t).expect("serializes");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).expect("parses"), t);
        let err = serde_json::from_str::<Timestamp>("\"yesterday\"").expect_err("not a time");
        assert!(
            err.to_string()
                .starts_with("`yesterday` is not an RFC 3339 time"),
            "{err}"
        );
    }
}
