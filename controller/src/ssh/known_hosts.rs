//! OpenSSH `known_hosts` files: parsing (plain and hashed hosts, `[host]:port`, wildcards and
//! negation, `@revoked`), checking a host key, and recording one. Not trust on first use:
//! nothing here adds a key except `record`, which only `fleet hosts trust` calls.

use std::fs;
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::HashAlg;
use russh::keys::ssh_key::PublicKey;

/// Largest known_hosts file read (8 MiB).
const MAX_BYTES: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug, Clone)]
struct Line {
    number: usize,
    marker: Marker,
    patterns: String,
    key: PublicKey,
}

/// A parsed known_hosts file.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    lines: Vec<Line>,
    /// The file as read, for rewriting it line by line.
    text: String,
}

/// What a known_hosts file says about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Known,
    /// No key is recorded for this host.
    Unknown,
    /// Keys are recorded for this host, but not this one (line numbers of the recorded keys).
    Changed {
        lines: Vec<usize>,
    },
    /// The key is listed as `@revoked` on this line.
    Revoked {
        line: usize,
    },
}

impl KnownHosts {
    /// Reads a known_hosts file; a missing file is an empty one (nothing is known).
    pub fn load(path: &Path) -> Result<Self, KnownHostsError> {
        let io = |error| KnownHostsError::Io {
            path: path.to_owned(),
            error,
        };
        let text = match crate::files::read_capped(path, MAX_BYTES) {
            Ok(bytes) => {
                String::from_utf8(bytes).map_err(|_| io(std::io::Error::other("not UTF-8 text")))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        Self::parse(&text, path)
    }

    /// Like [`KnownHosts::load`], but parsed once per process for as long as the file's size
    /// and modification time stay the same (a fan-out to hundreds of nodes reads one file).
    pub fn load_shared(path: &Path) -> Result<std::sync::Arc<Self>, KnownHostsError> {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock};
        type Stamp = Option<(u64, std::time::SystemTime)>;
        type Cache = Mutex<HashMap<PathBuf, (Stamp, Arc<KnownHosts>)>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let stamp: Stamp = fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)));
        let cache = CACHE.get_or_init(Default::default);
        if let Some((seen, parsed)) = cache.lock().ok().and_then(|c| c.get(path).cloned())
            && stamp.is_some()
            && seen == stamp
        {
            return Ok(parsed);
        }
        let parsed = Arc::new(Self::load(path)?);
        if let Ok(mut c) = cache.lock() {
            c.insert(path.to_owned(), (stamp, parsed.clone()));
        }
        Ok(parsed)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, KnownHostsError> {
        let mut lines = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let malformed = |reason: &str| KnownHostsError::Malformed {
                path: path.to_owned(),
                line: number,
                reason: reason.to_owned(),
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut fields = trimmed.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let marker = match first {
                "@revoked" => Marker::Revoked,
                "@cert-authority" => Marker::CertAuthority,
                m if m.starts_with('@') => return Err(malformed(&format!("unknown marker `{m}`"))),
                _ => Marker::None,
            };
            if marker != Marker::None {
                first = fields
                    .next()
                    .ok_or_else(|| malformed("missing host patterns"))?;
            }
            let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
                return Err(malformed(
                    "expected `[marker] hosts key-type base64-key [comment]`",
                ));
            };
            let key = PublicKey::from_openssh(&format!("{kind} {blob}"))
                .map_err(|e| malformed(&format!("unreadable {kind} key: {e}")))?;
            lines.push(Line {
                number,
                marker,
                patterns: first.to_owned(),
                key,
            });
        }
        Ok(Self {
            lines,
            text: text.to_owned(),
        })
    }

    /// Judges `key` for `host` on `port` as OpenSSH does: a revoked key is refused wherever
    /// it appears; otherwise a matching entry makes it known, other keys for the host mean it
    /// changed, and no entry means unknown. `@cert-authority` lines vouch only for
    /// certificates, which we do not accept, so they never make a plain key known.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let name = host_port(host, port);
        if let Some(line) = self.lines.iter().find(|l| {
            l.marker == Marker::Revoked && same_key(&l.key, key) && matches_host(&l.patterns, &name)
        }) {
            return Verdict::Revoked { line: line.number };
        }
        let recorded: Vec<&Line> = self
            .lines
            .iter()
            .filter(|l| l.marker == Marker::None && matches_host(&l.patterns, &name))
            .collect();
        if recorded.iter().any(|l| same_key(&l.key, key)) {
            Verdict::Known
        } else if recorded.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Changed {
                lines: recorded.iter().map(|l| l.number).collect(),
            }
        }
    }
}

fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

/// The name OpenSSH looks up: `host`, or `[host]:port` when the port is not 22.
pub fn host_port(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// OpenSSH pattern lists: comma-separated, `*` and `?` wildcards, `!` negates (a negated match
/// rules the line out), `|1|salt|hash` is HMAC-SHA1 of the name under the salt.
fn matches_host(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(hashed) = pattern.strip_prefix("|1|") {
            matched |= hashed_matches(hashed, name);
        } else if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard(negated.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else {
            matched |= wildcard(pattern.as_bytes(), name.as_bytes());
        }
    }
    matched
}

fn hashed_matches(hashed: &str, name: &str) -> bool {
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (
        BASE64.decode(salt.as_bytes()),
        BASE64.decode(hash.as_bytes()),
    ) else {
        return false;
    };
    let Ok(mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

/// `*` (any run) and `?` (one byte), ASCII case-insensitive. Linear in practice and at most
/// pattern × text steps: on a mismatch it returns to the last `*` and lets it take one more
/// byte, never to earlier ones (a later `*` can absorb whatever an earlier one would), so a
/// hostile pattern like `*a*a*a*a*b` cannot make the check exponential.
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // The last `*` seen and the text position it is matched up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(b'?') => {
                p += 1;
                t += 1;
            }
            Some(c) if c.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `SHA256:...`, as OpenSSH prints fingerprints.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Appends `key` for `host:port` to the file (created if missing), after removing the lines
/// that recorded other keys for that name when `replace` is set. The file is rewritten
/// atomically under a lock, so concurrent enrolments never lose a line.
pub fn record(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
    replace: bool,
) -> Result<(), KnownHostsError> {
    let io = |error| KnownHostsError::Io {
        path: path.to_owned(),
        error,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| KnownHostsError::Io {
        path: dir.to_owned(),
        error: e,
    })?;
    let lock_path = path.with_extension("lock");
    let lock = fs::File::create(&lock_path).map_err(|e| KnownHostsError::Io {
        path: lock_path.clone(),
        error: e,
    })?;
    lock.lock().map_err(|e| KnownHostsError::Io {
        path: lock_path,
        error: e,
    })?;

    let current = KnownHosts::load(path)?;
    let name = host_port(host, port);
    let stale: Vec<&Line> = if replace {
        current
            .lines
            .iter()
            .filter(|l| {
                l.marker == Marker::None
                    && matches_host(&l.patterns, &name)
                    && !same_key(&l.key, key)
            })
            .collect()
    } else {
        Vec::new()
    };
    // A line naming several hosts (or a pattern) vouches for others too: removing it would
    // drop their keys, so such a line is left for a person to edit.
    if let Some(shared) = stale
        .iter()
        .find(|l| l.patterns.contains(',') || l.patterns.contains(['*', '?', '!']))
    {
        return Err(KnownHostsError::Malformed {
            path: path.to_owned(),
            line: shared.number,
            reason: format!(
                "records the key of `{name}` together with other hosts; edit that line by hand"
            ),
        });
    }
    let drop_lines: Vec<usize> = stale.iter().map(|l| l.number).collect();
    let mut out: String = current
        .text
        .lines()
        .enumerate()
        .filter(|(i, _)| !drop_lines.contains(&(i + 1)))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let openssh = key
        .to_openssh()
        .map_err(|e| io(std::io::Error::other(e.to_string())))?;
    out.push_str(&format!("{name} {openssh}\n"));
    // A known_hosts file is public.
    crate::files::replace(path, out.as_bytes(), 0o644).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEy2Ea2Q8ianGKEVy966V28Muhj7j3Y3GyKV2e+OwlO4";
    const K2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ6H702NFBezjTh9a58gZF7pnRNxmg+lSfSPDhyaMO3w";
    /// `[10.0.0.7]:2222` with K1, hashed by `ssh-keygen -H`.
    const HASHED: &str = "|1|95cHFTH4zEI7S8KHV9Neaiygd+M=|Rx5uQQzH0zktF9jCTBGeMggy+YY=";

    fn key(k: &str) -> PublicKey {
        PublicKey::from_openssh(k).expect("test key")
    }

    fn parse(text: &str) -> KnownHosts {
        KnownHosts::parse(text, Path::new("known_hosts")).expect("parses")
    }

    #[test]
    fn plain_port_and_hashed_entries() {
        let kh = parse(&format!(
            "# comment\n\n10.0.0.5 {K1}\n[10.0.0.6]:2222 {K1} a comment\n{HASHED} {K1}\n"
        ));
        assert_eq!(kh.check("10.0.0.5", 22, &key(K1)), Verdict::Known);
        assert_eq!(kh.check("10.0.0.5", 2222, &key(K1)), Verdict::Unknown);
        assert_eq!(kh.check("10.0.0.6", 2222, &key(K1)), Verdict::Known);
        assert_eq!(kh.check("10.0.0.7", 2222, &key(K1)), Verdict::Known);
        assert_eq!(kh.check("10.0.0.7", 22, &key(K1)), Verdict::Unknown);
        assert_eq!(
            kh.check("10.0.0.7", 2222, &key(K2)),
            Verdict::Changed { lines: vec![5] }
        );
    }

    #[test]
    fn wildcards_negation_and_revocation() {
        let kh = parse(&format!(
            "10.0.*,!10.0.0.9 {K1}\n@revoked * {K2}\n@cert-authority * {K2}\n"
        ));
        assert_eq!(kh.check("10.0.3.4", 22, &key(K1)), Verdict::Known);
        assert_eq!(kh.check("10.0.0.9", 22, &key(K1)), Verdict::Unknown);
        assert_eq!(
            kh.check("10.0.3.4", 22, &key(K2)),
            Verdict::Revoked { line: 2 }
        );
        // A CA line never vouches for a plain key.
        assert_eq!(
            kh.check("10.9.9.9", 22, &key(K2)),
            Verdict::Revoked { line: 2 }
        );
        let ca_only = parse(&format!("@cert-authority * {K1}\n"));
        assert_eq!(ca_only.check("10.9.9.9", 22, &key(K1)), Verdict::Unknown);
    }

    #[test]
    fn wildcard_patterns_match_like_openssh_and_in_linear_time() {
        for (pattern, text, want) in [
            ("*", "", true),
            ("*", "node-1", true),
            ("node-?", "node-1", true),
            ("node-?", "node-12", false),
            ("NODE-*", "node-12", true),
            ("10.0.*.5", "10.0.3.5", true),
            ("10.0.*.5", "10.0.3.6", false),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("**", "x", true),
            ("", "x", false),
        ] {
            assert_eq!(
                wildcard(pattern.as_bytes(), text.as_bytes()),
                want,
                "{pattern} ~ {text}"
            );
        }
        // Exponential with a matcher that tries every split for every `*` (2^40 here): this
        // one returns to the last `*` only.
        let hostile = "*a".repeat(40) + "b";
        let text = "a".repeat(200);
        assert!(!wildcard(hostile.as_bytes(), text.as_bytes()));
        assert!(wildcard(hostile.as_bytes(), format!("{text}b").as_bytes()));
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line() {
        for (text, line) in [
            (format!("10.0.0.5 {K1}\nbroken\n"), 2),
            ("10.0.0.5 ssh-ed25519 not-base64!\n".to_owned(), 1),
            (format!("@bogus * {K1}\n"), 1),
        ] {
            match KnownHosts::parse(&text, Path::new("kh")) {
                Err(KnownHostsError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn record_appends_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("known_hosts");
        record(&path, "10.0.0.5", 2222, &key(K1), false).expect("record");
        record(&path, "10.0.0.6", 22, &key(K2), false).expect("record");
        let kh = KnownHosts::load(&path).expect("load");
        assert_eq!(kh.check("10.0.0.5", 2222, &key(K1)), Verdict::Known);
        assert_eq!(kh.check("10.0.0.6", 22, &key(K2)), Verdict::Known);
        record(&path, "10.0.0.5", 2222, &key(K2), true).expect("replace");
        // A shared line is never rewritten: the other host's key would go with it.
        fs::write(&path, format!("10.0.0.8,10.0.0.9 {K1}\n")).expect("write");
        assert!(matches!(
            record(&path, "10.0.0.8", 22, &key(K2), true),
            Err(KnownHostsError::Malformed { line: 1, .. })
        ));
        fs::write(&path, format!("10.0.0.6 {K2}\n[10.0.0.5]:2222 {K2}\n")).expect("write");
        let kh = KnownHosts::load(&path).expect("load");
        assert_eq!(kh.check("10.0.0.5", 2222, &key(K2)), Verdict::Known);
        assert_eq!(
            kh.check("10.0.0.5", 2222, &key(K1)),
            Verdict::Changed { lines: vec![2] }
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(&path).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(
            fingerprint(&key(K1)),
            "SHA256:0gkdzl7hlcFe8fE2RmzTD95X7QVYY0J3f31OfFZbNQc"
        );
    }
}
