//! Target selection (`--limit`): parses a pattern of terms and picks nodes; not validation of
//! the inventory itself, and no regular expressions (a small `*`/`?` glob matcher).

use crate::Inventory;
use crate::model::Node;

/// Why a `--limit` pattern selects nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error(
        "empty target pattern (hint: name nodes, customers, `customer/cluster`, `label=value` or a glob)"
    )]
    EmptyPattern,
    #[error("empty term at position {position} in target pattern `{pattern}`")]
    EmptyTerm { pattern: String, position: usize },
    #[error("invalid term `{term}` in target pattern: {reason}")]
    InvalidTerm { term: String, reason: String },
    #[error("{}", no_match_message(.terms))]
    NoMatch { terms: Vec<String> },
    #[error("target pattern `{pattern}` selects no node: its exclusions remove every match")]
    EmptySelection { pattern: String },
}

fn no_match_message(terms: &[String]) -> String {
    let quoted: Vec<String> = terms.iter().map(|t| format!("`{t}`")).collect();
    if terms.len() == 1 {
        format!("no node matches {}", quoted.join(""))
    } else {
        format!("no node matches these terms: {}", quoted.join(", "))
    }
}

/// A `*`/`?` glob match: `*` any run of characters (also none), `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently stands for the end of.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// One parsed term of a pattern.
enum Term<'a> {
    Label { key: &'a str, value: &'a str },
    Cluster { customer: &'a str, cluster: &'a str },
    Glob(&'a str),
    Word(&'a str),
}

impl<'a> Term<'a> {
    fn parse(text: &'a str) -> Result<Self, SelectError> {
        let invalid = |reason: &str| SelectError::InvalidTerm {
            term: text.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some((key, value)) = text.split_once('=') {
            if key.is_empty() {
                return Err(invalid("the label key is empty"));
            }
            return Ok(Term::Label { key, value });
        }
        if let Some((customer, cluster)) = text.split_once('/') {
            if customer.is_empty() || cluster.is_empty() || cluster.contains('/') {
                return Err(invalid("write `customer/cluster`"));
            }
            return Ok(Term::Cluster { customer, cluster });
        }
        if is_glob(text) {
            return Ok(Term::Glob(text));
        }
        Ok(Term::Word(text))
    }

    fn matches(&self, node: &Node) -> bool {
        match self {
            Term::Label { key, value } => {
                node.labels.get(*key).is_some_and(|v| glob_match(value, v))
            }
            Term::Cluster { customer, cluster } => {
                glob_match(customer, &node.customer) && glob_match(cluster, &node.cluster)
            }
            Term::Glob(glob) => glob_match(glob, &node.name),
            Term::Word(word) => node.name == *word || node.customer == *word,
        }
    }
}

impl Inventory {
    /// The nodes a `--limit` pattern selects, in file order.
    ///
    /// Terms are comma-separated; `!term` excludes. A term is `key=value` (a label, value may be
    /// a glob), `customer/cluster` (either may be a glob), a glob on node names, or a bare word
    /// (the node of that name and every node of the customer of that name). The result is the
    /// union of the positive terms (every node when there are only exclusions) minus the union
    /// of the exclusions. Every term that matches no node is an error, as is an empty result.
    pub fn select(&self, pattern: &str) -> Result<Vec<&Node>, SelectError> {
        if pattern.trim().is_empty() {
            return Err(SelectError::EmptyPattern);
        }
        let mut include: Vec<Term<'_>> = Vec::new();
        let mut exclude: Vec<Term<'_>> = Vec::new();
        let mut unmatched = Vec::new();
        for (index, raw) in pattern.split(',').enumerate() {
            let raw = raw.trim();
            let (negated, body) = match raw.strip_prefix('!') {
                Some(body) => (true, body.trim()),
                None => (false, raw),
            };
            if body.is_empty() {
                return Err(SelectError::EmptyTerm {
                    pattern: pattern.to_owned(),
                    position: index + 1,
                });
            }
            let term = Term::parse(body)?;
            if !self.nodes().iter().any(|n| term.matches(n)) {
                unmatched.push(raw.to_owned());
            }
            if negated {
                exclude.push(term);
            } else {
                include.push(term);
            }
        }
        if !unmatched.is_empty() {
            return Err(SelectError::NoMatch { terms: unmatched });
        }
        let selected: Vec<&Node> = self
            .nodes()
            .iter()
            .filter(|n| include.is_empty() || include.iter().any(|t| t.matches(n)))
            .filter(|n| !exclude.iter().any(|t| t.matches(n)))
            .collect();
        if selected.is_empty() {
            return Err(SelectError::EmptySelection {
                pattern: pattern.to_owned(),
            });
        }
        Ok(selected)
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "abc"));
        assert!(glob_match("a*", "abc"));
        assert!(glob_match("*c", "abc"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("acme-*-1", "acme-prod-1"));
        assert!(!glob_match("acme-*-1", "acme-prod-2"));
        assert!(glob_match("*a*a*a*", "banana-a"));
        assert!(!glob_match("*a*a*a*a*", "banana"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("**", "x"));
    }
}
