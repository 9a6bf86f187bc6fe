//! Flow definitions: reading one from YAML or JSON (JSON is read as YAML, so both get exact
//! positions), refusing it with every problem at its line and column, and the model the engine
//! runs. Not the running itself (`engine`).

use serde::{Deserialize, Serialize};

use fleet_inventory::fields::{Fields, boolean, join, non_empty_string, one_of, wrong_type};
use fleet_inventory::yaml::{self, Value as Y, Yaml};
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
    /// How many runs of the flow may run at once, cluster-wide (more stay queued); none: no
    /// limit. A scheduled flow that does not say has 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
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

/// The largest `concurrency` (the claim compares it as a Postgres `int`).
pub const MAX_CONCURRENCY: u32 = i32::MAX as u32;

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
        /// The connection (`[sources.NAME]` in the server's config) the query runs through.
        connection: String,
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
    /// A Postgres source's connection is checked when the flow runs (`parse_for_node` checks
    /// it now).
    pub fn parse(text: &str, label: &str) -> Result<Flow, LoadError> {
        Self::parse_checked(text, label, None)
    }

    /// As `parse`, and a Postgres source must name one of `connections` (this node's).
    pub fn parse_for_node(
        text: &str,
        label: &str,
        connections: &[&str],
    ) -> Result<Flow, LoadError> {
        Self::parse_checked(text, label, Some(connections))
    }

    fn parse_checked(
        text: &str,
        label: &str,
        connections: Option<&[&str]>,
    ) -> Result<Flow, LoadError> {
        let mut problems = Problems::new(label.to_owned());
        if text.len() > MAX_DEFINITION_BYTES {
            problems.add_file(format!(
                "the definition has {} bytes, more than {MAX_DEFINITION_BYTES}",
                text.len()
            ));
            return Err(problems.into_error());
        }
        let flow = yaml::parse(text, &mut problems)
            .and_then(|doc| read_flow(&doc, connections, &mut problems));
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

/// One ASCII character (a delimiter or a quote); `\t` may be written as "\t" or "tab".
fn one_char(node: Option<&Yaml>, default: u8, path: &str, problems: &mut Problems) -> u8 {
    let Some(node) = node else { return default };
    let Y::Str(text) = &node.value else {
        wrong_type(node, path, "one character", problems);
        return default;
    };
    match text.as_str() {
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

/// `true` or `false`; `default` when absent (or after reporting another value).
fn flag(node: Option<&Yaml>, default: bool, path: &str, problems: &mut Problems) -> bool {
    node.and_then(|n| boolean(n, path, problems))
        .unwrap_or(default)
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
    let s = non_empty_string(node, path, problems)?;
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

/// `connections`: the names a Postgres source may use (`None`: not checked here).
fn read_flow(doc: &Yaml, connections: Option<&[&str]>, problems: &mut Problems) -> Option<Flow> {
    let f = Fields::read(
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
            "concurrency",
        ],
        problems,
    )?;
    let name = f.require("name", problems).and_then(|n| {
        let s = non_empty_string(n, "name", problems)?;
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
    let source = f
        .require("source", problems)
        .and_then(|s| read_source(s, connections, problems));
    let mut known: Known = None;
    let mut transform = Vec::new();
    if let Some(list) = f.get("transform") {
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
            _ => wrong_type(list, "transform", "a list of steps", problems),
        }
    }
    let destination = f
        .require("destination", problems)
        .and_then(|d| read_destination(d, &known, problems));
    let on_error = match f.get("on_error") {
        Some(node) => read_on_error(node, problems),
        None => Some(OnError {
            bad_rows: BadRows::Fail,
            max_bad_rows: None,
        }),
    };
    let schedule = f.get("schedule").and_then(|s| {
        let text = non_empty_string(s, "schedule", problems)?;
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
    let retries = match f.get("retries") {
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
    let misfire = match f.get("misfire") {
        None => Misfire::default(),
        Some(n) => read_misfire(n, problems)?,
    };
    let concurrency = match f.get("concurrency") {
        // One run at a time is what a schedule means unless the flow says otherwise.
        None => schedule.as_ref().map(|_| 1),
        Some(n) => match n.value {
            Y::Int(i) if (1..=i64::from(MAX_CONCURRENCY)).contains(&i) => Some(i as u32),
            _ => {
                problems.add(
                    n.pos,
                    "concurrency",
                    "expected a whole number of runs at once, at least 1",
                );
                None
            }
        },
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
        concurrency,
    })
}

/// `misfire: skip`, `misfire: coalesce`, or `misfire: { coalesce: { grace_secs: N } }`.
fn read_misfire(node: &Yaml, problems: &mut Problems) -> Option<Misfire> {
    match &node.value {
        Y::Str(s) if s == "skip" => Some(Misfire::Skip),
        Y::Str(s) if s == "coalesce" => Some(Misfire::default()),
        Y::Map(_) => {
            let f = Fields::read(node, "misfire", &["coalesce", "skip"], problems)?;
            if let Some(c) = f.get("coalesce") {
                let inner = Fields::read(c, "misfire.coalesce", &["grace_secs"], problems)?;
                return match inner.get("grace_secs").map(|g| &g.value) {
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
    let p = non_empty_string(node, path, problems)?;
    match crate::pipeline::storage::check_relative(&p) {
        Ok(()) => Some(p),
        Err(why) => {
            problems.add(node.pos, path, why);
            None
        }
    }
}

/// The `type` of a source or a destination: one of `kinds`.
fn kind(f: &Fields<'_>, kinds: &[&'static str], problems: &mut Problems) -> Option<&'static str> {
    let t = f.require("type", problems)?;
    let path = f.child("type");
    let s = non_empty_string(t, &path, problems)?;
    let options: Vec<(&str, &'static str)> = kinds.iter().map(|k| (*k, *k)).collect();
    one_of(&s, t.pos, &path, "type", &options, problems)
}

/// Reports each of `settings` (those of any type) that is set but not `allowed` for this type:
/// `what` is the thing of this type, `csv source`.
fn refuse_other_settings(
    f: &Fields<'_>,
    allowed: &[&str],
    settings: &[&str],
    what: &str,
    problems: &mut Problems,
) {
    for e in f.entries() {
        let key = e.key.as_str();
        if !allowed.contains(&key) && settings.contains(&key) {
            problems.add(
                e.key_pos,
                &f.child(key),
                format!("`{key}` is not a setting of a {what}"),
            );
        }
    }
}

fn read_source(
    node: &Yaml,
    connections: Option<&[&str]>,
    problems: &mut Problems,
) -> Option<Source> {
    let p = "source";
    let settings = [
        "path",
        "delimiter",
        "quote",
        "header",
        "encoding",
        "connection",
        "query",
    ];
    let mut keys = vec!["type"];
    keys.extend(settings);
    let f = Fields::read(node, p, &keys, problems)?;
    let t = kind(&f, &["csv", "jsonl", "postgres"], problems)?;
    let allowed: &[&str] = match t {
        "csv" => &["type", "path", "delimiter", "quote", "header", "encoding"],
        "jsonl" => &["type", "path"],
        _ => &["type", "connection", "query"],
    };
    refuse_other_settings(&f, allowed, &settings, &format!("{t} source"), problems);
    match t {
        "csv" => {
            let path = f
                .require("path", problems)
                .and_then(|n| read_path(n, "source.path", problems));
            let encoding = match f.get("encoding") {
                None => "utf-8".to_owned(),
                Some(n) => {
                    let e = non_empty_string(n, "source.encoding", problems)?;
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
                delimiter: one_char(f.get("delimiter"), b',', "source.delimiter", problems),
                quote: one_char(f.get("quote"), b'"', "source.quote", problems),
                header: flag(f.get("header"), true, "source.header", problems),
                encoding,
            })
        }
        "jsonl" => Some(Source::Jsonl {
            path: f
                .require("path", problems)
                .and_then(|n| read_path(n, "source.path", problems))?,
        }),
        _ => {
            let connection = f
                .require("connection", problems)
                .and_then(|n| read_connection(n, connections, problems));
            let query = f
                .require("query", problems)
                .and_then(|n| non_empty_string(n, "source.query", problems));
            Some(Source::Postgres {
                connection: connection?,
                query: query?,
            })
        }
    }
}

/// A Postgres source's `connection`: one of `connections` when they are given.
fn read_connection(
    node: &Yaml,
    connections: Option<&[&str]>,
    problems: &mut Problems,
) -> Option<String> {
    let path = "source.connection";
    let name = non_empty_string(node, path, problems)?;
    match connections {
        Some(known) if !known.contains(&name.as_str()) => {
            let hint = match known {
                [] => "this node has no [sources.NAME] connection".to_owned(),
                _ => typo_hint(&name, known, "connections here"),
            };
            problems.add_hint(
                node.pos,
                path,
                format!("no connection `{name}` on this node ([sources.{name}] in its config)"),
                Some(hint),
            );
            None
        }
        _ => Some(name),
    }
}

fn read_step(node: &Yaml, path: &str, known: &mut Known, problems: &mut Problems) -> Option<Step> {
    let f = Fields::read(
        node,
        path,
        &["select", "rename", "filter", "compute", "cast"],
        problems,
    )?;
    if f.entries().len() != 1 {
        problems.add(
            node.pos,
            path,
            format!(
                "a step has exactly one of select, rename, filter, compute, cast; found {}",
                f.entries().len()
            ),
        );
        return None;
    }
    let entry = &f.entries()[0];
    let p = join(path, &entry.key);
    let v = &entry.value;
    match entry.key.as_str() {
        "select" => {
            let Y::Seq(items) = &v.value else {
                wrong_type(v, &p, "a list of columns", problems);
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
                let Some(ty_name) = non_empty_string(ty_node, &cp, problems) else {
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
        wrong_type(node, path, "a map", problems);
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
            wrong_type(node, path, "an expression", problems);
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
    let f = Fields::read(
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
    let t = kind(&f, &["postgres", "csv", "jsonl"], problems)?;
    let allowed: &[&str] = match t {
        "postgres" => &["type", "table", "mode", "key"],
        "csv" => &["type", "path", "delimiter", "header"],
        _ => &["type", "path"],
    };
    let settings = ["table", "mode", "key", "path", "delimiter", "header"];
    refuse_other_settings(
        &f,
        allowed,
        &settings,
        &format!("{t} destination"),
        problems,
    );
    match t {
        "postgres" => {
            let table = f.require("table", problems).and_then(|n| {
                let s = non_empty_string(n, "destination.table", problems)?;
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
            let mode = match f.get("mode") {
                None => Some(Mode::Append),
                Some(n) => {
                    let s = non_empty_string(n, "destination.mode", problems)?;
                    let modes = [
                        ("append", Mode::Append),
                        ("replace", Mode::Replace),
                        ("upsert", Mode::Upsert),
                    ];
                    one_of(&s, n.pos, "destination.mode", "mode", &modes, problems)
                }
            };
            let mut key = Vec::new();
            if let Some(k) = f.get("key") {
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
                    _ => wrong_type(k, "destination.key", "a list of columns", problems),
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
            path: f
                .require("path", problems)
                .and_then(|n| read_path(n, "destination.path", problems))?,
            delimiter: one_char(f.get("delimiter"), b',', "destination.delimiter", problems),
            header: flag(f.get("header"), true, "destination.header", problems),
        }),
        _ => Some(Destination::Jsonl {
            path: f
                .require("path", problems)
                .and_then(|n| read_path(n, "destination.path", problems))?,
        }),
    }
}

fn read_on_error(node: &Yaml, problems: &mut Problems) -> Option<OnError> {
    let p = "on_error";
    let f = Fields::read(node, p, &["bad_rows", "max_bad_rows"], problems)?;
    let bad_rows = match f.get("bad_rows") {
        None => BadRows::Fail,
        Some(n) => {
            let s = non_empty_string(n, "on_error.bad_rows", problems)?;
            let policies = [
                ("fail", BadRows::Fail),
                ("skip", BadRows::Skip),
                ("reject_file", BadRows::RejectFile),
            ];
            one_of(
                &s,
                n.pos,
                "on_error.bad_rows",
                "policy",
                &policies,
                problems,
            )?
        }
    };
    let max_bad_rows = match f.get("max_bad_rows") {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every problem of `text`, one `label:line:column: path: message (hint: …)` line each.
    fn problems(text: &str) -> Vec<String> {
        match Flow::parse(text, "flow.yaml") {
            Ok(flow) => panic!("parsed: {flow:?}"),
            Err(e) => e.problems().iter().map(ToString::to_string).collect(),
        }
    }

    const GOOD: &str = "\
name: orders
source: { type: csv, path: in/orders.csv, delimiter: ';', header: true }
transform:
  - select: [id, amount, customer]
  - rename: { customer: client }
  - filter: amount > 100
  - compute: { doubled: amount * 2 }
  - cast: { id: int }
destination: { type: postgres, table: sales.orders, mode: upsert, key: [id] }
on_error: { bad_rows: skip, max_bad_rows: 10 }
schedule: \"*/5 * * * *\"
retries: 2
misfire: skip
";

    #[test]
    fn a_good_flow_parses_and_reads_back_from_its_json() {
        let flow = Flow::parse(GOOD, "flow.yaml").expect("a good flow");
        assert_eq!(flow.name, "orders");
        assert!(matches!(
            &flow.source,
            Source::Csv { path, delimiter: b';', quote: b'"', header: true, .. } if path == "in/orders.csv"
        ));
        assert_eq!(flow.transform.len(), 5);
        assert!(
            matches!(&flow.transform[1], Step::Rename(pairs) if pairs == &[("customer".to_owned(), "client".to_owned())])
        );
        match &flow.destination {
            Destination::Postgres { table, mode, key } => {
                assert_eq!(table.quoted(), "\"sales\".\"orders\"");
                assert_eq!(*mode, Mode::Upsert);
                assert_eq!(key, &["id"]);
            }
            other => panic!("destination {other:?}"),
        }
        assert_eq!(flow.on_error.bad_rows, BadRows::Skip);
        assert_eq!(flow.on_error.max_bad_rows, Some(10));
        assert_eq!(flow.schedule.as_deref(), Some("*/5 * * * *"));
        assert_eq!((flow.retries, flow.misfire), (2, Misfire::Skip));
        assert_eq!(flow.paths(), ["in/orders.csv"]);

        let json = flow.to_json();
        let again = Flow::parse(&json.to_string(), "json").expect("its own JSON");
        assert_eq!(again.to_json(), json);
    }

    #[test]
    fn defaults_fill_what_a_flow_leaves_out() {
        let flow = Flow::parse(
            "name: a\nsource: { type: jsonl, path: a.jsonl }\ndestination: { type: csv, path: b.csv }\n",
            "flow.yaml",
        )
        .expect("a minimal flow");
        assert!(flow.transform.is_empty());
        assert!(matches!(
            flow.destination,
            Destination::Csv {
                delimiter: b',',
                header: true,
                ..
            }
        ));
        assert_eq!(flow.on_error.bad_rows, BadRows::Fail);
        assert_eq!((flow.retries, flow.misfire), (0, Misfire::default()));
    }

    #[test]
    fn concurrency_is_one_for_a_scheduled_flow_unless_it_says() {
        let base = "name: a\nsource: { type: jsonl, path: a.jsonl }\ndestination: { type: csv, path: b.csv }\n";
        let parse = |extra: &str| {
            Flow::parse(&format!("{base}{extra}"), "flow.yaml")
                .expect("a flow")
                .concurrency
        };
        assert_eq!(parse(""), None);
        assert_eq!(parse("concurrency: 1\n"), Some(1));
        assert_eq!(parse("schedule: \"* * * * *\"\n"), Some(1));
        assert_eq!(parse("schedule: \"* * * * *\"\nconcurrency: 3\n"), Some(3));
        let flow =
            Flow::parse(&format!("{base}schedule: \"* * * * *\"\n"), "flow.yaml").expect("a flow");
        assert_eq!(flow.to_json()["concurrency"], 1);
        assert_eq!(
            problems(&format!("{base}concurrency: 0\n")),
            ["flow.yaml:4:14: concurrency: expected a whole number of runs at once, at least 1"]
        );
    }

    #[test]
    fn an_unknown_key_names_its_place_and_the_likely_key() {
        assert_eq!(
            problems(
                "name: a\nsource: { type: csv, path: in/a.csv, delimeter: ';' }\ndestination: { type: jsonl, path: o.jsonl }\n"
            ),
            [
                "flow.yaml:2:38: source.delimeter: unknown key `delimeter` (hint: did you mean `delimiter`?)"
            ]
        );
        assert_eq!(
            problems(
                "name: a\nsource: { type: csvv, path: a.csv }\ndestination: { type: jsonl, path: o.jsonl }\n"
            ),
            ["flow.yaml:2:17: source.type: unknown type `csvv` (hint: did you mean `csv`?)"]
        );
    }

    #[test]
    fn a_wrong_type_says_what_was_expected_and_found() {
        assert_eq!(
            problems(
                "name: a\nsource: { type: csv, path: a.csv, header: maybe }\ntransform: 5\ndestination: { type: jsonl, path: o.jsonl }\n"
            ),
            [
                "flow.yaml:2:43: source.header: expected true or false, found a string",
                "flow.yaml:3:12: transform: expected a list of steps, found an integer",
            ]
        );
    }

    #[test]
    fn a_missing_field_is_named_at_its_map() {
        assert_eq!(
            problems("name: a\nsource: { type: csv }\n"),
            [
                "flow.yaml:1:1: destination: missing required key `destination`",
                "flow.yaml:2:9: source.path: missing required key `path`",
            ]
        );
    }

    #[test]
    fn a_bad_expression_names_its_position_in_the_expression() {
        let found = problems(
            "name: a\nsource: { type: csv, path: a.csv }\ntransform:\n  - filter: \"amount >\"\ndestination: { type: jsonl, path: o.jsonl }\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "flow.yaml:4:13: transform[0].filter: invalid expression at 1:9 of \"amount >\": "
            ),
            "{found:?}"
        );
    }

    #[test]
    fn a_path_may_not_leave_shared_storage() {
        assert_eq!(
            problems(
                "name: a\nsource: { type: csv, path: ../etc/passwd }\ndestination: { type: jsonl, path: /tmp/o.jsonl }\n"
            ),
            [
                "flow.yaml:2:28: source.path: `../etc/passwd` leaves shared storage (`..` is not allowed)",
                "flow.yaml:3:35: destination.path: `/tmp/o.jsonl` is absolute: paths are relative to shared storage",
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        assert_eq!(
            problems(
                "name: 'bad name'\nsource: { type: csv }\ntransform:\n  - select: [id]\n  - filter: price > 1\ndestination: { type: jsonl, path: o.jsonl, mode: x }\nretries: 9\n"
            ),
            [
                "flow.yaml:1:7: name: `bad name` is not a flow name (letters, digits, _, - or ., at most 63 bytes)",
                "flow.yaml:2:9: source.path: missing required key `path`",
                "flow.yaml:5:13: transform[1].filter: no column `price` at this step (hint: columns here: id)",
                "flow.yaml:6:44: destination.mode: `mode` is not a setting of a jsonl destination",
                "flow.yaml:7:10: retries: expected a whole number from 0 to 3",
            ]
        );
    }

    #[test]
    fn an_empty_or_oversized_definition_is_refused_as_a_whole() {
        assert_eq!(problems(""), ["flow.yaml: the definition is empty"]);
        let big = "#".repeat(MAX_DEFINITION_BYTES + 1);
        assert_eq!(
            problems(&big),
            [format!(
                "flow.yaml: the definition has {} bytes, more than {MAX_DEFINITION_BYTES}",
                big.len()
            )]
        );
    }

    #[test]
    fn a_postgres_source_names_a_connection_of_the_node() {
        assert_eq!(
            problems(
                "name: a\nsource: { type: postgres, query: 'SELECT 1' }\ndestination: { type: jsonl, path: o.jsonl }\n"
            ),
            ["flow.yaml:2:9: source.connection: missing required key `connection`"]
        );
        let text = "name: a\nsource: { type: postgres, connection: wh, query: 'SELECT 1' }\ndestination: { type: jsonl, path: o.jsonl }\n";
        let flow = Flow::parse_for_node(text, "flow.yaml", &["wh"]).expect("a known connection");
        assert!(matches!(&flow.source, Source::Postgres { connection, .. } if connection == "wh"));
        let refused = |known: &[&str]| {
            Flow::parse_for_node(text, "flow.yaml", known)
                .expect_err("an unknown connection")
                .problems()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            refused(&["crm", "billing"]),
            [
                "flow.yaml:2:39: source.connection: no connection `wh` on this node ([sources.wh] in its config) (hint: connections here: crm, billing)"
            ]
        );
        assert_eq!(
            refused(&[]),
            [
                "flow.yaml:2:39: source.connection: no connection `wh` on this node ([sources.wh] in its config) (hint: this node has no [sources.NAME] connection)"
            ]
        );
        // A stored definition is read without the node's connections: the run checks them.
        assert!(Flow::parse(text, "run 1").is_ok());
    }
}
