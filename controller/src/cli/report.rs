//! What a command hands back to be printed: a human text and the same facts as JSON. Not a
//! formatter for logs: those go through `tracing` to stderr.

use serde::Serialize;

/// A command's result, printed as text or, with `--json`, as one JSON document.
pub struct Report {
    pub text: String,
    pub json: serde_json::Value,
    /// What went wrong in a command that still has results to show (one line each, printed on
    /// stderr); any problem makes the exit code non-zero.
    pub problems: Vec<String>,
    /// False when the command did its work but its answer is "no" (a rollout not, or not
    /// yet, committed): the exit code is 1 without an error line.
    pub success: bool,
}

impl Report {
    pub fn new(text: impl Into<String>, json: impl Serialize) -> Self {
        let json =
            serde_json::to_value(json).expect("reports hold plain data that always serializes");
        Self {
            text: text.into(),
            json,
            problems: Vec::new(),
            success: true,
        }
    }

    /// Records problems next to the results; the JSON document then says `"ok": false` and
    /// lists them.
    pub fn with_problems(mut self, problems: Vec<String>) -> Self {
        if !problems.is_empty()
            && let Some(doc) = self.json.as_object_mut()
        {
            doc.insert("ok".into(), false.into());
            doc.insert("problems".into(), problems.clone().into());
        }
        self.problems = problems;
        self
    }
}

impl Report {
    /// Marks the answer as "no": exit code 1, no error line.
    pub fn unsuccessful(mut self) -> Self {
        self.success = false;
        self
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
