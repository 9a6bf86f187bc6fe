//! What a command hands back to be printed: a human text and the same facts as JSON. Not a
//! formatter for logs: those go through `tracing` to stderr.

use serde::Serialize;

/// A command's result, printed as text or, with `--json`, as one JSON document.
pub struct Report {
    pub text: String,
    pub json: serde_json::Value,
}

impl Report {
    pub fn new(text: impl Into<String>, json: impl Serialize) -> Self {
        let json =
            serde_json::to_value(json).expect("reports hold plain data that always serializes");
        Self {
            text: text.into(),
            json,
        }
    }
}

/// A failed command: the error line(s) for stderr, plus structured details for `--json`.
pub struct Failure {
    pub error: anyhow::Error,
    /// Lines printed on stderr before the error line, such as one line per problem.
    pub lines: Vec<String>,
    pub details: Option<serde_json::Value>,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self {
            error,
            lines: Vec::new(),
            details: None,
        }
    }
}
