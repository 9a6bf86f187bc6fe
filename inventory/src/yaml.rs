//! A positioned YAML tree built from saphyr-parser events, with bounded alias expansion and
//! nesting; not a general YAML library: one document, core-schema tags only, no merge keys.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

use crate::problem::{Pos, Problems};

/// Most nodes a document may expand to, counting every copy an alias makes. A scalar counts
/// one more node for every [`SCALAR_BYTES_PER_NODE`] bytes of its text, so that an alias to a
/// long string is bounded by its size, not only by its count.
pub const MAX_NODES: usize = 100_000;
/// Bytes of scalar text that count as one more node towards [`MAX_NODES`].
pub const SCALAR_BYTES_PER_NODE: usize = 64;

fn scalar_weight(text: &str) -> usize {
    1 + text.len() / SCALAR_BYTES_PER_NODE
}
/// Deepest nesting of maps and lists a document may have.
pub const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug)]
pub struct Yaml {
    pub pos: Pos,
    pub value: Value,
    /// The scalar's text as written (after unquoting); empty for maps and lists.
    pub raw: String,
}

#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<Entry>),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Yaml,
}

/// Reports every key of `entries` that is not in `allowed`, at the key, with the likely typo or
/// the allowed keys as a hint; `child` makes a key's path.
pub fn report_unknown_keys(
    entries: &[Entry],
    allowed: &[&str],
    child: impl Fn(&str) -> String,
    problems: &mut Problems,
) {
    for e in entries
        .iter()
        .filter(|e| !allowed.contains(&e.key.as_str()))
    {
        let hint = if e.key == "<<" {
            "merge keys (`<<`) are not supported; alias the whole value instead (e.g. `ssh: *common`) or repeat the keys".to_owned()
        } else {
            crate::problem::typo_hint(&e.key, allowed, "allowed keys")
        };
        problems.add_hint(
            e.key_pos,
            &child(&e.key),
            format!("unknown key `{}`", e.key),
            Some(hint),
        );
    }
}

impl Yaml {
    /// "a string", "a map", ...: for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
}

fn pos_of(span: &Span) -> Pos {
    Pos::new(span.start.line(), span.start.col() + 1)
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(int) = parse_int(text) {
        return Value::Int(int);
    }
    if looks_like_float(text)
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(text.to_owned())
}

fn parse_int(text: &str) -> Option<i64> {
    if let Some(hex) = text.strip_prefix("0x") {
        return if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            i64::from_str_radix(hex, 16).ok()
        } else {
            None
        };
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return if !oct.is_empty() && oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            i64::from_str_radix(oct, 8).ok()
        } else {
            None
        };
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // An integer too large for i64 is still an integer: report it as out of range later.
        return Some(text.parse::<i64>().unwrap_or(if text.starts_with('-') {
            i64::MIN
        } else {
            i64::MAX
        }));
    }
    None
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn looks_like_float(text: &str) -> bool {
    let s = text.strip_prefix(['-', '+']).unwrap_or(text).as_bytes();
    let mut i = 0;
    let int_digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    i += int_digits;
    let mut frac_digits = 0;
    if s.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        i += frac_digits;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(s.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let exp = s[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if exp == 0 {
            return false;
        }
        i += exp;
    }
    i == s.len()
}

fn tag_text(tag: &Tag) -> String {
    if tag.is_yaml_core_schema() {
        format!("!!{}", tag.suffix)
    } else {
        tag.to_string()
    }
}

const TAG_HINT: &str =
    "only the standard tags !!str, !!int, !!float, !!bool, !!null, !!map and !!seq are accepted";

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Yaml>,
        count: usize,
        height: usize,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<Entry>,
        /// The key waiting for its value; `None` inside means the value is to be dropped.
        pending: Option<Option<(String, Pos)>>,
        seen: HashMap<String, Pos>,
        count: usize,
        height: usize,
    },
}

/// A finished node, with the number of nodes in it and its height, for the expansion bounds.
struct Built {
    yaml: Yaml,
    count: usize,
    height: usize,
}

struct Builder<'p> {
    problems: &'p mut Problems,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Yaml, usize, usize)>,
    total: usize,
    root: Option<Yaml>,
}

impl Builder<'_> {
    /// The key path of the node about to be added, e.g. `customers.acme.clusters`.
    fn path(&self) -> String {
        let mut out = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Seq { items, .. } => out.push_str(&format!("[{}]", items.len())),
                Frame::Map { pending, .. } => {
                    if let Some(Some((key, _))) = pending {
                        if !out.is_empty() {
                            out.push('.');
                        }
                        out.push_str(key);
                    }
                }
            }
        }
        if out.is_empty() {
            "<root>".to_owned()
        } else {
            out
        }
    }

    fn check_container_tag(&mut self, tag: Option<&Tag>, want: &str, pos: Pos) {
        if let Some(tag) = tag
            && !(tag.is_yaml_core_schema() && tag.suffix == want)
        {
            let path = self.path();
            self.problems.add_hint(
                pos,
                &path,
                format!("unsupported tag `{}`", tag_text(tag)),
                Some(TAG_HINT),
            );
        }
    }

    fn scalar(&mut self, text: String, style: ScalarStyle, tag: Option<&Tag>, pos: Pos) -> Yaml {
        let plain = style == ScalarStyle::Plain;
        let untagged = || {
            if plain {
                resolve_plain(&text)
            } else {
                Value::Str(text.clone())
            }
        };
        let value = match tag {
            None => untagged(),
            Some(tag) if tag.is_yaml_core_schema() => {
                let resolved = resolve_plain(&text);
                let ok = match (tag.suffix.as_str(), &resolved) {
                    ("str", _) => Some(Value::Str(text.clone())),
                    ("int", Value::Int(_))
                    | ("bool", Value::Bool(_))
                    | ("null", Value::Null)
                    | ("float", Value::Float(_)) => Some(resolved),
                    ("float", Value::Int(i)) => Some(Value::Float(*i as f64)),
                    _ => None,
                };
                match ok {
                    Some(v) => v,
                    None => {
                        let path = self.path();
                        self.problems.add_hint(
                            pos,
                            &path,
                            format!("this value cannot be tagged `{}`", tag_text(tag)),
                            Some(TAG_HINT),
                        );
                        untagged()
                    }
                }
            }
            // The non-specific tag `!` marks a string.
            Some(tag) if tag.handle == "!" && tag.suffix.is_empty() => Value::Str(text.clone()),
            Some(tag) => {
                let path = self.path();
                self.problems.add_hint(
                    pos,
                    &path,
                    format!("unsupported tag `{}`", tag_text(tag)),
                    Some(TAG_HINT),
                );
                untagged()
            }
        };
        Yaml {
            pos,
            value,
            raw: text,
        }
    }

    /// Adds a finished node to its parent (or makes it the document).
    fn push(&mut self, built: Built) {
        let Built {
            yaml,
            count,
            height,
        } = built;
        let path_if_dup = match self.stack.last() {
            Some(Frame::Map { pending: None, .. }) => Some(self.path()),
            _ => None,
        };
        match self.stack.last_mut() {
            None => self.root = Some(yaml),
            Some(Frame::Seq {
                items,
                count: c,
                height: h,
                ..
            }) => {
                items.push(yaml);
                *c += count;
                *h = (*h).max(height + 1);
            }
            Some(Frame::Map {
                entries,
                pending,
                seen,
                count: c,
                height: h,
                ..
            }) => {
                *c += count;
                *h = (*h).max(height + 1);
                match pending.take() {
                    None => {
                        // This node is a key.
                        let key_pos = yaml.pos;
                        let is_scalar = !matches!(yaml.value, Value::Map(_) | Value::Seq(_));
                        let parent = path_if_dup.unwrap_or_default();
                        let key_path = |key: &str| {
                            if parent == "<root>" {
                                key.to_owned()
                            } else {
                                format!("{parent}.{key}")
                            }
                        };
                        if !is_scalar {
                            self.problems.add(
                                key_pos,
                                &parent,
                                format!("mapping keys must be strings, found {}", yaml.kind()),
                            );
                            *pending = Some(None);
                        } else if let Some(first) = seen.get(&yaml.raw) {
                            self.problems.add_hint(
                                key_pos,
                                &key_path(&yaml.raw),
                                "duplicate key",
                                Some(format!("first defined at line {}", first.line)),
                            );
                            *pending = Some(None);
                        } else {
                            seen.insert(yaml.raw.clone(), key_pos);
                            *pending = Some(Some((yaml.raw, key_pos)));
                        }
                    }
                    Some(None) => {}
                    Some(Some((key, key_pos))) => entries.push(Entry {
                        key,
                        key_pos,
                        value: yaml,
                    }),
                }
            }
        }
    }

    fn too_big(&mut self, pos: Pos, what: &str) {
        let path = self.path();
        self.problems.add_hint(
            pos,
            &path,
            format!("{what} expands the document past {MAX_NODES} nodes"),
            Some("aliases that expand exponentially (\"billion laughs\") are refused"),
        );
    }

    fn too_deep(&mut self, pos: Pos) {
        let path = self.path();
        self.problems.add(
            pos,
            &path,
            format!("nesting deeper than {MAX_DEPTH} levels"),
        );
    }

    /// Counts a new map or list against the bounds; `false` means stop.
    fn open(&mut self, pos: Pos) -> bool {
        self.total += 1;
        if self.total > MAX_NODES {
            self.too_big(pos, "this value");
            return false;
        }
        if self.stack.len() >= MAX_DEPTH {
            self.too_deep(pos);
            return false;
        }
        true
    }

    /// Handles one event; `false` means stop (a fatal problem was reported).
    fn event(&mut self, event: Event<'_>, span: &Span, documents: &mut usize) -> bool {
        let pos = pos_of(span);
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart(_) => {
                *documents += 1;
                if *documents > 1 {
                    self.problems.add_hint(
                        pos,
                        "<root>",
                        "more than one YAML document in the file",
                        Some("keep the whole inventory in one document; remove the extra `---`"),
                    );
                    return false;
                }
            }
            Event::Alias(id) => {
                let Some((yaml, count, height)) = self.anchors.get(&id) else {
                    let path = self.path();
                    self.problems.add(pos, &path, "alias to an unknown anchor");
                    return false;
                };
                let (count, height) = (*count, *height);
                if self.total.saturating_add(count) > MAX_NODES {
                    self.too_big(pos, "this alias");
                    return false;
                }
                if self.stack.len() + height > MAX_DEPTH {
                    self.too_deep(pos);
                    return false;
                }
                self.total += count;
                let yaml = yaml.clone();
                self.push(Built {
                    yaml,
                    count,
                    height,
                });
            }
            Event::Scalar(text, style, anchor, tag) => {
                let weight = scalar_weight(&text);
                self.total += weight;
                if self.total > MAX_NODES {
                    self.too_big(pos, "this value");
                    return false;
                }
                let yaml = self.scalar(text.into_owned(), style, tag.as_deref(), pos);
                if anchor != 0 {
                    self.anchors.insert(anchor, (yaml.clone(), weight, 0));
                }
                self.push(Built {
                    yaml,
                    count: weight,
                    height: 0,
                });
            }
            Event::SequenceStart(anchor, tag) => {
                if !self.open(pos) {
                    return false;
                }
                self.check_container_tag(tag.as_deref(), "seq", pos);
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                    count: 1,
                    height: 0,
                });
            }
            Event::MappingStart(anchor, tag) => {
                if !self.open(pos) {
                    return false;
                }
                self.check_container_tag(tag.as_deref(), "map", pos);
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    pending: None,
                    seen: HashMap::new(),
                    count: 1,
                    height: 0,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return true;
                };
                let (built, anchor) = match frame {
                    Frame::Seq {
                        pos,
                        anchor,
                        items,
                        count,
                        height,
                    } => (
                        Built {
                            yaml: Yaml {
                                pos,
                                value: Value::Seq(items),
                                raw: String::new(),
                            },
                            count,
                            height,
                        },
                        anchor,
                    ),
                    Frame::Map {
                        pos,
                        anchor,
                        entries,
                        count,
                        height,
                        ..
                    } => (
                        Built {
                            yaml: Yaml {
                                pos,
                                value: Value::Map(entries),
                                raw: String::new(),
                            },
                            count,
                            height,
                        },
                        anchor,
                    ),
                };
                if anchor != 0 {
                    self.anchors
                        .insert(anchor, (built.yaml.clone(), built.count, built.height));
                }
                self.push(built);
            }
        }
        true
    }
}

/// Reads one YAML document into a tree. Problems that stop reading (syntax errors, more than one
/// document, expansion past the bounds) give `None`; others (duplicate keys, unsupported tags)
/// are reported and the tree is still returned so that validation can report more.
pub fn parse(text: &str, problems: &mut Problems) -> Option<Yaml> {
    let mut builder = Builder {
        problems,
        stack: Vec::new(),
        anchors: HashMap::new(),
        total: 0,
        root: None,
    };
    let mut documents = 0;
    for item in Parser::new_from_str(text) {
        match item {
            Ok((event, span)) => {
                if !builder.event(event, &span, &mut documents) {
                    return None;
                }
            }
            Err(err) => {
                let marker = err.marker();
                let pos = Pos::new(marker.line().max(1), marker.col() + 1);
                let path = builder.path();
                builder
                    .problems
                    .add(pos, &path, format!("invalid YAML: {}", err.info()));
                return None;
            }
        }
    }
    builder.root
}
