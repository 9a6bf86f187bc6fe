//! The requests the agent accepts, as values: parsed from argv or from `SSH_ORIGINAL_COMMAND`
//! (behind the restricted deploy key) and displayed back to exactly the words the controller
//! sends. Anything else is refused: the key reaches nothing but these. Not their execution:
//! that is the agent's.

use std::fmt;

/// One request to a node's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Receive the bundle of this version on stdin.
    Stage {
        version: semver::Version,
    },
    Activate {
        version: semver::Version,
        allow_downgrade: bool,
    },
    Rollback,
    Status,
    /// Receive a signed rollout order on stdin; the node takes it, or refuses it, and answers
    /// its report on that rollout.
    Order,
    /// Receive a signed rollout control (pause, resume, abort) on stdin.
    Control,
    /// This node's report on rollout `id`.
    Rollout {
        id: String,
    },
}

/// Words that are not a request; the message names what was accepted and what arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRequest {}

impl Request {
    pub const USAGE: &str = "stage VERSION | activate VERSION [--allow-downgrade] | rollback | status | order | control | rollout ID";

    pub fn parse(words: &[&str]) -> Result<Self, BadRequest> {
        let bad = || {
            BadRequest(format!(
                "this key only runs fleet-agent requests ({}); got `{}`",
                Self::USAGE,
                words.join(" ")
            ))
        };
        let version = |v: &str| v.parse::<semver::Version>().map_err(|_| bad());
        match words {
            ["stage", v] => Ok(Request::Stage {
                version: version(v)?,
            }),
            ["activate", v] => Ok(Request::Activate {
                version: version(v)?,
                allow_downgrade: false,
            }),
            ["activate", v, "--allow-downgrade"] => Ok(Request::Activate {
                version: version(v)?,
                allow_downgrade: true,
            }),
            ["rollback"] => Ok(Request::Rollback),
            ["status"] => Ok(Request::Status),
            ["order"] => Ok(Request::Order),
            ["control"] => Ok(Request::Control),
            ["rollout", id] if is_rollout_id(id) => Ok(Request::Rollout {
                id: (*id).to_owned(),
            }),
            _ => Err(bad()),
        }
    }
}

/// A rollout id names files on the node: 1 to 64 letters, digits, `-`, `_`, `.`, not starting
/// with `.` (the rule `fleet_release::order` applies to the signed documents).
pub fn is_rollout_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The words of the request, as the agent parses them (the deploy key's command line).
impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Stage { version } => write!(f, "stage {version}"),
            Request::Activate {
                version,
                allow_downgrade: false,
            } => write!(f, "activate {version}"),
            Request::Activate {
                version,
                allow_downgrade: true,
            } => write!(f, "activate {version} --allow-downgrade"),
            Request::Rollback => f.write_str("rollback"),
            Request::Status => f.write_str("status"),
            Request::Order => f.write_str("order"),
            Request::Control => f.write_str("control"),
            Request::Rollout { id } => write!(f, "rollout {id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        s.parse().expect("semver")
    }

    #[test]
    fn parses_only_known_requests() {
        assert_eq!(
            Request::parse(&["stage", "1.2.0"]).ok(),
            Some(Request::Stage {
                version: v("1.2.0")
            })
        );
        assert_eq!(
            Request::parse(&["activate", "1.2.0", "--allow-downgrade"]).ok(),
            Some(Request::Activate {
                version: v("1.2.0"),
                allow_downgrade: true
            })
        );
        for words in [
            &["sh"][..],
            &[],
            &["stage", "../../etc"],
            &["stage", "1.0.0", "x"],
            &["status", "now"],
            &["rollout"],
            &["rollout", "../x"],
            &["rollout", ".hidden"],
            &["order", "x"],
        ] {
            let err = Request::parse(words).expect_err("refused");
            assert_eq!(
                err.to_string(),
                format!(
                    "this key only runs fleet-agent requests ({}); got `{}`",
                    Request::USAGE,
                    words.join(" ")
                )
            );
        }
    }

    #[test]
    fn displays_the_words_it_parses() {
        let requests = [
            Request::Stage {
                version: v("1.2.0"),
            },
            Request::Stage {
                version: v("2.0.0-rc.1+build.7"),
            },
            Request::Activate {
                version: v("1.2.0"),
                allow_downgrade: false,
            },
            Request::Activate {
                version: v("1.2.0"),
                allow_downgrade: true,
            },
            Request::Rollback,
            Request::Status,
            Request::Order,
            Request::Control,
            Request::Rollout {
                id: "r-2026.11.30_1".into(),
            },
        ];
        let words: Vec<String> = requests.iter().map(ToString::to_string).collect();
        assert_eq!(
            words,
            [
                "stage 1.2.0",
                "stage 2.0.0-rc.1+build.7",
                "activate 1.2.0",
                "activate 1.2.0 --allow-downgrade",
                "rollback",
                "status",
                "order",
                "control",
                "rollout r-2026.11.30_1"
            ]
        );
        for (request, text) in requests.iter().zip(&words) {
            let parsed: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(Request::parse(&parsed).as_ref(), Ok(request), "{text}");
        }
    }

    #[test]
    fn a_refusal_names_what_is_accepted_and_what_arrived() {
        let err = Request::parse(&["status;", "id"]).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "this key only runs fleet-agent requests (stage VERSION | activate VERSION \
             [--allow-downgrade] | rollback | status | order | control | rollout ID); got \
             `status; id`"
        );
    }
}
