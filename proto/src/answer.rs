//! The agent's answer to one request: one JSON line, `{"ok":true, ...the outcome's fields}` or
//! `{"ok":false,"code":"busy","error":"..."}`. The `code` says what a caller can do about a
//! refusal (retry on `busy`, halt on `downgrade` or `old_counter`); the `error` is the one
//! line a person reads. Not transport, and not the printing: the agent writes the line, the
//! controller reads it.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why the agent refused a request, one per family of agent errors. Serialized snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Another operation held the node longer than the agent waits for it: retry later.
    Busy,
    /// The request's input (a bundle on stdin) broke off or went silent: retry.
    Input,
    /// The words are not a request the agent accepts.
    BadRequest,
    /// The release to activate (or to roll back to) is not staged: push it first.
    NotStaged,
    /// The release is older than the active one and the request did not allow a downgrade.
    Downgrade,
    /// The release's counter is below one the node already ran: a replay; halt.
    OldCounter,
    /// The bundle failed verification against the node's trust root (signature, expiry,
    /// hashes, contents).
    VerificationFailed,
    /// The bundle holds another version than the one asked for.
    WrongVersion,
    /// The release is built for another platform.
    WrongPlatform,
    /// The release needs a newer agent.
    AgentTooOld,
    /// There is no previous release to roll back to.
    NoPrevious,
    /// Reading or writing the node's files failed (a full disk, permissions).
    Io,
    /// The node layout is not what the agent expects (a link or state file altered by hand).
    Layout,
    /// The upgrade step's new release failed its gate; the node switched back and the
    /// previous release serves again.
    RolledBack,
    /// The new release failed and the previous one could not be made to serve either: the
    /// node needs a person.
    RollbackFailed,
    /// The agent daemon went away while it ran the request (it finishes or undoes an upgrade
    /// step when it starts again): ask `status`.
    DaemonLost,
    /// A rollout order or control that does not read as one (malformed, too large, rules
    /// broken).
    BadOrder,
    /// A rollout order or control without a signature, or with one that does not verify.
    OrderSignature,
    /// A rollout order or control not signed by the pinned root's order keys (a release key,
    /// a root key, or a key the root does not name).
    NotOrderKey,
    /// A rollout order or control past its expiry.
    OrderExpired,
    /// A rollout order or control whose sequence is not above the highest this node accepted:
    /// a replay.
    OrderReplayed,
    /// A rollout order or control for another cluster than this node's.
    WrongCluster,
    /// A rollout order that does not name this node among its targets.
    NotTargeted,
    /// A rollout order naming a release staged here with another manifest digest.
    DigestMismatch,
    /// A rollout order whose target is older than the release active when its rollout began
    /// (and it is not that rollout's rollback).
    OrderDowngrade,
    /// `rollout ID` names a rollout this node took no order of.
    UnknownRollout,
    /// A rollout's upgrade step lost its slot and undid itself: the node runs the release it
    /// ran before; it asks for a slot again.
    Interrupted,
    /// The node is not set up for rollouts (no `config/agent.toml` naming its cluster).
    NotConfigured,
    /// A code this build does not know (a newer agent), or none (an agent older than codes).
    #[default]
    #[serde(other)]
    Other,
}

impl Code {
    pub const ALL: [Code; 29] = [
        Code::Busy,
        Code::Input,
        Code::BadRequest,
        Code::NotStaged,
        Code::Downgrade,
        Code::OldCounter,
        Code::VerificationFailed,
        Code::WrongVersion,
        Code::WrongPlatform,
        Code::AgentTooOld,
        Code::NoPrevious,
        Code::Io,
        Code::Layout,
        Code::RolledBack,
        Code::RollbackFailed,
        Code::DaemonLost,
        Code::BadOrder,
        Code::OrderSignature,
        Code::NotOrderKey,
        Code::OrderExpired,
        Code::OrderReplayed,
        Code::WrongCluster,
        Code::NotTargeted,
        Code::DigestMismatch,
        Code::OrderDowngrade,
        Code::UnknownRollout,
        Code::Interrupted,
        Code::NotConfigured,
        Code::Other,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Busy => "busy",
            Code::Input => "input",
            Code::BadRequest => "bad_request",
            Code::NotStaged => "not_staged",
            Code::Downgrade => "downgrade",
            Code::OldCounter => "old_counter",
            Code::VerificationFailed => "verification_failed",
            Code::WrongVersion => "wrong_version",
            Code::WrongPlatform => "wrong_platform",
            Code::AgentTooOld => "agent_too_old",
            Code::NoPrevious => "no_previous",
            Code::Io => "io",
            Code::Layout => "layout",
            Code::RolledBack => "rolled_back",
            Code::RollbackFailed => "rollback_failed",
            Code::DaemonLost => "daemon_lost",
            Code::BadOrder => "bad_order",
            Code::OrderSignature => "order_signature",
            Code::NotOrderKey => "not_order_key",
            Code::OrderExpired => "order_expired",
            Code::OrderReplayed => "order_replayed",
            Code::WrongCluster => "wrong_cluster",
            Code::NotTargeted => "not_targeted",
            Code::DigestMismatch => "digest_mismatch",
            Code::OrderDowngrade => "order_downgrade",
            Code::UnknownRollout => "unknown_rollout",
            Code::Interrupted => "interrupted",
            Code::NotConfigured => "not_configured",
            Code::Other => "other",
        }
    }

    /// True when the same request may succeed if sent again later, unchanged: the node was
    /// busy, or the upload broke off. Every other refusal needs a different request, or a
    /// person.
    pub fn is_retryable(self) -> bool {
        matches!(self, Code::Busy | Code::Input)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: what a caller can act on, and the line a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub error: String,
}

impl Refusal {
    pub fn new(code: Code, error: impl Into<String>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }
}

/// The message alone: the code is for machines, and every message already says what failed.
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for Refusal {}

/// One answer: the outcome of a request, or why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Done(T),
    Refused(Refusal),
}

impl<T> Answer<T> {
    pub fn is_ok(&self) -> bool {
        matches!(self, Answer::Done(_))
    }

    pub fn into_result(self) -> Result<T, Refusal> {
        match self {
            Answer::Done(value) => Ok(value),
            Answer::Refused(refusal) => Err(refusal),
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Done(value) => Answer::Done(f(value)),
            Answer::Refused(refusal) => Answer::Refused(refusal),
        }
    }
}

impl<T, E: Into<Refusal>> From<Result<T, E>> for Answer<T> {
    fn from(result: Result<T, E>) -> Self {
        match result {
            Ok(value) => Answer::Done(value),
            Err(e) => Answer::Refused(e.into()),
        }
    }
}

impl<T: Serialize> Serialize for Answer<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Done<'a, T> {
            ok: bool,
            #[serde(flatten)]
            value: &'a T,
        }
        #[derive(Serialize)]
        struct Refused<'a> {
            ok: bool,
            code: Code,
            error: &'a str,
        }
        match self {
            Answer::Done(value) => Done { ok: true, value }.serialize(serializer),
            Answer::Refused(r) => Refused {
                ok: false,
                code: r.code,
                error: &r.error,
            }
            .serialize(serializer),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Answer<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde has no owned value type of its own: the outcome's fields are read beside `ok`
        // (flattened), and a refusal simply does not make a `T`.
        #[derive(Deserialize)]
        #[serde(bound = "T: Deserialize<'de>")]
        struct Wire<T> {
            ok: bool,
            #[serde(default)]
            code: Code,
            error: Option<String>,
            #[serde(flatten)]
            value: Option<T>,
        }
        let wire = Wire::<T>::deserialize(deserializer)?;
        match (wire.ok, wire.value) {
            (true, Some(value)) => Ok(Answer::Done(value)),
            (true, None) => Err(D::Error::custom(format!(
                "an ok answer without the fields of a {}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or_default()
            ))),
            (false, _) => Ok(Answer::Refused(Refusal {
                code: wire.code,
                error: wire.error.unwrap_or_else(|| "the agent refused".into()),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Staged, Status, Switched};

    fn switched() -> Switched {
        Switched {
            active: "2.0.0".into(),
            previous: Some("1.0.0".into()),
            changed: true,
            server: crate::SwitchOutcome::NotRestarted,
        }
    }

    #[test]
    fn the_wire_format() {
        assert_eq!(
            serde_json::to_string(&Answer::Done(switched())).expect("json"),
            r#"{"ok":true,"active":"2.0.0","previous":"1.0.0","changed":true,"server":"not_restarted"}"#
        );
        let refused: Answer<Switched> = Answer::Refused(Refusal::new(
            Code::Downgrade,
            "release 1.0.0 is older than the active 2.0.0; activating it needs --allow-downgrade",
        ));
        assert_eq!(
            serde_json::to_string(&refused).expect("json"),
            r#"{"ok":false,"code":"downgrade","error":"release 1.0.0 is older than the active 2.0.0; activating it needs --allow-downgrade"}"#
        );
    }

    #[test]
    fn answers_round_trip() {
        let staged = Answer::Done(Staged {
            version: "1.0.0".into(),
            changed: true,
            files: 3,
            bytes: u64::MAX,
        });
        let status = Answer::Done(Status {
            agent_version: "0.1.0".into(),
            active: None,
            previous: None,
            staged: vec!["1.0.0".into(), "2.0.0".into()],
            free_bytes: 1 << 40,
            daemon: None,
        });
        let json = serde_json::to_string(&staged).expect("json");
        assert_eq!(
            serde_json::from_str::<Answer<Staged>>(&json).ok(),
            Some(staged)
        );
        let json = serde_json::to_string(&status).expect("json");
        assert_eq!(
            serde_json::from_str::<Answer<Status>>(&json).ok(),
            Some(status)
        );
        for code in Code::ALL {
            let refused: Answer<Status> = Answer::Refused(Refusal::new(code, "no"));
            let json = serde_json::to_string(&refused).expect("json");
            assert!(json.contains(&format!(r#""code":"{code}""#)), "{json}");
            assert_eq!(
                serde_json::from_str::<Answer<Status>>(&json).ok(),
                Some(refused)
            );
        }
    }

    #[test]
    fn codes_are_snake_case_and_only_busy_and_input_are_retried() {
        let names: Vec<String> = Code::ALL
            .iter()
            .map(|c| serde_json::to_string(c).expect("json"))
            .collect();
        assert_eq!(
            names.join(","),
            r#""busy","input","bad_request","not_staged","downgrade","old_counter","verification_failed","wrong_version","wrong_platform","agent_too_old","no_previous","io","layout","rolled_back","rollback_failed","daemon_lost","bad_order","order_signature","not_order_key","order_expired","order_replayed","wrong_cluster","not_targeted","digest_mismatch","order_downgrade","unknown_rollout","interrupted","not_configured","other""#
        );
        let retried: Vec<Code> = Code::ALL.into_iter().filter(|c| c.is_retryable()).collect();
        assert_eq!(retried, [Code::Busy, Code::Input]);
    }

    #[test]
    fn reads_what_older_and_newer_agents_write() {
        // Before codes existed: only `ok` and `error`.
        let old: Answer<Switched> =
            serde_json::from_str(r#"{"error":"no previous release to roll back to","ok":false}"#)
                .expect("parses");
        assert_eq!(
            old,
            Answer::Refused(Refusal::new(
                Code::Other,
                "no previous release to roll back to"
            ))
        );
        // A code this build does not know, and fields it does not know.
        let newer: Answer<Switched> =
            serde_json::from_str(r#"{"ok":false,"code":"on_fire","error":"x","hint":"y"}"#)
                .expect("parses");
        assert_eq!(newer, Answer::Refused(Refusal::new(Code::Other, "x")));
        let extra: Answer<Switched> = serde_json::from_str(
            r#"{"active":"2.0.0","changed":true,"ok":true,"previous":"1.0.0","slot":4}"#,
        )
        .expect("parses");
        assert_eq!(extra, Answer::Done(switched()));
        let err = serde_json::from_str::<Answer<Switched>>(r#"{"ok":true,"changed":true}"#)
            .expect_err("an ok answer without its outcome");
        assert!(
            err.to_string()
                .contains("an ok answer without the fields of a Switched"),
            "{err}"
        );
    }

    #[test]
    fn results_become_answers() {
        let ok: Answer<u8> = Ok::<u8, Refusal>(1).into();
        assert_eq!(ok.clone().into_result(), Ok(1));
        assert!(ok.is_ok());
        let refused: Answer<u8> = Err(Refusal::new(Code::Busy, "busy")).into();
        assert_eq!(
            refused.map(u16::from).into_result().map_err(|r| r.code),
            Err(Code::Busy)
        );
    }
}
