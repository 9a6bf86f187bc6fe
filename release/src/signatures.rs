//! Signature lists and the threshold rule shared by trust roots and release manifests.
//! Not a key policy: which keys count and how many are needed is the caller's input.

use serde::{Deserialize, Serialize};

use crate::ReleaseError;
use crate::keys::{PublicKey, SecretKey};

/// One signature in a document's signature list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub key: PublicKey,
    /// 128 hex digits.
    pub sig: String,
}

impl Signature {
    pub fn create(key: &SecretKey, domain: &[u8], message: &[u8]) -> Self {
        Self {
            key: key.public(),
            sig: hex::encode(key.sign(domain, message)),
        }
    }
}

/// Adds or replaces `key`'s signature in `list`.
pub fn add_signature(list: &mut Vec<Signature>, key: &SecretKey, domain: &[u8], message: &[u8]) {
    let signature = Signature::create(key, domain, message);
    list.retain(|s| s.key != signature.key);
    list.push(signature);
}

/// Checks that at least `threshold` distinct keys of `allowed` signed `domain || message`.
///
/// Refuses outright (whatever the count) a list naming one key twice, since that is how a
/// single key would fake a threshold, and any signature from an allowed key that does not
/// verify, since it means the document was altered. Signatures from keys outside `allowed`
/// are not counted: during a root rotation the list carries both the old and the new keys.
/// Returns the keys whose signatures counted.
pub fn verify_threshold(
    what: &'static str,
    domain: &[u8],
    message: &[u8],
    signatures: &[Signature],
    allowed: &[PublicKey],
    threshold: u32,
) -> Result<Vec<PublicKey>, ReleaseError> {
    if signatures.is_empty() {
        return Err(ReleaseError::MissingSignature { what });
    }
    let mut seen = Vec::new();
    let mut unknown = None;
    let mut valid = Vec::new();
    for s in signatures {
        if seen.contains(&s.key) {
            return Err(ReleaseError::RepeatedSignature { what, key: s.key });
        }
        seen.push(s.key);
        if !allowed.contains(&s.key) {
            unknown.get_or_insert(s.key);
            continue;
        }
        let bytes = if crate::keys::is_lower_hex(&s.sig) {
            hex::decode(&s.sig).unwrap_or_default()
        } else {
            Vec::new()
        };
        if !s.key.verify(domain, message, &bytes) {
            return Err(ReleaseError::BadSignature { what, key: s.key });
        }
        valid.push(s.key);
    }
    if valid.len() >= threshold as usize {
        return Ok(valid);
    }
    match unknown {
        Some(key) if valid.is_empty() => Err(ReleaseError::UnknownKey { what, key }),
        _ => Err(ReleaseError::ThresholdNotMet {
            what,
            valid: valid.len(),
            needed: threshold,
        }),
    }
}
