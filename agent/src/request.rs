//! Requests the agent accepts, parsed from argv or from `SSH_ORIGINAL_COMMAND` (behind the
//! restricted deploy key). Anything else is refused: the key reaches nothing but these.

use crate::AgentError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Receive the bundle of this version on stdin.
    Stage {
        version: String,
    },
    Activate {
        version: String,
        allow_downgrade: bool,
    },
    Rollback,
    Status,
}

impl Request {
    pub const USAGE: &str =
        "stage VERSION | activate VERSION [--allow-downgrade] | rollback | status";

    pub fn parse(words: &[&str]) -> Result<Self, AgentError> {
        let bad = || {
            AgentError::BadRequest(format!(
                "this key only runs fleet-agent requests ({}); got `{}`",
                Self::USAGE,
                words.join(" ")
            ))
        };
        let version = |v: &str| -> Result<String, AgentError> {
            v.parse::<semver::Version>()
                .map(|v| v.to_string())
                .map_err(|_| bad())
        };
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
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_known_requests() {
        assert_eq!(
            Request::parse(&["stage", "1.2.0"]).ok(),
            Some(Request::Stage {
                version: "1.2.0".into()
            })
        );
        assert_eq!(
            Request::parse(&["activate", "1.2.0", "--allow-downgrade"]).ok(),
            Some(Request::Activate {
                version: "1.2.0".into(),
                allow_downgrade: true
            })
        );
        for words in [
            &["sh"][..],
            &[],
            &["stage", "../../etc"],
            &["stage", "1.0.0", "x"],
            &["status", "now"],
        ] {
            assert!(Request::parse(words).is_err(), "{words:?}");
        }
    }
}
