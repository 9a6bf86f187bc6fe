//! Validation problems with their file position, and the error that carries all of them; not
//! the validation itself (see `schema`) nor the YAML reading (see `yaml`).

use std::fmt;

use serde::Serialize;

/// A 1-based position in the inventory file (line, column in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub fn new(line: usize, column: usize) -> Self {
        Self { line, column }
    }
}

/// One thing wrong with the inventory, with where it is and, when there is one, what to do.
///
/// `line` and `column` are 1-based; both are 0 when the problem concerns the whole file (for
/// example when it cannot be read). `path` is the key path (`customers.acme.clusters.prod.nodes[1].ssh.port`),
/// `<root>` for the document itself, or empty when the problem is not about a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// The inventory could not be loaded; carries every problem found, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", join_lines(.problems))]
pub struct LoadError {
    problems: Vec<Problem>,
}

fn join_lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl LoadError {
    pub(crate) fn new(problems: Vec<Problem>) -> Self {
        Self { problems }
    }

    /// Every problem, in file order (by line, then column).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

/// Collects problems for one file while validation goes on.
#[derive(Debug)]
pub struct Problems {
    file: String,
    list: Vec<Problem>,
}

impl Problems {
    pub fn new(file: String) -> Self {
        Self {
            file,
            list: Vec::new(),
        }
    }

    pub fn add(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.add_hint(pos, path, message, None::<String>);
    }

    pub fn add_hint(
        &mut self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        hint: Option<impl Into<String>>,
    ) {
        self.list.push(Problem {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            path: path.to_owned(),
            message: message.into(),
            hint: hint.map(Into::into),
        });
    }

    /// A problem about the whole file, without a position (for example, it cannot be read).
    pub fn add_file(&mut self, message: impl Into<String>) {
        self.list.push(Problem {
            file: self.file.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message: message.into(),
            hint: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Sorted in file order; exact duplicates (one anchor expanded twice) are reported once.
    pub fn into_error(mut self) -> LoadError {
        self.list.sort_by_key(|p| (p.line, p.column));
        let mut seen = std::collections::HashSet::new();
        self.list.retain(|p| seen.insert(p.clone()));
        LoadError::new(self.list)
    }
}

/// The closest of `options` to `word`, if it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, options: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_lowercase();
    options
        .iter()
        .map(|o| (strsim::damerau_levenshtein(&lower, o), *o))
        .filter(|(d, o)| *d <= (o.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

/// The hint for a word that is not one of `options`: the likely typo, or `LISTING: a, b, ...`.
pub fn typo_hint(word: &str, options: &[&str], listing: &str) -> String {
    match suggest(word, options) {
        Some(near) => format!("did you mean `{near}`?"),
        None => format!("{listing}: {}", options.join(", ")),
    }
}
