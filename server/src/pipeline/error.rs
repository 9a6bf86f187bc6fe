//! The pipeline's errors: `PipelineError` ends a run (its text becomes the run's `error`),
//! `StorageError` refuses a path on shared storage, and `CastError` / `EvalError` make one
//! row bad (their text becomes the bad row's reason; the run goes on by its policy). Not the
//! flow's validation problems, which are the inventory's `LoadError`.
//!
//! Each `Display` is the whole line a user reads, cause included; no error here exposes a
//! `source()`, so printing one never shows a cause twice. Errors travel from the source's
//! thread to the run twice (through the channel, and in the thread's result), so they are
//! `Clone`: foreign errors are held in an `Arc`.

use std::sync::Arc;

use crate::pipeline::engine::BadRow;
use crate::pipeline::value::{Type, Value};

/// Why a run failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// A path the flow names is refused, or shared storage is not there.
    #[error(transparent)]
    Storage(#[from] StorageError),

    /// The source file cannot be opened.
    #[error("source {path}: {error}")]
    OpenSource {
        path: String,
        error: Arc<std::io::Error>,
    },
    /// Reading the source file failed (not a bad row: the input stops).
    #[error("reading the {format} file: {error}")]
    ReadSource {
        /// `CSV` or `JSON-lines`.
        format: &'static str,
        error: Arc<std::io::Error>,
    },
    #[error("line {line}: column {column} of the header is not UTF-8")]
    HeaderNotUtf8 { line: u64, column: usize },
    #[error("line {line}: column {column} of the header is empty")]
    HeaderEmpty { line: u64, column: usize },
    #[error("line {line}: the header names column `{name}` twice")]
    HeaderTwice { line: u64, name: String },
    /// The source's connection cannot be opened (`pg_source::describe`'s text).
    #[error("source connection `{connection}`: {message}")]
    SourceConnect { connection: String, message: String },
    /// The source query failed in Postgres (`pg_source::describe`'s text: never a value the
    /// query read).
    #[error("source query: {0}")]
    SourceQuery(String),
    /// The flow's source names a connection this node's config does not have.
    #[error(
        "source.connection: no connection `{name}` on node {node} ([sources.{name}] in its config)"
    )]
    UnknownConnection { name: String, node: String },
    /// A value of the source query's result cannot be read as text.
    #[error("source query: column {column}: {message}")]
    SourceValue { column: usize, message: String },
    /// The source's task or thread stopped (it panicked).
    #[error("the source stopped: {0}")]
    SourceStopped(String),
    #[error("the source ended before its columns")]
    NoColumns,
    /// The run stopped taking rows (it failed or was canceled): the source stops reading.
    /// Not a failure of its own.
    #[error("run ended")]
    RunEnded,
    /// The source saw the run's cancel and stopped: the run ends canceled, not failed.
    #[error("canceled")]
    Canceled,

    /// A transform step names a column that is not there.
    #[error("transform[{step}]: no column `{name}`; the columns there are: {}", .columns.join(", "))]
    NoColumn {
        step: usize,
        name: String,
        columns: Vec<String>,
    },
    /// An expression of a transform step reads a column that is not there.
    #[error(
        "transform[{step}]: the expression {expression:?} reads `{column}`, which is not a column there ({})",
        .columns.join(", ")
    )]
    ExpressionColumn {
        step: usize,
        expression: String,
        column: String,
        columns: Vec<String>,
    },
    /// A key of the table destination is not an output column.
    #[error("destination.key: no column `{key}`; the output has: {}", .columns.join(", "))]
    NoKeyColumn { key: String, columns: Vec<String> },

    /// A bad row under `on_error.bad_rows: fail`.
    #[error("bad row: {} (on_error.bad_rows is fail)", .0.describe())]
    BadRow(BadRow),
    /// More bad rows than `on_error.max_bad_rows`.
    #[error("more than {max} bad rows (on_error.max_bad_rows); the last: {}", .last.describe())]
    TooManyBadRows { max: u64, last: BadRow },
    #[error("reject file {path}: {error}")]
    RejectFile {
        path: String,
        error: Arc<std::io::Error>,
    },
    #[error("{0}")]
    RejectEncode(Arc<serde_json::Error>),

    /// A statement of the table destination failed; `step` says which.
    #[error("{step}: {}", crate::db::describe(.error))]
    DestinationDatabase {
        step: String,
        error: Arc<sqlx::Error>,
    },
    /// The destination table lacks output columns.
    #[error("table {table} has no column {} (it has: {})", .missing.join(", "), .have.join(", "))]
    MissingColumns {
        /// `schema.name`.
        table: String,
        missing: Vec<String>,
        have: Vec<String>,
    },
    /// Postgres refused a row of a COPY (its number in the source).
    #[error("destination refused row {row}{}: {message}", column_part(.column))]
    RowRefused {
        row: u64,
        column: Option<String>,
        message: String,
    },
    /// A COPY failed, not on a row of its own.
    #[error("destination: {}", crate::db::describe(.0))]
    Copy(Arc<sqlx::Error>),
    /// The destination file (or its directory) cannot be made.
    #[error("destination {path}: {error}")]
    OpenDestination {
        path: String,
        error: Arc<std::io::Error>,
    },
    /// Writing, syncing or renaming the destination file failed.
    #[error("destination: {0}")]
    WriteDestination(Arc<std::io::Error>),
    /// The destination's task or thread stopped (it panicked).
    #[error("destination: {0}")]
    DestinationStopped(String),
    /// The run lost its claim before the commit: another node has it now.
    #[error(
        "the run was taken over by the cluster (this node was thought gone or it was canceled): nothing committed"
    )]
    TakenOver,
    /// The run ended before all its rows reached the destination, which undid everything.
    #[error("stopped")]
    Stopped,
}

fn column_part(column: &Option<String>) -> String {
    column
        .as_ref()
        .map(|c| format!(", column `{c}`"))
        .unwrap_or_default()
}

impl PipelineError {
    pub(crate) fn open_source(path: &str, error: std::io::Error) -> Self {
        Self::OpenSource {
            path: path.to_owned(),
            error: Arc::new(error),
        }
    }

    pub(crate) fn reject_file(path: &str, error: std::io::Error) -> Self {
        Self::RejectFile {
            path: path.to_owned(),
            error: Arc::new(error),
        }
    }

    pub(crate) fn open_destination(path: &str, error: std::io::Error) -> Self {
        Self::OpenDestination {
            path: path.to_owned(),
            error: Arc::new(error),
        }
    }

    pub(crate) fn write_destination(error: std::io::Error) -> Self {
        Self::WriteDestination(Arc::new(error))
    }

    /// A table destination's statement failed at `step`.
    pub(crate) fn destination_database(step: &str) -> impl Fn(sqlx::Error) -> Self + '_ {
        move |error| Self::DestinationDatabase {
            step: step.to_owned(),
            error: Arc::new(error),
        }
    }
}

/// A path a flow names that shared storage refuses, or shared storage itself missing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("`{path}` is absolute: paths are relative to shared storage")]
    Absolute { path: String },
    #[error("the path contains a NUL byte")]
    NulByte,
    #[error("`{path}` leaves shared storage (`..` is not allowed)")]
    LeavesStorage { path: String },
    #[error("`{path}` names no file")]
    NoFileName { path: String },
    /// The default tenant's flows stay out of the tenants' folders.
    #[error("`{path}` is in `tenants/`, the tenants' folders: not the default tenant's")]
    TenantsFolder { path: String },
    /// A directory of the path, or its file, is a symbolic link (`link`: the path up to it).
    #[error(
        "`{path}` goes through the symbolic link `{link}`: no link is followed on shared storage"
    )]
    Symlink { path: String, link: String },
    /// The path names a FIFO, a directory, a device...: only regular files are read.
    #[error("`{path}` is not a regular file (it is {kind}): refused")]
    NotAFile { path: String, kind: &'static str },
    /// Shared storage itself cannot be reached (or made, at start).
    #[error("shared storage {}: {error}", .base.display())]
    Unavailable {
        base: std::path::PathBuf,
        error: Arc<std::io::Error>,
    },
    /// A directory of the path cannot be opened or made (`directory`: the path up to it).
    #[error("`{path}`: directory `{directory}`: {error}")]
    Directory {
        path: String,
        directory: String,
        error: Arc<std::io::Error>,
    },
}

// `flow.rs` adds a refused path to its problems as text.
impl From<StorageError> for String {
    fn from(e: StorageError) -> String {
        e.to_string()
    }
}

/// Why a value cannot be cast: a bad row's reason, in a few words.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CastError {
    /// Text that does not read as the type (`what`: "an integer", "a date (YYYY-MM-DD)", ...).
    #[error("{text:?} is not {what}")]
    NotA { text: String, what: &'static str },
    #[error("{0} does not fit a decimal")]
    DecimalRange(f64),
    #[error("{0} is not a number")]
    NotANumber(rust_decimal::Decimal),
    #[error("{0} does not fit an integer")]
    IntegerRange(rust_decimal::Decimal),
    /// No cast between these types (a boolean to a date, say).
    #[error("{value:?} cannot be cast to {}", type_name(.to))]
    Impossible { value: Value, to: Type },
}

fn type_name(ty: &Type) -> &'static str {
    Type::NAMES[*ty as usize]
}

/// Why an expression gives no value for a row: a bad row's reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// CEL refused the evaluation (a type mismatch, a missing column, ...).
    #[error("{}", describe_execution(.0))]
    Execution(cel::ExecutionError),
    #[error("{0} does not fit a 64-bit integer")]
    IntegerRange(u64),
    /// The result is a list, a map or another value no column can hold.
    #[error("the result is {found}, not a column value")]
    NotAColumnValue { found: String },
}

fn describe_execution(e: &cel::ExecutionError) -> String {
    let text = format!("{e:?}");
    if text.contains("UnsupportedBinaryOperator")
        && text.contains("Int(")
        && text.contains("Float(")
    {
        return format!(
            "{text} (CEL does not mix int and double in arithmetic: use double(x) or int(x))"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_read_as_before() {
        let bad = BadRow::new(
            3,
            Some("id".into()),
            "\"x\" is not an integer".into(),
            "".into(),
        );
        assert_eq!(
            PipelineError::BadRow(bad.clone()).to_string(),
            "bad row: row 3, column `id`: \"x\" is not an integer (on_error.bad_rows is fail)"
        );
        assert_eq!(
            PipelineError::TooManyBadRows { max: 2, last: bad }.to_string(),
            "more than 2 bad rows (on_error.max_bad_rows); the last: row 3, column `id`: \"x\" is not an integer"
        );
        assert_eq!(
            PipelineError::NoColumn {
                step: 1,
                name: "b".into(),
                columns: vec!["a".into(), "c".into()]
            }
            .to_string(),
            "transform[1]: no column `b`; the columns there are: a, c"
        );
        let refused = |column: Option<&str>| PipelineError::RowRefused {
            row: 7,
            column: column.map(str::to_owned),
            message: "value too long".into(),
        };
        assert_eq!(
            refused(Some("v")).to_string(),
            "destination refused row 7, column `v`: value too long"
        );
        assert_eq!(
            refused(None).to_string(),
            "destination refused row 7: value too long"
        );
        assert_eq!(
            PipelineError::Storage(StorageError::LeavesStorage {
                path: "../x".into()
            })
            .to_string(),
            "`../x` leaves shared storage (`..` is not allowed)"
        );
        assert_eq!(
            CastError::Impossible {
                value: Value::Bool(true),
                to: Type::Date
            }
            .to_string(),
            "Bool(true) cannot be cast to date"
        );
    }
}
