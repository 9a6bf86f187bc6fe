//! The states of a run, as the API and the `runs.state` column spell them (lowercase, the
//! migrations' CHECK constraint lists the same six). SQL may name a state as a literal; a bind
//! always goes through `as_str()`.

use serde::{Deserialize, Serialize};

/// Where a run is in its life: `queued` → `running` → one of the four ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
    /// Its node stopped sending heartbeats while it ran (the sweeper decided).
    Interrupted,
}

impl RunState {
    pub const ALL: [RunState; 6] = [
        RunState::Queued,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Canceled,
        RunState::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
            RunState::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a run state; says which are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state `{given}`: one of {}", RunState::ALL.map(RunState::as_str).join(", "))]
pub struct UnknownState {
    pub given: String,
}

impl std::str::FromStr for RunState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<RunState, UnknownState> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState {
                given: s.to_owned(),
            })
    }
}

/// How a row's `state` column decodes (`#[sqlx(try_from = "String")]`).
impl TryFrom<String> for RunState {
    type Error = UnknownState;

    fn try_from(s: String) -> Result<RunState, UnknownState> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_itself_in_text_and_json() {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>(), Ok(state));
            assert_eq!(
                serde_json::to_value(state).expect("json"),
                serde_json::json!(state.as_str())
            );
            assert_eq!(
                serde_json::from_value::<RunState>(serde_json::json!(state.as_str())).ok(),
                Some(state)
            );
        }
        assert_eq!(
            "done".parse::<RunState>().map_err(|e| e.to_string()),
            Err("unknown state `done`: one of queued, running, succeeded, failed, canceled, interrupted".to_owned())
        );
    }
}
