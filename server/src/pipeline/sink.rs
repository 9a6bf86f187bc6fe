//! Destinations: a Postgres table through COPY inside one transaction (append, replace or
//! upsert; the table is created from the flow's types when missing), or a CSV / JSON-lines
//! file written under a temporary name and renamed only when complete. A destination that
//! fails undoes everything and says why in a `PipelineError`.

use std::ffi::OsString;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use sqlx::Connection;

use crate::pipeline::engine::{self, RunEnv};
use crate::pipeline::error::PipelineError;
use crate::pipeline::flow::{Destination, Flow, Mode, Table, quote_ident};
use crate::pipeline::storage::Staged;
use crate::pipeline::value::{Type, Value};

pub enum Sink {
    Table(TableSink),
    File(FileSink),
}

pub struct TableSink {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    claim: Claim,
    table: Table,
    mode: Mode,
    key: Vec<String>,
    columns: Vec<String>,
    types: Vec<Option<Type>>,
    /// Where COPY writes: the table, or the staging table of an upsert.
    target: String,
    column_list: String,
    written: u64,
    buf: String,
}

pub struct FileSink {
    claim: Claim,
    staged: Staged,
    kind: FileKind,
    columns: Vec<String>,
    written: u64,
}

enum FileKind {
    Csv { delimiter: u8, header: bool },
    Jsonl,
}

fn pg(what: &str) -> impl Fn(sqlx::Error) -> PipelineError + '_ {
    PipelineError::destination_database(what)
}

impl Sink {
    pub async fn open(
        flow: &Flow,
        env: &RunEnv,
        columns: &[String],
        types: &[Option<Type>],
    ) -> Result<Sink, PipelineError> {
        match &flow.destination {
            Destination::Postgres { table, mode, key } => {
                let mut conn = env.pool.acquire().await.map_err(pg("destination"))?;
                // A tenant's table is in its own schema, made on its first use (outside the
                // run's transaction; two runs making it at once: one of them made it).
                if env.scope.schema().as_ref() == Some(&table.schema) {
                    let made = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "CREATE SCHEMA IF NOT EXISTS {}",
                        quote_ident(&table.schema)
                    )))
                    .execute(&mut *conn)
                    .await;
                    match made {
                        Err(sqlx::Error::Database(e))
                            if matches!(e.code().as_deref(), Some("23505" | "42P06")) => {}
                        other => {
                            other.map_err(pg("the tenant's schema"))?;
                        }
                    }
                }
                sqlx::raw_sql("BEGIN")
                    .execute(&mut *conn)
                    .await
                    .map_err(pg("destination"))?;
                Ok(Sink::Table(TableSink {
                    conn,
                    claim: Claim::of(env),
                    table: table.clone(),
                    mode: *mode,
                    key: key.clone(),
                    columns: columns.to_vec(),
                    types: types.to_vec(),
                    target: table.quoted(),
                    column_list: columns
                        .iter()
                        .map(|c| quote_ident(c))
                        .collect::<Vec<_>>()
                        .join(", "),
                    written: 0,
                    buf: String::with_capacity(1 << 20),
                }))
            }
            Destination::Csv {
                path,
                delimiter,
                header,
            } => FileSink::open(
                env,
                path,
                FileKind::Csv {
                    delimiter: *delimiter,
                    header: *header,
                },
                columns,
            )
            .await
            .map(Sink::File),
            Destination::Jsonl { path } => FileSink::open(env, path, FileKind::Jsonl, columns)
                .await
                .map(Sink::File),
        }
    }

    /// Takes rows until `Rows::End` (then makes everything visible at once and returns the
    /// rows written) or until the sender goes away without it (then undoes everything:
    /// the transaction, the temporary file). `written` counts rows as they land.
    pub async fn consume(
        self,
        rx: mpsc::Receiver<ToSink>,
        written: Arc<AtomicU64>,
    ) -> Result<u64, PipelineError> {
        match self {
            Sink::Table(t) => t.consume(rx, written).await,
            Sink::File(f) => {
                let claim = f.claim.clone();
                let (staged, n) = engine::blocking(move || f.consume(rx, written)).await?;
                commit_file(&claim, staged).await?;
                Ok(n)
            }
        }
    }
}

/// What the transform stage sends the sink.
pub enum ToSink {
    Rows(Vec<(u64, Vec<Value>)>),
    /// Every row was sent and the run succeeded: commit.
    End,
}

/// Rows per COPY statement: a COPY streams while the next rows are made; an error in it names
/// a line of it, which these rows' numbers turn into the source's row number.
const SEGMENT_ROWS: usize = 1 << 18;

impl TableSink {
    async fn prepare(&mut self, first: &[(u64, Vec<Value>)]) -> Result<(), PipelineError> {
        let existing: Vec<(String,)> = sqlx::query_as(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        )
        .bind(&self.table.schema)
        .bind(&self.table.name)
        .fetch_all(&mut *self.conn)
        .await
        .map_err(pg("destination"))?;
        let table = self.table.quoted();
        if existing.is_empty() {
            let defs: Vec<String> = self
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let ty = self.types[i]
                        .or_else(|| first.iter().find_map(|(_, r)| r[i].natural_type()))
                        .unwrap_or(Type::Text);
                    format!("{} {}", quote_ident(c), ty.sql())
                })
                .collect();
            let mut sql = format!("CREATE TABLE IF NOT EXISTS {table} ({}", defs.join(", "));
            if !self.key.is_empty() {
                let key: Vec<String> = self.key.iter().map(|k| quote_ident(k)).collect();
                sql.push_str(&format!(", PRIMARY KEY ({})", key.join(", ")));
            }
            sql.push(')');
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *self.conn)
                .await
                .map_err(pg(&format!(
                    "creating {}.{}",
                    self.table.schema, self.table.name
                )))?;
        } else {
            let have: Vec<&str> = existing.iter().map(|(c,)| c.as_str()).collect();
            let missing: Vec<&str> = self
                .columns
                .iter()
                .map(String::as_str)
                .filter(|c| !have.contains(c))
                .collect();
            if !missing.is_empty() {
                return Err(PipelineError::MissingColumns {
                    table: format!("{}.{}", self.table.schema, self.table.name),
                    missing: missing.into_iter().map(str::to_owned).collect(),
                    have: have.into_iter().map(str::to_owned).collect(),
                });
            }
        }
        match self.mode {
            Mode::Append => {}
            Mode::Replace => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("TRUNCATE {table}")))
                    .execute(&mut *self.conn)
                    .await
                    .map_err(pg("emptying the table for replace"))?;
            }
            Mode::Upsert => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE TEMP TABLE fleet_upsert ON COMMIT DROP AS SELECT {} FROM {table} WITH NO DATA; \
                     ALTER TABLE fleet_upsert ADD COLUMN fleet_seq bigserial",
                    self.column_list
                )))
                .execute(&mut *self.conn)
                .await
                .map_err(pg("staging table for upsert"))?;
                self.target = "fleet_upsert".into();
            }
        }
        Ok(())
    }

    async fn consume(
        mut self,
        mut rx: mpsc::Receiver<ToSink>,
        written: Arc<AtomicU64>,
    ) -> Result<u64, PipelineError> {
        let result = self.copy_all(&mut rx, &written).await;
        match result {
            Ok(true) => match self.finish().await {
                Ok(n) => Ok(n),
                Err(e) => {
                    self.abort().await;
                    Err(e)
                }
            },
            Ok(false) => {
                self.abort().await;
                Err(PipelineError::Stopped)
            }
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    /// COPYs every row sent; `Ok(true)` at `End`, `Ok(false)` when the sender went away.
    async fn copy_all(
        &mut self,
        rx: &mut mpsc::Receiver<ToSink>,
        written: &AtomicU64,
    ) -> Result<bool, PipelineError> {
        let mut prepared = false;
        loop {
            let first = match rx.recv().await {
                None => return Ok(false),
                Some(ToSink::End) => {
                    if !prepared {
                        self.prepare(&[]).await?;
                    }
                    return Ok(true);
                }
                Some(ToSink::Rows(rows)) => rows,
            };
            if !prepared {
                self.prepare(&first).await?;
                prepared = true;
            }
            if first.is_empty() {
                continue;
            }
            let statement = format!("COPY {} ({}) FROM STDIN", self.target, self.column_list);
            let mut rows_of_segment: Vec<u64> = Vec::new();
            let mut copy = self
                .conn
                .copy_in_raw(&statement)
                .await
                .map_err(pg("destination"))?;
            let mut pending = Some(first);
            let mut end = None;
            while let Some(rows) = pending.take() {
                encode(&rows, &mut self.buf);
                rows_of_segment.extend(rows.iter().map(|(n, _)| *n));
                if let Err(e) = copy.send(self.buf.as_bytes()).await {
                    return Err(copy_error(e, &rows_of_segment));
                }
                if rows_of_segment.len() >= SEGMENT_ROWS {
                    break;
                }
                match rx.recv().await {
                    Some(ToSink::Rows(r)) => pending = Some(r),
                    Some(ToSink::End) => end = Some(true),
                    None => end = Some(false),
                }
            }
            if end == Some(false) {
                let _ = copy.abort("the run stopped").await;
                return Ok(false);
            }
            let n = copy
                .finish()
                .await
                .map_err(|e| copy_error(e, &rows_of_segment))?;
            self.written += n;
            written.fetch_add(n, Ordering::Relaxed);
            if end == Some(true) {
                return Ok(true);
            }
        }
    }

    async fn abort(mut self) {
        if sqlx::raw_sql("ROLLBACK")
            .execute(&mut *self.conn)
            .await
            .is_err()
        {
            // A connection in an unknown state never goes back to the pool.
            let _ = self.conn.detach().close().await;
        }
    }

    async fn finish(&mut self) -> Result<u64, PipelineError> {
        if self.mode == Mode::Upsert {
            let key: Vec<String> = self.key.iter().map(|k| quote_ident(k)).collect();
            let update: Vec<String> = self
                .columns
                .iter()
                .filter(|c| !self.key.contains(c))
                .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
                .collect();
            let action = if update.is_empty() {
                "NOTHING".to_owned()
            } else {
                format!("UPDATE SET {}", update.join(", "))
            };
            // The last row of the run for each key wins.
            let sql = format!(
                "INSERT INTO {table} ({cols}) SELECT {cols} FROM (SELECT DISTINCT ON ({key}) * FROM fleet_upsert ORDER BY {key}, fleet_seq DESC) s \
                 ON CONFLICT ({key}) DO {action}",
                table = self.table.quoted(),
                cols = self.column_list,
                key = key.join(", "),
            );
            let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut *self.conn)
                .await
                .map_err(pg("upsert"))?;
            self.written = done.rows_affected();
        }
        // The data and the run's end land together, and only while this node still holds
        // the run.
        let held = sqlx::query(
            "UPDATE runs SET state = 'succeeded', rows_written = $3, finished_at = now()
             WHERE id = $1 AND claim_epoch = $2 AND state = 'running'",
        )
        .bind(self.claim.run_id)
        .bind(self.claim.epoch)
        .bind(self.written as i64)
        .execute(&mut *self.conn)
        .await
        .map_err(pg("recording the run"))?;
        if held.rows_affected() == 0 {
            return Err(PipelineError::TakenOver);
        }
        sqlx::raw_sql("COMMIT")
            .execute(&mut *self.conn)
            .await
            .map_err(pg("commit"))?;
        Ok(self.written)
    }
}

/// Rows in COPY text format, tab-separated, one per line.
fn encode(rows: &[(u64, Vec<Value>)], buf: &mut String) {
    buf.clear();
    for (_, row) in rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                buf.push('\t');
            }
            v.write_copy(buf);
        }
        buf.push('\n');
    }
}

/// A COPY error names a line of the segment: turn it into the source's row number.
fn copy_error(e: sqlx::Error, rows: &[u64]) -> PipelineError {
    if let Some(db) = e.as_database_error()
        && let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
    {
        let place = pg.r#where().unwrap_or_default();
        // "COPY t, line 2, column amount: \"abc\""
        let line = place
            .split(", line ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<usize>().ok());
        let column = place
            .split(", column ")
            .nth(1)
            .and_then(|s| s.split(':').next());
        if let Some(line) = line
            && let Some(row) = rows.get(line.saturating_sub(1))
        {
            return PipelineError::RowRefused {
                row: *row,
                column: column.map(str::to_owned),
                message: pg.message().to_owned(),
            };
        }
    }
    PipelineError::Copy(Arc::new(e))
}

impl FileSink {
    /// Makes the temporary file (off the runtime: shared storage may be slow).
    async fn open(
        env: &RunEnv,
        path: &str,
        kind: FileKind,
        columns: &[String],
    ) -> Result<FileSink, PipelineError> {
        let staged = engine::stage_new(env, path, PipelineError::open_destination).await?;
        Ok(FileSink {
            claim: Claim::of(env),
            staged,
            kind,
            columns: columns.to_vec(),
            written: 0,
        })
    }

    fn out(&mut self) -> &mut std::io::BufWriter<std::fs::File> {
        self.staged.out()
    }

    fn prepare(&mut self) -> Result<(), PipelineError> {
        if let FileKind::Csv {
            delimiter,
            header: true,
        } = self.kind
        {
            let line = csv_line(self.columns.iter().map(|c| Some(c.clone())), delimiter);
            self.out()
                .write_all(line.as_bytes())
                .map_err(PipelineError::write_destination)?;
        }
        Ok(())
    }

    /// Writes every row sent; at `End`, the complete (synced) file, still under its
    /// temporary name, and its row count.
    fn consume(
        mut self,
        mut rx: mpsc::Receiver<ToSink>,
        written: Arc<AtomicU64>,
    ) -> Result<(Staged, u64), PipelineError> {
        let result = (|| {
            self.prepare()?;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    ToSink::Rows(rows) => {
                        let n = self.write(&rows)?;
                        written.fetch_add(n, Ordering::Relaxed);
                    }
                    ToSink::End => return Ok(true),
                }
            }
            Ok(false)
        })();
        match result {
            Ok(true) => {
                self.staged
                    .sync()
                    .map_err(PipelineError::write_destination)?;
                Ok((self.staged, self.written))
            }
            // Dropping the staged file removes it.
            other => Err(other.err().unwrap_or(PipelineError::Stopped)),
        }
    }

    fn write(&mut self, rows: &[(u64, Vec<Value>)]) -> Result<u64, PipelineError> {
        let mut text = String::new();
        for (_, row) in rows {
            match self.kind {
                FileKind::Csv { delimiter, .. } => {
                    text.push_str(&csv_line(row.iter().map(Value::to_text), delimiter))
                }
                FileKind::Jsonl => {
                    // Keys in column order (a JSON map would sort them).
                    text.push('{');
                    for (i, (name, v)) in self.columns.iter().zip(row).enumerate() {
                        if i > 0 {
                            text.push(',');
                        }
                        text.push_str(&serde_json::Value::from(name.as_str()).to_string());
                        text.push(':');
                        text.push_str(&v.to_json().to_string());
                    }
                    text.push_str("}\n");
                }
            }
        }
        self.out()
            .write_all(text.as_bytes())
            .map_err(PipelineError::write_destination)?;
        self.written += rows.len() as u64;
        Ok(rows.len() as u64)
    }
}

fn csv_line(fields: impl Iterator<Item = Option<String>>, delimiter: u8) -> String {
    let d = delimiter as char;
    let mut line = String::new();
    for (i, f) in fields.enumerate() {
        if i > 0 {
            line.push(d);
        }
        if let Some(f) = f {
            if f.contains([d, '"', '\n', '\r']) || f.starts_with(' ') || f.ends_with(' ') {
                line.push('"');
                line.push_str(&f.replace('"', "\"\""));
                line.push('"');
            } else {
                line.push_str(&f);
            }
        }
    }
    line.push('\n');
    line
}

/// The claim a run's node holds on it, which every destination checks as it commits: a table
/// in its transaction, a file at its rename.
#[derive(Clone)]
pub struct Claim {
    pool: sqlx::PgPool,
    run_id: i64,
    epoch: i64,
}

impl Claim {
    pub fn of(env: &RunEnv) -> Claim {
        Claim {
            pool: env.pool.clone(),
            run_id: env.run_id,
            epoch: env.claim_epoch,
        }
    }
}

/// Renames a staged file into place only while the run still runs under this node's claim,
/// as a table destination commits: in one transaction, the run's row is locked and checked
/// (no sweep or takeover can change it until the end), the file renamed, and the lock let go.
/// (A retry exists only once a sweep changed the row, so a stale rename always comes first.)
/// Temporary files of the same name staged under a claim that no longer runs (a node killed
/// or taken for gone) can never be renamed: they are removed.
pub async fn commit_file(claim: &Claim, staged: Staged) -> Result<(), PipelineError> {
    let step = pg("recording the run");
    let mut t = claim.pool.begin().await.map_err(&step)?;
    let held = sqlx::query(
        "SELECT 1 FROM runs WHERE id = $1 AND claim_epoch = $2 AND state = 'running' FOR UPDATE",
    )
    .bind(claim.run_id)
    .bind(claim.epoch)
    .fetch_optional(&mut *t)
    .await
    .map_err(&step)?
    .is_some();
    if !held {
        // Dropping it removes the temporary file.
        engine::blocking(move || {
            drop(staged);
            Ok(())
        })
        .await?;
        return Err(PipelineError::TakenOver);
    }
    let (staged, temps) = engine::blocking(move || {
        let temps = staged
            .dir()
            .temporaries()
            .map_err(PipelineError::write_destination)?;
        Ok((staged, temps))
    })
    .await?;
    // `run<id>-<epoch>`, as `engine::stage_new` tags it.
    let claims: Vec<(OsString, i64, i64)> = temps
        .into_iter()
        .filter_map(|(name, tag)| {
            let (id, epoch) = tag.strip_prefix("run")?.split_once('-')?;
            Some((name, id.parse().ok()?, epoch.parse().ok()?))
        })
        .collect();
    let ids: Vec<i64> = claims.iter().map(|c| c.1).collect();
    let live: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, claim_epoch FROM runs WHERE id = ANY($1) AND state = 'running'")
            .bind(&ids)
            .fetch_all(&mut *t)
            .await
            .map_err(&step)?;
    let stale: Vec<OsString> = claims
        .into_iter()
        .filter(|(_, id, epoch)| {
            (*id, *epoch) != (claim.run_id, claim.epoch) && !live.contains(&(*id, *epoch))
        })
        .map(|(name, ..)| name)
        .collect();
    engine::blocking(move || {
        for name in &stale {
            let _ = staged.dir().remove(name);
        }
        staged.rename().map_err(PipelineError::write_destination)
    })
    .await?;
    t.commit().await.map_err(pg("commit"))?;
    Ok(())
}
