//! The trust root: a small signed document naming the root keys (with a threshold), the
//! release keys a node accepts, and the order keys whose rollout orders it accepts. Not a distribution channel: how a root reaches a node is the
//! controller's and the installer's business; this module only decides what to believe.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ReleaseError;
use crate::keys::{PublicKey, SecretKey, io_err};
use crate::signatures::{Signature, add_signature, verify_threshold};

/// Prefix of every root signature, so no other signed document can pass for a root.
pub const ROOT_DOMAIN: &[u8] = b"fleet trust root v1\0";
/// A root document larger than this is refused before it is parsed.
pub const ROOT_CAP: u64 = 1 << 20;
const ROOT_TYPE: &str = "fleet-root";

/// The signed part of a root document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RootBody {
    #[serde(rename = "type")]
    pub kind: String,
    /// Grows by exactly one with every rotation.
    pub version: u64,
    pub root_keys: Vec<PublicKey>,
    pub root_threshold: u32,
    pub release_keys: Vec<PublicKey>,
    pub release_threshold: u32,
    /// Keys that sign rollout orders and controls ([`crate::order`]). Absent from roots made
    /// before order keys existed: those still parse and verify byte for byte (signatures are
    /// over the exact bytes) and accept no order. Not written when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order_keys: Vec<PublicKey>,
    /// How many order keys must sign an order; 0 exactly when there are no order keys.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub order_threshold: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RootBody {
    pub fn new(
        version: u64,
        root_keys: Vec<PublicKey>,
        root_threshold: u32,
        release_keys: Vec<PublicKey>,
        release_threshold: u32,
    ) -> Result<Self, ReleaseError> {
        let body = Self {
            kind: ROOT_TYPE.into(),
            version,
            root_keys,
            root_threshold,
            release_keys,
            release_threshold,
            order_keys: Vec::new(),
            order_threshold: 0,
        };
        body.check()?;
        Ok(body)
    }

    /// The same body naming `keys` as its order keys, `threshold` of which must sign an order
    /// (an empty list with threshold 0 names none).
    pub fn with_order_keys(
        self,
        keys: Vec<PublicKey>,
        threshold: u32,
    ) -> Result<Self, ReleaseError> {
        let body = Self {
            order_keys: keys,
            order_threshold: threshold,
            ..self
        };
        body.check()?;
        Ok(body)
    }

    fn check(&self) -> Result<(), ReleaseError> {
        let bad = |reason: String| Err(ReleaseError::BadRoot(reason));
        if self.kind != ROOT_TYPE {
            return bad(format!("`type` is `{}`, expected `{ROOT_TYPE}`", self.kind));
        }
        if self.version == 0 {
            return bad("`version` starts at 1".into());
        }
        let roles = [
            ("root", &self.root_keys, self.root_threshold),
            ("release", &self.release_keys, self.release_threshold),
            ("order", &self.order_keys, self.order_threshold),
        ];
        for (name, keys, threshold) in roles {
            if keys.iter().collect::<BTreeSet<_>>().len() != keys.len() {
                return bad(format!("a {name} key is listed twice"));
            }
            // A root may name no order keys (it then accepts no order); the other roles are
            // required.
            if name == "order" && keys.is_empty() && threshold == 0 {
                continue;
            }
            if threshold == 0 || threshold as usize > keys.len() {
                return bad(format!(
                    "{name} threshold {threshold} must be between 1 and the number of {name} keys ({})",
                    keys.len()
                ));
            }
        }
        // Each key holds one role: a release key must not vouch for keys, and an online order
        // key must neither introduce code nor vouch for keys, so that no single stolen key
        // installs code.
        for (i, (a, a_keys, _)) in roles.iter().enumerate() {
            for (b, b_keys, _) in &roles[i + 1..] {
                if let Some(key) = a_keys.iter().find(|k| b_keys.contains(k)) {
                    return bad(format!(
                        "key {key} is both a {a} key and a{} {b} key; each key holds one role",
                        if b.starts_with(['a', 'e', 'i', 'o', 'u']) {
                            "n"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A root document as read from disk: the exact signed bytes, their meaning, and signatures.
#[derive(Debug, Clone)]
pub struct Root {
    body: RootBody,
    signed: String,
    signatures: Vec<Signature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RootFile<'a> {
    #[serde(borrow)]
    signed: &'a RawValue,
    signatures: Vec<Signature>,
}

impl Root {
    /// An unsigned root for `body`; sign it with [`Root::sign`].
    pub fn unsigned(body: RootBody) -> Result<Self, ReleaseError> {
        body.check()?;
        let signed =
            serde_json::to_string(&body).map_err(|e| ReleaseError::BadRoot(e.to_string()))?;
        Ok(Self {
            body,
            signed,
            signatures: Vec::new(),
        })
    }

    pub fn body(&self) -> &RootBody {
        &self.body
    }

    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// Adds (or replaces) `key`'s signature. Any key may sign; whether it counts is decided
    /// when the root is verified.
    pub fn sign(&mut self, key: &SecretKey) {
        add_signature(
            &mut self.signatures,
            key,
            ROOT_DOMAIN,
            self.signed.as_bytes(),
        );
    }

    /// Parses a root document without judging its signatures.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReleaseError> {
        if bytes.len() as u64 > ROOT_CAP {
            return Err(ReleaseError::TooLarge {
                what: "root document",
                size: bytes.len() as u64,
                cap: ROOT_CAP,
            });
        }
        let file: RootFile<'_> =
            serde_json::from_slice(bytes).map_err(|e| ReleaseError::BadRoot(e.to_string()))?;
        let body: RootBody = serde_json::from_str(file.signed.get())
            .map_err(|e| ReleaseError::BadRoot(format!("signed: {e}")))?;
        body.check()?;
        Ok(Self {
            body,
            signed: file.signed.get().to_owned(),
            signatures: file.signatures,
        })
    }

    pub fn to_json(&self) -> String {
        let raw = RawValue::from_string(self.signed.clone())
            .expect("signed holds JSON we wrote or parsed");
        let file = RootFile {
            signed: &raw,
            signatures: self.signatures.clone(),
        };
        let mut text = serde_json::to_string_pretty(&file).expect("a root always serializes");
        text.push('\n');
        text
    }

    /// Checks that a threshold of this root's own root keys signed it. A pinned root is
    /// trusted because it was pinned; this catches a damaged or hand-edited file.
    pub fn verify_self(&self) -> Result<(), ReleaseError> {
        verify_threshold(
            "root document",
            ROOT_DOMAIN,
            self.signed.as_bytes(),
            &self.signatures,
            &self.body.root_keys,
            self.body.root_threshold,
        )
        .map(drop)
    }

    /// Reads a root document from a file without judging its signatures.
    pub fn read(path: &Path) -> Result<Self, ReleaseError> {
        Self::parse(&read_capped(path, ROOT_CAP, "root document")?).map_err(|e| in_file(path, e))
    }

    /// Reads and self-verifies a pinned root from a file.
    pub fn load(path: &Path) -> Result<Self, ReleaseError> {
        let root = Self::read(path)?;
        root.verify_self().map_err(|e| in_file(path, e))?;
        Ok(root)
    }

    /// The version a successor of this root must have.
    pub fn next_version(&self) -> Result<u64, ReleaseError> {
        self.body
            .version
            .checked_add(1)
            .ok_or_else(|| ReleaseError::BadRoot("version is at its maximum".into()))
    }

    /// Accepts `next` as the successor of this root only if its version is exactly one more
    /// and it is signed by a threshold of this root's keys *and* of its own keys: the old keys
    /// vouch for the change, the new keys show they are held.
    pub fn verify_successor(&self, next: &Root) -> Result<(), ReleaseError> {
        if Some(next.body.version) != self.next_version().ok() {
            return Err(ReleaseError::RootVersion {
                current: self.body.version,
                offered: next.body.version,
            });
        }
        verify_threshold(
            "new root (by the current root keys)",
            ROOT_DOMAIN,
            next.signed.as_bytes(),
            &next.signatures,
            &self.body.root_keys,
            self.body.root_threshold,
        )?;
        verify_threshold(
            "new root (by its own root keys)",
            ROOT_DOMAIN,
            next.signed.as_bytes(),
            &next.signatures,
            &next.body.root_keys,
            next.body.root_threshold,
        )?;
        Ok(())
    }
}

/// Reads a whole file, but never more than `cap` bytes, whatever the file claims to be (a
/// device or a FIFO has no honest size).
pub fn read_capped(path: &Path, cap: u64, what: &'static str) -> Result<Vec<u8>, ReleaseError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(cap + 1).read_to_end(&mut bytes))
        .map_err(|e| io_err(path, e))?;
    if bytes.len() as u64 > cap {
        let too_large = ReleaseError::TooLarge {
            what,
            size: bytes.len() as u64,
            cap,
        };
        return Err(in_file(path, too_large));
    }
    Ok(bytes)
}

/// Names the file an error was found in.
pub(crate) fn in_file(path: &Path, error: ReleaseError) -> ReleaseError {
    ReleaseError::InFile {
        path: path.to_owned(),
        error: Box::new(error),
    }
}
