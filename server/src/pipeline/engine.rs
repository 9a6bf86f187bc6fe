//! Running one flow: the source on its own thread (or task), batches through the transform
//! plan, into the destination; bad rows counted, skipped or rejected by the flow's policy;
//! progress reported and cancellation honoured between batches (and by a Postgres source
//! while its statement runs). A run that fails says why in a `PipelineError`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::SourceConnection;
use crate::pipeline::error::PipelineError;
use crate::pipeline::expr::Expr;
use crate::pipeline::flow::{BadRows, Destination, Flow, Source, Step};
use crate::pipeline::pg_source;
use crate::pipeline::sink::{Sink, ToSink};
use crate::pipeline::source::{self, Item};
use crate::pipeline::storage;
use crate::pipeline::value::{Type, Value};

/// Rows on their way through a run, each with its row number in the source (the line of a
/// file, the ordinal of a query's row), and the rows the source could not read.
#[derive(Debug, Default)]
pub struct Batch {
    pub rows: Vec<(u64, Vec<Value>)>,
    pub bad: Vec<BadRow>,
    /// Rows the source read for this batch (after `transform`, some may have been filtered
    /// out or turned into bad rows).
    pub read: u64,
}

/// One batch through the plan: rows a filter drops are gone, rows a step refuses become bad
/// rows.
pub fn transform(plan: &Plan, batch: Batch) -> Batch {
    let read = (batch.rows.len() + batch.bad.len()) as u64;
    let mut rows = Vec::with_capacity(batch.rows.len());
    let mut bad = batch.bad;
    for (row_no, values) in batch.rows {
        match plan.apply(values) {
            Ok(Some(v)) => rows.push((row_no, v)),
            Ok(None) => {}
            Err((column, reason)) => bad.push(BadRow::new(row_no, column, reason, String::new())),
        }
    }
    Batch { rows, bad, read }
}

/// A row that was not loaded, and why.
#[derive(Debug, Clone, Serialize)]
pub struct BadRow {
    pub row: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub reason: String,
    /// The row as read (for the reject file).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub data: String,
}

impl BadRow {
    pub fn new(row: u64, column: Option<String>, reason: String, data: String) -> Self {
        Self {
            row,
            column,
            reason,
            data,
        }
    }

    pub fn describe(&self) -> String {
        match &self.column {
            Some(c) => format!("row {}, column `{c}`: {}", self.row, self.reason),
            None => format!("row {}: {}", self.row, self.reason),
        }
    }
}

/// Counts of a run so far.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub read: u64,
    pub written: u64,
    pub rejected: u64,
}

/// How a run ended.
#[derive(Debug)]
pub enum Ending {
    Succeeded,
    Failed(PipelineError),
    Canceled,
}

/// Bad rows kept in the run's record (the reject file has them all).
pub const KEPT_BAD_ROWS: usize = 100;

/// What a run reports while it goes and when it ends.
#[derive(Debug, Default)]
pub struct Report {
    pub counts: Counts,
    pub bad_rows: Vec<BadRow>,
    pub reject_file: Option<String>,
}

/// Everything a run needs besides its flow.
pub struct RunEnv {
    pub run_id: i64,
    /// The claim this node holds on the run: a table destination commits only while the run
    /// is still running under it (a node thought dead cannot commit after its run was taken
    /// over).
    pub claim_epoch: i64,
    pub storage: PathBuf,
    /// The run's tenant: every path it names is confined to its folder on `storage`.
    pub scope: crate::auth::Scope,
    /// The server's own pool: a table destination writes through it (never a source).
    pub pool: sqlx::PgPool,
    /// The node running it (named in errors).
    pub node: String,
    /// The connections a Postgres source may read through, by name.
    pub sources: Arc<BTreeMap<String, SourceConnection>>,
    /// Set to stop the run between batches.
    pub cancel: Arc<AtomicBool>,
    /// The counts so far, updated after every batch.
    pub progress: tokio::sync::watch::Sender<Counts>,
}

/// Runs the flow to its end, publishing its counts after every batch.
pub async fn run(flow: &Flow, env: &RunEnv) -> (Ending, Report) {
    let mut report = Report::default();
    let ending = match run_inner(flow, env, &mut report).await {
        Ok(()) => Ending::Succeeded,
        // The source saw the cancel before the run's loop did.
        Err(Stop::Canceled | Stop::Failed(PipelineError::Canceled)) => Ending::Canceled,
        Err(Stop::Failed(why)) => Ending::Failed(why),
    };
    (ending, report)
}

enum Stop {
    Failed(PipelineError),
    Canceled,
}

impl From<PipelineError> for Stop {
    fn from(e: PipelineError) -> Self {
        Stop::Failed(e)
    }
}

/// Starts the source, runs the rest, and joins the source's task whatever happened: a run
/// leaves no task of its own behind (the source stops once its channel is gone).
async fn run_inner(flow: &Flow, env: &RunEnv, report: &mut Report) -> Result<(), Stop> {
    let (tx, mut rx) = mpsc::channel::<Result<Item, PipelineError>>(2);
    let (plan_tx, plan_rx) = tokio::sync::oneshot::channel();
    let mut reader = Some(start_source(flow, env, source::Sender::new(tx, plan_rx))?);
    let result = stream(flow, env, report, &mut rx, plan_tx, &mut reader).await;
    drop(rx);
    if let Some(reader) = reader {
        let _ = join_reader(reader).await;
    }
    result
}

async fn stream(
    flow: &Flow,
    env: &RunEnv,
    report: &mut Report,
    rx: &mut mpsc::Receiver<Result<Item, PipelineError>>,
    plan_tx: tokio::sync::oneshot::Sender<Arc<Plan>>,
    reader: &mut Option<Reader>,
) -> Result<(), Stop> {
    let (columns, source_types) = match rx.recv().await {
        Some(Ok(Item::Columns(c, t))) => (c, t),
        Some(Err(e)) => return Err(Stop::Failed(e)),
        Some(Ok(Item::Batch(_))) | None => {
            let read = match reader.take() {
                Some(r) => join_reader(r).await,
                None => Ok(()),
            };
            return Err(Stop::Failed(read.err().unwrap_or(PipelineError::NoColumns)));
        }
    };
    let plan = Arc::new(Plan::new(flow, &columns, &source_types)?);
    // The source transforms its batches with it (see `source::Sender`).
    let _ = plan_tx.send(plan.clone());
    let mut rejects = Rejects::open(flow, env).await?;
    report.reject_file = rejects.as_ref().map(|r| r.relative.clone());
    let sink = Sink::open(flow, env, &plan.columns, &plan.types).await?;
    // The sink runs beside this loop: rows are transformed while earlier ones are written.
    let written = Arc::new(AtomicU64::new(0));
    let (to_sink, sink_rx) = mpsc::channel::<ToSink>(2);
    // If the run is abandoned (it did not stop when asked), so is the sink: aborted, not left
    // holding its connection or file.
    let sink = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        sink.consume(sink_rx, written.clone()),
    ));
    let outcome: Result<(), Stop> = async {
        while let Some(item) = rx.recv().await {
            let batch = match item {
                Ok(Item::Batch(b)) => b,
                Ok(Item::Columns(..)) => continue,
                Err(e) => return Err(Stop::Failed(e)),
            };
            if env.cancel.load(Ordering::Relaxed) {
                return Err(Stop::Canceled);
            }
            report.counts.read += batch.read;
            let out = batch.rows;
            let mut bad = batch.bad;
            // In the source's order, whichever step found them.
            bad.sort_by_key(|b| b.row);
            for b in bad {
                handle_bad(flow, b, report, rejects.as_mut())?;
            }
            if to_sink.send(ToSink::Rows(out)).await.is_err() {
                // The sink failed: its error says why.
                return Ok(());
            }
            report.counts.written = written.load(Ordering::Relaxed);
            env.progress.send_replace(report.counts);
        }
        Ok(())
    }
    .await;
    // The source ends once its channel is closed; then its result is known.
    rx.close();
    let read_result = match reader.take() {
        Some(r) => join_reader(r).await,
        None => Ok(()),
    };
    let finished = match rejects.take() {
        Some(r) => r.finish(env).await.map_err(Stop::from),
        None => Ok(()),
    };
    // The reject file's failure first, then the run's, then the source's.
    let outcome = finished.and(outcome).and(read_result.map_err(Stop::Failed));
    if outcome.is_ok() {
        let _ = to_sink.send(ToSink::End).await;
    }
    // Without `End` the sink undoes everything.
    drop(to_sink);
    let sunk = sink
        .await
        .map_err(|e| PipelineError::DestinationStopped(e.to_string()))?;
    outcome?;
    report.counts.written = sunk?;
    Ok(())
}

fn handle_bad(
    flow: &Flow,
    bad: BadRow,
    report: &mut Report,
    rejects: Option<&mut Rejects>,
) -> Result<(), Stop> {
    report.counts.rejected += 1;
    let policy = flow.on_error.bad_rows;
    if policy == BadRows::Fail {
        return Err(Stop::Failed(PipelineError::BadRow(bad)));
    }
    if let Some(max) = flow.on_error.max_bad_rows
        && report.counts.rejected > max
    {
        return Err(Stop::Failed(PipelineError::TooManyBadRows {
            max,
            last: bad,
        }));
    }
    if let Some(r) = rejects {
        r.write(&bad)?;
    }
    if report.bad_rows.len() < KEPT_BAD_ROWS {
        report.bad_rows.push(bad);
    }
    Ok(())
}

type Reader = tokio::task::JoinHandle<Result<(), PipelineError>>;

fn start_source(
    flow: &Flow,
    env: &RunEnv,
    mut tx: source::Sender,
) -> Result<Reader, PipelineError> {
    Ok(match &flow.source {
        Source::Csv {
            path,
            delimiter,
            quote,
            header,
            ..
        } => {
            let (storage, path) = (env.storage.clone(), env.scope.path(path)?);
            let (d, q, h) = (*delimiter, *quote, *header);
            // Opening is blocking too (shared storage may be slow): on the source's thread.
            tokio::task::spawn_blocking(move || {
                let r = open_input(&storage, &path)
                    .and_then(|file| source::csv(file, d, q, h, &mut tx));
                if let Err(e) = &r {
                    tx.fail_blocking(e.clone());
                }
                r
            })
        }
        Source::Jsonl { path } => {
            let (storage, path) = (env.storage.clone(), env.scope.path(path)?);
            tokio::task::spawn_blocking(move || {
                let r = open_input(&storage, &path).and_then(|file| source::jsonl(file, &mut tx));
                if let Err(e) = &r {
                    tx.fail_blocking(e.clone());
                }
                r
            })
        }
        Source::Postgres { connection, query } => {
            let Some(settings) = env.sources.get(connection).cloned() else {
                return Err(PipelineError::UnknownConnection {
                    name: connection.clone(),
                    node: env.node.clone(),
                });
            };
            let (name, query, cancel) = (connection.clone(), query.clone(), env.cancel.clone());
            tokio::spawn(async move {
                let r = pg_source::read(&name, &settings, &query, &mut tx, &cancel).await;
                if let Err(e) = &r {
                    tx.fail(e.clone()).await;
                }
                r
            })
        }
    })
}

async fn join_reader(reader: Reader) -> Result<(), PipelineError> {
    match reader.await {
        Ok(Ok(())) | Ok(Err(PipelineError::RunEnded)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(PipelineError::SourceStopped(e.to_string())),
    }
}

fn open_input(storage: &Path, path: &str) -> Result<std::fs::File, PipelineError> {
    storage::Dir::walk(storage, path, false)?.open_read()
}

/// Makes a new file at `path` on shared storage, under a temporary name tagged with this run
/// and its claim (`run<id>-<epoch>`, so no two attempts share one; `storage::Dir::stage` adds
/// random bytes besides), off the runtime. `error` names what the file is for.
pub async fn stage_new(
    env: &RunEnv,
    path: &str,
    error: fn(&str, std::io::Error) -> PipelineError,
) -> Result<storage::Staged, PipelineError> {
    let tag = format!("run{}-{}", env.run_id, env.claim_epoch);
    let (base, path) = (env.storage.clone(), env.scope.path(path)?);
    blocking(move || {
        storage::Dir::walk(&base, &path, true)?
            .stage(&tag)
            .map_err(|e| error(&path, e))
    })
    .await
}

/// The transform steps bound to column positions, made once the source's columns are known.
pub struct Plan {
    steps: Vec<Op>,
    pub columns: Vec<String>,
    /// Each output column's type when the flow or the source fixes it.
    pub types: Vec<Option<Type>>,
}

enum Op {
    Select(Vec<usize>),
    Filter(Expr, HashMap<String, usize>),
    Compute(Expr, HashMap<String, usize>, Option<usize>, String),
    Cast(Vec<(usize, Type, String)>),
}

fn index(cols: &[String]) -> HashMap<String, usize> {
    cols.iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), i))
        .collect()
}

impl Plan {
    pub fn new(
        flow: &Flow,
        source: &[String],
        source_types: &[Option<Type>],
    ) -> Result<Plan, PipelineError> {
        let mut cols: Vec<String> = source.to_vec();
        let mut types: Vec<Option<Type>> = source_types.to_vec();
        types.resize(cols.len(), None);
        let mut steps = Vec::new();
        let missing = |step: usize, name: &str, cols: &[String]| PipelineError::NoColumn {
            step,
            name: name.to_owned(),
            columns: cols.to_vec(),
        };
        let find = |i: usize, name: &str, cols: &[String]| {
            cols.iter()
                .position(|c| c == name)
                .ok_or_else(|| missing(i, name, cols))
        };
        for (i, step) in flow.transform.iter().enumerate() {
            match step {
                Step::Select(names) => {
                    let idx = names
                        .iter()
                        .map(|n| find(i, n, &cols))
                        .collect::<Result<Vec<_>, _>>()?;
                    types = idx.iter().map(|&k| types[k]).collect();
                    cols = names.clone();
                    steps.push(Op::Select(idx));
                }
                Step::Rename(pairs) => {
                    for (from, to) in pairs {
                        let k = find(i, from, &cols)?;
                        cols[k].clone_from(to);
                    }
                }
                Step::Filter(e) => {
                    check_columns(i, e, &cols)?;
                    steps.push(Op::Filter(e.clone(), index(&cols)));
                }
                Step::Compute(list) => {
                    for (name, e) in list {
                        check_columns(i, e, &cols)?;
                        let target = cols.iter().position(|c| c == name);
                        steps.push(Op::Compute(e.clone(), index(&cols), target, name.clone()));
                        match target {
                            Some(k) => types[k] = None,
                            None => {
                                cols.push(name.clone());
                                types.push(None);
                            }
                        }
                    }
                }
                Step::Cast(list) => {
                    let mut ops = Vec::new();
                    for (name, ty) in list {
                        let k = find(i, name, &cols)?;
                        types[k] = Some(*ty);
                        ops.push((k, *ty, name.clone()));
                    }
                    steps.push(Op::Cast(ops));
                }
            }
        }
        if let Destination::Postgres { key, .. } = &flow.destination {
            for k in key {
                if !cols.contains(k) {
                    return Err(PipelineError::NoKeyColumn {
                        key: k.clone(),
                        columns: cols,
                    });
                }
            }
        }
        Ok(Plan {
            steps,
            columns: cols,
            types,
        })
    }

    /// One row through every step: `Ok(None)` when a filter drops it, `Err((column, why))`
    /// when it is a bad row.
    pub fn apply(
        &self,
        mut row: Vec<Value>,
    ) -> Result<Option<Vec<Value>>, (Option<String>, String)> {
        for op in &self.steps {
            match op {
                Op::Select(idx) => {
                    row = idx
                        .iter()
                        .map(|&k| std::mem::replace(&mut row[k], Value::Null))
                        .collect();
                }
                Op::Filter(e, names) => match e.eval(names, &row) {
                    Ok(Value::Bool(true)) => {}
                    Ok(Value::Bool(false)) => return Ok(None),
                    Ok(other) => {
                        return Err((
                            None,
                            format!("filter {:?} gave {other:?}, not true or false", e.source()),
                        ));
                    }
                    Err(why) => return Err((None, format!("filter {:?}: {why}", e.source()))),
                },
                Op::Compute(e, names, target, name) => {
                    let v = e
                        .eval(names, &row)
                        .map_err(|why| (Some(name.clone()), format!("{:?}: {why}", e.source())))?;
                    match target {
                        Some(k) => row[*k] = v,
                        None => row.push(v),
                    }
                }
                Op::Cast(list) => {
                    for (k, ty, name) in list {
                        let v = std::mem::replace(&mut row[*k], Value::Null);
                        row[*k] = v
                            .cast(*ty)
                            .map_err(|why| (Some(name.clone()), why.to_string()))?;
                    }
                }
            }
        }
        Ok(Some(row))
    }
}

fn check_columns(step: usize, e: &Expr, cols: &[String]) -> Result<(), PipelineError> {
    for column in e.columns().unwrap_or_default() {
        if !cols.contains(&column) {
            return Err(PipelineError::ExpressionColumn {
                step,
                expression: e.source().to_owned(),
                column,
                columns: cols.to_vec(),
            });
        }
    }
    Ok(())
}

/// The reject file: one JSON line per bad row, beside the output (a file destination) or
/// under `rejects/` (a table); written under a temporary name and renamed at the run's end.
struct Rejects {
    relative: String,
    staged: storage::Staged,
}

impl Rejects {
    async fn open(flow: &Flow, env: &RunEnv) -> Result<Option<Rejects>, PipelineError> {
        if flow.on_error.bad_rows != BadRows::RejectFile {
            return Ok(None);
        }
        let relative = match &flow.destination {
            Destination::Csv { path, .. } | Destination::Jsonl { path } => {
                format!("{path}.rejects.jsonl")
            }
            Destination::Postgres { .. } => {
                format!("rejects/{}-run{}.jsonl", flow.name, env.run_id)
            }
        };
        let staged = stage_new(env, &relative, PipelineError::reject_file).await?;
        Ok(Some(Rejects { relative, staged }))
    }

    fn write(&mut self, bad: &BadRow) -> Result<(), PipelineError> {
        use std::io::Write;
        let line =
            serde_json::to_string(bad).map_err(|e| PipelineError::RejectEncode(Arc::new(e)))?;
        writeln!(self.staged.out(), "{line}")
            .map_err(|e| PipelineError::reject_file(&self.relative, e))
    }

    /// Syncs the file and renames it into place, only while the run's claim holds.
    async fn finish(self, env: &RunEnv) -> Result<(), PipelineError> {
        let Rejects {
            relative,
            mut staged,
        } = self;
        let staged = blocking(move || {
            staged
                .sync()
                .map_err(|e| PipelineError::reject_file(&relative, e))?;
            Ok(staged)
        })
        .await?;
        crate::pipeline::sink::commit_file(&crate::pipeline::sink::Claim::of(env), staged).await
    }
}

/// Runs blocking file work (opening, syncing, renaming on shared storage) off the runtime.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PipelineError> + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PipelineError::DestinationStopped(e.to_string()))?
}
