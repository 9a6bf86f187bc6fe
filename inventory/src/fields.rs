//! Readers from the positioned YAML tree into settings (a map's fields, required keys, strings,
//! integers, booleans, one name of a list), each reporting what is wrong at the value's line and
//! column, with a typo hint where one helps; shared by the inventory schema and the server's
//! flow definitions. Not a schema: which keys a map has and what they mean stay with the caller.
//!
//! Every reader adds its problems to the caller's [`Problems`] and returns `None` when the value
//! cannot be used, so that validation goes on and reports every problem of a document at once.

use crate::problem::{Pos, Problems, typo_hint};
use crate::yaml::{Entry, Value, Yaml, report_unknown_keys};

/// The key path of `key` under `path` (`customers.acme` + `mode`); `""` and `<root>` both name
/// the document itself.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() || path == "<root>" {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A map's entries, with the map's position and key path.
#[derive(Clone, Debug)]
pub struct Fields<'y> {
    entries: &'y [Entry],
    pos: Pos,
    path: String,
}

impl<'y> Fields<'y> {
    /// The map at `y`, after reporting every key not in `allowed` (with the likely typo or the
    /// allowed keys as a hint); `None`, reported, when `y` is not a map.
    pub fn read(
        y: &'y Yaml,
        path: &str,
        allowed: &[&str],
        problems: &mut Problems,
    ) -> Option<Self> {
        let Value::Map(entries) = &y.value else {
            wrong_type(y, path, "a map", problems);
            return None;
        };
        report_unknown_keys(entries, allowed, |k| join(path, k), problems);
        Some(Fields {
            entries,
            pos: y.pos,
            path: path.to_owned(),
        })
    }

    /// Every entry, in file order (unknown keys included: they were reported by `read`).
    pub fn entries(&self) -> &'y [Entry] {
        self.entries
    }

    /// Where the map starts.
    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// The map's key path.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn entry(&self, key: &str) -> Option<&'y Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// The value of `key` as written, null included; `None` only when it is absent.
    pub fn get(&self, key: &str) -> Option<&'y Yaml> {
        self.entry(key).map(|e| &e.value)
    }

    /// The value of `key`, or `None` when it is absent or null.
    pub fn opt(&self, key: &str) -> Option<&'y Yaml> {
        self.get(key).filter(|v| !v.is_null())
    }

    /// The key path of `key` in this map.
    pub fn child(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of a required key; reports it missing (at the map) when absent, and empty (at
    /// the key) when null.
    pub fn require(&self, key: &str, problems: &mut Problems) -> Option<&'y Yaml> {
        match self.entry(key) {
            None => {
                problems.add(
                    self.pos,
                    &self.child(key),
                    format!("missing required key `{key}`"),
                );
                None
            }
            Some(e) if e.value.is_null() => {
                problems.add(e.key_pos, &self.child(key), "required value is empty");
                None
            }
            Some(e) => Some(&e.value),
        }
    }
}

/// Reports `expected EXPECTED, found <what y is>` at `y`.
pub fn wrong_type(y: &Yaml, path: &str, expected: &str, problems: &mut Problems) {
    problems.add(
        y.pos,
        path,
        format!("expected {expected}, found {}", y.kind()),
    );
}

/// A scalar read as text: a string, or a number as it was written (`port: 22` read as `"22"`);
/// may be empty.
pub fn string(y: &Yaml, path: &str, problems: &mut Problems) -> Option<String> {
    match &y.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(_) | Value::Float(_) => Some(y.raw.clone()),
        _ => {
            wrong_type(y, path, "a string", problems);
            None
        }
    }
}

/// A string that is not empty; numbers and other scalars are refused, not read as text.
pub fn non_empty_string(y: &Yaml, path: &str, problems: &mut Problems) -> Option<String> {
    match &y.value {
        Value::Str(s) if !s.is_empty() => Some(s.clone()),
        Value::Str(_) => {
            problems.add(y.pos, path, "must not be empty");
            None
        }
        _ => {
            wrong_type(y, path, "a string", problems);
            None
        }
    }
}

/// An integer within `min..=max`; a quoted integer is refused with a hint to remove the quotes.
pub fn int(y: &Yaml, path: &str, min: i64, max: i64, problems: &mut Problems) -> Option<i64> {
    match &y.value {
        Value::Int(i) if (min..=max).contains(i) => Some(*i),
        Value::Int(_) => {
            let range = if max >= i64::from(u32::MAX) {
                format!("must be at least {min}")
            } else {
                format!("must be within {min}..={max}")
            };
            problems.add(y.pos, path, format!("`{}` is out of range: {range}", y.raw));
            None
        }
        Value::Str(s) if s.trim().parse::<i64>().is_ok() => {
            problems.add_hint(
                y.pos,
                path,
                "expected an integer, found a string",
                Some("remove the quotes"),
            );
            None
        }
        Value::Float(_) => {
            problems.add(
                y.pos,
                path,
                format!("expected an integer, found `{}`", y.raw),
            );
            None
        }
        _ => {
            wrong_type(y, path, "an integer", problems);
            None
        }
    }
}

/// `true` or `false`.
pub fn boolean(y: &Yaml, path: &str, problems: &mut Problems) -> Option<bool> {
    match y.value {
        Value::Bool(b) => Some(b),
        _ => {
            wrong_type(y, path, "true or false", problems);
            None
        }
    }
}

/// The value named `text` among `options`; otherwise reports `unknown WHAT `text`` at `pos`,
/// with the likely typo or every name as a hint.
pub fn one_of<T: Copy>(
    text: &str,
    pos: Pos,
    path: &str,
    what: &str,
    options: &[(&str, T)],
    problems: &mut Problems,
) -> Option<T> {
    if let Some((_, value)) = options.iter().find(|(name, _)| *name == text) {
        return Some(*value);
    }
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    let hint = typo_hint(text, &names, "one of");
    problems.add_hint(pos, path, format!("unknown {what} `{text}`"), Some(hint));
    None
}

/// A scalar (read by [`string`]) that names one of `options`, as [`one_of`] does.
pub fn enum_value<T: Copy>(
    y: &Yaml,
    path: &str,
    what: &str,
    options: &[(&str, T)],
    problems: &mut Problems,
) -> Option<T> {
    let text = string(y, path, problems)?;
    one_of(&text, y.pos, path, what, options, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str, problems: &mut Problems) -> Yaml {
        crate::yaml::parse(text, problems).expect("a document")
    }

    fn lines(problems: Problems) -> Vec<String> {
        problems
            .into_error()
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_map_reports_unknown_and_missing_keys_with_their_place() {
        let mut problems = Problems::new("f.yaml".into());
        let y = doc("a: 1\nhots: x\n", &mut problems);
        let f = Fields::read(&y, "<root>", &["a", "host"], &mut problems).expect("a map");
        assert_eq!(f.child("a"), "a");
        assert!(f.require("host", &mut problems).is_none());
        assert_eq!(
            int(
                f.require("a", &mut problems).expect("a"),
                "a",
                0,
                9,
                &mut problems
            ),
            Some(1)
        );
        assert_eq!(
            lines(problems),
            [
                "f.yaml:1:1: host: missing required key `host`",
                "f.yaml:2:1: hots: unknown key `hots` (hint: did you mean `host`?)",
            ]
        );
    }

    #[test]
    fn scalars_say_what_they_expected_and_found() {
        let mut problems = Problems::new("f.yaml".into());
        let y = doc(
            "s: 22\ne: ''\nb: yes\nn: '7'\nm: apend\nk: { x: 1 }\n",
            &mut problems,
        );
        let f = Fields::read(&y, "", &["s", "e", "b", "n", "m", "k"], &mut problems).expect("map");
        let get = |key| f.get(key).expect("present");
        assert_eq!(string(get("s"), "s", &mut problems).as_deref(), Some("22"));
        assert_eq!(non_empty_string(get("s"), "s", &mut problems), None);
        assert_eq!(non_empty_string(get("e"), "e", &mut problems), None);
        assert_eq!(boolean(get("b"), "b", &mut problems), None);
        assert_eq!(int(get("n"), "n", 0, 9, &mut problems), None);
        let modes = [("append", 1), ("replace", 2)];
        assert_eq!(
            enum_value(get("m"), "m", "mode", &modes, &mut problems),
            None
        );
        assert_eq!(string(get("k"), "k", &mut problems), None);
        assert_eq!(
            lines(problems),
            [
                "f.yaml:1:4: s: expected a string, found an integer",
                "f.yaml:2:4: e: must not be empty",
                "f.yaml:3:4: b: expected true or false, found a string",
                "f.yaml:4:4: n: expected an integer, found a string (hint: remove the quotes)",
                "f.yaml:5:4: m: unknown mode `apend` (hint: did you mean `append`?)",
                "f.yaml:6:4: k: expected a string, found a map",
            ]
        );
    }
}
