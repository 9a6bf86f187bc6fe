//! Ed25519 keys: generation, the one-line text files they live in, and domain-separated
//! signing. Not a keystore: keys are plain files, and the private one must be mode 0600.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ReleaseError;

const SECRET_TAG: &str = "fleet-ed25519-secret-key";
const PUBLIC_TAG: &str = "fleet-ed25519-public-key";

/// A public key, written and read as 64 hex digits. It is its own identifier: documents name
/// keys by the key itself, so a key id can never point at the wrong key. Only the canonical
/// encoding of a point that is not of small order is a key: one key, one spelling.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Checks `signature` over `domain || message` with `verify_strict` (no malleable or
    /// small-order forms).
    pub fn verify(&self, domain: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        let mut signed = Vec::with_capacity(domain.len() + message.len());
        signed.extend_from_slice(domain);
        signed.extend_from_slice(message);
        key.verify_strict(&signed, &signature).is_ok()
    }

    /// Reads a public key file written by [`write_key_pair`].
    pub fn load(path: &Path) -> Result<Self, ReleaseError> {
        let text = read_small(path)?;
        parse_tagged(&text, PUBLIC_TAG)
            .and_then(|hex| hex.parse())
            .map_err(|reason| ReleaseError::BadKeyFile {
                path: path.to_owned(),
                reason,
            })
    }
}

impl FromStr for PublicKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = decode_32(s).ok_or_else(|| format!("`{s}` is not 64 lowercase hex digits"))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| format!("`{s}` is not a valid ed25519 public key"))?;
        if key.is_weak() {
            return Err(format!(
                "`{s}` is a small-order ed25519 public key: signatures under it prove nothing"
            ));
        }
        // A point has one canonical spelling; another would make one key pass for two.
        if key.to_edwards().compress().to_bytes() != bytes {
            return Err(format!(
                "`{s}` is not the canonical encoding of its ed25519 point"
            ));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A private signing key. Its Debug output never shows the key.
pub struct SecretKey(SigningKey);

impl SecretKey {
    pub fn generate() -> Result<Self, ReleaseError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| ReleaseError::Random(e.to_string()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `domain || message`. The domain keeps a signature made for one kind of document
    /// from being valid for another.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; 64] {
        let mut signed = Vec::with_capacity(domain.len() + message.len());
        signed.extend_from_slice(domain);
        signed.extend_from_slice(message);
        self.0.sign(&signed).to_bytes()
    }

    /// Reads a private key file, refusing one that others can read (as OpenSSH does).
    pub fn load(path: &Path) -> Result<Self, ReleaseError> {
        let bad = |reason: String| ReleaseError::BadKeyFile {
            path: path.to_owned(),
            reason,
        };
        let meta = fs::metadata(path).map_err(|e| io_err(path, e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad(format!(
                "private key is readable by others (mode {:o}); run `chmod 600 {}`",
                meta.permissions().mode() & 0o777,
                path.display()
            )));
        }
        let text = read_small(path)?;
        let hex = parse_tagged(&text, SECRET_TAG).map_err(&bad)?;
        let seed = decode_32(hex).ok_or_else(|| bad("the key is not 64 hex digits".into()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

/// Paths of a key pair written by [`write_key_pair`].
#[derive(Debug, Clone, Serialize)]
pub struct KeyPairFiles {
    pub secret: PathBuf,
    pub public: PathBuf,
    pub key: PublicKey,
}

/// Generates a key pair into `dir` as `NAME.key` (mode 0600) and `NAME.pub`. Existing files are
/// never overwritten.
pub fn write_key_pair(dir: &Path, name: &str) -> Result<KeyPairFiles, ReleaseError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        return Err(ReleaseError::BadKeyName(name.to_owned()));
    }
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let key = SecretKey::generate()?;
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    for path in [&secret, &public] {
        if path.exists() {
            return Err(ReleaseError::Exists(path.clone()));
        }
    }
    let seed = key.0.to_bytes();
    write_new(
        &secret,
        0o600,
        &format!("{SECRET_TAG} {}\n", hex::encode(seed)),
    )?;
    write_new(&public, 0o644, &format!("{PUBLIC_TAG} {}\n", key.public()))?;
    Ok(KeyPairFiles {
        secret,
        public,
        key: key.public(),
    })
}

fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), ReleaseError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    // The umask may have cleared bits of `mode` but can never add any; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err(path, e))
}

fn read_small(path: &Path) -> Result<String, ReleaseError> {
    let bytes = crate::trust::read_capped(path, 4096, "key file")?;
    String::from_utf8(bytes).map_err(|_| ReleaseError::BadKeyFile {
        path: path.to_owned(),
        reason: "not UTF-8 text".into(),
    })
}

fn parse_tagged<'a>(text: &'a str, tag: &str) -> Result<&'a str, String> {
    match text.trim().split_once(' ') {
        Some((found, value)) if found == tag => Ok(value.trim()),
        Some((found, _)) if found == SECRET_TAG || found == PUBLIC_TAG => {
            Err(format!("this is a `{found}` file, expected a `{tag}` file"))
        }
        _ => Err(format!(
            "not a fleet key file (expected a line `{tag} <64 hex digits>`)"
        )),
    }
}

/// Lowercase hex only: one spelling per key, so no byte of a signed file can change unseen.
pub(crate) fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn decode_32(s: &str) -> Option<[u8; 32]> {
    if !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

pub(crate) fn io_err(path: &Path, error: std::io::Error) -> ReleaseError {
    ReleaseError::Io {
        path: path.to_owned(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn verification_is_strict() {
        // The identity point as a key, and R = identity, S = 0: `[S]B = R + [k]A` holds for
        // every message, so the plain check accepts it; the strict one refuses the small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let plain = VerifyingKey::from_bytes(&identity)
            .expect("decodes")
            .verify(
                b"any message",
                &ed25519_dalek::Signature::from_bytes(&forged),
            );
        assert!(plain.is_ok(), "the plain check accepts the forgery");
        assert!(!PublicKey(identity).verify(b"any ", b"message", &forged));
    }
}
