//! Flow definitions: reading one from YAML or JSON (JSON is read as YAML, so both get exact
//! positions), refusing it with every problem at its line and column, and the model the engine
//! runs. Not the running itself (`engine`).

use serde::{Deserialize, Serialize};

use fleet_inventory::yaml::{self, Entry, Value as Y, Yaml};
use fleet_inventory::{LoadError, Pos, Problems, typo_hint};

use crate::pipeline::expr::Expr;
use crate::pipeline::value::Type;

#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub name: String,
    pub source: Source,
    pub transform: Vec<Step>,
    pub destination: Destination,
    pub on_error: OnError,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// How many times a run interrupted by its node's death is run again on another node.
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// What the scheduler does with fire times it missed (an outage, no leader).
    pub misfire: Misfire,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// One catch-up run for the latest missed time, if it is at most `grace_secs` old.
    Coalesce { grace_secs: u64 },
    /// Missed times are passed over; only a time that is due now fires.
    Skip,
}

impl Default for Misfire {
    fn default() -> Self {
        Misfire::Coalesce { grace_secs: 3600 }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The most retries a flow may ask for.
pub const MAX_RETRIES: u32 = 3;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Source {
    Csv {
        path: String,
        #[serde(serialize_with = "as_char")]
        delimiter: u8,
        #[serde(serialize_with = "as_char")]
        quote: u8,
        header: bool,
        encoding: String,
    },
    Jsonl {
        path: String,
    },
    Postgres {
        query: String,
    },
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Select(Vec<String>),
    Rename(Vec<(String, String)>),
    Filter(#[serde(serialize_with = "expr_source")] Expr),
    Compute(#[serde(serialize_with = "named_exprs")] Vec<(String, Expr)>),
    Cast(Vec<(String, Type)>),
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Destination {
    Postgres {
        table: Table,
        mode: Mode,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        key: Vec<String>,
    },
    Csv {
        path: String,
        #[serde(serialize_with = "as_char")]
        delimiter: u8,
        header: bool,
    },
    Jsonl {
        path: String,
    },
}

/// `schema.table` (schema `public` when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub schema: String,
    pub name: String,
}

impl Table {
    /// Both parts double-quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl Serialize for Table {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}.{}", self.schema, self.name))
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Append,
    Replace,
    Upsert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRows {
    /// The first bad row fails the run (the default).
    Fail,
    Skip,
    RejectFile,
}

#[derive(Debug, Clone, Serialize)]
pub struct OnError {
    pub bad_rows: BadRows,
    /// More bad rows than this fail the run (no limit when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bad_rows: Option<u64>,
}

fn as_char<S: serde::Serializer>(b: &u8, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&(*b as char).to_string())
}
fn expr_source<S: serde::Serializer>(e: &Expr, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(e.source())
}
fn named_exprs<S: serde::Serializer>(v: &[(String, Expr)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, e) in v {
        m.serialize_entry(k, e.source())?;
    }
    m.end()
}

/// A cron schedule: five fields (minute hour day-of-month month day-of-week), or six with
/// seconds first.
pub fn parse_schedule(text: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text)
}

/// The longest flow definition accepted.
pub const MAX_DEFINITION_BYTES: usize = 1 << 20;

impl Flow {
    /// Reads a definition (YAML or JSON); `label` names it in problems (a file name, `body`).
    pub fn parse(text: &str, label: &str) -> Result<Flow, LoadError> {
        let mut problems = Problems::new(label.to_owned());
        if text.len() > MAX_DEFINITION_BYTES {
            problems.add_file(format!(
                "the definition has {} bytes, more than {MAX_DEFINITION_BYTES}",
                text.len()
            ));
            return Err(problems.into_error());
        }
        let flow = yaml::parse(text, &mut problems).and_then(|doc| read_flow(&doc, &mut problems));
        match flow {
            Some(flow) if problems.is_empty() => Ok(flow),
            _ => {
                if problems.is_empty() {
                    problems.add_file("the definition is empty");
                }
                Err(problems.into_error())
            }
        }
    }

    /// The definition as JSON, which `parse` reads back to the same flow.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        // Steps as `{select: [...]}` maps; renames and casts as maps.
        if let Some(steps) = v.get_mut("transform").and_then(|t| t.as_array_mut()) {
            for step in steps {
                for key in ["rename", "cast"] {
                    if let Some(pairs) = step.get(key).and_then(|p| p.as_array()).cloned() {
                        let map: serde_json::Map<String, serde_json::Value> = pairs
                            .into_iter()
                            .filter_map(|p| {
                                let p = p.as_array()?;
                                Some((p.first()?.as_str()?.to_owned(), p.get(1)?.clone()))
                            })
                            .collect();
                        step[key] = serde_json::Value::Object(map);
                    }
                }
            }
        }
        v
    }

    /// Every file path the flow reads or writes, relative to shared storage.
    pub fn paths(&self) -> Vec<&str> {
        let mut out = Vec::new();
        match &self.source {
            Source::Csv { path, .. } | Source::Jsonl { path } => out.push(path.as_str()),
            Source::Postgres { .. } => {}
        }
        match &self.destination {
            Destination::Csv { path, .. } | Destination::Jsonl { path } => out.push(path.as_str()),
            Destination::Postgres { .. } => {}
        }
        out
    }
}

/// Reads a map's entries against the keys it may have; unknown keys are problems (with the
/// nearest known key as a hint). Returns `None` (after saying so) when `node` is not a map.
fn fields<'a>(
    node: &'a Yaml,
    path: &str,
    allowed: &[&str],
    problems: &mut Problems,
) -> Option<Vec<&'a Entry>> {
    let Y::Map(entries) = &node.value else {
        problems.add(
            node.pos,
            path,
            format!("expected a map, found {}", node.kind()),
        );
        return None;
    };
    yaml::report_unknown_keys(entries, allowed, |k| join(path, k), problems);
    Some(entries.iter().collect())
}

fn get<'a>(entries: &[&'a Entry], key: &str) -> Option<&'a Yaml> {
    entries.iter().find(|e| e.key == key).map(|e| &e.value)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn required<'a>(
    entries: &[&'a Entry],
    key: &str,
    at: &Yaml,
    path: &str,
    problems: &mut Problems,
) -> Option<&'a Yaml> {
    let v = get(entries, key);
    if v.is_none() {
        problems.add(at.pos, path, format!("missing `{key}`"));
    }
    v
}

fn string(node: &Yaml, path: &str, problems: &mut Problems) -> Option<String> {
    match &node.value {
        Y::Str(s) if !s.is_empty() => Some(s.clone()),
        Y::Str(_) => {
            problems.add(node.pos, path, "must not be empty");
            None
        }
        _ => {
            problems.add(
                node.pos,
                path,
                format!("expected a string, found {}", node.kind()),
            );
            None
        }
    }
}

fn boolean(node: Option<&Yaml>, default: bool, path: &str, problems: &mut Problems) -> bool {
    match node.map(|n| &n.value) {
        None => default,
        Some(Y::Bool(b)) => *b,
        Some(_) => {
            let n = node.expect("matched Some");
            problems.add(
                n.pos,
                path,
                format!("expected true or false, found {}", n.kind()),
            );
            default
        }
    }
}

/// One ASCII character (a delimiter or a quote); `\t` may be written as "\t" or "tab".
fn one_char(node: Option<&Yaml>, default: u8, path: &str, problems: &mut Problems) -> u8 {
    let Some(node) = node else { return default };
    let text = match &node.value {
        Y::Str(s) => s.as_str(),
        _ => {
            problems.add(
                node.pos,
                path,
                format!("expected one character, found {}", node.kind()),
            );
            return default;
        }
    };
    match text {
        "tab" | "\t" => b'\t',
        t if t.len() == 1 && t.is_ascii() && !matches!(t, "\n" | "\r") => t.as_bytes()[0],
        t => {
            problems.add(
                node.pos,
                path,
                format!("expected one ASCII character, found {t:?}"),
            );
            default
        }
    }
}

/// A name of a column or a flow: letters, digits, `_`, `-`, `.`; at most 63 bytes.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn column(node: &Yaml, path: &str, problems: &mut Problems) -> Option<String> {
    let s = string(node, path, problems)?;
    if !valid_name(&s) {
        problems.add(
            node.pos,
            path,
            format!("`{s}` is not a column name (letters, digits, _, - or ., at most 63 bytes)"),
        );
        return None;
    }
    Some(s)
}

/// Columns known at this point of the transform list (`None` before any `select`: whatever
/// the source has).
type Known = Option<Vec<String>>;

fn check_known(known: &Known, name: &str, pos: Pos, path: &str, problems: &mut Problems) {
    if let Some(cols) = known
        && !cols.iter().any(|c| c == name)
    {
        let options: Vec<&str> = cols.iter().map(String::as_str).collect();
        let hint = Some(typo_hint(name, &options, "columns here"));
        problems.add_hint(pos, path, format!("no column `{name}` at this step"), hint);
    }
}

fn read_flow(doc: &Yaml, problems: &mut Problems) -> Option<Flow> {
    let entries = fields(
        doc,
        "",
        &[
            "name",
            "source",
            "transform",
            "destination",
            "on_error",
            "schedule",
            "retries",
            "misfire",
        ],
        problems,
    )?;
    let name = required(&entries, "name", doc, "", problems).and_then(|n| {
        let s = string(n, "name", problems)?;
        if !valid_name(&s) {
            problems.add(
                n.pos,
                "name",
                format!("`{s}` is not a flow name (letters, digits, _, - or ., at most 63 bytes)"),
            );
            return None;
        }
        Some(s)
    });
    let source =
        required(&entries, "source", doc, "", problems).and_then(|s| read_source(s, problems));
    let mut known: Known = None;
    let mut transform = Vec::new();
    if let Some(list) = get(&entries, "transform") {
        match &list.value {
            Y::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(step) =
                        read_step(item, &format!("transform[{i}]"), &mut known, problems)
                    {
                        transform.push(step);
                    }
                }
            }
            Y::Null => {}
            _ => problems.add(
                list.pos,
                "transform",
                format!("expected a list of steps, found {}", list.kind()),
            ),
        }
    }
    let destination = required(&entries, "destination", doc, "", problems)
        .and_then(|d| read_destination(d, &known, problems));
    let on_error = match get(&entries, "on_error") {
        Some(node) => read_on_error(node, problems),
        None => Some(OnError {
            bad_rows: BadRows::Fail,
            max_bad_rows: None,
        }),
    };
    let schedule = get(&entries, "schedule").and_then(|s| {
        let text = string(s, "schedule", problems)?;
        match parse_schedule(&text) {
            Ok(_) => Some(text),
            Err(e) => {
                problems.add_hint(
                    s.pos,
                    "schedule",
                    format!("`{text}` is not a cron schedule: {e}"),
                    Some("five fields: minute hour day-of-month month day-of-week, e.g. \"*/5 * * * *\""),
                );
                None
            }
        }
    });
    if let Some(Source::Csv { path, .. } | Source::Jsonl { path }) = &source
        && let Some(Destination::Csv { path: out, .. } | Destination::Jsonl { path: out }) =
            &destination
        && path == out
    {
        problems.add(
            doc.pos,
            "destination.path",
            "the destination is the source file",
        );
    }
    let retries = match get(&entries, "retries") {
        None => 0,
        Some(n) => match n.value {
            Y::Int(i) if (0..=i64::from(MAX_RETRIES)).contains(&i) => i as u32,
            _ => {
                problems.add(
                    n.pos,
                    "retries",
                    format!("expected a whole number from 0 to {MAX_RETRIES}"),
                );
                0
            }
        },
    };
    let misfire = match get(&entries, "misfire") {
        None => Misfire::default(),
        Some(n) => read_misfire(n, problems)?,
    };
    Some(Flow {
        name: name?,
        source: source?,
        transform,
        destination: destination?,
        on_error: on_error?,
        schedule,
        retries,
        misfire,
    })
}

/// `misfire: skip`, `misfire: coalesce`, or `misfire: { coalesce: { grace_secs: N } }`.
fn read_misfire(node: &Yaml, problems: &mut Problems) -> Option<Misfire> {
    match &node.value {
        Y::Str(s) if s == "skip" => Some(Misfire::Skip),
        Y::Str(s) if s == "coalesce" => Some(Misfire::default()),
        Y::Map(_) => {
            let entries = fields(node, "misfire", &["coalesce", "skip"], problems)?;
            if let Some(c) = get(&entries, "coalesce") {
                let inner = fields(c, "misfire.coalesce", &["grace_secs"], problems)?;
                return match get(&inner, "grace_secs").map(|g| &g.value) {
                    None => Some(Misfire::default()),
                    Some(Y::Int(g)) if *g > 0 => Some(Misfire::Coalesce {
                        grace_secs: *g as u64,
                    }),
                    Some(_) => {
                        problems.add(
                            c.pos,
                            "misfire.coalesce.grace_secs",
                            "expected a whole number of seconds above 0",
                        );
                        None
                    }
                };
            }
            Some(Misfire::Skip)
        }
        _ => {
            problems.add_hint(
                node.pos,
                "misfire",
                format!("expected coalesce or skip, found {}", node.kind()),
                Some("coalesce (the default: one catch-up run) or skip"),
            );
            None
        }
    }
}

fn read_path(node: &Yaml, path: &str, problems: &mut Problems) -> Option<String> {
    let p = string(node, path, problems)?;
    match crate::pipeline::storage::check_relative(&p) {
        Ok(()) => Some(p),
        Err(why) => {
            problems.add(node.pos, path, why);
            None
        }
    }
}

fn kind<'a>(
    entries: &[&Entry],
    node: &Yaml,
    path: &str,
    kinds: &[&'a str],
    problems: &mut Problems,
) -> Option<&'a str> {
    let t = required(entries, "type", node, path, problems)?;
    let s = string(t, &join(path, "type"), problems)?;
    let found = kinds.iter().find(|k| **k == s).copied();
    if found.is_none() {
        let hint = Some(typo_hint(&s, kinds, "one of"));
        problems.add_hint(
            t.pos,
            &join(path, "type"),
            format!("unknown type `{s}`"),
            hint,
        );
    }
    found
}

fn read_source(node: &Yaml, problems: &mut Problems) -> Option<Source> {
    let p = "source";
    let entries = fields(
        node,
        p,
        &[
            "type",
            "path",
            "delimiter",
            "quote",
            "header",
            "encoding",
            "query",
        ],
        problems,
    )?;
    let t = kind(&entries, node, p, &["csv", "jsonl", "postgres"], problems)?;
    let allowed: &[&str] = match t {
        "csv" => &["type", "path", "delimiter", "quote", "header", "encoding"],
        "jsonl" => &["type", "path"],
        _ => &["type", "query"],
    };
    for e in &entries {
        if !allowed.contains(&e.key.as_str())
            && ["path", "delimiter", "quote", "header", "encoding", "query"]
                .contains(&e.key.as_str())
        {
            problems.add(
                e.key_pos,
                &join(p, &e.key),
                format!("`{}` is not a setting of a {t} source", e.key),
            );
        }
    }
    match t {
        "csv" => {
            let path = required(&entries, "path", node, p, problems)
                .and_then(|n| read_path(n, "source.path", problems));
            let encoding = match get(&entries, "encoding") {
                None => "utf-8".to_owned(),
                Some(n) => {
                    let e = string(n, "source.encoding", problems)?;
                    if !e.eq_ignore_ascii_case("utf-8") && !e.eq_ignore_ascii_case("utf8") {
                        problems.add(
                            n.pos,
                            "source.encoding",
                            format!("encoding `{e}` is not supported: only utf-8"),
                        );
                        return None;
                    }
                    "utf-8".to_owned()
                }
            };
            Some(Source::Csv {
                path: path?,
                delimiter: one_char(
                    get(&entries, "delimiter"),
                    b',',
                    "source.delimiter",
                    problems,
                ),
                quote: one_char(get(&entries, "quote"), b'"', "source.quote", problems),
                header: boolean(get(&entries, "header"), true, "source.header", problems),
                encoding,
            })
        }
        "jsonl" => Some(Source::Jsonl {
            path: required(&entries, "path", node, p, problems)
                .and_then(|n| read_path(n, "source.path", problems))?,
        }),
        _ => Some(Source::Postgres {
            query: required(&entries, "query", node, p, problems)
                .and_then(|n| string(n, "source.query", problems))?,
        }),
    }
}

fn read_step(node: &Yaml, path: &str, known: &mut Known, problems: &mut Problems) -> Option<Step> {
    let entries = fields(
        node,
        path,
        &["select", "rename", "filter", "compute", "cast"],
        problems,
    )?;
    if entries.len() != 1 {
        problems.add(
            node.pos,
            path,
            format!(
                "a step has exactly one of select, rename, filter, compute, cast; found {}",
                entries.len()
            ),
        );
        return None;
    }
    let entry = entries[0];
    let p = join(path, &entry.key);
    let v = &entry.value;
    match entry.key.as_str() {
        "select" => {
            let Y::Seq(items) = &v.value else {
                problems.add(
                    v.pos,
                    &p,
                    format!("expected a list of columns, found {}", v.kind()),
                );
                return None;
            };
            let mut cols = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{p}[{i}]");
                if let Some(c) = column(item, &ip, problems) {
                    check_known(known, &c, item.pos, &ip, problems);
                    if cols.contains(&c) {
                        problems.add(item.pos, &ip, format!("`{c}` is selected twice"));
                    }
                    cols.push(c);
                }
            }
            if items.is_empty() {
                problems.add(v.pos, &p, "selects no column");
            }
            *known = Some(cols.clone());
            Some(Step::Select(cols))
        }
        "rename" => {
            let pairs = string_map(v, &p, problems)?;
            let mut out = Vec::new();
            for (from, to_node, pos) in pairs {
                check_known(known, &from, pos, &join(&p, &from), problems);
                let Some(to) = column(to_node, &join(&p, &from), problems) else {
                    continue;
                };
                if let Some(cols) = known.as_mut() {
                    if cols.contains(&to) && to != from {
                        problems.add(
                            to_node.pos,
                            &join(&p, &from),
                            format!("`{to}` is already a column"),
                        );
                    }
                    for c in cols.iter_mut() {
                        if *c == from {
                            c.clone_from(&to);
                        }
                    }
                }
                out.push((from, to));
            }
            Some(Step::Rename(out))
        }
        "filter" => {
            let e = expression(v, &p, known, problems)?;
            Some(Step::Filter(e))
        }
        "compute" => {
            let pairs = string_map(v, &p, problems)?;
            let mut out = Vec::new();
            for (name, expr_node, pos) in pairs {
                let ep = join(&p, &name);
                if !valid_name(&name) {
                    problems.add(pos, &ep, format!("`{name}` is not a column name"));
                    continue;
                }
                if let Some(e) = expression(expr_node, &ep, known, problems) {
                    out.push((name.clone(), e));
                }
                if let Some(cols) = known.as_mut()
                    && !cols.contains(&name)
                {
                    cols.push(name);
                }
            }
            Some(Step::Compute(out))
        }
        _ => {
            let pairs = string_map(v, &p, problems)?;
            let mut out = Vec::new();
            for (name, ty_node, pos) in pairs {
                let cp = join(&p, &name);
                check_known(known, &name, pos, &cp, problems);
                let Some(ty_name) = string(ty_node, &cp, problems) else {
                    continue;
                };
                match crate::pipeline::value::Type::parse(&ty_name) {
                    Some(ty) => out.push((name, ty)),
                    None => {
                        let hint = Some(typo_hint(&ty_name, Type::NAMES, "types"));
                        problems.add_hint(
                            ty_node.pos,
                            &cp,
                            format!("unknown type `{ty_name}`"),
                            hint,
                        );
                    }
                }
            }
            Some(Step::Cast(out))
        }
    }
}

/// A map of names to values, in order, with each key's position.
fn string_map<'a>(
    node: &'a Yaml,
    path: &str,
    problems: &mut Problems,
) -> Option<Vec<(String, &'a Yaml, Pos)>> {
    let Y::Map(entries) = &node.value else {
        problems.add(
            node.pos,
            path,
            format!("expected a map, found {}", node.kind()),
        );
        return None;
    };
    if entries.is_empty() {
        problems.add(node.pos, path, "is empty");
    }
    Some(
        entries
            .iter()
            .map(|e| (e.key.clone(), &e.value, e.key_pos))
            .collect(),
    )
}

fn expression(node: &Yaml, path: &str, known: &Known, problems: &mut Problems) -> Option<Expr> {
    let text = match &node.value {
        Y::Str(s) => s.clone(),
        // `filter: true`, `compute: {x: 1}`: scalars are expressions too.
        Y::Bool(_) | Y::Int(_) | Y::Float(_) => node.raw.clone(),
        _ => {
            problems.add(
                node.pos,
                path,
                format!("expected an expression, found {}", node.kind()),
            );
            return None;
        }
    };
    match Expr::compile(&text) {
        Ok(e) => {
            for col in e.columns().unwrap_or_default() {
                check_known(known, &col, node.pos, path, problems);
            }
            Some(e)
        }
        Err(err) => {
            problems.add(
                node.pos,
                path,
                format!(
                    "invalid expression at {}:{} of {text:?}: {}",
                    err.line, err.column, err.message
                ),
            );
            None
        }
    }
}

fn read_destination(node: &Yaml, known: &Known, problems: &mut Problems) -> Option<Destination> {
    let p = "destination";
    let entries = fields(
        node,
        p,
        &[
            "type",
            "table",
            "mode",
            "key",
            "path",
            "delimiter",
            "header",
        ],
        problems,
    )?;
    let t = kind(&entries, node, p, &["postgres", "csv", "jsonl"], problems)?;
    let allowed: &[&str] = match t {
        "postgres" => &["type", "table", "mode", "key"],
        "csv" => &["type", "path", "delimiter", "header"],
        _ => &["type", "path"],
    };
    for e in &entries {
        if !allowed.contains(&e.key.as_str())
            && ["table", "mode", "key", "path", "delimiter", "header"].contains(&e.key.as_str())
        {
            problems.add(
                e.key_pos,
                &join(p, &e.key),
                format!("`{}` is not a setting of a {t} destination", e.key),
            );
        }
    }
    match t {
        "postgres" => {
            let table = required(&entries, "table", node, p, problems).and_then(|n| {
                let s = string(n, "destination.table", problems)?;
                let (schema, name) = s.split_once('.').unwrap_or(("public", s.as_str()));
                if !valid_name(schema) || !valid_name(name) || name.contains('.') {
                    problems.add(
                        n.pos,
                        "destination.table",
                        format!("`{s}` is not a table name (`table` or `schema.table`)"),
                    );
                    return None;
                }
                Some(Table {
                    schema: schema.to_owned(),
                    name: name.to_owned(),
                })
            });
            let mode = match get(&entries, "mode") {
                None => Some(Mode::Append),
                Some(n) => {
                    let s = string(n, "destination.mode", problems)?;
                    match s.as_str() {
                        "append" => Some(Mode::Append),
                        "replace" => Some(Mode::Replace),
                        "upsert" => Some(Mode::Upsert),
                        _ => {
                            problems.add_hint(
                                n.pos,
                                "destination.mode",
                                format!("unknown mode `{s}`"),
                                Some("one of: append, replace, upsert"),
                            );
                            None
                        }
                    }
                }
            };
            let mut key = Vec::new();
            if let Some(k) = get(&entries, "key") {
                match &k.value {
                    Y::Seq(items) => {
                        for (i, item) in items.iter().enumerate() {
                            let kp = format!("destination.key[{i}]");
                            if let Some(c) = column(item, &kp, problems) {
                                check_known(known, &c, item.pos, &kp, problems);
                                key.push(c);
                            }
                        }
                    }
                    _ => problems.add(
                        k.pos,
                        "destination.key",
                        format!("expected a list of columns, found {}", k.kind()),
                    ),
                }
            }
            match mode {
                Some(Mode::Upsert) if key.is_empty() => {
                    problems.add(
                        node.pos,
                        p,
                        "mode upsert needs `key`: the columns that identify a row",
                    );
                }
                Some(Mode::Append | Mode::Replace) if !key.is_empty() => {
                    problems.add(
                        node.pos,
                        "destination.key",
                        "`key` is only used by mode upsert",
                    );
                }
                _ => {}
            }
            Some(Destination::Postgres {
                table: table?,
                mode: mode?,
                key,
            })
        }
        "csv" => Some(Destination::Csv {
            path: required(&entries, "path", node, p, problems)
                .and_then(|n| read_path(n, "destination.path", problems))?,
            delimiter: one_char(
                get(&entries, "delimiter"),
                b',',
                "destination.delimiter",
                problems,
            ),
            header: boolean(
                get(&entries, "header"),
                true,
                "destination.header",
                problems,
            ),
        }),
        _ => Some(Destination::Jsonl {
            path: required(&entries, "path", node, p, problems)
                .and_then(|n| read_path(n, "destination.path", problems))?,
        }),
    }
}

fn read_on_error(node: &Yaml, problems: &mut Problems) -> Option<OnError> {
    let p = "on_error";
    let entries = fields(node, p, &["bad_rows", "max_bad_rows"], problems)?;
    let bad_rows = match get(&entries, "bad_rows") {
        None => BadRows::Fail,
        Some(n) => {
            let s = string(n, "on_error.bad_rows", problems)?;
            match s.as_str() {
                "fail" => BadRows::Fail,
                "skip" => BadRows::Skip,
                "reject_file" => BadRows::RejectFile,
                _ => {
                    problems.add_hint(
                        n.pos,
                        "on_error.bad_rows",
                        format!("unknown policy `{s}`"),
                        Some("one of: fail, skip, reject_file"),
                    );
                    return None;
                }
            }
        }
    };
    let max_bad_rows = match get(&entries, "max_bad_rows") {
        None => None,
        Some(n) => match n.value {
            Y::Int(i) if i >= 0 => Some(i as u64),
            _ => {
                problems.add(
                    n.pos,
                    "on_error.max_bad_rows",
                    format!("expected a whole number of rows, found {}", n.kind()),
                );
                return None;
            }
        },
    };
    Some(OnError {
        bad_rows,
        max_bad_rows,
    })
}
