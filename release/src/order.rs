//! Rollout orders and controls: short-lived documents signed by the trust root's **order** keys
//! (the controller's online keys). An [`Order`] tells the agents of one cluster to move the
//! named nodes to a release that is already signed and staged, named by version and manifest
//! digest; a [`Control`] pauses, resumes or aborts a rollout. Neither introduces code. Not
//! policy on the node: whether this node takes an order (its cluster, its sequence floor, what
//! it has staged and runs) is the agent's decision; this module decides only what the order
//! keys signed.
//!
//! The file is `{"order": <the signed JSON>, "signatures": [...]}` (a control: `"control"`
//! instead of `"order"`). The signed object is kept as the exact bytes that were signed
//! (serde_json `RawValue`), and each signature is ed25519 over a domain string of its own
//! ([`ORDER_DOMAIN`], [`CONTROL_DOMAIN`]) followed by those bytes, so no manifest, root or
//! other document passes for an order or a control. A document larger than [`ORDER_CAP`] is
//! refused before it is parsed, and the signed object is parsed only after a threshold of
//! order keys is found to have signed it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::keys::{PublicKey, SecretKey};
use crate::manifest::Timestamp;
use crate::signatures::{Signature, add_signature, verify_threshold};
use crate::{ReleaseError, Root};

/// Prefix of every order signature.
pub const ORDER_DOMAIN: &[u8] = b"fleet rollout order v1\0";
/// Prefix of every control signature.
pub const CONTROL_DOMAIN: &[u8] = b"fleet rollout control v1\0";
/// An order or control document larger than this is refused before it is parsed.
pub const ORDER_CAP: u64 = 64 << 10;
/// Order and control format written by this version.
pub const FORMAT: u32 = 1;

/// A signed instruction to roll one cluster's nodes to a staged release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub format: u32,
    /// The rollout's id: letters, digits, `-`, `_`, `.` (it names the node's order record).
    pub rollout: String,
    /// `customer/cluster`.
    pub cluster: String,
    pub version: semver::Version,
    /// The sha256 (lowercase hex) of the exact signed manifest bytes of `version`
    /// ([`crate::bundle::manifest_digest`]).
    pub manifest_sha256: String,
    /// The nodes to upgrade, in order.
    pub targets: Vec<String>,
    /// The targets upgraded first; the rest only after these committed.
    pub canary: Vec<String>,
    /// Every node of the cluster, targets or not: the agents count those without a heartbeat
    /// as out of service (an order without it counts the targets alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    pub max_unavailable: u32,
    pub min_healthy_secs: u64,
    pub health_timeout_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke_flow: Option<String>,
    /// Set on the order that rolls rollout `rollback_of` back: its target is the release that
    /// was active on each node when that rollout began, and only such an order may move a
    /// node below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    /// When the rollout must be over; a node does not start a step after it.
    pub deadline: Timestamp,
    /// Grows with every order and control the controller signs; a node accepts only one above
    /// the highest it accepted.
    pub sequence: u64,
    pub created: Timestamp,
    pub expires: Timestamp,
}

impl Order {
    /// The targets in the order they go: the canaries first, then the rest as listed.
    pub fn upgrade_sequence(&self) -> Vec<String> {
        let mut nodes = self.canary.clone();
        nodes.extend(
            self.targets
                .iter()
                .filter(|t| !self.canary.contains(t))
                .cloned(),
        );
        nodes
    }
}

/// What a [`Control`] asks of a rollout.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Abort,
    AbortRollback,
}

/// A signed pause, resume or abort of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Control {
    pub format: u32,
    pub rollout: String,
    pub cluster: String,
    pub action: Action,
    /// Shares the order sequence: above the highest order or control a node accepted.
    pub sequence: u64,
    pub expires: Timestamp,
}

/// A document signed by order keys: an [`Order`] or a [`Control`].
pub trait Document: Serialize + DeserializeOwned {
    /// The envelope's field holding the signed object.
    const FIELD: &'static str;
    /// The signature domain.
    const DOMAIN: &'static [u8];
    /// How errors name it.
    const WHAT: &'static str;
    /// Rules it meets whoever signed it.
    fn check(&self) -> Result<(), ReleaseError>;
    fn expires(&self) -> Timestamp;
}

impl Document for Order {
    const FIELD: &'static str = "order";
    const DOMAIN: &'static [u8] = ORDER_DOMAIN;
    const WHAT: &'static str = "rollout order";

    fn check(&self) -> Result<(), ReleaseError> {
        let bad = |reason: String| Err(ReleaseError::BadOrder(reason));
        check_common(self.format, &self.rollout, &self.cluster)?;
        if !is_sha256(&self.manifest_sha256) {
            return bad("`manifest_sha256` is not 64 lowercase hex digits".into());
        }
        if self.targets.is_empty() {
            return bad("`targets` names no node".into());
        }
        for (i, node) in self.targets.iter().enumerate() {
            if node.is_empty() || node.chars().any(char::is_control) {
                return bad(format!("target `{node}` is not a node name"));
            }
            if self.targets[..i].contains(node) {
                return bad(format!("target `{node}` is listed twice"));
            }
        }
        if let Some(node) = self
            .members
            .iter()
            .find(|n| n.is_empty() || n.chars().any(char::is_control))
        {
            return bad(format!("member `{node}` is not a node name"));
        }
        if let Some(node) = self.canary.iter().find(|n| !self.targets.contains(n)) {
            return bad(format!("canary `{node}` is not a target"));
        }
        if self.max_unavailable == 0 {
            return bad("`max_unavailable` must be at least 1".into());
        }
        if self.health_timeout_secs < self.min_healthy_secs {
            return bad("`health_timeout_secs` is below `min_healthy_secs`".into());
        }
        if let Some(r) = &self.rollback_of {
            check_rollout(r)?;
        }
        if self.expires.0 <= self.created.0 {
            return bad("`expires` is not after `created`".into());
        }
        Ok(())
    }

    fn expires(&self) -> Timestamp {
        self.expires
    }
}

impl Document for Control {
    const FIELD: &'static str = "control";
    const DOMAIN: &'static [u8] = CONTROL_DOMAIN;
    const WHAT: &'static str = "rollout control";

    fn check(&self) -> Result<(), ReleaseError> {
        check_common(self.format, &self.rollout, &self.cluster)
    }

    fn expires(&self) -> Timestamp {
        self.expires
    }
}

fn check_common(format: u32, rollout: &str, cluster: &str) -> Result<(), ReleaseError> {
    if format != FORMAT {
        return Err(ReleaseError::BadOrder(format!(
            "format {format} is not supported (this build reads format {FORMAT})"
        )));
    }
    check_rollout(rollout)?;
    let ok = cluster
        .split_once('/')
        .is_some_and(|(customer, name)| is_name(customer) && is_name(name));
    if !ok {
        return Err(ReleaseError::BadOrder(format!(
            "cluster `{cluster}` is not `customer/cluster`"
        )));
    }
    Ok(())
}

/// A rollout id names a file on the node: 1 to 64 letters, digits, `-`, `_`, `.`, not
/// starting with `.`.
pub fn check_rollout(rollout: &str) -> Result<(), ReleaseError> {
    if is_name(rollout) && rollout.len() <= 64 {
        Ok(())
    } else {
        Err(ReleaseError::BadOrder(format!(
            "rollout id `{rollout}` must be 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`"
        )))
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && crate::keys::is_lower_hex(s)
}

/// A document and its signatures, as the controller writes it.
#[derive(Debug, Clone)]
pub struct Signed<T> {
    body: T,
    signed: String,
    signatures: Vec<Signature>,
}

/// The envelope as read: exactly one of `order` and `control`, and the signatures.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    order: Option<&'a RawValue>,
    #[serde(borrow, default)]
    control: Option<&'a RawValue>,
    signatures: Vec<Signature>,
}

impl<T: Document> Signed<T> {
    /// An unsigned document for `body`; sign it with [`Signed::sign`].
    pub fn unsigned(body: T) -> Result<Self, ReleaseError> {
        body.check()?;
        let signed =
            serde_json::to_string(&body).map_err(|e| ReleaseError::BadOrder(e.to_string()))?;
        Ok(Self {
            body,
            signed,
            signatures: Vec::new(),
        })
    }

    /// Adds (or replaces) `key`'s signature. Any key may sign; whether it counts is decided
    /// when the document is verified.
    pub fn sign(&mut self, key: &SecretKey) {
        add_signature(&mut self.signatures, key, T::DOMAIN, self.signed.as_bytes());
    }

    pub fn body(&self) -> &T {
        &self.body
    }

    /// The exact bytes the signatures cover.
    pub fn signed_bytes(&self) -> &[u8] {
        self.signed.as_bytes()
    }

    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The document as the node reads it (one line of JSON, no trailing newline).
    pub fn to_json(&self) -> String {
        // Written by hand so the signed object stays exactly the bytes that were signed.
        let signatures = serde_json::to_string(&self.signatures).expect("signatures serialize");
        format!(
            "{{\"{}\":{},\"signatures\":{signatures}}}",
            T::FIELD,
            self.signed
        )
    }

    /// Reads a signed document and checks it against `root`: at most [`ORDER_CAP`] bytes, then
    /// a threshold of the root's **order** keys over the exact signed bytes (a release or root
    /// key signing it is refused as such), then the document's own rules, then that it has not
    /// expired at `now`. Nothing of the signed object is parsed before its signatures verified.
    pub fn verify(
        bytes: &[u8],
        root: &Root,
        now: std::time::SystemTime,
    ) -> Result<Verified<T>, ReleaseError> {
        if bytes.len() as u64 > ORDER_CAP {
            return Err(ReleaseError::TooLarge {
                what: T::WHAT,
                size: bytes.len() as u64,
                cap: ORDER_CAP,
            });
        }
        let envelope: Envelope<'_> = serde_json::from_slice(bytes)
            .map_err(|e| ReleaseError::BadOrder(format!("{}: {e}", T::WHAT)))?;
        let raw = match (T::FIELD, envelope.order, envelope.control) {
            ("order", Some(raw), None) | ("control", None, Some(raw)) => raw,
            _ => {
                return Err(ReleaseError::BadOrder(format!(
                    "not a {}: expected one field `{}` beside `signatures`",
                    T::WHAT,
                    T::FIELD
                )));
            }
        };
        let signed = raw.get();
        let signers = verify_order_signatures::<T>(root, signed.as_bytes(), &envelope.signatures)?;
        let body: T = serde_json::from_str(signed)
            .map_err(|e| ReleaseError::BadOrder(format!("{}: {e}", T::WHAT)))?;
        body.check()?;
        if now >= body.expires().0 {
            return Err(ReleaseError::OrderExpired {
                what: T::WHAT,
                expires: body.expires(),
            });
        }
        Ok(Verified {
            document: Self {
                body,
                signed: signed.to_owned(),
                signatures: envelope.signatures,
            },
            signers,
        })
    }
}

/// What a successful verification established.
#[derive(Debug, Clone)]
pub struct Verified<T> {
    pub document: Signed<T>,
    /// The order keys whose signatures counted.
    pub signers: Vec<PublicKey>,
}

fn verify_order_signatures<T: Document>(
    root: &Root,
    message: &[u8],
    signatures: &[Signature],
) -> Result<Vec<PublicKey>, ReleaseError> {
    let body = root.body();
    let by_role = |keys: &[PublicKey], role: &'static str| {
        signatures
            .iter()
            .find(|s| keys.contains(&s.key))
            .map(|s| ReleaseError::NotOrderKey {
                what: T::WHAT,
                role,
                key: s.key,
            })
    };
    if body.order_keys.is_empty() && !signatures.is_empty() {
        // Whoever signed, this root accepts no order; say which role the signer holds.
        return Err(by_role(&body.release_keys, "release")
            .or_else(|| by_role(&body.root_keys, "root"))
            .unwrap_or(ReleaseError::NoOrderKeys { what: T::WHAT }));
    }
    verify_threshold(
        T::WHAT,
        T::DOMAIN,
        message,
        signatures,
        &body.order_keys,
        body.order_threshold,
    )
    .map_err(|e| match e {
        ReleaseError::UnknownKey { .. } | ReleaseError::ThresholdNotMet { valid: 0, .. } => {
            by_role(&body.release_keys, "release")
                .or_else(|| by_role(&body.root_keys, "root"))
                .unwrap_or(e)
        }
        e => e,
    })
}

pub type SignedOrder = Signed<Order>;
pub type SignedControl = Signed<Control>;

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::RootBody;
    use crate::bundle::MANIFEST_DOMAIN;
    use crate::trust::ROOT_DOMAIN;

    struct Keys {
        root: SecretKey,
        release: SecretKey,
        order: SecretKey,
        trust: Root,
    }

    fn keys() -> Keys {
        let [root, release, order] = [(); 3].map(|()| SecretKey::generate().expect("a key"));
        let body = RootBody::new(1, vec![root.public()], 1, vec![release.public()], 1)
            .and_then(|b| b.with_order_keys(vec![order.public()], 1))
            .expect("a root body");
        let mut trust = Root::unsigned(body).expect("a root");
        trust.sign(&root);
        Keys {
            root,
            release,
            order,
            trust,
        }
    }

    fn order() -> Order {
        let created = Timestamp::now();
        Order {
            format: FORMAT,
            rollout: "r-1".into(),
            cluster: "acme/prod".into(),
            version: "2.0.0".parse().expect("semver"),
            manifest_sha256: "ab".repeat(32),
            targets: vec!["n1".into(), "n2".into()],
            canary: vec!["n1".into()],
            max_unavailable: 1,
            min_healthy_secs: 5,
            health_timeout_secs: 60,
            smoke_flow: None,
            members: Vec::new(),
            rollback_of: None,
            deadline: created.plus(Duration::from_secs(3600)),
            sequence: 1,
            created,
            expires: created.plus(Duration::from_secs(600)),
        }
    }

    fn signed_by(key: &SecretKey) -> Vec<u8> {
        let mut doc = SignedOrder::unsigned(order()).expect("an order");
        doc.sign(key);
        doc.to_json().into_bytes()
    }

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn an_order_signed_by_an_order_key_verifies() {
        let k = keys();
        let bytes = signed_by(&k.order);
        let verified = SignedOrder::verify(&bytes, &k.trust, now()).expect("valid");
        let body = verified.document.body();
        assert_eq!((body.rollout.as_str(), body.sequence), ("r-1", 1));
        assert_eq!(verified.signers, vec![k.order.public()]);
        // What verified is what was signed, byte for byte.
        assert_eq!(verified.document.to_json().into_bytes(), bytes);
    }

    #[test]
    fn a_control_verifies_and_is_not_an_order() {
        let k = keys();
        let mut control = SignedControl::unsigned(Control {
            format: FORMAT,
            rollout: "r-1".into(),
            cluster: "acme/prod".into(),
            action: Action::AbortRollback,
            sequence: 2,
            expires: Timestamp::now().plus(Duration::from_secs(60)),
        })
        .expect("a control");
        control.sign(&k.order);
        let bytes = control.to_json().into_bytes();
        let verified = SignedControl::verify(&bytes, &k.trust, now()).expect("valid");
        assert_eq!(verified.document.body().action, Action::AbortRollback);
        let err = SignedOrder::verify(&bytes, &k.trust, now()).expect_err("a control");
        assert!(matches!(err, ReleaseError::BadOrder(_)), "{err}");
        // An order's bytes under a control's field: the control domain does not verify.
        let text = String::from_utf8(signed_by(&k.order)).expect("utf-8");
        let swapped = text.replacen("\"order\"", "\"control\"", 1);
        let err = SignedControl::verify(swapped.as_bytes(), &k.trust, now()).expect_err("domain");
        assert!(matches!(err, ReleaseError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn signatures_of_other_documents_do_not_verify_as_an_order() {
        let k = keys();
        let doc = SignedOrder::unsigned(order()).expect("an order");
        for domain in [MANIFEST_DOMAIN, ROOT_DOMAIN, CONTROL_DOMAIN] {
            let forged = Signed::<Order> {
                signatures: vec![Signature::create(&k.order, domain, doc.signed_bytes())],
                ..doc.clone()
            };
            let err = SignedOrder::verify(forged.to_json().as_bytes(), &k.trust, now())
                .expect_err("another domain");
            assert!(matches!(err, ReleaseError::BadSignature { .. }), "{err}");
        }
    }

    #[test]
    fn only_order_keys_count() {
        let k = keys();
        let err =
            SignedOrder::verify(&signed_by(&k.release), &k.trust, now()).expect_err("release");
        assert!(
            err.to_string()
                .contains("signed by a release key, not an order key"),
            "{err}"
        );
        let err = SignedOrder::verify(&signed_by(&k.root), &k.trust, now()).expect_err("root");
        assert!(
            err.to_string()
                .contains("signed by a root key, not an order key"),
            "{err}"
        );
        let stranger = SecretKey::generate().expect("a key");
        let err = SignedOrder::verify(&signed_by(&stranger), &k.trust, now()).expect_err("other");
        assert!(matches!(err, ReleaseError::UnknownKey { .. }), "{err}");
        let mut unsigned = SignedOrder::unsigned(order()).expect("an order");
        let err = SignedOrder::verify(unsigned.to_json().as_bytes(), &k.trust, now())
            .expect_err("unsigned");
        assert!(
            matches!(err, ReleaseError::MissingSignature { .. }),
            "{err}"
        );
        // A signature in uppercase hex is another spelling of the same bytes: refused.
        unsigned.sign(&k.order);
        let json = unsigned.to_json();
        let sig = &unsigned.signatures()[0].sig;
        let upper = json.replace(sig.as_str(), &sig.to_uppercase());
        let err = SignedOrder::verify(upper.as_bytes(), &k.trust, now()).expect_err("uppercase");
        assert!(matches!(err, ReleaseError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn every_byte_is_covered() {
        let k = keys();
        let bytes = signed_by(&k.order);
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x01;
            assert!(
                SignedOrder::verify(&altered, &k.trust, now()).is_err(),
                "byte {i} ({:?}) changed unnoticed",
                bytes[i] as char
            );
        }
    }

    #[test]
    fn expired_oversized_and_rule_breaking_orders_are_refused() {
        let k = keys();
        let bytes = signed_by(&k.order);
        let later = now() + Duration::from_secs(601);
        let err = SignedOrder::verify(&bytes, &k.trust, later).expect_err("expired");
        assert!(matches!(err, ReleaseError::OrderExpired { .. }), "{err}");
        let big = vec![b' '; ORDER_CAP as usize + 1];
        let err = SignedOrder::verify(&big, &k.trust, now()).expect_err("too large");
        assert!(matches!(err, ReleaseError::TooLarge { .. }), "{err}");
        for broken in [
            Order {
                manifest_sha256: "AB".repeat(32),
                ..order()
            },
            Order {
                cluster: "prod".into(),
                ..order()
            },
            Order {
                rollout: "../x".into(),
                ..order()
            },
            Order {
                canary: vec!["n9".into()],
                ..order()
            },
            Order {
                targets: vec![],
                canary: vec![],
                ..order()
            },
        ] {
            let err = SignedOrder::unsigned(broken).expect_err("breaks a rule");
            assert!(matches!(err, ReleaseError::BadOrder(_)), "{err}");
        }
    }

    #[test]
    fn a_root_without_order_keys_still_verifies_and_accepts_no_order() {
        let k = keys();
        // A root as written before order keys existed, signed over its exact bytes.
        let signed = format!(
            r#"{{"type":"fleet-root","version":1,"root_keys":["{}"],"root_threshold":1,"release_keys":["{}"],"release_threshold":1}}"#,
            k.root.public(),
            k.release.public()
        );
        let sig = Signature::create(&k.root, ROOT_DOMAIN, signed.as_bytes());
        let file = format!(
            "{{\n  \"signed\": {signed},\n  \"signatures\": [{}]\n}}\n",
            serde_json::to_string(&sig).expect("serializes")
        );
        let old = Root::parse(file.as_bytes()).expect("an old root parses");
        old.verify_self().expect("and verifies");
        assert!(old.body().order_keys.is_empty());
        assert_eq!(old.body().order_threshold, 0);
        assert_eq!(
            Root::parse(old.to_json().as_bytes())
                .map(|r| r.verify_self().is_ok())
                .ok(),
            Some(true)
        );
        // A new root without order keys is written exactly as before.
        let body = RootBody::new(1, vec![k.root.public()], 1, vec![k.release.public()], 1)
            .expect("a body");
        assert_eq!(serde_json::to_string(&body).expect("serializes"), signed);
        let err = SignedOrder::verify(&signed_by(&k.order), &old, now()).expect_err("no keys");
        assert!(matches!(err, ReleaseError::NoOrderKeys { .. }), "{err}");
        let err = SignedOrder::verify(&signed_by(&k.release), &old, now()).expect_err("release");
        assert!(
            matches!(
                err,
                ReleaseError::NotOrderKey {
                    role: "release",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_order_key_holds_one_role() {
        let k = keys();
        let body = || RootBody::new(1, vec![k.root.public()], 1, vec![k.release.public()], 1);
        for (key, role) in [
            (&k.release, "a release key and an order key"),
            (&k.root, "a root key and an order key"),
        ] {
            let err = body()
                .and_then(|b| b.with_order_keys(vec![key.public()], 1))
                .expect_err("two roles");
            assert!(err.to_string().contains(role), "{err}");
        }
        let err = body()
            .and_then(|b| b.with_order_keys(vec![k.order.public()], 2))
            .expect_err("threshold above the keys");
        assert!(err.to_string().contains("order threshold 2"), "{err}");
        let err = body()
            .and_then(|b| b.with_order_keys(vec![], 1))
            .expect_err("a threshold without keys");
        assert!(err.to_string().contains("order threshold 1"), "{err}");
    }
}
