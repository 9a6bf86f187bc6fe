//! Who a request is: API tokens with a role (`read`, `run`, `admin`) and, for a tenant's
//! token, the tenant. A token is `etl_<id>_<secret>`: the id (12 hex digits) is public and
//! names the token in lists and revocations; the secret (64 hex digits, 256 random bits) is
//! shown once, when the token is made, and only its sha256 is kept (`store.rs`), compared in
//! constant time. A token's text never reaches a log, an error or a run record: errors name
//! the id at most.

mod gate;
mod store;
pub mod tenant;

use std::fmt;

use sha2::{Digest, Sha256};

pub use gate::{ADMIN_TOKEN_ID, CLUSTER_TOKEN_ID, Gate, LOOPBACK_ID, Refusal};
pub use store::{Caller, TokenRow, TokenStore, TokensError};
pub use tenant::Scope;

/// The tenant of flows and runs made before tenants existed, and of an operator's requests
/// that name none. Its paths are shared storage's root (but `tenants/`) and its tables any
/// schema but the tenants' own.
pub const DEFAULT_TENANT: &str = "default";

/// What a token may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// List and read flows, runs and the cluster.
    Read,
    /// Also define, run and cancel.
    Run,
    /// Also drain, resume, and manage tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Read, Role::Run, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Run => "run",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fixed start of every token.
pub const TOKEN_PREFIX: &str = "etl_";
const ID_HEX: usize = 12;
const SECRET_HEX: usize = 64;

/// A token as made: its public id and the whole text, shown once.
pub struct NewToken {
    pub id: String,
    pub text: String,
    secret_sha256: [u8; 32],
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl NewToken {
    /// A new token from the system's random source.
    pub fn generate() -> Result<NewToken, getrandom::Error> {
        let mut bytes = [0u8; ID_HEX / 2 + SECRET_HEX / 2];
        getrandom::fill(&mut bytes)?;
        let (id, secret) = bytes.split_at(ID_HEX / 2);
        let id = format!("{TOKEN_PREFIX}{}", hex(id));
        let secret = hex(secret);
        Ok(NewToken {
            text: format!("{id}_{secret}"),
            secret_sha256: Sha256::digest(secret.as_bytes()).into(),
            id,
        })
    }
}

/// A token as a request presents it, split into its public id and the sha256 of its secret;
/// `None` when it is not shaped like a token.
pub fn parse_presented(text: &str) -> Option<(String, [u8; 32])> {
    let rest = text.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexdigits = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if !hexdigits(id, ID_HEX) || !hexdigits(secret, SECRET_HEX) {
        return None;
    }
    Some((
        format!("{TOKEN_PREFIX}{id}"),
        Sha256::digest(secret.as_bytes()).into(),
    ))
}

/// Whether two digests are equal, every byte compared whatever differs first.
pub fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A duration as `30d`, `12h`, `90m` or `3600s`.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_token_parses_back_to_its_id_and_digest_and_nothing_else_does() {
        let token = NewToken::generate().expect("random");
        assert!(token.text.starts_with(&format!("{}_", token.id)));
        assert_eq!(
            token.text.len(),
            TOKEN_PREFIX.len() + ID_HEX + 1 + SECRET_HEX
        );
        let (id, digest) = parse_presented(&token.text).expect("parses");
        assert_eq!(id, token.id);
        assert!(same_digest(&digest, &token.secret_sha256));
        let other = NewToken::generate().expect("random");
        assert_ne!(other.id, token.id);
        assert!(!same_digest(&digest, &other.secret_sha256));
        for bad in [
            "",
            "etl_",
            &token.text[..token.text.len() - 1],
            &format!("{}0", token.text),
            &token.text.to_uppercase(),
            &token.text.replacen("etl_", "elt_", 1),
            &token.text.replacen('_', "-", 2),
            "etl_zzzzzzzzzzzz_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(parse_presented(bad).is_none(), "{bad}");
        }
        // The secret never shows in Debug.
        assert!(!format!("{token:?}").contains(&token.text[token.id.len() + 1..]));
    }

    #[test]
    fn roles_durations_and_tenant_names() {
        assert!(Role::Read < Role::Run && Role::Run < Role::Admin);
        assert_eq!(Role::parse("run"), Some(Role::Run));
        assert_eq!(Role::parse("Run"), None);
        assert_eq!(
            parse_duration("30d"),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            parse_duration("90m"),
            Some(std::time::Duration::from_secs(5400))
        );
        for bad in ["", "d", "0s", "12", "1w", "-1h", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        for ok in ["acme", "acme-eu_2", "a"] {
            assert!(fleet_inventory::is_tenant_name(ok), "{ok}");
        }
        for bad in ["", "Acme", "../x", "a/b", "1acme", "a b", &"a".repeat(49)] {
            assert!(!fleet_inventory::is_tenant_name(bad), "{bad}");
        }
    }
}
