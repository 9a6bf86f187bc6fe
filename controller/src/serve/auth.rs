//! The credentials of `fleet serve`: passwords (argon2, PHC strings), session ids and API
//! tokens (random, kept only as domain-separated sha256 hashes), and the CSRF token of a
//! session (derived from its id under another domain, so the store holds nothing that yields
//! it, and each session's differs). The store keeps the hashes (`store/users.rs`); the
//! command line (`fleet user`, `fleet token`) and the web server share these functions.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};

/// Fewest and most characters a password may have.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 12..=1024;

/// A password's problem, if any (checked before it is hashed).
pub fn password_problem(password: &str) -> Option<String> {
    let n = password.chars().count();
    (!PASSWORD_CHARS.contains(&n)).then(|| {
        format!(
            "a password has {} to {} characters (this one has {n})",
            PASSWORD_CHARS.start(),
            PASSWORD_CHARS.end()
        )
    })
}

/// A user name's problem, if any: 1 to 64 of ASCII letters, digits, `.`, `_`, `-`.
pub fn user_name_problem(name: &str) -> Option<String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| {
        format!("{name:?} is not a user name: 1 to 64 ASCII letters, digits, '.', '_' or '-'")
    })
}

/// The argon2id PHC string of `password`, with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

/// Whether `password` matches the PHC string `hash` (a malformed hash matches nothing).
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// `n` random bytes as lowercase hex.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    hex::encode(bytes)
}

fn digest(domain: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0]);
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// A new session id (what the cookie carries).
pub fn new_session_id() -> String {
    random_hex(32)
}

/// What the store keeps of a session id.
pub fn session_hash(id: &str) -> String {
    digest("fleet session", id)
}

/// The CSRF token of the session with this id: every state-changing request of the session
/// carries it (a form field or the `X-CSRF-Token` header).
pub fn csrf_token(session_id: &str) -> String {
    digest("fleet csrf", session_id)
}

/// A new API token and its public id: `fleet_<id>_<secret>`.
pub fn new_token() -> (String, String) {
    let id = random_hex(4);
    let token = format!("fleet_{id}_{}", random_hex(32));
    (id, token)
}

/// What the store keeps of an API token.
pub fn token_hash(token: &str) -> String {
    digest("fleet api token", token)
}

/// Compares two strings in time that depends only on their lengths.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let hash = hash_password("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterz", &hash));
        assert!(!verify_password(
            "correct horse battery",
            "not a phc string"
        ));
        assert_ne!(hash, hash_password("correct horse battery").expect("hash"));
    }

    #[test]
    fn names_passwords_and_secrets_follow_their_rules() {
        assert!(password_problem("short").is_some());
        assert!(password_problem("twelve chars").is_none());
        assert!(user_name_problem("ops-1.a_b").is_none());
        for bad in ["", "a b", "<script>", "ü", &"x".repeat(65)] {
            assert!(user_name_problem(bad).is_some(), "{bad}");
        }
        let (id, token) = new_token();
        assert!(token.starts_with(&format!("fleet_{id}_")));
        assert_ne!(token_hash(&token), session_hash(&token));
        let session = new_session_id();
        assert_ne!(csrf_token(&session), session_hash(&session));
        assert_ne!(csrf_token(&session), csrf_token(&new_session_id()));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
